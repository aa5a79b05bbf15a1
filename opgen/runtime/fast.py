"""The per-call fast paths in C: each plain op's extension hands its fast function here.

A generated op function calls its op's C function first (kernel_common.h.j2, opgen_fast_*)
when the call can be plain: in place, rounding to nearest, the C backend. The function checks
the arrays and numbers as the runtime's Python fast path does and runs the dense kernel, or
returns NotImplemented for anything else, which then takes the checked path (where every
error is found and named). This module is its registry, and the two values the generated
call reads without a lookup chain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from opgen.dtypes import DTYPE_NAMES
from opgen.runtime import backends

backend = backends.current_backend_fast  # the backend in use ("numpy" keeps the C fast path off)
flush = backends._flush_denormal  # [0]: the flush-to-zero flag every C call passes

_lock = threading.Lock()
_handed: list[Callable] = []


def register(op: str, function: Callable) -> None:
    """Called by an op's C extension while it is taken (``take``): configures the function
    with the array type and the dtype object of every storage dtype, in the dtype table's order."""
    function(None, (np.ndarray, *(np.dtype(name) for name in DTYPE_NAMES)))
    _handed.append(function)


def take(lib, register_name: str) -> Callable | None:
    """The fast function of a loaded extension, or None where it has none or cannot hand it over."""
    register_fn = getattr(lib, register_name, None)
    if register_fn is None:
        return None
    with _lock:
        _handed.clear()
        if not register_fn() or not _handed:
            return None
        return _handed.pop()
