"""The storage dtypes every op is generated for, and the accumulator type of each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # NumPy's name
    c_storage: str  # element type in memory, as the kernels see it
    c_acc: str  # type the math is computed in
    half: bool  # stored as 16-bit floats: converted on load and store
    itemsize: int  # bytes per element

    @property
    def cuda_storage(self) -> str:
        return self.c_storage  # the CUDA header defines opgen_half too


DTYPES: tuple[DType, ...] = (
    DType("float16", "opgen_half", "float", True, 2),
    DType("float32", "float", "float", False, 4),
    DType("float64", "double", "double", False, 8),
)

DTYPE_BY_NAME: dict[str, DType] = {d.name: d for d in DTYPES}
