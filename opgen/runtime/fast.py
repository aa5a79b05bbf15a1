"""The per-call fast paths in C: each op's extension hands its C functions here.

A generated op function calls its op's C function first (kernel_common.h.j2, opgen_fast_*)
when the call can be plain: in place, rounding to nearest, the C backend. The function checks
the arrays and numbers as the runtime's Python fast path does and runs the dense kernel, or
returns NotImplemented for anything else, which then takes the checked path (where every
error is found and named). Every extension also brings ``fingerprint``, which a cached
multi-tensor plan compares on each call (opgen.runtime.multi). This module is the registry,
and holds the two values the generated call reads without a lookup chain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from opgen.dtypes import DTYPE_NAMES
from opgen.runtime import backends

backend = backends.current_backend_fast  # the backend in use ("numpy" keeps the C fast path off)
flush = backends._flush_denormal  # [0]: the flush-to-zero flag every C call passes

#: fingerprint(*lists of arrays) -> bytes (each array itself, its type, data pointer, flags,
#: dtype, shape and strides) or None: from the first extension configured; None until one is
fingerprint: Callable | None = None

_lock = threading.Lock()
_handed: list[tuple[Callable | None, Callable]] = []


def register(op: str, function: Callable | None, fingerprint_function: Callable) -> tuple:
    """Called by an op's C extension while ``take`` asks it: keeps its functions, and answers
    with what they compare against: the array type and the dtype object of every storage
    dtype, in the dtype table's order (the extension configures itself with them)."""
    table = (np.ndarray, *(np.dtype(name) for name in DTYPE_NAMES))
    _handed.append((function, fingerprint_function))
    return table


def take(lib, register_name: str) -> Callable | None:
    """The op's fast function from its loaded extension (None where it has none, or where the
    extension cannot hand it over: the Python paths then serve every call). The first
    extension configured brings the fingerprint."""
    global fingerprint
    register_fn = getattr(lib, register_name, None)
    if register_fn is None:
        return None
    with _lock:
        _handed.clear()
        if not register_fn() or not _handed:  # 0: the extension is not configured
            return None
        function, fingerprint_function = _handed.pop()
        if fingerprint is None:
            fingerprint = fingerprint_function
        return function
