"""Which backend runs an update: the C kernels, or the NumPy reference."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from opgen.runtime import cbuild

BACKENDS = ("auto", "c", "numpy")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("opgen_backend", default="auto")


def current_backend() -> str:
    return _current.get()


current_backend_fast = _current.get  # the same, without a Python frame (per-call hot path)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the updates inside the block on one backend: "c", "numpy" or "auto".

    "auto" (the default) uses C, or NumPy with a warning when no C compiler works.
    """
    if name not in BACKENDS:
        raise ValueError(f"use_backend: argument 'name' must be one of {', '.join(BACKENDS)}, got {name!r}")
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def available_backends() -> tuple[str, ...]:
    """The backends that can run here: ("c", "numpy") where a C compiler works."""
    return ("c", "numpy") if cbuild.compiler_available() else ("numpy",)
