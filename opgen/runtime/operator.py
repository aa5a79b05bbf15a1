"""What every generated function calls: validate the arguments, then run a kernel.

All checks happen before anything is written, so a bad call raises ``TypeError`` or
``ValueError`` naming the argument and leaves every array as it was. Among them: ndarray
subclasses that change what elements mean are refused (the rule is in opgen.runtime.arrays,
SAFE_NDARRAY_SUBCLASSES), and no array the kernels write (states, ``out``, the weight as
its own ``out``) may have elements that share memory (a zero or overlapping stride). The checks are a
public API (:meth:`Operator.check`, :meth:`Operator.check_tensors`, :meth:`Operator.check_out`,
:meth:`Operator.check_param`) that the multi-tensor path uses too; arrays are seen through
their adapters (opgen.runtime.arrays) and run on a backend (opgen.runtime.backends) through
the kernel ABI the generated module carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opgen.dtypes import DTYPE_NAMES, PARAM_KINDS, ParamType, dtype_list
from opgen.kinds import ArgRole, Schedule, TensorRole
from opgen import cbuild
from opgen.runtime import backends, cuda, fast
from opgen.runtime.arrays import (accepted_types, adapter_for, array_module, grid_axis_shapes, kind, may_overlap_itself,
                                  number, present, refused_subclass, same_view)
from opgen.runtime.backends import Work
from opgen.runtime.rounding import NEAREST, Rounding
from opgen.runtime.rowsparse import RowSparseArray
from opgen.runtime.torch_arrays import shard_refusal, sharded
from opgen.targets.abi import KernelABI

_backend = backends.current_backend_fast
_ftz = backends._flush_denormal

FLOAT_DTYPES = tuple(np.dtype(name) for name in DTYPE_NAMES)
_DTYPE_TEXT = dtype_list()
_REAL = (int, float, np.integer, np.floating)


@dataclass(frozen=True)
class TensorArg:
    name: str
    role: TensorRole
    dtype: str | None = None  # a fixed dtype (e.g. float32 master weights); None: the call's
    per_row: bool = False  # one value per row of the weight: shape (rows,) or (rows, 1) (a grid op's: (..., rows[, 1]))
    per_tensor: bool = False  # one value per call: shape (1,) or (); read and written once
    per_col: bool = False  # one value per column of a grid op's weight: (..., cols) or (..., 1, cols)

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", TensorRole(self.role))


@dataclass(frozen=True)
class ParamArg:
    name: str
    type: ParamType
    in_kernel: bool  # read by the math (passed to the kernels)
    bounds: tuple[float, float] | None = None  # inclusive range the value must lie in
    required: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", ParamType(self.type))


_ROUNDINGS = ("nearest", "stochastic")


def check_rounding(caller: str, rounding, seed) -> Rounding:
    """The ``rounding`` and ``seed`` arguments of every generated function."""
    if rounding == "nearest" and seed is None:
        return NEAREST
    if not isinstance(rounding, str) or rounding not in _ROUNDINGS:
        raise ValueError(f"{caller}(): argument 'rounding' must be 'nearest' or 'stochastic', got {rounding!r}")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_))):
        raise TypeError(f"{caller}(): argument 'seed' must be None or an int, got {type(seed).__name__}")
    if rounding == "nearest":
        return NEAREST
    if seed is None:
        raise TypeError(f"{caller}(): argument 'seed' is required with rounding='stochastic' (vary it every step)")
    if not 0 <= int(seed) < 2 ** 64:
        raise ValueError(f"{caller}(): argument 'seed' must lie in [0, 2**64), got {int(seed)}")
    return Rounding(True, int(seed))


@dataclass
class Call:
    """A checked call: what the kernels need, nothing written yet."""

    weight: object
    grad: object
    states: list
    scalars: tuple  # kernel scalars: scalar inputs, then the math's parameters
    target: object  # where the result goes (None: a new array)
    schedule: Schedule
    states_dtype: np.dtype  # the free states' dtype (the weight's where the op has none)
    rounding: Rounding = NEAREST
    inputs: tuple = ()  # the read-only arrays beside the gradient, in declaration order
    grad_scale: float = 1.0  # the gradient's factor (a multi-tensor call clipping by the global norm)


class Operator:
    """One generated op: its argument table, NumPy kernel, C and CUDA sources."""

    def __init__(self, *, name: str, spec: str, tensors: Sequence[TensorArg], params: Sequence[ParamArg],
                 lazy_param: str | None, always_lazy: bool, kernels: Sequence[KernelABI], numpy_kernel: Callable,
                 c_source: Path, c_cdef: Path, cuda_source: Path, output: bool = False, skip_if: Callable | None = None,
                 store_slots: tuple[int, ...] = (), output_dtype: str | None = None, reduces: bool = False,
                 plain_call: bool = False, fast_register: str | None = None) -> None:
        self.name = name
        self.spec = spec
        self.tensors = tuple(tensors)
        self.names = tuple(t.name for t in tensors)
        self.params = tuple(params)
        self.kernel_abis = {(k.schedule, k.dtype, k.states): k for k in kernels}
        self._kernels_by_dtype = {(k.schedule, np.dtype(k.dtype), np.dtype(k.states)): k
                                  for k in kernels}  # the per-call lookup
        # the updates' schedules (the norms kernels serve a multi-tensor call's clipping)
        self.schedules = frozenset(k.schedule for k in kernels if k.schedule is not Schedule.NORMS)
        #: False where the spec has no CUDA kernels (an op that only reduces runs on the host)
        self.runs_on_device = any(k.launch is not None for k in kernels)
        self._math_types = {(np.dtype(k.dtype), np.dtype(k.states)): np.dtype(k.math).type for k in kernels}
        # weight dtype -> the dtypes its free states may have: the variants the kernels exist for
        self.state_dtypes: dict[np.dtype, tuple[np.dtype, ...]] = {}
        for weight_dtype, states_dtype in self._math_types:
            self.state_dtypes[weight_dtype] = self.state_dtypes.get(weight_dtype, ()) + (states_dtype,)
        self.always_lazy = always_lazy
        self.output = output  # the kernels write `out` and leave the weight alone
        # the math has whole-tensor reductions: a shard of a tensor is not the tensor
        self.reduces = reduces
        # the output's fixed dtype (None: the weight's)
        self.output_dtype = np.dtype(output_dtype) if output_dtype else None
        self.skip_if = skip_if
        self.lazy_index = next((k for k, p in enumerate(params) if p.name == lazy_param), None)
        self._state_names = tuple(t.name for t in self.tensors if t.role is TensorRole.STATE)
        self._state_positions = tuple(k for k, t in enumerate(self.tensors) if t.role is TensorRole.STATE)
        # the first state the spec does not fix a dtype for: its dtype is the call's state dtype
        states = [t for t in self.tensors if t.role is TensorRole.STATE]
        self._first_free_state = next((k for k, t in enumerate(states) if t.dtype is None), None)
        self.free_state_name = None if self._first_free_state is None else states[self._first_free_state].name
        # (an op that only reduces has neither: its first input stands where the weight does)
        self.weight_index = next((k for k, t in enumerate(self.tensors) if t.role is TensorRole.WEIGHT), 0)
        self.grad_index = next((k for k, t in enumerate(self.tensors) if t.role is TensorRole.GRAD), None)
        self.kernel_params = tuple(k for k, p in enumerate(params) if p.in_kernel)
        self.fixed_dtypes = {t.name: np.dtype(t.dtype) for t in tensors if t.dtype}
        # The kernels' scalar values: scalar inputs and per-tensor states' values (floats),
        # then the math's parameters.
        self.scalar_inputs = sum(t.role is TensorRole.SCALAR or t.per_tensor for t in self.tensors)
        self.scalar_kinds = (ParamType.FLOAT,) * self.scalar_inputs + tuple(self.params[k].type
                                                                             for k in self.kernel_params)
        self.kernel_scalar_names = tuple(t.name for t in self.tensors if t.role is TensorRole.SCALAR) + \
            tuple(t.name for t in self.tensors if t.per_tensor) + tuple(self.params[k].name for k in self.kernel_params)
        #: each kernel scalar's place among them (an ABI argument's ``source`` -> its index)
        self.scalar_position = {name: k for k, name in enumerate(self.kernel_scalar_names)}
        self.numpy_kernel = numpy_kernel
        self.c_source = c_source
        self.c_cdef = c_cdef
        self.store_slots = tuple(store_slots)  # per result of the NumPy kernel: its stochastic rounding slot
        self.cuda = cuda.CudaKernels(spec, cuda_source)
        self._c_functions: dict[str, Callable] = {}
        self._layouts: dict[tuple[str, bool], tuple] = {}
        self._c_module = None
        self._c_error: Exception | None = None
        self.warned_c_unavailable = False
        # The fast paths cover plain ops (OpSpec.plain_call): every tensor of the call's
        # storage, no scalar inputs, outputs, skip conditions or ranged parameters.
        self._fast_ok = plain_call
        # the C fast path's registration function (opgen.runtime.fast), and the function once loaded
        self._fast_register = fast_register
        self.fast: Callable | None = None
        # (weight dtype, state dtype) -> the dense C kernel and each tensor's dtype, once loaded
        self._fast_functions: dict[tuple[np.dtype, np.dtype], tuple[Callable, tuple[np.dtype, ...]]] = {}
        self._fast_types = tuple(PARAM_KINDS[p.type].plain for p in self.params)
        # the kernel parameters as a slice of the call's, when they come first
        prefix = len(self.kernel_params)
        self._kernel_prefix = prefix if self.kernel_params == tuple(range(prefix)) else None
        self._from_buffer = None
        self._distinct = _DISTINCT.get(len(self.tensors), _distinct_any)
        # the position of the first free state among the call's tensors (its dtype is the call's state dtype)
        free = [k for k, t in enumerate(self.tensors) if t.role is TensorRole.STATE and t.dtype is None]
        self._free_position = free[0] if free else None

    def math_dtype(self, dtype: np.dtype, states: np.dtype | None = None) -> type:
        """The math type of a call of this weight dtype and state dtype (default: the
        weight's), as the generator derived it."""
        return self._math_types[(np.dtype(dtype), np.dtype(dtype if states is None else states))]

    def kernel(self, schedule: Schedule, dtype: np.dtype, states: np.dtype | None = None) -> KernelABI:
        return self._kernels_by_dtype[(schedule, np.dtype(dtype), np.dtype(dtype if states is None else states))]

    def states_dtype(self, weight, states: list) -> np.dtype:
        """The call's state dtype: its first free state's, else the weight's."""
        return weight.dtype if self._first_free_state is None else states[self._first_free_state].dtype

    # -- the call ---------------------------------------------------------------
    def __call__(self, tensors: tuple, params: tuple, out, rounding="nearest", seed=None):
        """The common call with a new weight in a few attribute reads, else the general path.

        (In place, the generated function runs the op's C fast path first: ``self.fast``.)
        This fast path applies to NumPy arrays that own their memory (so distinct arrays
        cannot overlap), are C-contiguous and writable, and share one dtype and shape; a
        dense gradient; ``out`` None; plain Python numbers; the C backend. Everything else,
        errors included, goes through the full checks.
        """
        weight = tensors[self.weight_index]
        if type(weight) is np.ndarray and out is None and seed is None and rounding == "nearest":
            free = self._free_position
            entry = self._fast_functions.get(
                (weight.dtype, weight.dtype if free is None else getattr(tensors[free], "dtype", None)))
            if entry is not None and _backend() != "numpy":
                function, dtypes = entry
                shape = weight.shape
                for t, dtype in zip(tensors, dtypes):
                    if type(t) is not np.ndarray or t.dtype is not dtype or t.shape != shape:
                        break
                    flags = t.flags
                    if not (flags.owndata and flags.c_contiguous and flags.writeable):
                        break
                else:
                    for value, allowed in zip(params, self._fast_types):
                        if type(value) not in allowed:
                            break
                    else:
                        if self._distinct(tensors):
                            kernel_params = params[:self._kernel_prefix] if self._kernel_prefix is not None \
                                else [params[k] for k in self.kernel_params]
                            # cffi converts every argument before the call: a number too large
                            # for its C type raises here, with nothing written, and the checks
                            # below name it
                            try:
                                target = weight.copy()
                                function(weight.size, *[self._from_buffer(target if t is weight else t)
                                                        for t in tensors], *kernel_params, 1.0, 0, 0, _ftz[0])
                                return target
                            except OverflowError:
                                pass
        return self._checked_call(tensors, params, out, rounding=check_rounding(self.name, rounding, seed))

    def _checked_call(self, tensors: tuple, params: tuple, out, names: tuple[str, ...] | None = None,
                      out_name: str = "out", rounding: Rounding = NEAREST, grad_scale: float = 1.0):
        """The general path: arrays of other types as native views, every check, the run
        (``grad_scale``: the gradient's factor, an optimizer's clipping by a global norm)."""
        labels = (*(names or self.names), out_name)
        if self.reduces:
            self.check_whole(tensors, labels)
        views, presented = present((*tensors, out), lambda k, exc, message: self._fail(exc, labels[k], message))
        call = self.check(views[:-1], params, views[-1], names, out_name, rounding)
        call.grad_scale = grad_scale
        if presented is None:
            return self.execute(call)
        with presented.context():
            result = self.execute(call)
        presented.written(self._state_positions + ((len(tensors),) if out is not None else ()))
        return presented.result(result)

    def prepare(self, call: Call):
        """A checked call made ready to repeat on the same arrays with new gradients, scalars
        and rounding (an optimizer's per-tensor step on the C backend): a function of (grad,
        kernel scalars, grad_scale, rounding), or None where the call is not in place on
        C-contiguous host arrays, or has scalar inputs, per-tensor values, an output, a skip
        condition or a row-sparse gradient (those take the checked call every time)."""
        weight = call.weight
        if call.target is not weight or self.output or self.skip_if is not None or call.inputs \
                or isinstance(call.grad, RowSparseArray) or len(call.scalars) != len(self.kernel_params):
            return None
        arrays = (weight, *call.states)
        if not all(type(a) is np.ndarray and a.flags.c_contiguous for a in arrays):
            return None
        if backends.backend_for(self, adapter_for(weight)) is not backends.C:
            return None
        return backends.C.prepare(self, Work(call.schedule, weight.dtype, call.states_dtype, weight, weight,
                                             call.grad, list(call.states), call.scalars, call.rounding))

    def check_whole(self, tensors, labels) -> None:
        """An op whose math reduces whole tensors refuses a shard of one (an FSDP2 parameter):
        its norms would be this rank's shard's, silently."""
        for value, label in zip(tensors, labels):
            placement = sharded(value)
            if placement is not None:
                raise self._fail(TypeError, label, shard_refusal(self.name, placement))

    def check(self, tensors: tuple, params: tuple, out, names: tuple[str, ...] | None = None,
              out_name: str = "out", rounding: Rounding = NEAREST) -> Call:
        """Every check of a call; raises before anything is written."""
        values = tuple(self.check_param(p, v) for p, v in zip(self.params, params))
        weight, grad, states, scalars, inputs = self.check_tensors(tensors, names)
        target = self.check_out(out, weight, grad, states, names, out_name, inputs)
        if isinstance(grad, RowSparseArray):
            lazy = self.always_lazy or (self.lazy_index is not None and values[self.lazy_index])
            schedule = Schedule.LAZY if lazy else Schedule.STANDARD
        else:
            schedule = Schedule.GRID if Schedule.GRID in self.schedules else Schedule.DENSE
        return Call(weight, grad, states, tuple(scalars) + tuple(values[k] for k in self.kernel_params),
                    target, schedule, self.states_dtype(weight, states), rounding, inputs)

    def execute(self, call: Call):
        """Run a checked call: from here on, arrays are written (on the arrays' device)."""
        adapter = adapter_for(call.weight)
        if not adapter.device:
            return self._execute(call)
        with adapter.on_device(call.weight):
            return self._execute(call)

    def _execute(self, call: Call):
        weight, target = call.weight, call.target
        xp = array_module(weight)
        if self.skip_if is not None and self._skipped(weight.dtype, call.states_dtype, call.scalars):
            return weight.copy(order="C") if target is None else target
        if target is None:
            target = xp.empty_like(weight, order="C", dtype=self.output_dtype) if self.output \
                else weight.copy(order="C")
        elif target is not weight and not self.output:
            xp.copyto(target, weight)
        # An output op reads the weight while it writes `out`: never through the same buffer.
        result = xp.empty_like(weight, order="C", dtype=self.output_dtype) if self.output and target is weight \
            else target
        work = [_contiguous(xp, result)] + [_contiguous(xp, s) for s in call.states]
        source = _contiguous(xp, weight) if self.output else work[0]
        backend = backends.backend_for(self, adapter_for(weight))
        inputs = [_contiguous(xp, a) for a in call.inputs]  # read only: nothing to copy back
        backend.run(self, Work(call.schedule, weight.dtype, call.states_dtype, work[0], source, call.grad, work[1:],
                               call.scalars, call.rounding, inputs, call.grad_scale))
        if backend is backends.C:
            self._enable_fast_path(call.schedule, weight.dtype, call.states_dtype)
        for original, used in zip([result, *call.states], work):
            if used is not original:
                original[...] = used
        if result is not target:
            target[...] = result
        return target

    def _skipped(self, dtype: np.dtype, states: np.dtype, scalars: tuple) -> bool:
        acc = self.math_dtype(dtype, states)
        with np.errstate(all="ignore"):
            return bool(self.skip_if(acc, *self._typed(scalars, acc)))

    def _typed(self, scalars: tuple, acc) -> tuple:
        """Kernel scalars in the math's type: scalar inputs and float parameters as acc."""
        return tuple(acc(v) if kind is ParamType.FLOAT else v for kind, v in zip(self.scalar_kinds, scalars))

    def typed_for_numpy(self, scalars: tuple) -> tuple:
        """Kernel scalars as the NumPy kernel takes them: floats in double (its prologue
        computes the per-call values in double and rounds them, as the C kernels do)."""
        return tuple(np.float64(v) if kind is ParamType.FLOAT else v for kind, v in zip(self.scalar_kinds, scalars))

    # -- checks -----------------------------------------------------------------
    def _fail(self, exc: type[Exception], name: str, message: str) -> Exception:
        return exc(f"{self.name}(): argument '{name}' {message}")

    def check_param(self, p: ParamArg, value):
        """One parameter's value, converted (float, int or bool); raises naming it. A
        one-element array (a 0-d NumPy array, a torch tensor) counts as its number."""
        if not isinstance(value, _REAL):
            as_number = number(value)
            value = value if as_number is None else as_number
        if p.type is ParamType.FLOAT:
            if not isinstance(value, _REAL) or isinstance(value, (bool, np.bool_)):
                raise self._fail(TypeError, p.name, f"must be a real number, got {type(value).__name__}")
            try:
                value = float(value)
            except OverflowError:
                raise self._fail(ValueError, p.name, "is too large for a float") from None
        elif p.type is ParamType.INT:
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise self._fail(TypeError, p.name, f"must be an integer, got {type(value).__name__}")
            value = int(value)
            if not -(2 ** 63) <= value < 2 ** 63:
                raise self._fail(ValueError, p.name, f"is {value}, outside the 64-bit integer range")
        elif isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
            value = bool(value)
        else:
            raise self._fail(TypeError, p.name, f"must be a bool, got {value!r}")
        if p.bounds is not None and not (p.bounds[0] <= value <= p.bounds[1]):
            low, high = (f"{b:g}" for b in p.bounds)
            raise self._fail(ValueError, p.name, f"is {value}, outside its range [{low}, {high}]")
        return value

    def check_tensors(self, tensors: tuple, names: tuple[str, ...] | None = None):
        """Every tensor of a call: (weight, grad, states, scalar values, read-only inputs);
        ``names``: how errors call each tensor (default: the spec's names)."""
        names = names or self.names
        weight = tensors[self.weight_index]
        w_name = names[self.weight_index]
        self._check_array(w_name, weight)
        if not self.runs_on_device and adapter_for(weight).device:
            raise self._fail(TypeError, w_name, f"is a {kind(weight)} array, but {self.name} has no CUDA kernels "
                                                "(it runs on the host); pass host arrays")
        xp = array_module(weight)
        grid = Schedule.GRID in self.schedules
        if grid and weight.ndim < 2:
            raise self._fail(ValueError, w_name, f"has shape {weight.shape}; {self.name} keeps one value per row "
                                                 "and per column of its weight, which must be (rows, cols), or "
                                                 "(..., rows, cols): slices of rows x cols")
        if grid and weight.ndim > 2 and adapter_for(weight).device:
            raise self._fail(ValueError, w_name, f"has shape {weight.shape}; {self.name}'s CUDA kernels take "
                                                 "2-D weights (rows, cols): slices (..., rows, cols) run on the host")
        states, state_names, scalars, inputs, input_names = [], [], [], [], []
        per_tensor_values = []  # after the scalar inputs, as the kernels take them
        free = None  # (name, dtype) of the first free state: the others must share its dtype
        for spec, name, value in zip(self.tensors, names, tensors):
            if spec.role is TensorRole.WEIGHT:
                continue
            if spec.role is TensorRole.SCALAR:
                scalars.append(self._check_scalar(name, value, weight, w_name))
                continue
            if spec.role is TensorRole.GRAD and isinstance(value, RowSparseArray):
                self._check_row_sparse(name, value, weight, w_name)
                continue
            if spec.role is TensorRole.GRAD and not self.schedules & {Schedule.DENSE, Schedule.GRID}:
                raise self._fail(TypeError, name, "must be a RowSparseArray: this op has no dense update")
            self._check_array(name, value, row_sparse_ok=spec.role is TensorRole.GRAD)
            self._check_same_side(name, value, weight, w_name)
            self._check_dtype(spec, name, value, weight, w_name, free)
            if spec.name == self.free_state_name:
                free = (name, value.dtype)
            if spec.per_tensor:
                if value.shape not in ((1,), ()):
                    raise self._fail(ValueError, name, f"has shape {value.shape}; it holds one value per tensor: "
                                                       "shape (1,) or ()")
                # its value before the call, for the NumPy kernel (the C and CUDA kernels load it
                # themselves: a device array is not read back, which would wait for the device)
                per_tensor_values.append(0.0 if adapter_for(value).device else float(value.reshape(-1)[0]))
            elif spec.per_row:
                kept = grid_axis_shapes(weight.shape)[0] if grid else (weight.shape[0] if weight.ndim else 1, 1)
                shapes = (kept[:-1], kept)
                if value.shape not in shapes:
                    raise self._fail(ValueError, name, f"has shape {value.shape}; it holds one value per row of "
                                                       f"'{w_name}': shape {shapes[0]} or {shapes[1]}")
            elif spec.per_col:
                kept = grid_axis_shapes(weight.shape)[1]
                shapes = ((*kept[:-2], kept[-1]), kept)
                if value.shape not in shapes:
                    raise self._fail(ValueError, name, f"has shape {value.shape}; it holds one value per column of "
                                                       f"'{w_name}': shape {shapes[0]} or {shapes[1]}")
            elif value.shape != weight.shape:
                raise self._fail(ValueError, name, f"has shape {value.shape} but '{w_name}' has "
                                                   f"shape {weight.shape}; shapes must match")
            if spec.role is TensorRole.STATE:
                if not (value.flags.writeable if type(value) is np.ndarray else adapter_for(value).writeable(value)):
                    raise self._fail(ValueError, name, "is read-only; states are updated in place")
                self._check_no_self_overlap(name, value, "states are updated in place")
                states.append(value)
                state_names.append(name)
            elif spec.role is TensorRole.INPUT:
                inputs.append(value)
                input_names.append(name)
        grad = tensors[self.grad_index]
        g_name = names[self.grad_index]
        grad_memory = grad.data if isinstance(grad, RowSparseArray) else grad
        for k, (name, s) in enumerate(zip(state_names, states)):
            for other_name, other in [(g_name, grad_memory), (w_name, weight)] + list(zip(state_names[:k], states[:k])):
                if xp.may_share_memory(s, other):
                    raise self._fail(ValueError, name, f"shares memory with '{other_name}'")
        # an input is read while the weight (unless the op has an output) and the states are written
        written = ([] if self.output else [(w_name, weight)]) + list(zip(state_names, states))
        for name, a in zip(input_names, inputs):
            for other_name, other in written:
                if xp.may_share_memory(a, other):
                    raise self._fail(ValueError, name, f"shares memory with '{other_name}', which the call writes")
        return weight, grad, states, scalars + per_tensor_values, tuple(inputs)

    def _check_dtype(self, spec: TensorArg, name: str, value, weight, w_name: str,
                     free: tuple[str, np.dtype] | None = None) -> None:
        """A tensor's dtype: its fixed one; a free state's, one the weight's dtype allows and
        the same as the first free state's (``free``); anything else, the weight's."""
        fixed = self.fixed_dtypes.get(spec.name)
        if fixed is not None:
            if value.dtype != fixed:
                raise self._fail(TypeError, name, f"has dtype {value.dtype}; it must be {fixed}")
        elif spec.role is TensorRole.STATE:
            if free is not None:
                if value.dtype != free[1]:
                    raise self._fail(TypeError, name, f"has dtype {value.dtype} but '{free[0]}' has {free[1]}; "
                                                      "the states of a call share one dtype")
            elif value.dtype not in self.state_dtypes[weight.dtype]:
                accepted = dtype_list(tuple(d.name for d in self.state_dtypes[weight.dtype]))
                raise self._fail(TypeError, name, f"has dtype {value.dtype}, but beside a {weight.dtype} '{w_name}' "
                                                  f"the states must be {accepted} ({self.name} takes "
                                                  f"{self.variants_text()})")
        elif value.dtype != weight.dtype:
            what = "the gradient" if spec.role is TensorRole.GRAD else "it"
            raise self._fail(TypeError, name, f"has dtype {value.dtype} but '{w_name}' has "
                                              f"{weight.dtype}; {what} must have the weight's dtype")

    def variants_text(self) -> str:
        """The weight and state dtypes the op takes, as messages name them."""
        return "; ".join(f"{w} weights with {dtype_list(tuple(s.name for s in states))} states"
                         for w, states in self.state_dtypes.items())

    def _check_scalar(self, name: str, value, weight, w_name: str) -> float:
        """A one-element input: a real number, or an array holding exactly one float."""
        if isinstance(value, _REAL) and not isinstance(value, (bool, np.bool_)):
            return float(value)
        refused = refused_subclass(value)
        if refused is not None:
            raise self._fail(TypeError, name, refused)
        if adapter_for(value) is None or not hasattr(value, "dtype") or not hasattr(value, "size"):
            raise self._fail(TypeError, name, f"must be a number or a one-element array, got {type(value).__name__}")
        self._check_same_side(name, value, weight, w_name)
        if value.dtype not in FLOAT_DTYPES:
            raise self._fail(TypeError, name, f"has dtype {value.dtype}; expected {_DTYPE_TEXT}")
        if value.size != 1:
            raise self._fail(ValueError, name, f"must hold exactly one element, got shape {value.shape}")
        return float(value.reshape(-1)[0])  # a device array is read back here, once per call

    def _check_same_side(self, name: str, value, weight, w_name: str) -> None:
        """Host and device arrays never mix in a call; device arrays share one device."""
        if type(value) is np.ndarray and type(weight) is np.ndarray:  # the usual call: both host
            return
        adapter, other = adapter_for(weight), adapter_for(value)
        if (other is not None and other.device) != adapter.device:
            raise self._fail(TypeError, name, f"is a {kind(value)} array but '{w_name}' is a {kind(weight)} "
                                              "array: host (NumPy) and device (CuPy) arrays cannot be mixed")
        if adapter.device and other.device_id(value) != adapter.device_id(weight):
            raise self._fail(ValueError, name, f"is on device {other.device_id(value)} but "
                                               f"'{w_name}' is on device {adapter.device_id(weight)}")

    def _check_array(self, name: str, value, row_sparse_ok: bool = False) -> None:
        if adapter_for(value) is None:
            refused = refused_subclass(value)
            if refused is not None:
                raise self._fail(TypeError, name, refused)
            kinds = accepted_types("RowSparseArray") if row_sparse_ok else accepted_types()
            raise self._fail(TypeError, name, f"must be a {kinds}, got {type(value).__name__}")
        if value.dtype not in FLOAT_DTYPES:
            raise self._fail(TypeError, name, f"has dtype {value.dtype}; expected {_DTYPE_TEXT}")

    def _check_no_self_overlap(self, name: str, value, why: str) -> None:
        """An array the kernels write: no two of its elements may share memory."""
        if may_overlap_itself(value):
            raise self._fail(ValueError, name, f"overlaps itself (shape {value.shape}, strides {value.strides}): "
                                               f"some of its elements share memory, and {why}; pass a copy")

    def _check_row_sparse(self, name: str, grad: RowSparseArray, weight, w_name: str) -> None:
        if Schedule.LAZY not in self.schedules and Schedule.STANDARD not in self.schedules:
            raise self._fail(TypeError, name, "must be dense: this op has no row-sparse update")
        self._check_same_side(name, grad.data, weight, w_name)
        spec = self.tensors[self.grad_index]
        self._check_dtype(spec, name, grad.data, weight, w_name)
        if grad.shape != weight.shape:
            raise self._fail(ValueError, name, f"has shape {grad.shape} but '{w_name}' has shape {weight.shape}; "
                                               "shapes must match")
        expected = (len(grad.indices),) + tuple(grad.shape[1:])
        if grad.data.shape != expected:  # the data array was reshaped since the RowSparseArray was made
            raise self._fail(ValueError, name, f"data has shape {grad.data.shape}; expected {expected}")

    def check_out(self, out, weight, grad, states: list, names: tuple[str, ...] | None = None,
                  out_name: str = "out", inputs: tuple = ()):
        """Where the result goes: None (a new array), the weight itself, or another array."""
        names = names or self.names
        w_name = names[self.weight_index]
        if out is None:
            return None
        adapter = adapter_for(weight)
        if adapter_for(out) is not adapter:
            refused = refused_subclass(out)
            if refused is not None:
                raise self._fail(TypeError, out_name, refused)
            raise self._fail(TypeError, out_name, f"must be None or a {kind(weight)} array like '{w_name}', "
                                                  f"got {type(out).__name__}")
        xp = array_module(weight)
        if self.output_dtype is not None:
            if out.dtype != self.output_dtype:
                raise self._fail(TypeError, out_name, f"has dtype {out.dtype}; it must be {self.output_dtype}")
        elif out.dtype != weight.dtype:
            raise self._fail(TypeError, out_name, f"has dtype {out.dtype} but '{w_name}' has {weight.dtype}")
        if out.shape != weight.shape:
            raise self._fail(ValueError, out_name, f"has shape {out.shape} but '{w_name}' has shape {weight.shape}")
        if adapter.device and adapter.device_id(out) != adapter.device_id(weight):
            raise self._fail(ValueError, out_name, f"is on device {adapter.device_id(out)} but '{w_name}' is on "
                                                   f"device {adapter.device_id(weight)}")
        if not adapter.writeable(out):
            name = w_name if same_view(out, weight) else out_name
            raise self._fail(ValueError, name, "is read-only; the result is written into out")
        self._check_no_self_overlap(w_name if same_view(out, weight) else out_name, out,
                                    "the result is written into out")
        grad_memory = grad.data if isinstance(grad, RowSparseArray) else grad
        g_name = names[self.grad_index]
        state_names = self._state_names if names is self.names else \
            [n for t, n in zip(self.tensors, names) if t.role is TensorRole.STATE]
        input_names = [n for t, n in zip(self.tensors, names) if t.role is TensorRole.INPUT]
        for other_name, other in [(g_name, grad_memory)] + list(zip(state_names, states)) + list(zip(input_names, inputs)):
            if xp.may_share_memory(out, other):
                raise self._fail(ValueError, out_name, f"shares memory with '{other_name}'")
        if same_view(out, weight):
            return weight
        if xp.may_share_memory(out, weight):
            raise self._fail(ValueError, out_name, f"overlaps '{w_name}' without being the same array")
        return out

    # -- execution --------------------------------------------------------------
    def c_module(self):
        """The compiled C module (compiled, or found in the cache, once); raises
        CompilerUnavailable or CompileError, every time, once that failed."""
        if self._c_module is None:
            try:
                self._c_module = cbuild.load(self.name, self.c_source, self.c_cdef)
            except (cbuild.CompilerUnavailable, cbuild.CompileError) as exc:
                self._c_module, self._c_error = False, exc
            else:
                if self._fast_register is not None:
                    self.fast = fast.take(self._c_module.lib, self._fast_register)
        if self._c_module is False:
            raise self._c_error.with_traceback(None)  # the same error again, not a longer traceback
        return self._c_module

    def c_layout(self, kernel: KernelABI, cuda: bool = False) -> tuple:
        """(size roles, tensor names, positions of the kernel scalars among the call's, their
        NumPy types), read once per kernel from its ABI (``cuda``: its CUDA arguments), whose
        arguments come in that grouping (then the rounding and its seed, and, in C, the flag)."""
        layout = self._layouts.get((kernel.name, cuda))
        if layout is None:
            args = kernel.cuda_args if cuda else kernel.args
            if cuda and args and args[-1].role is ArgRole.PARTIALS:
                args = args[:-1]  # the reduction passes' workspace, which CudaBackend.run appends last
            groups = [ArgRole.TENSOR, ArgRole.SCALAR, ArgRole.GRAD_SCALE, ArgRole.ROUNDING, ArgRole.SEED, ArgRole.FLUSH]
            rank = [groups.index(a.role) + 1 if a.role in groups else 0 for a in args]
            if rank != sorted(rank) or (args[-1].role is not ArgRole.FLUSH) != cuda:
                raise RuntimeError(f"{kernel.name}: arguments not grouped as sizes, tensors, scalars, gradient factor, "
                                   "rounding, seed, flag")
            position = self.scalar_position
            scalars = [a for a in args if a.role is ArgRole.SCALAR]
            layout = self._layouts[(kernel.name, cuda)] = (
                tuple(a.role for a, r in zip(args, rank) if r == 0),
                tuple(a.source for a in args if a.role is ArgRole.TENSOR),
                tuple(position[a.source] for a in scalars), tuple(np.dtype(a.numpy).type for a in scalars))
        return layout

    def c_function(self, module, kernel: KernelABI):
        function = self._c_functions.get(kernel.name)
        if function is None:
            function = self._c_functions[kernel.name] = getattr(module.lib, kernel.name)
        return function

    def _enable_fast_path(self, schedule: Schedule, dtype: np.dtype, states: np.dtype) -> None:
        """Once a dense C kernel is loaded: the plain-call path, when its ABI is the plain
        layout (size, the tensors in order, the kernel parameters, the flag). Every state of
        such an op is free: the states have the call's state dtype, the rest the weight's."""
        if schedule is not Schedule.DENSE or not self._fast_ok or (dtype, states) in self._fast_functions:
            return
        kernel = self.kernel(schedule, dtype, states)
        plain = ((ArgRole.SIZE,), self.names, tuple(range(len(self.kernel_scalar_names))))
        if self.c_layout(kernel)[:3] == plain:  # the call passes its arguments in the kernel's order
            module = self.c_module()
            self._from_buffer = module.ffi.from_buffer
            dtypes = tuple(np.dtype(states if t.role is TensorRole.STATE else dtype) for t in self.tensors)
            self._fast_functions[(dtype, states)] = (self.c_function(module, kernel), dtypes)

    def numpy_inputs(self, weight, states, grad, scalar_inputs, acc, inputs=()) -> list:
        """The NumPy kernel's tensor arguments in declaration order, in the math dtype; a
        per-tensor state as its value (in double, as the kernels' per-call code reads it)."""
        count = sum(t.role is TensorRole.SCALAR for t in self.tensors)
        by_role = {TensorRole.STATE: iter(states), TensorRole.SCALAR: iter(scalar_inputs[:count]),
                   TensorRole.INPUT: iter(inputs)}
        per_tensor = iter(scalar_inputs[count:])
        ordered = []
        for t in self.tensors:
            if t.per_tensor:
                next(by_role[TensorRole.STATE])  # its array receives the new value (NumpyBackend)
                ordered.append(next(per_tensor))
            elif t.role is TensorRole.SCALAR:
                ordered.append(next(by_role[t.role]))
            else:
                array = weight if t.role is TensorRole.WEIGHT else grad if t.role is TensorRole.GRAD \
                    else next(by_role[t.role])
                ordered.append(array.astype(acc, copy=False))
        return ordered


# Whether the call's arrays are distinct objects: spelled out for the usual counts, as the
# fast path runs per call (a set of ids costs 3-4 times as much).
def _distinct_any(t) -> bool:
    return len(set(map(id, t))) == len(t)


_DISTINCT = {
    2: lambda t: t[0] is not t[1],
    3: lambda t: t[0] is not t[1] and t[0] is not t[2] and t[1] is not t[2],
    4: lambda t: (t[0] is not t[1] and t[0] is not t[2] and t[0] is not t[3] and t[1] is not t[2]
                  and t[1] is not t[3] and t[2] is not t[3]),
}


def _contiguous(xp, array):
    return array if array.flags.c_contiguous else xp.ascontiguousarray(array)


