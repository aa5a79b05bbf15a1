"""Ops that only reduce (OpSpec.reduction): inputs in, one value per call out.

``OP(data, ..., out=None)`` returns a one-element array holding the op's output, a per-call
value of its math (a sum of squares, say); the multi-tensor form returns one
value per tensor (shape ``(count,)``), or, where the spec says how (``output.across``), one
value for the whole call: the tensors' values combined by min, max or sum, and, where the
spec's ``output.reset`` parameter is false, the value ``out`` held before the call too
(several calls checking one set of gradients into one flag).

The kernels are the C ones of every op with whole-tensor reductions (blocked, pairwise:
the same bits on any thread count): a dense kernel per tensor, or one multi kernel that
reduces every tensor in one call and stores each tensor's value. Each value is computed
into a new array first, so ``out`` is written only after every check and every kernel.
"""

from __future__ import annotations

import math
import operator

import numpy as np

from opgen.dtypes import dtype_list
from opgen.kinds import ArgRole, Schedule
from opgen.runtime import backends
from opgen.runtime.arrays import adapter_for, kind, present, refused_subclass
from opgen.runtime.backends import Work
from opgen.runtime.operator import FLOAT_DTYPES, Operator, check_rounding
from opgen.runtime.rounding import Rounding
from opgen.runtime.torch_arrays import shard_refusal, sharded


# how a multi-tensor call combines its tensors' values (output.across), in double: NaN
# propagates through min and max (NumPy's), as the spec language's min and max
_ACROSS = {"min": lambda values: float(np.min(values)), "max": lambda values: float(np.max(values)),
           "sum": math.fsum}


class ReduceOperator(Operator):
    """An op whose tensors are all inputs, read only; its result is its per-call output."""

    def __init__(self, *, across: str | None = None, reset: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.across = across
        self.reset_index = next((k for k, p in enumerate(self.params) if p.name == reset), None)

    # -- one call ---------------------------------------------------------------------------
    def __call__(self, tensors: tuple, params: tuple, out, rounding="nearest", seed=None):
        rounding = check_rounding(self.name, rounding, seed)
        values = tuple(self.check_param(p, v) for p, v in zip(self.params, params))
        labels = (*self.names, "out")
        views, presented = self._present((*tensors, out), lambda k: labels[k])
        inputs = self._check_inputs(views[:-1], self.names)
        target = self._check_out(views[-1], inputs[0].dtype, ((1,), ()), "shape (1,) or ()")
        result = self._reduce([inputs], values, rounding)
        return self._deliver(result, target, presented, len(tensors))

    # -- many tensors -----------------------------------------------------------------------
    def interleaved(self, data: tuple, params: tuple, count, count_name: str, out, rounding="nearest", seed=None):
        """MXNet's convention: ``data`` holds each tensor's inputs in turn; ``count`` says how
        many tensors there are."""
        if len(data) == 1 and isinstance(data[0], (list, tuple)):
            data = tuple(data[0])
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool):
            raise TypeError(f"{self.name}(): argument '{count_name}' must be a non-negative integer, got {count!r}")
        if count < 0:
            raise ValueError(f"{self.name}(): argument '{count_name}' must be a non-negative integer, got {count}")
        size = len(self.tensors)
        if len(data) != count * size:
            parts = ", ".join(t.name for t in self.tensors)
            raise ValueError(f"{self.name}(): argument 'data' holds {len(data)} arrays but {count_name}={count} needs "
                             f"{count * size} ({parts} for each tensor)")
        rounding = check_rounding(self.name, rounding, seed)
        values = tuple(self.check_param(p, v) for p, v in zip(self.params, params))
        views, presented = self._present((*data, out), lambda k: "out" if k == len(data) else f"data[{k}]")
        groups = self._plain_groups(views[:-1], size)
        if groups is None:  # anything but the usual call: each tensor's inputs checked, named
            groups = []
            for i in range(count):
                names = tuple(f"data[{i * size + k}]" for k in range(size))
                groups.append(self._check_inputs(views[i * size:(i + 1) * size], names))
        for i, group in enumerate(groups[1:], 1):
            if group[0].dtype != groups[0][0].dtype:
                raise self._fail(TypeError, f"data[{i * size}]", f"has dtype {group[0].dtype} but data[0] has "
                                                                 f"{groups[0][0].dtype}; one dtype per call")
        keep = self.reset_index is not None and not values[self.reset_index]
        dtype = groups[0][0].dtype if groups else None
        if self.across is None:
            target = self._check_out(views[-1], dtype, ((count,),), f"shape ({count},): one value per tensor")
        else:
            target = self._check_out(views[-1], dtype, ((1,), ()), "shape (1,) or ()")
            if keep and target is None:
                raise self._fail(ValueError, "out", f"is required with {self.params[self.reset_index].name}=False: "
                                                    "the value it holds is combined with the call's")
        if self.across in ("min", "max") and not groups and not keep:
            raise self._fail(ValueError, count_name, f"is 0: the {self.across} of no tensors' values is not defined; "
                                                     "pass at least one tensor")
        result = self._reduce(groups, values, rounding)
        if self.across is not None:
            found = [float(v) for v in result] + ([float(np.asarray(target).reshape(-1)[0])] if keep else [])
            result = np.array([_ACROSS[self.across](found)], result.dtype)
        return self._deliver(result, target, presented, len(data))

    # -- checks -----------------------------------------------------------------------------
    @staticmethod
    def _plain_groups(arrays: tuple, size: int) -> list | None:
        """The usual call in a few C loops: exact NumPy arrays of one float dtype, one input
        per tensor (or a tensor's inputs of one shape), C-contiguous; None for anything
        else, which _check_inputs then checks one by one and names."""
        if not arrays or set(map(type, arrays)) != {np.ndarray}:
            return None
        dtypes = set(map(operator.attrgetter("dtype"), arrays))
        if len(dtypes) != 1 or next(iter(dtypes)) not in FLOAT_DTYPES:
            return None
        if not all(map(operator.attrgetter("c_contiguous"), map(operator.attrgetter("flags"), arrays))):
            return None
        if size == 1:
            return [[a] for a in arrays]
        groups = [list(arrays[k:k + size]) for k in range(0, len(arrays), size)]
        return groups if all(a.shape == g[0].shape for g in groups for a in g) else None

    def _present(self, values: tuple, label):
        """Foreign arrays (torch tensors) as native views; a shard of a DTensor refused (its
        reductions would be this rank's shard's only)."""
        for k, value in enumerate(values):
            if type(value) is np.ndarray:
                continue
            placement = sharded(value)
            if placement is not None:
                raise self._fail(TypeError, label(k), shard_refusal(self.name, placement))
        return present(values, lambda k, exc, message: self._fail(exc, label(k), message))

    def _check_inputs(self, arrays: tuple, names: tuple[str, ...]) -> list:
        """A tensor's inputs: host arrays of a float dtype the kernels take, the first one's
        dtype and shape for all."""
        first, first_name = arrays[0], names[0]
        for name, value in zip(names, arrays):
            if adapter_for(value) is None or not hasattr(value, "dtype"):
                refused = refused_subclass(value)
                raise self._fail(TypeError, name, refused or f"must be a numpy.ndarray, got {type(value).__name__}")
            if adapter_for(value).device:
                raise self._fail(TypeError, name, f"is a {kind(value)} array, but {self.name} has no CUDA kernels "
                                                  "(its reductions run on the CPU only); pass host arrays")
            if value.dtype not in FLOAT_DTYPES:
                raise self._fail(TypeError, name, f"has dtype {value.dtype}; expected {dtype_list()}")
            if value.dtype != first.dtype:
                raise self._fail(TypeError, name, f"has dtype {value.dtype} but '{first_name}' has {first.dtype}")
            if value.shape != first.shape:
                raise self._fail(ValueError, name, f"has shape {value.shape} but '{first_name}' has shape "
                                                   f"{first.shape}; shapes must match")
        return [np.ascontiguousarray(a) for a in arrays]  # read only: a copy where they are not contiguous

    def _check_out(self, out, dtype, shapes: tuple, what: str):
        """``out``: None, or a writable array of the output's dtype (the spec's, else the
        inputs' ``dtype``) and one of ``shapes``."""
        if out is None:
            return None
        if type(out) is not np.ndarray:
            raise self._fail(TypeError, "out", refused_subclass(out) or f"must be None or a numpy.ndarray, got "
                                                                      f"{type(out).__name__}")
        expected = self.output_dtype or dtype
        if expected is not None and out.dtype != expected:
            raise self._fail(TypeError, "out", f"has dtype {out.dtype}; it must be {expected}")
        if out.shape not in shapes:
            raise self._fail(ValueError, "out", f"has shape {out.shape}; it must have {what}")
        if not out.flags.writeable:
            raise self._fail(ValueError, "out", "is read-only; the result is written into out")
        return out

    # -- the run ----------------------------------------------------------------------------
    def _reduce(self, groups: list, values: tuple, rounding: Rounding) -> np.ndarray:
        """Each tensor's output, in a new array of the output dtype (one kernel for all
        tensors where the C backend serves the call)."""
        if not groups:
            return np.empty(0, self.output_dtype or np.float32)  # (no tensor, no dtype: an output of none)
        result = np.empty(len(groups), self.output_dtype or groups[0][0].dtype)
        scalars = tuple(values[k] for k in self.kernel_params)
        backend = backends.backend_for(self, adapter_for(groups[0][0]))
        if backend is backends.C and len(groups) > 1:
            self._multi_kernel(groups, scalars, result, rounding)
            return result
        dtype = groups[0][0].dtype
        for i, inputs in enumerate(groups):
            backend.run(self, Work(Schedule.DENSE, dtype, dtype, result[i:i + 1], inputs[0], None, [], scalars,
                                   rounding.for_tensor(i), inputs))
        return result

    def _multi_kernel(self, groups: list, scalars: tuple, result: np.ndarray, rounding: Rounding) -> None:
        module = self.c_module()
        dtype = groups[0][0].dtype
        kernel = self.kernel(Schedule.MULTI, dtype, dtype)
        ffi = module.ffi
        # each tensor's slot of the result, by address: one table built by NumPy
        slots = np.arange(len(groups), dtype=np.uint64) * np.uint64(result.itemsize) + \
            np.uint64(int(ffi.cast("uintptr_t", ffi.from_buffer(result))))
        keep, args = [result, slots], []
        for a in kernel.args:
            if a.role is ArgRole.COUNT:
                args.append(len(groups))
            elif a.role is ArgRole.SIZES:
                args.append(ffi.new("int64_t[]", [inputs[0].size for inputs in groups]))
            elif a.role is ArgRole.TENSOR_TABLE and a.source == "out":
                args.append(ffi.cast("void **", ffi.from_buffer("uintptr_t[]", slots)))
            elif a.role is ArgRole.TENSOR_TABLE:
                k = self.names.index(a.source)
                buffers = [ffi.from_buffer(inputs[k]) for inputs in groups]
                keep.append(buffers)
                args.append(ffi.new("void *[]", buffers))
            elif a.role is ArgRole.SCALAR_TABLE:
                value = scalars[self.scalar_position[a.source]]
                args.append(ffi.from_buffer(f"{a.element_c_type}[]", np.full(len(groups), value, np.dtype(a.numpy))))
            elif a.role is ArgRole.GRAD_SCALE:
                args.append(1.0)
            elif a.role is ArgRole.ROUNDING:
                args.append(rounding.kernel_args[0])
            elif a.role is ArgRole.SEED:
                args.append(rounding.kernel_args[1])
            elif a.role is ArgRole.FLUSH:
                args.append(backends.flush_denormal_flag())
            else:
                raise RuntimeError(f"{kernel.name}: no value for an argument of role {a.role}")
        self.c_function(module, kernel)(*args)

    def _deliver(self, result: np.ndarray, target, presented, out_position: int):
        if target is None:
            return result if presented is None else presented.result(result)
        target[...] = result.reshape(target.shape)
        if presented is not None:
            presented.written((out_position,))
            return presented.result(target)
        return target

