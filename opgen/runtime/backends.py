"""The backends that run a checked update: the NumPy reference, the C kernels, CUDA.

Each backend runs one :class:`Work` (a checked call's arrays, contiguous and ready to be
written) through its op's kernel ABI (opgen.targets.abi), which names the kernel and
orders its arguments. Host arrays go to the backend that :func:`use_backend` chose ("c",
"numpy", or "auto": C, or NumPy with a warning where no C compiler works); device arrays
go to CUDA.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opgen.kinds import OUT, ArgRole, Schedule, TensorRole
from opgen import cbuild
from opgen.targets import abi
from opgen.runtime import rounding
from opgen.runtime.arrays import ArrayAdapter, grid_axis_shapes
from opgen.runtime.rounding import NEAREST, Rounding
from opgen.runtime.rowsparse import RowSparseArray

PREFERENCES = ("auto", "c", "numpy")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("opgen_backend", default="auto")


def current_backend() -> str:
    return _current.get()


current_backend_fast = _current.get  # the same, without a Python frame (per-call hot path)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the updates inside the block on one backend: "c", "numpy" or "auto".

    "auto" (the default) uses C, or NumPy with a warning when no C compiler works.
    """
    if name not in PREFERENCES:
        raise ValueError(f"use_backend: argument 'name' must be one of {', '.join(PREFERENCES)}, got {name!r}")
    token = _current.set(name)
    try:
        yield
    finally:
        _current.reset(token)


def available_backends() -> tuple[str, ...]:
    """The host backends that can run here: ("c", "numpy") where a C compiler works."""
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


def flush_denormal_flag() -> int:
    """The flag as the C kernels take it."""
    return _flush_denormal[0]


@dataclass
class Work:
    """One checked call, ready to run: from here on, arrays are written."""

    schedule: Schedule
    dtype: np.dtype  # the call's dtype (the weight's)
    states_dtype: np.dtype  # its free states' dtype (opgen.dtypes.Variant)
    target: object  # receives the new weight (or the output); contiguous
    source: object  # the weight as read (the target itself, except for output ops)
    grad: object  # dense array or RowSparseArray
    states: list  # contiguous, updated in place
    scalars: tuple  # the kernels' scalars: scalar inputs, then the math's parameters
    rounding: Rounding = NEAREST
    inputs: list = ()  # the read-only arrays beside the gradient; contiguous
    grad_scale: float = 1.0  # the gradient's factor (a multi-tensor call clipping by the global norm)

    @property
    def grad_data(self):
        return self.grad.data if isinstance(self.grad, RowSparseArray) else self.grad

    def arrays(self, op, grad_array) -> dict:
        """Each kernel array by name: the weight (as read), the gradient, states, ``out``."""
        states, inputs = iter(self.states), iter(self.inputs)
        out = {}
        for t in op.tensors:
            if t.role is TensorRole.WEIGHT:
                out[t.name] = self.source
            elif t.role is TensorRole.GRAD:
                out[t.name] = grad_array
            elif t.role is TensorRole.STATE:
                out[t.name] = next(states)
            elif t.role is TensorRole.INPUT:
                out[t.name] = next(inputs)
        out[OUT] = self.target
        return out

    def sizes(self) -> dict:
        if self.schedule is Schedule.GRID:  # (..., rows, cols): slices of rows x cols
            *lead, rows, cols = self.target.shape
            return {ArgRole.SIZE: self.target.size, ArgRole.NSLICES: math.prod(lead), ArgRole.NROWS: rows,
                    ArgRole.ROW_LEN: cols, ArgRole.NNZ: 0, ArgRole.BLOCK_ROWS: abi.grid_block_rows(rows, cols)}
        rows = self.target.shape[0] if self.target.ndim else 1
        cols = self.target.size // rows if rows else (self.target.shape[1] if self.target.ndim == 2 else 0)
        return {ArgRole.SIZE: self.target.size, ArgRole.NROWS: rows, ArgRole.ROW_LEN: cols,
                ArgRole.NNZ: len(self.grad.indices) if isinstance(self.grad, RowSparseArray) else 0}

    @staticmethod
    def grid_workspace(kernel, sizes: dict) -> int:
        """A grid kernel's workspace, in doubles (abi.GridLayout), from the call's sizes."""
        return kernel.grid.size(sizes[ArgRole.NROWS], sizes[ArgRole.ROW_LEN], sizes[ArgRole.NSLICES])


class Backend:
    name = ""

    def run(self, op, work: Work) -> None:
        raise NotImplementedError


class NumpyBackend(Backend):
    """The reference: the math printed as NumPy, in the math dtype."""

    name = "numpy"

    def run(self, op, work: Work) -> None:
        acc = op.math_dtype(work.dtype, work.states_dtype)
        typed = op.typed_for_numpy(work.scalars)
        scalar_inputs, params = typed[:op.scalar_inputs], typed[op.scalar_inputs:]
        writable = [work.target, *work.states]  # the kernel returns new values in this order
        grad, source = work.grad, work.source
        if work.grad_scale != 1.0:  # (multi-tensor calls: dense) in the math type, as the kernels' loads
            grad = grad.astype(acc) * acc(work.grad_scale)
        if work.schedule is Schedule.GRID:  # slices (..., rows, cols): per-row values (..., rows, 1), per-column (..., 1, cols)
            row, col = grid_axis_shapes(source.shape)
            shapes = [source.shape] + [row if t.per_row else col if t.per_col else source.shape
                                       for t in op.tensors if t.role is TensorRole.STATE]
            views = [w.reshape(shape) for w, shape in zip(writable, shapes)]
            inputs = op.numpy_inputs(source, views[1:], grad, scalar_inputs, acc, work.inputs)
            with np.errstate(all="ignore"):
                results = op.numpy_kernel(acc, *inputs, *params)
                for k, (array, view, result) in enumerate(zip(writable, views, results)):
                    element = lambda: np.arange(array.size, dtype=np.int64).reshape(view.shape)  # noqa: E731
                    np.copyto(view, _rounded(op, work, k, array.dtype, result, element), casting="unsafe")
            return
        if work.schedule is Schedule.LAZY:
            rows, row_len = grad.indices, grad.row_length
            widths = [row_len] + [1 if t.per_row else row_len for t in op.tensors if t.role is TensorRole.STATE]
            views = [w.reshape(w.shape[0] if w.ndim else 1, width) for w, width in zip(writable, widths)]
            weight_rows = source.reshape(source.shape[0], row_len)[rows]
            inputs = op.numpy_inputs(weight_rows, [v[rows] for v in views[1:]],
                                     grad.data.reshape(len(rows), row_len), scalar_inputs, acc)
            with np.errstate(all="ignore"):  # IEEE results, as the kernels: inf and NaN, no warnings
                results = op.numpy_kernel(acc, *inputs, *params)
                for k, (view, result, width) in enumerate(zip(views, results, widths)):
                    # the flat index of each element stored, as the kernels number them
                    element = lambda: rows.astype(np.int64)[:, None] * width + np.arange(view.shape[1])  # noqa: E731
                    view[rows] = _rounded(op, work, k, view.dtype, result, element)
            return
        dense_grad = grad.todense() if isinstance(grad, RowSparseArray) else grad
        inputs = op.numpy_inputs(source, work.states, dense_grad, scalar_inputs, acc, work.inputs)
        with np.errstate(all="ignore"):  # (a float16 store that overflows to inf included)
            results = op.numpy_kernel(acc, *inputs, *params)
            for k, (array, result) in enumerate(zip(writable, results)):
                element = lambda: np.arange(array.size, dtype=np.int64).reshape(array.shape)  # noqa: E731
                np.copyto(array, _rounded(op, work, k, array.dtype, result, element), casting="unsafe")


def _rounded(op, work: Work, k: int, dtype: np.dtype, result, element: Callable[[], np.ndarray]):
    """Result ``k`` as stored: as it is (NumPy then rounds to nearest), or stochastically
    rounded with the kernels' random bits for the same elements, whose indices ``element``
    gives (built only then)."""
    if not work.rounding.stochastic or dtype.itemsize != 2 or op.store_slots[k] < 0:
        return result  # (slot -1: a per-tensor state, rounded to nearest as the kernels do)
    index = element()
    key = rounding.slot_key(rounding.call_key(work.rounding.seed, 0), op.store_slots[k])
    values = np.broadcast_to(np.asarray(result, np.float32), index.shape)
    return rounding.round_stochastic(values, dtype, rounding.random_bits(key, index))


class CBackend(Backend):
    """The compiled C kernels, called through cffi in the ABI's argument order."""

    name = "c"

    def _arguments(self, op, work: Work, grad_array):
        """The kernel and its arguments in the ABI's order (the scalars aside), every array as
        a cffi buffer: (function, head, tensors by name, scalar positions, what they point into)."""
        module = op.c_module()
        kernel = op.kernel(work.schedule, work.dtype, work.states_dtype)
        function = op.c_function(module, kernel)
        from_buffer = module.ffi.from_buffer
        arrays = work.arrays(op, grad_array)
        # (the elements read: the weight's, or an op that only reduces its first input's)
        sizes = work.sizes() if kernel.schedule is not Schedule.DENSE else {ArgRole.SIZE: work.source.size}
        head, tensors, positions, _ = op.c_layout(kernel)
        keep = [arrays]
        if kernel.grid is not None:  # the grid kernel's workspace, one array per call (or prepared call)
            keep.append(np.empty(work.grid_workspace(kernel, sizes), np.float64))
            sizes[ArgRole.WORKSPACE] = from_buffer("double[]", keep[-1])
        head_args = [from_buffer("int64_t[]", work.grad.indices) if role is ArgRole.INDICES else sizes[role]
                     for role in head]
        named = {name: None if arrays[name] is None else from_buffer(arrays[name]) for name in tensors}
        return function, head_args, tensors, named, positions, keep

    def run(self, op, work: Work) -> None:
        function, head, tensors, named, positions, _ = self._arguments(
            op, work, None if work.grad is None else np.ascontiguousarray(work.grad_data))
        scalars = work.scalars
        function(*head, *[named[name] for name in tensors], *[scalars[k] for k in positions], work.grad_scale,
                 *work.rounding.kernel_args, _flush_denormal[0])

    def prepare(self, op, work: Work):
        """``work``'s kernel call with every argument but the gradient's converted once, for a
        call repeated on the same arrays (an optimizer's per-tensor step): a function of the
        gradient's data pointer (C-contiguous memory of the call's dtype and shape: the caller
        vouches for it), the kernel's scalars, the gradient factor and the rounding. What its
        arguments point into (the arrays, the workspace) lives with it."""
        grad_name = next(t.name for t in op.tensors if t.role is TensorRole.GRAD)
        function, head, tensors, named, positions, keep = self._arguments(op, work, None)
        cast = op.c_module().ffi.cast
        args = [named[name] for name in tensors]
        slot = tensors.index(grad_name)

        def run(grad_pointer: int, scalars: tuple, grad_scale: float, rounding: Rounding) -> None:
            call = list(args)
            call[slot] = cast("void *", grad_pointer)
            function(*head, *call, *[scalars[k] for k in positions], grad_scale, *rounding.kernel_args,
                     _flush_denormal[0])

        run.keep = keep
        return run


class CudaBackend(Backend):
    """The CUDA kernels through CuPy, on the arrays' device, in the ABI's argument order and
    launch shape."""

    name = "cuda"

    def run(self, op, work: Work) -> None:
        import cupy

        from opgen.runtime import cuda

        kernel = op.kernel(work.schedule, work.dtype, work.states_dtype)
        sizes = work.sizes()
        staged = bool(kernel.passes or kernel.store)  # (its per-tensor states change even with no element)
        if not staged and (sizes[ArgRole.SIZE] == 0 or sizes[kernel.launch.work] == 0):
            return
        arrays = work.arrays(op, cupy.ascontiguousarray(work.grad_data))
        head, tensors, positions, types = op.c_layout(kernel, cuda=True)
        if kernel.grid is not None:  # the stages' workspace: device memory kept per device and stream
            sizes[ArgRole.WORKSPACE] = op.cuda.workspace(work.grid_workspace(kernel, sizes))
        args = [work.grad.indices if role is ArgRole.INDICES else sizes[role] if role is ArgRole.WORKSPACE
                else np.int64(sizes[role]) for role in head]
        args += [arrays[name] for name in tensors]
        args += [kind(work.scalars[k]) for k, kind in zip(positions, types)]
        rounding, seed = work.rounding.kernel_args
        args += [np.float64(work.grad_scale), np.int32(rounding), np.uint64(seed)]
        if kernel.grid is not None:
            # a grid op: per level its pass (a block per row block) and its phase (one block),
            # the update, the states' store; in order on the stream, no host sync
            blocks = -(-sizes[ArgRole.NROWS] // sizes[ArgRole.BLOCK_ROWS])
            for name, per_block in kernel.grid_stages:
                if blocks or not per_block:
                    cuda.launch_fixed(op.cuda, name, blocks if per_block else 1, cuda.TOTAL_THREADS, args)
            if sizes[ArgRole.SIZE]:
                cuda.launch(op.cuda, kernel, sizes[ArgRole.SIZE], args)
            cuda.launch_fixed(op.cuda, kernel.store, 1, cuda.TOTAL_THREADS, args)
            return
        if not staged:
            cuda.launch(op.cuda, kernel, sizes[kernel.launch.work], args)  # on the arrays' device: see execute
            return
        # whole-tensor reductions: each pass on its fixed grid into the partial totals, the
        # update, then the per-tensor states' store; in order on the stream, no host sync
        args.append(op.cuda.workspace(max(kernel.totals, 1) * cuda.TOTAL_BLOCKS))
        for name in kernel.passes:
            cuda.launch_fixed(op.cuda, name, cuda.TOTAL_BLOCKS, cuda.TOTAL_THREADS, args)
        if sizes[kernel.launch.work]:
            cuda.launch(op.cuda, kernel, sizes[kernel.launch.work], args)
        if kernel.store:
            cuda.launch_fixed(op.cuda, kernel.store, 1, cuda.TOTAL_THREADS, args)


NUMPY, C, CUDA = NumpyBackend(), CBackend(), CudaBackend()
REGISTRY: dict[str, Backend] = {b.name: b for b in (NUMPY, C, CUDA)}


_warned_no_compiler = [False]  # CompilerUnavailable is the same for every op: warned once per process
_warn_lock = threading.Lock()


def backend_for(op, adapter: ArrayAdapter) -> Backend:
    """The backend a call on these arrays runs on."""
    if adapter.device:
        return REGISTRY["cuda"]
    preference = _current.get()
    if preference == "numpy":
        return REGISTRY["numpy"]
    try:
        op.c_module()
    except (cbuild.CompilerUnavailable, cbuild.CompileError) as exc:
        if preference == "c":
            raise
        _warn_fallback(op, exc)
        return REGISTRY["numpy"]
    return REGISTRY["c"]


def _warn_fallback(op, exc: Exception) -> None:
    """One warning for a compiler that cannot work here (not one per op), one per op whose
    own C failed to compile; either way the op runs on NumPy, with the same numbers."""
    with _warn_lock:
        if isinstance(exc, cbuild.CompilerUnavailable):
            if _warned_no_compiler[0]:
                return
            _warned_no_compiler[0] = True
            message = f"opgen: C backend unavailable, using the NumPy backend for every op ({exc})"
        else:
            if op.warned_c_unavailable:
                return
            op.warned_c_unavailable = True
            message = f"{op.name}: C kernel failed to build, using the NumPy backend ({exc})"
    warnings.warn(message, RuntimeWarning, stacklevel=_user_level(op))


def _user_level(op) -> int:
    """The warnings stacklevel of the user's line (from _warn_fallback): the first frame
    outside opgen and the op's generated package, however deep the call path."""
    inside = tuple(str(Path(folder).resolve().parent) + os.sep  # opgen/, and the package of csrc/OP.c
                   for folder in (Path(__file__).parent, Path(op.c_source).parent))
    frame, level = sys._getframe(2), 2  # backend_for's frame, level 2 from _warn_fallback
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
