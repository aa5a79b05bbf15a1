"""CUDA backend: the generated ``.cu``, compiled by NVRTC through CuPy, run on CuPy arrays.

CuPy is optional: nothing here imports it until a CuPy array arrives. Modules are
compiled once per device in a process (CuPy's own disk cache keeps them across runs);
kernels run on CuPy's current stream. Names, arguments and launch shapes come from the
kernel ABI (opgen.targets.abi), as the generated module carries it.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from opgen import cbuild
# the reduction passes' fixed grid; the multi-tensor kernels' chunk
from opgen.targets.abi import MULTI_CHUNK, TOTAL_BLOCKS, TOTAL_THREADS

__all__ = ["CHECK_ARCHES", "CudaCompileError", "CudaKernels", "MULTI_CHUNK", "TOTAL_BLOCKS", "TOTAL_THREADS",
           "cuda_source", "launch", "launch_fixed", "nvrtc_check"]

# --fmad=false: no multiply-add contraction, so results match the C kernels and the
# NumPy reference bit for bit where the math is + - * / sqrt.
NVRTC_OPTIONS = ("--std=c++14", "--fmad=false")
CHECK_ARCHES = ("compute_80", "compute_90")


class CudaCompileError(RuntimeError):
    pass


def cuda_source(path: Path) -> str:
    """The kernel source with its headers (the shared one, the op's element math) inlined:
    one self-contained translation unit, as NVRTC needs."""
    return cbuild.inline_includes(path)


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
        self._workspaces: dict[tuple[int, int], object] = {}

    def workspace(self, doubles: int):
        """The reduction passes' partial totals: a device array of at least ``doubles``
        doubles, kept per device and stream for the life of the op, so a CUDA graph that
        captured a call keeps valid memory on every replay (calls on one stream are ordered;
        calls on two streams get two workspaces)."""
        import cupy

        key = (cupy.cuda.Device().id, cupy.cuda.get_current_stream().ptr)
        buffer = self._workspaces.get(key)
        if buffer is None or buffer.size < doubles:
            with self._lock:
                buffer = self._workspaces[key] = cupy.empty(doubles, cupy.float64)
        return buffer

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


def launch(kernels: CudaKernels, kernel, work: int, args: list) -> None:
    """Run one kernel: ``kernel`` is its ABI record, ``work`` the value of its launch's work
    argument, ``args`` the kernel's CUDA arguments in order, already typed."""
    launch = kernel.launch
    blocks = launch.grid(work, _sm_count())
    kernels.function(kernel.name)((blocks,), launch.block, tuple(args))


def launch_fixed(kernels: CudaKernels, name: str, blocks: int, threads: int, args: list) -> None:
    """Run one of a reducing kernel's passes or its store (names from the kernel's ABI) on a
    fixed grid: the same partition of the elements, so the same bits, on any GPU."""
    kernels.function(name)((blocks,), (threads,), tuple(args))
