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


_flush_denormal = [0]  # read by every C call; a list so the hot path reads it without a lookup chain


def set_flush_denormal(on: bool) -> bool:
    """Opt in to flushing subnormal floats to zero in the C kernels (FTZ and DAZ).

    Moments that decay towards zero (long runs of zero gradient) become subnormal, and
    x86 arithmetic on subnormals is tens of times slower. With the flag on, the kernels
    treat subnormal inputs and results as zero: faster, no longer IEEE-exact there. The
    NumPy and CUDA backends are unaffected. Returns whether this machine supports it
    (x86); elsewhere the flag stays off.
    """
    import platform

    supported = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    _flush_denormal[0] = int(bool(on) and supported)
    return supported


def flush_denormal() -> bool:
    return bool(_flush_denormal[0])
