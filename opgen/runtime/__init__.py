"""What the generated package imports at run time: validation, dispatch, kernels' loader."""

import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy: np.dtype("bfloat16"))

from opgen.runtime.backends import (
    available_backends,
    current_backend,
    flush_denormal,
    set_flush_denormal,
    use_backend,
)
from opgen.runtime.multi import MultiOperator
from opgen.runtime.operator import Operator, ParamArg, TensorArg
from opgen.runtime.reduce import ReduceOperator
from opgen.runtime.rowsparse import RowSparseArray

__all__ = [
    "MultiOperator",
    "Operator",
    "ParamArg",
    "ReduceOperator",
    "RowSparseArray",
    "TensorArg",
    "available_backends",
    "current_backend",
    "flush_denormal",
    "set_flush_denormal",
    "use_backend",
]
