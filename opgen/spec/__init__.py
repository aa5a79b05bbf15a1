"""The one parse boundary: ``specs/NAME.yaml`` becomes a frozen :class:`OpSpec`."""

from opgen.spec.loader import load_spec, load_specs
from opgen.spec.model import OpSpec, ParamSpec, ParamType, RowSparseSpec, TensorRole, TensorSpec

__all__ = [
    "OpSpec",
    "ParamSpec",
    "ParamType",
    "RowSparseSpec",
    "TensorRole",
    "TensorSpec",
    "load_spec",
    "load_specs",
]
