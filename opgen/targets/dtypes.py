"""The storage dtypes every op is generated for, and the accumulator type of each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # NumPy's name
    c_storage: str  # element type in memory, as the kernels see it
    c_acc: str  # type the math is computed in
    half: bool  # stored as 16-bit floats: converted on load and store


DTYPES: tuple[DType, ...] = (
    DType("float16", "opgen_half", "float", True),
    DType("float32", "float", "float", False),
    DType("float64", "double", "double", False),
)

DTYPE_BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
