"""CUDA backend: the generated ``.cu``, compiled by NVRTC through CuPy, run on CuPy arrays.

CuPy is optional: nothing here imports it until a CuPy array arrives. Modules are
compiled once per device in a process (CuPy's own disk cache keeps them across runs);
kernels run on CuPy's current stream, on the current device.
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path

import numpy as np

HEADER = "opgen_kernel.cuh"
# --fmad=false: no multiply-add contraction, so results match the C kernels and the
# NumPy reference bit for bit where the math is + - * / sqrt.
NVRTC_OPTIONS = ("--std=c++14", "--fmad=false")
CHECK_ARCHES = ("compute_80", "compute_90")
# Launch shapes; the CUDA target prints them as the kernels' __launch_bounds__.
DENSE_BLOCK = 512  # threads per block of the dense kernels
ROWS_PER_BLOCK = 8  # warps (rows in flight) per block of the row kernels
ROW_BLOCK = (32, ROWS_PER_BLOCK)


class CudaCompileError(RuntimeError):
    pass


def is_device_array(value) -> bool:
    return type(value).__module__.split(".")[0] == "cupy"


def cuda_source(path: Path) -> str:
    """The kernel source with the shared header inlined: one self-contained translation unit."""
    header = (path.parent / HEADER).read_text()
    return path.read_text().replace(f'#include "{HEADER}"', header, 1)


def explain_compile_error(spec: str, source: str, log: str, context: int = 3) -> str:
    """The NVRTC log, then the generated source lines around each error."""
    lines = source.splitlines()
    parts = [f"{spec}: the generated CUDA source did not compile:", log.strip()]
    for number in sorted({int(m) for m in re.findall(r"\((\d+)\): error", log)})[:3]:
        lo, hi = max(number - context, 1), min(number + context, len(lines))
        parts.append("\n".join(f"{k:6d}{'>' if k == number else ' '} {lines[k - 1]}" for k in range(lo, hi + 1)))
    return "\n\n".join(parts)


def nvrtc_check(source: str, arch: str, name: str = "kernel.cu") -> tuple[str, str]:
    """Compile with NVRTC alone (no GPU needed): returns (log, PTX); raises on errors."""
    from cupy_backends.cuda.libs import nvrtc

    program = nvrtc.createProgram(source, name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, [f"-arch={arch}", *NVRTC_OPTIONS])
        except nvrtc.NVRTCError:
            raise CudaCompileError(nvrtc.getProgramLog(program)) from None
        return nvrtc.getProgramLog(program), nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)


class CudaKernels:
    """One op's compiled CUDA module per device, loaded on first use."""

    def __init__(self, spec: str, source: Path) -> None:
        self.spec = spec
        self.source = source
        self._modules: dict[int, object] = {}
        self._functions: dict[tuple[int, str], object] = {}
        self._lock = threading.Lock()

    def function(self, name: str):
        import cupy

        device = cupy.cuda.Device().id
        key = (device, name)
        function = self._functions.get(key)
        if function is None:
            with self._lock:
                module = self._modules.get(device)
                if module is None:
                    module = self._compile()
                    self._modules[device] = module
                function = module.get_function(name)
                self._functions[key] = function
        return function

    def _compile(self):
        import cupy

        code = cuda_source(self.source)
        module = cupy.RawModule(code=code, options=NVRTC_OPTIONS)
        try:
            module.compile()
        except cupy.cuda.compiler.CompileException as exc:
            raise CudaCompileError(explain_compile_error(self.spec, code, str(exc))) from None
        return module


_sm_counts: dict[int, int] = {}


def _sm_count() -> int:
    import cupy

    device = cupy.cuda.Device()
    count = _sm_counts.get(device.id)
    if count is None:
        count = _sm_counts[device.id] = device.attributes["MultiProcessorCount"]
    return count


def launch(kernels: CudaKernels, name: str, mode: str, arrays: list, scalars: list,
           size: int, rows: int, row_len: int, indices=None, nnz: int = 0) -> None:
    """Run one kernel; ``arrays`` in declaration order, ``scalars`` already typed."""
    if size == 0:
        return
    function = kernels.function(name)
    if mode == "dense":
        width = 16 // arrays[0].itemsize
        blocks = max(1, min(math.ceil(math.ceil(size / width) / DENSE_BLOCK), 8 * _sm_count()))
        function((blocks,), (DENSE_BLOCK,), (np.int64(size), *arrays, *scalars))
        return
    work_rows = nnz if mode == "lazy" else rows
    if work_rows == 0:
        return
    blocks = max(1, min(math.ceil(work_rows / ROW_BLOCK[1]), 32 * _sm_count()))
    if mode == "lazy":
        head = (np.int64(nnz), np.int64(row_len), indices)
    else:
        head = (np.int64(rows), np.int64(row_len), np.int64(nnz), indices)
    function((blocks,), ROW_BLOCK, (*head, *arrays, *scalars))
