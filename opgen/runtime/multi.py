"""Many tensors in one call: ``OP_multi(weights, grads, <states>..., <params>..., out=None)``.

The C kernel updates every tensor in one parallel region. Each parameter is one value
for all tensors or a sequence with a value per tensor (e.g. per-layer ``lr``/``wd``).
Every list is checked in full on its first use; a later call with the very same array
objects, in place (the usual optimizer loop), reuses those checks and the kernel's pointer
tables; new gradients (a backward pass allocates them) are checked alone against the plan
(their dtype, shape and contiguity, and no byte shared with an array the kernel writes). What can change in such an array between calls is checked again on every call, in
one C loop over a fingerprint of every array (opgen.runtime.fast.fingerprint): that it is
the same object, with the same shape, strides, dtype, flags and data pointer; a change sends
the call through the full checks, which refuse it as they would on a first call, or make a
new plan. Its memory cannot change: the cache holds a reference to
every array (it cannot be freed) and a weak reference to the array that owns its memory,
which makes NumPy refuse to ``resize`` that one, even with ``refcheck=False``, while it is
cached.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from opgen.dtypes import PARAM_KINDS, ParamType
from opgen.kinds import ArgRole, Schedule, TensorRole
from opgen import cbuild
from opgen.runtime import backends, fast
from opgen.runtime.arrays import adapter_for, number, present, refused_subclass, same_view
from opgen.runtime.operator import Operator, check_rounding
from opgen.runtime.rounding import NEAREST, Rounding
from opgen.runtime.rowsparse import RowSparseArray
from opgen.runtime.torch_arrays import shard_refusal, sharded

# per-tensor parameter lists, packed as the multi kernel's tables take them

MAX_PLANS = 16  # cached plans per multi-tensor function (see MultiOperator._plans)

# A parameter value passed as it is, without the checks (which would return it unchanged)
_PLAIN = {ParamType.FLOAT: float, ParamType.BOOL: bool}

# Whether a cached plan re-checks its arrays' state on every call (_Plan.unchanged, which
# also checks their identity); off, only their identity is checked, in Python. Private: the
# benchmarks turn it off to measure what the re-check costs; nothing else should.
_RECHECK_PLAN = [True]


def _plan_key(fixed: tuple, count: int) -> tuple:
    """Where a plan is cached: the count and each list's first and last array (a plan holds
    its arrays, so their ids stay theirs). Lists that share those but differ in between
    (rare) share the place, and the newer plan replaces the older; the fingerprint, which
    covers every array, decides whether a call may take the plan."""
    return (count, *(id(lst[0]) for lst in fixed), *(id(lst[-1]) for lst in fixed))


# The norms kernels' arguments, as grad_sums_of_squares passes them
_NORMS_LAYOUT = [ArgRole.COUNT, ArgRole.SIZES, ArgRole.TENSOR_TABLE, ArgRole.SUMS, ArgRole.FLUSH]



@dataclass(frozen=True)
class _Naming:
    """How errors name things: the function, and tensors as lists[i] or as data[k]."""

    caller: str
    flat: bool  # MXNet's convention: tensors are data[k] of one flat list
    labels: tuple[tuple[str, str], ...] = ()  # parameter -> public per-tensor list name

    def label(self, param: str) -> str:
        return dict(self.labels).get(param, param)


@dataclass
class _Plan:
    arrays: tuple  # every array of the call but the gradients, then out: held, so their ids stay theirs
    function: object
    columns: tuple  # per value table, in the ABI's order: (position among the columns, dtype, cdata type)
    sizes: object  # cdata int64_t[]
    tables: tuple  # cdata void *[] per tensor
    keep_alive: tuple  # the from_buffer objects the tables point into
    targets: list
    from_buffer: object
    # what the checks saw, compared on every cached call (set by _Plan.remember)
    seen: bytes = b""  # the fingerprint of the call's lists but the gradients', then out
    locks: tuple = ()  # weak references to the arrays that own the memory: no resize while cached
    # New gradients each step (a backward pass allocates them): the plan is keyed by the other
    # arrays, and a new gradient list is checked against it alone (_Plan.take_grads)
    grads: list | None = None  # the gradients in the table now
    grad_table: int = -1  # which of ``tables`` holds their pointers
    weights: tuple = ()  # each tensor's weight: a gradient must have its dtype and shape
    written: tuple = ((), ())  # (starts, ends) of the written arrays' bytes, sorted: no gradient may overlap
    ffi: object = None
    grad_locks: tuple = ()  # as locks, for the gradients in the table
    grad_seen: bytes | None = None  # their fingerprint when checked
    grad_pointers: list | None = None  # or, for gradients of another type, their data pointers in the table
    grad_bytes: object = None  # each gradient's bytes (its weight's), an int64 array, once needed
    written_arrays: tuple = ()  # ``written`` as two int64 arrays, with grad_bytes
    # per value table: (the one value for all tensors it was filled with, the table), reused
    # while a call passes the same value (betas, eps: most parameters stay put between steps)
    last_values: dict = dataclasses.field(default_factory=dict)

    def remember(self, lists: tuple) -> bool:
        """Note what the full checks saw of ``lists`` (every list but the gradients', then
        out), and lock the memory in place; False where it cannot be fingerprinted (then the
        plan is not kept)."""
        self.seen = fast.fingerprint(*lists) if fast.fingerprint is not None else None
        self.locks = _locks(tuple(itertools.chain(*lists)))
        return self.seen is not None

    def unchanged(self, lists: tuple) -> bool:
        """Whether the call's ``lists`` (as ``remember`` took them) hold the very arrays the
        checks saw, none changed since: not made read-only or non-contiguous, no shape, strides,
        dtype or data pointer changed in place (a.flags.writeable = False, a.strides = ...,
        a.shape = ..., a.dtype = ..., a.resize to the same size). One C loop, about 5 ns an
        array (opgen.runtime.fast.fingerprint)."""
        return fast.fingerprint(*lists) == self.seen

    def take_grads(self, grads: list) -> bool:
        """Put a new list of gradients into the plan, if each is what the full checks would
        accept beside these arrays: a C-contiguous NumPy array of its weight's dtype and
        shape, sharing no byte with an array the kernel writes. False: the full checks decide."""
        if grads and type(grads[0]) is not np.ndarray:
            return self._take_foreign_grads(grads)
        if self.grads is not None and len(grads) == len(self.grads):
            seen = fast.fingerprint(grads)
            if seen is not None and seen == self.grad_seen:
                return True  # the same gradients, unchanged in place (identity included)
        starts, ends = self.written
        buffers = []
        from_buffer = self.from_buffer
        for g, w in zip(grads, self.weights):
            if type(g) is not np.ndarray or g.shape != w.shape or g.dtype != w.dtype or not g.flags.c_contiguous:
                return False
            buffer = from_buffer(g)
            if g.nbytes:
                low = int(self.ffi.cast("uintptr_t", buffer))
                k = bisect.bisect_right(starts, low) - 1  # the written span starting at or below low
                if (k >= 0 and ends[k] > low) or (k + 1 < len(starts) and starts[k + 1] < low + g.nbytes):
                    return False
            buffers.append(buffer)
        tables = list(self.tables)
        tables[self.grad_table] = self.ffi.new("void *[]", buffers)
        keep = list(self.keep_alive)
        keep[self.grad_table] = buffers
        self.tables, self.keep_alive, self.grads = tuple(tables), tuple(keep), list(grads)
        self.grad_locks = _locks(grads)  # their memory cannot be resized while the table points into it
        self.grad_seen = fast.fingerprint(grads)
        self.grad_pointers = None
        return self.grad_seen is not None

    def _take_foreign_grads(self, grads: list) -> bool:
        """New gradients of another array type (torch CPU tensors: a training step's new
        ``p.grad``), put in by their data pointers where their adapter vouches for each (see
        ArrayAdapter.host_pointers: its weight's dtype and shape, C-contiguous host memory)
        and none shares a byte with an array the kernel writes. The plan holds their pointers
        only, not the gradients: each call vouches for its own."""
        if len(grads) != len(self.weights):
            return False
        adapter = adapter_for(grads[0])
        pointers = None if adapter is None else adapter.host_pointers(grads, self.weights)
        if pointers is None:
            return False
        if pointers != self.grad_pointers:
            lows = np.array(pointers, np.int64)
            if self.grad_bytes is None:
                self.grad_bytes = np.array([w.nbytes for w in self.weights], np.int64)
                self.written_arrays = tuple(np.array(side, np.int64) for side in self.written)
            starts, ends = self.written_arrays
            if len(starts):
                k = np.searchsorted(starts, lows, side="right") - 1  # the written span starting at or below
                below = np.where(k >= 0, ends[np.maximum(k, 0)] > lows, False)
                above = np.where(k + 1 < len(starts), starts[np.minimum(k + 1, len(starts) - 1)] < lows + self.grad_bytes,
                                 False)
                if ((below | above) & (self.grad_bytes > 0)).any():
                    return False
            table = self.ffi.new("uintptr_t[]", pointers)
            tables, keep = list(self.tables), list(self.keep_alive)
            tables[self.grad_table], keep[self.grad_table] = self.ffi.cast("void **", table), table
            self.tables, self.keep_alive = tuple(tables), tuple(keep)
            self.grad_pointers = pointers
        self.grads, self.grad_locks, self.grad_seen = None, (), None
        return True


class MultiOperator:
    def __init__(self, op: Operator, group_names: Sequence[str]) -> None:
        self.op = op
        self.name = f"{op.name}_multi"
        self.group_names = tuple(group_names)
        self.kernel_params = tuple(op.params[k] for k in op.kernel_params)
        self._kernel_param_names = tuple(p.name for p in self.kernel_params)
        # the plans of the lists called in place (an optimizer's param groups each call with
        # their own lists), by _plan_key: the most recent MAX_PLANS
        self._plans: dict[tuple, _Plan] = {}
        self._naming = _Naming(self.name, flat=False)

    def interleaved(self, data: tuple, params: tuple, count, count_name: str, out,
                    labels: Sequence[tuple[str, str]] = (), rounding="nearest", seed=None, trailing: tuple = (),
                    max_grad_norm=None):
        """MXNet's convention: ``data`` is (weight, grad, states...) for tensor 0, then tensor
        1, ..., then one array per ``trailing`` parameter ((position in ``params``, its name,
        whether it holds one value per tensor)); ``count`` says how many tensors; ``labels``
        gives per-tensor lists' names."""
        if len(data) == 1 and isinstance(data[0], (list, tuple)):
            data = tuple(data[0])
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
            raise TypeError(f"{self.op.name}(): argument '{count_name}' must be a non-negative integer, "
                            f"got {count!r}")
        size = len(self.group_names)
        if len(data) != count * size + len(trailing):
            parts = ", ".join(t.name for t in self.op.tensors)
            after = "".join(f", then {row[1]}" for row in trailing)
            raise ValueError(f"{self.op.name}(): argument 'data' holds {len(data)} arrays but {count_name}={count} "
                             f"needs {count * size + len(trailing)} ({parts} for each tensor{after})")
        if trailing:
            params = list(params)
            first = len(data) - len(trailing)
            for j, ((position, name, per_tensor, _), value) in enumerate(zip(trailing, data[first:])):
                params[position] = self._trailing_value(name, value, per_tensor, count, first + j)
            data, params = data[:len(data) - len(trailing)], tuple(params)
        groups = tuple(list(data[k::size]) for k in range(size))
        return self._call(groups, params, out, _Naming(self.op.name, flat=True, labels=tuple(labels)),
                          check_rounding(self.op.name, rounding, seed), check_clip(self.op.name, max_grad_norm))

    def _trailing_value(self, name: str, value, per_tensor: bool, count: int, index: int):
        """A parameter given as an array after the groups: one value per tensor (shape
        (count,)), or one value (one element)."""
        label = f"data[{index}] ({name})"
        refused = refused_subclass(value)
        if refused is not None:
            raise TypeError(f"{self.op.name}(): argument '{label}' {refused}")
        if not isinstance(value, np.ndarray):
            as_number = number(value)  # a torch tensor, a CuPy array: their values, read back
            if as_number is not None and not per_tensor:
                return as_number
            try:
                if hasattr(value, "detach"):  # a torch tensor (bfloat16 too, or one that requires grad)
                    value = value.detach().cpu()
                    value = (value.double() if value.is_floating_point() else value).numpy()
                value = np.asarray(value.get() if hasattr(value, "get") else value)
            except Exception:
                raise TypeError(f"{self.op.name}(): argument '{label}' must be an array, got "
                                f"{type(value).__name__}") from None
        if per_tensor:
            if value.shape != (count,):
                raise ValueError(f"{self.op.name}(): argument '{label}' has shape {value.shape}; it holds one value "
                                 f"per tensor: shape ({count},)")
            if value.dtype.kind not in "fiu":
                raise TypeError(f"{self.op.name}(): argument '{label}' must hold numbers, got dtype {value.dtype}")
            return value.astype(np.float64)
        if value.size != 1 or value.dtype.kind not in "fiu":
            raise ValueError(f"{self.op.name}(): argument '{label}' must be one number (a one-element array), got "
                             f"shape {value.shape} and dtype {value.dtype}")
        return float(value.reshape(-1)[0])

    def _c_module(self):
        """The op's C module where the C backend serves this call, else None."""
        if backends.current_backend() == "numpy":
            return None
        try:
            return self.op.c_module()
        except (cbuild.CompilerUnavailable, cbuild.CompileError):
            if backends.current_backend() == "c":
                raise
            return None  # the single-tensor path warns and falls back

    @staticmethod
    def _fail(naming: _Naming, exc: type[Exception], name: str, message: str) -> Exception:
        return exc(f"{naming.caller}(): argument '{name}' {message}")

    def __call__(self, groups: tuple, params: tuple, out, rounding="nearest", seed=None, max_grad_norm=None,
                 grad_scale: float = 1.0):
        """The multi-tensor call; ``grad_scale`` multiplies every gradient element as it is
        loaded (the optimizers' clipping by a norm over several calls), ``max_grad_norm``
        clips by this call's own global gradient norm."""
        return self._call(groups, params, out, self._naming, check_rounding(self.name, rounding, seed),
                          check_clip(self.name, max_grad_norm), grad_scale)

    def _call(self, groups: tuple, params: tuple, out, naming: _Naming, rounding: Rounding = NEAREST,
              max_grad_norm: float | None = None, grad_scale: float = 1.0):
        try:
            return self._checked_call(groups, params, out, naming, rounding, (max_grad_norm, grad_scale))
        except (TypeError, ValueError) as exc:  # the one-tensor checks name the op: name the caller
            prefix = f"{self.op.name}(): "
            if naming.caller == self.op.name or not str(exc).startswith(prefix):
                raise
            raise type(exc)(f"{naming.caller}(): {str(exc)[len(prefix):]}") from None

    def _checked_call(self, groups: tuple, params: tuple, out, naming: _Naming, rounding: Rounding,
                      clip: tuple = (None, 1.0)):
        lists = []
        for name, group in zip(self.group_names, groups):
            if not isinstance(group, (list, tuple)):
                raise self._fail(naming, TypeError, name, f"must be a list or tuple of arrays, got {type(group).__name__}")
            lists.append(group if type(group) in (list, tuple) else list(group))  # (a subclass: its items, read once)
        count = len(lists[0])
        for name, group in zip(self.group_names[1:], lists[1:]):
            if len(group) != count:
                raise self._fail(naming, ValueError, name, f"holds {len(group)} arrays but '{self.group_names[0]}' "
                                                   f"holds {count}; give one per tensor")
        if out is not None:
            if not isinstance(out, (list, tuple)):
                raise self._fail(naming, TypeError, "out", f"must be None or a list of arrays, got {type(out).__name__}")
            out = out if type(out) in (list, tuple) else list(out)
            if len(out) != count:
                raise self._fail(naming, ValueError, "out", f"holds {len(out)} arrays but '{self.group_names[0]}' "
                                                    f"holds {count}")
        grads = lists[self.op.grad_index]
        columns = [self._param_column(naming, p, v, count) for p, v in zip(self.kernel_params, params)]
        if count == 0:
            return []
        # (an op with a skip condition takes the full path: the condition is checked there)
        if self._plans and out is not None and backends.current_backend() != "numpy" and self.op.skip_if is None:
            fixed = self._fixed_lists(lists, out)
            key = _plan_key(fixed, count)
            plan = self._plans.get(key)
            if plan is not None:
                same = plan.unchanged(fixed) if _RECHECK_PLAN[0] else \
                    all(map(operator.is_, itertools.chain(*fixed), plan.arrays))
                if same and plan.take_grads(grads):
                    return self._run_plan(plan, columns, count, rounding, self._grad_scale(grads, clip))  # in place
                self._plans.pop(key, None)  # changed since: the full checks below refuse it, or plan anew
        # (a cached plan takes NumPy gradients only: a row-sparse one is refused here, first)
        if any(issubclass(t, RowSparseArray) for t in set(map(type, grads))):  # (the types: a C loop)
            i = next(i for i, grad in enumerate(grads) if isinstance(grad, RowSparseArray))
            raise self._fail(naming, TypeError, self._names(naming, i)[self.op.grad_index],
                             "is row-sparse: multi-tensor updates take dense gradients")
        arrays = tuple(itertools.chain(*lists, out if out is not None else ()))
        # arrays of other types as native views (the cached path above only ever holds native ones)
        def refused(k: int, exc: type[Exception], message: str) -> Exception:
            which, i = divmod(k, count)
            name = f"out[{i}]" if which == len(lists) else self._names(naming, i)[which]
            return self._fail(naming, exc, name, message)

        if self.op.reduces:
            for k, value in enumerate(arrays):
                placement = sharded(value)
                if placement is not None:
                    raise refused(k, TypeError, shard_refusal(self.op.name, placement))
        views, presented = present(arrays, refused)
        lists = [list(views[k * count:(k + 1) * count]) for k in range(len(lists))]
        out = None if out is None else list(views[len(lists) * count:])
        if self.op.skip_if is not None and self._skipped(naming, lists, columns, out, count):
            targets = list(out) if out is not None else [w.copy() for w in lists[self.op.weight_index]]
            return targets if presented is None else [presented.result(t) for t in targets]
        module = self._c_module() if all(type(a) is np.ndarray for a in lists[0]) else None
        plan = None if module is None else self._plan_for(naming, lists, out, views, module, count)
        if presented is None:
            return self._one_by_one(naming, lists, columns, out, count, rounding, clip) if plan is None \
                else self._run_plan(plan, columns, count, rounding, self._grad_scale(lists[self.op.grad_index], clip))
        with presented.context():
            targets = self._one_by_one(naming, lists, columns, out, count, rounding, clip) if plan is None \
                else self._run_plan(plan, columns, count, rounding, self._grad_scale(lists[self.op.grad_index], clip))
        presented.written([k * count + i for k in self.op._state_positions for i in range(count)]
                          + ([len(lists) * count + i for i in range(count)] if out is not None else []))
        return [presented.result(t) for t in targets]

    def _skipped(self, naming: _Naming, lists, columns: list, out, count: int) -> bool:
        """Whether the op's skip condition holds for the call (it reads values of the whole
        call only), after every check a run would make: a skipped call changes nothing."""
        op = self.op
        for i in range(count):
            names = self._names(naming, i)
            weight, grad, states, _, _ = op.check_tensors(tuple(lst[i] for lst in lists), names)
            op.check_out(None if out is None else out[i], weight, grad, states, names, f"out[{i}]")
        weight = lists[op.weight_index][0]
        states = [lst[0] for t, lst in zip(op.tensors, lists) if t.role is TensorRole.STATE]
        # the kernel scalars in order: per-tensor states' values (which the condition cannot
        # read), then the parameters (the condition reads none that is per tensor)
        values = tuple(0.0 if adapter_for(lst[0]).device else float(lst[0].reshape(-1)[0])  # (not read back)
                       for t, lst in zip(op.tensors, lists) if t.per_tensor) \
            + tuple(c[0] if isinstance(c, np.ndarray) else c for c in columns)
        return op._skipped(weight.dtype, op.states_dtype(weight, states), values)

    def _fixed_lists(self, lists, out) -> tuple:
        """What a plan is of: every list of the call but the gradients', then out."""
        grad = self.op.grad_index
        return (*(lst for k, lst in enumerate(lists) if k != grad), out)

    def _run_plan(self, plan: _Plan, columns: list, count: int, rounding: Rounding, grad_scale: float) -> list:
        """One call of the multi kernel: count, sizes, the pointer tables, a value table per
        kernel parameter (typed as the ABI says, worked out when the plan was made), the
        gradient factor, the rounding and its seed, the flag."""
        from_buffer = plan.from_buffer
        values = []
        last = plan.last_values
        for j, (k, dtype, cdata) in enumerate(plan.columns):
            column = columns[k]
            if isinstance(column, np.ndarray):
                values.append(from_buffer(cdata, np.ascontiguousarray(column, dtype)))
                continue
            kept = last.get(j)  # one value for all tensors, as in the call before: its table again
            if kept is None or type(kept[0]) is not type(column) or kept[0] != column or \
                    (column == 0 and math.copysign(1.0, column) != math.copysign(1.0, kept[0])):  # -0.0 is not 0.0
                kept = last[j] = (column, from_buffer(cdata, np.full(count, column, dtype)))
            values.append(kept[1])
        plan.function(count, plan.sizes, *plan.tables, *values, float(grad_scale), *rounding.kernel_args,
                      backends.flush_denormal_flag())
        return list(plan.targets)

    def _param_column(self, naming: _Naming, p, value, count: int):
        """A scalar (one value for all) or an array of one value per tensor."""
        if type(value) is _PLAIN.get(p.type) and p.bounds is None and not naming.labels:
            return value  # the usual call: a Python float (bool) for a float (bool) parameter
        label = naming.label(p.name)
        refused = refused_subclass(value)
        if refused is not None:
            raise self._fail(naming, TypeError, label, refused)
        if isinstance(value, (list, tuple, np.ndarray)):
            array = np.asarray(value)
            if array.shape != (count,):
                raise self._fail(naming, ValueError, label, f"has {array.shape[0] if array.ndim == 1 else array.shape} "
                                                    f"values for {count} tensors")
            if array.dtype.kind not in ("f", "i", "u") or (p.type is not ParamType.FLOAT and array.dtype.kind == "f"):
                raise self._fail(naming, TypeError, label, f"must hold {p.type.value} values, got dtype {array.dtype}")
            if p.type is ParamType.INT and array.dtype.kind == "u" and array.size \
                    and int(array.max()) > np.iinfo(np.int64).max:  # (the kernels take int64)
                k = int(np.argmax(array > np.iinfo(np.int64).max))
                raise self._fail(naming, ValueError, label, f"holds {array[k]} at {k}, outside the 64-bit integer "
                                                            "range")
            if p.bounds is not None:
                inside = (array >= p.bounds[0]) & (array <= p.bounds[1])
                if not inside.all():
                    k = int(np.argmin(inside))
                    low, high = (f"{b:g}" for b in p.bounds)
                    raise self._fail(naming, ValueError, label, f"holds {array[k]} at {k}, outside [{low}, {high}]")
            return array
        if label != p.name:
            raise self._fail(naming, TypeError, label, f"must be a sequence of one {p.type.value} per tensor, "
                                               f"got {type(value).__name__}")
        return self.op.check_param(p, value)


    def _names(self, naming: _Naming, i: int) -> tuple[str, ...]:
        if naming.flat:
            size = len(self.group_names)
            return tuple(f"data[{i * size + k}]" for k in range(size))
        return tuple(f"{name}[{i}]" for name in self.group_names)

    def _plan_for(self, naming: _Naming, lists, out, arrays: tuple, module, count: int) -> _Plan | None:
        """Check every tensor and build the C kernel's pointer tables; None when these
        arrays need the general path (non-contiguous)."""
        op = self.op
        dtype = lists[op.weight_index][0].dtype
        states_dtype = None
        checked = []
        for i in range(count):
            names = self._names(naming, i)
            group = tuple(lst[i] for lst in lists)
            weight, grad, states, _, _ = op.check_tensors(group, names)
            if weight.dtype != dtype:
                raise self._fail(naming, TypeError, names[op.weight_index], f"has dtype {weight.dtype} but the first "
                                                                    f"weight has {dtype}; one dtype per call")
            own = op.states_dtype(weight, states)
            states_dtype = own if states_dtype is None else states_dtype
            if own != states_dtype:
                raise self._fail(naming, TypeError, names[op.names.index(op.free_state_name)],
                                 f"has dtype {own} but the first tensor's states have {states_dtype}; one state "
                                 "dtype per call")
            target = op.check_out(None if out is None else out[i], weight, grad, states, names, f"out[{i}]")
            checked.append((group, target))
        self._check_no_overlap(naming, [(group, target) for group, target in checked])
        if any(not a.flags.c_contiguous for group, _ in checked for a in group) or \
                any(t is not None and not t.flags.c_contiguous for _, t in checked):
            return None
        # Validation is over: from here on, arrays are written.
        targets = []
        for (group, target) in checked:
            weight = group[op.weight_index]
            if target is None:
                target = weight.copy()
            elif not same_view(target, weight):
                np.copyto(target, weight)
            targets.append(target)
        ffi = module.ffi
        kernel = op.kernel(Schedule.MULTI, dtype, states_dtype)
        keep, tables = [], []
        for a in kernel.args:  # the pointer tables in the ABI's order
            if a.role is ArgRole.TENSOR_TABLE:
                k = op.names.index(a.source)
                buffers = [ffi.from_buffer(targets[i] if k == op.weight_index else checked[i][0][k])
                           for i in range(count)]
                keep.append(buffers)
                tables.append(ffi.new("void *[]", buffers))
        roles = [a.role for a in kernel.args]
        tail = [ArgRole.GRAD_SCALE, ArgRole.ROUNDING, ArgRole.SEED, ArgRole.FLUSH]
        if roles[:2] != [ArgRole.COUNT, ArgRole.SIZES] or roles[-4:] != tail or \
                roles[2:-4] != sorted(roles[2:-4], key=[ArgRole.TENSOR_TABLE, ArgRole.SCALAR_TABLE].index):
            raise RuntimeError(f"{kernel.name}: arguments not grouped as count, sizes, tables, values, gradient "
                               "factor, rounding, seed, flag")
        position = {name: k for k, name in enumerate(self._kernel_param_names)}
        columns = tuple((position[a.source], np.dtype(a.numpy), f"{a.element_c_type}[]")
                        for a in kernel.args if a.role is ArgRole.SCALAR_TABLE)
        sizes = ffi.new("int64_t[]", [t.size for t in targets])
        plan = _Plan(arrays, op.c_function(module, kernel), columns, sizes, tuple(tables), tuple(keep), targets,
                     ffi.from_buffer)
        if out is not None and all(t is w for t, w in zip(targets, lists[op.weight_index])):
            # in place, as optimizers call it: the same pointers next time, new gradients allowed
            grad = op.grad_index
            fixed = self._fixed_lists(lists, out)
            plan.arrays = tuple(itertools.chain(*fixed))
            kept = plan.remember(tuple(list(lst) for lst in fixed))
            plan.grads, plan.weights, plan.ffi = list(lists[grad]), tuple(lists[op.weight_index]), ffi
            plan.grad_locks = _locks(lists[grad])
            plan.grad_seen = fast.fingerprint(lists[grad]) if kept else None
            tensor_tables = [a.source for a in kernel.args if a.role is ArgRole.TENSOR_TABLE]
            plan.grad_table = tensor_tables.index(op.names[grad])
            written = (op.weight_index, *op._state_positions)  # in place: the weight and the states
            spans = sorted(_bounds(a) for k in written for a in lists[k] if a.nbytes)
            plan.written = (tuple(lo for lo, _ in spans), tuple(hi for _, hi in spans))
            key = _plan_key(fixed, count)
            self._plans.pop(key, None)
            if kept and plan.grad_seen is not None:
                self._plans[key] = plan
            for oldest in list(self._plans)[:-MAX_PLANS]:
                self._plans.pop(oldest, None)
        return plan

    def _one_by_one(self, naming: _Naming, lists, columns, out, count: int, rounding: Rounding,
                    clip: tuple = (None, 1.0)) -> list:
        """The general path (NumPy backend, device arrays, non-contiguous arrays): every
        tensor is checked first; then device arrays take one CUDA launch for the whole call
        where the op has a multi-tensor CUDA kernel, anything else the single-tensor op,
        tensor by tensor."""
        calls = self._checked_calls(naming, lists, columns, out, count, rounding)
        grad_scale = self._grad_scale(lists[self.op.grad_index], clip)
        if grad_scale != 1.0:
            calls = [dataclasses.replace(call, grad_scale=grad_scale) for call in calls]
        if calls and adapter_for(calls[0].weight).device:
            targets = self._on_device(calls, rounding, grad_scale)
            if targets is not None:
                return targets
        return [self.op.execute(call) for call in calls]

    def _on_device(self, calls: list, rounding: Rounding, grad_scale: float) -> list | None:
        """Checked calls on device arrays in one launch of the multi-tensor CUDA kernel: each
        tensor cut into chunks (abi.MULTI_CHUNK elements), a block a chunk, the tensors'
        pointers and values in device tables, no host synchronisation. None where the op has
        no such kernel, the call mixes dtypes, or an array is not C-contiguous."""
        op = self.op
        first = calls[0]
        kernel = op._kernels_by_dtype.get((Schedule.MULTI, first.weight.dtype, first.states_dtype))
        if kernel is None or kernel.launch is None:
            return None
        arrays = [a for call in calls for a in (call.weight, call.grad, *call.states, *call.inputs)
                  if a is not None] + [c.target for c in calls if c.target is not None]
        if any(c.weight.dtype != first.weight.dtype or c.states_dtype != first.states_dtype for c in calls) \
                or not all(a.flags.c_contiguous for a in arrays):
            return None
        import cupy

        from opgen.runtime import cuda

        with adapter_for(first.weight).on_device(first.weight):
            targets = []
            for call in calls:  # (validation is over: from here on, arrays are written)
                target = call.target
                if target is None:
                    target = call.weight.copy()
                elif not same_view(target, call.weight):
                    cupy.copyto(target, call.weight)
                targets.append(target)
            names = [t.name for t in op.tensors]
            state_names = [t.name for t in op.tensors if t.role is TensorRole.STATE]
            sizes = np.array([t.size for t in targets], np.int64)
            chunks = chunk_table(sizes, cuda.MULTI_CHUNK)
            if not chunks.size:
                return targets
            args = []
            for a in kernel.cuda_args:
                if a.role is ArgRole.COUNT:
                    args.append(np.int64(len(calls)))
                elif a.role is ArgRole.SIZES:
                    args.append(cupy.asarray(sizes))
                elif a.role is ArgRole.TENSOR_TABLE:
                    if a.source == names[op.weight_index]:
                        column = targets
                    elif a.source == names[op.grad_index]:
                        column = [c.grad for c in calls]
                    elif a.source in state_names:
                        column = [c.states[state_names.index(a.source)] for c in calls]
                    else:
                        inputs = [t.name for t in op.tensors if t.role is TensorRole.INPUT]
                        column = [c.inputs[inputs.index(a.source)] for c in calls]
                    args.append(cupy.asarray(np.array([x.data.ptr for x in column], np.uint64)))
                elif a.role is ArgRole.SCALAR_TABLE:
                    args.append(cupy.asarray(np.array([c.scalars[op.scalar_position[a.source]] for c in calls],
                                                      np.dtype(a.numpy))))
                elif a.role is ArgRole.GRAD_SCALE:
                    args.append(np.float64(grad_scale))
                elif a.role is ArgRole.ROUNDING:
                    args.append(np.int32(rounding.kernel_args[0]))
                elif a.role is ArgRole.SEED:
                    args.append(np.uint64(rounding.kernel_args[1]))
                elif a.role is ArgRole.NCHUNKS:
                    args.append(np.int64(len(chunks) // 2))
                elif a.role is ArgRole.CHUNKS:
                    args.append(cupy.asarray(chunks))
                else:
                    raise RuntimeError(f"{kernel.name}: no value for a CUDA argument of role {a.role}")
            cuda.launch(op.cuda, kernel, len(chunks) // 2, args)
        return targets

    def _checked_calls(self, naming: _Naming, lists, columns, out, count: int, rounding: Rounding) -> list:
        """Every tensor's call checked (and no array written by one tensor shared with another),
        before anything is written."""
        op = self.op
        calls = []
        for i in range(count):
            # parameters outside the math (such as lazy_update) play no part in a dense update:
            # any value they accept will do
            values = [p.bounds[0] if p.bounds else PARAM_KINDS[p.type].neutral for p in op.params]
            for position, column in zip(op.kernel_params, columns):
                values[position] = column[i].item() if isinstance(column, np.ndarray) else column
            group = tuple(lst[i] for lst in lists)
            calls.append(op.check(group, tuple(values), None if out is None else out[i], self._names(naming, i),
                                  f"out[{i}]", rounding.for_tensor(i)))
        self._check_no_overlap(naming, [(tuple(lst[i] for lst in lists), call.target)
                                        for i, call in enumerate(calls)])
        return calls

    def grad_sums_of_squares(self, grads: list) -> list[float]:
        """Each (checked) gradient's sum of squares, in double: the C norms kernel where the C
        backend serves host arrays of one dtype (blocked and pairwise: the same bits on any
        thread count), else NumPy or CuPy in float64."""
        module = self._c_module() if all(type(g) is np.ndarray and g.flags.c_contiguous for g in grads) else None
        dtypes = {g.dtype for g in grads}
        if module is not None and len(dtypes) == 1:
            kernel = self.op.kernel(Schedule.NORMS, grads[0].dtype)
            if [a.role for a in kernel.args] != _NORMS_LAYOUT:
                raise RuntimeError(f"{kernel.name}: arguments not laid out as count, sizes, gradients, sums, flag")
            ffi = module.ffi
            buffers = [ffi.from_buffer(g) for g in grads]
            sums = np.zeros(len(grads), np.float64)
            self.op.c_function(module, kernel)(len(grads), ffi.new("int64_t[]", [g.size for g in grads]),
                                               ffi.new("void *[]", buffers), ffi.from_buffer("double[]", sums),
                                               backends.flush_denormal_flag())
            return sums.tolist()
        out = []
        for g in grads:
            xp = adapter_for(g).module(g)
            g64 = xp.asarray(g, dtype=xp.float64)
            out.append(float(xp.sum(g64 * g64)))
        return out

    def _grad_scale(self, grads: list, clip: tuple) -> float:
        """The call's gradient factor: the given one, times the clipping factor of this
        call's global gradient norm where max_grad_norm is set (torch's clip_grad_norm_:
        max_norm / (norm + 1e-6), at most 1; NaN where the norm is NaN)."""
        max_grad_norm, grad_scale = clip
        if max_grad_norm is None:
            return grad_scale
        return grad_scale * clip_factor(max_grad_norm, math.sqrt(math.fsum(self.grad_sums_of_squares(grads))))

    def _check_no_overlap(self, naming: _Naming, groups: list) -> None:
        """No array written by one tensor may share memory with any array of another
        (each tensor's own arrays were checked by the single-tensor op)."""
        op = self.op
        spans = []  # (start, end, tensor, label, written)
        for i, (group, target) in enumerate(groups):
            names = self._names(naming, i)
            for k, (spec, array) in enumerate(zip(op.tensors, group)):
                written = spec.role is TensorRole.STATE or (spec.role is TensorRole.WEIGHT and target is None)
                spans.append((*_bounds(array), i, names[k], written))
            if target is not None:
                spans.append((*_bounds(target), i, f"out[{i}]", True))
        spans.sort()
        active: list = []
        for span in spans:
            active = [a for a in active if a[1] > span[0]]
            for other in active:
                if other[2] != span[2] and (other[4] or span[4]) and span[0] < span[1] and other[0] < other[1]:
                    raise self._fail(naming, ValueError, span[3], f"shares memory with '{other[3]}' of another "
                                                                  "tensor")
            active.append(span)


def check_clip(caller: str, max_grad_norm) -> float | None:
    """The clipping argument: None, or a positive finite number."""
    if max_grad_norm is None:
        return None
    if isinstance(max_grad_norm, (int, float, np.integer, np.floating)) and not isinstance(max_grad_norm, (bool, np.bool_)):
        value = float(max_grad_norm)
    else:
        value = number(max_grad_norm)  # a one-element array or tensor
    if value is None or isinstance(value, bool):
        raise TypeError(f"{caller}(): argument 'max_grad_norm' must be None or a number, got "
                        f"{type(max_grad_norm).__name__}")
    if not (0 < value < math.inf):
        raise ValueError(f"{caller}(): argument 'max_grad_norm' must be positive and finite, got {value}")
    return float(value)


def clip_factor(max_grad_norm: float, norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor: max_norm / (norm + 1e-6), at most 1 (a NaN
    norm gives NaN, an infinite one 0, as there)."""
    factor = max_grad_norm / (norm + 1e-6)
    return 1.0 if factor >= 1.0 else factor


def chunk_table(sizes: np.ndarray, chunk: int) -> np.ndarray:
    """A multi-tensor CUDA launch's chunk table: for each chunk of ``chunk`` elements of each
    tensor in turn, (its tensor, its first element), flattened to int64 pairs."""
    counts = -(-sizes // chunk)  # (ceiling division; an empty tensor has no chunk)
    tensors = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    first = np.arange(len(tensors), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.stack([tensors, first * chunk], axis=1).reshape(-1)


def _locks(arrays) -> tuple:
    """Weak references to the arrays that own these arrays' memory: NumPy refuses to resize
    an array that has one, so the memory a plan's tables point into stays where it is."""
    owners = {}
    for array in arrays:
        while isinstance(array.base, np.ndarray):
            array = array.base
        owners[id(array)] = array
    return tuple(weakref.ref(a) for a in owners.values())


def _bounds(array) -> tuple[int, int]:
    """The byte range an array spans (host or device)."""
    return adapter_for(array).byte_bounds(array)


