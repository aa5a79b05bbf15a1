"""The torch.optim.Optimizer behind every class of ``generated.optim``.

A generated class carries data (its hyperparameters and the ops it may feed) and three
functions printed from its spec (which op a group uses, the op's parameters for a step, the
host state); everything else is here, written once:

- a step is one multi-tensor kernel call per (device, parameter dtype, state dtype) bucket of
  each param group and op (the op chosen per group, or per parameter by its number of
  dimensions); an op without a multi-tensor kernel (a grid op: a matrix's rows and columns)
  is called once per tensor; sparse COO gradients take the op's row-sparse (lazy) kernel per
  tensor;
- parameters without a gradient are skipped; ``step(closure)`` re-evaluates the loss;
- hyperparameters are read from each group at every step, so every lr scheduler works, at
  no cost per change (no recompilation);
- states are created at a parameter's first step (zeros, a constant, or a copy of it) in
  the spec's dtype policy or ``state_dtype``; ``state['step']`` is a float32 tensor, as in
  torch.optim, so state dicts look like torch's and resume bit for bit;
- ``load_state_dict`` keeps each state in the dtype it was saved in (torch's own would cast
  float32 states to a bfloat16 parameter's dtype);
- GradScaler: the class does not claim ``_step_supports_amp_scaling``, so the scaler
  unscales the gradients and skips ``step()`` when it finds an inf or NaN.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np

try:
    import torch
except ImportError:  # torch is optional: only the optimizer classes need it
    raise ImportError("the torch.optim classes (PACKAGE.optim) need torch: pip install -e '.[torch]'") from None

from opgen.kinds import Schedule, TensorRole
from opgen.runtime.arrays import grid_axis_shapes
from opgen.runtime.multi import check_clip, clip_factor
from opgen.runtime.operator import check_rounding
from opgen.runtime.torch_arrays import TorchTensors, _is_distributed, bump_versions, shard_refusal, sharded

_TENSORS = TorchTensors()
_PLAIN = (torch.float16, torch.float32, torch.float64)


def _on_host(params: list) -> bool:
    """A bucket of CPU parameters that are not DTensors: the C kernel runs on NumPy views."""
    return params[0].device.type == "cpu" and not any(map(_is_distributed, params))


def _grad_view(g: torch.Tensor):
    """A gradient's NumPy view: the common case (a plain dense CPU tensor) in one call."""
    if g.dtype in _PLAIN and g.layout is torch.strided and not g.requires_grad and not g.is_neg():
        return g.numpy()
    return _TENSORS.view(g)


_MASK64 = (1 << 64) - 1


def _overlaps(start: int, size: int, spans: list) -> bool:
    """Whether the bytes [start, start + size) meet any of the (start, end) ranges a call writes."""
    end = start + size
    return any(start < e and s < end for s, e in spans)


def _machine_eps(dtype: torch.dtype) -> float:
    """The machine epsilon of a parameter's dtype (the expressions' machine_eps)."""
    return float(torch.finfo(dtype).eps)


@dataclass(frozen=True)
class OptimArg:
    """A hyperparameter: its kind (float, int, bool, floats: a tuple of ``count`` floats),
    default and bounds (``low``/``high`` inclusive, ``below`` exclusive)."""

    name: str
    kind: str
    default: object
    count: int = 1
    low: float | None = None
    high: float | None = None
    below: float | None = None
    nullable: tuple[bool, ...] = ()  # per element: None allowed (it reads as the spec's none_is value)

    def problem(self, value) -> str | None:
        """Why ``value`` cannot be this hyperparameter, or None."""
        if self.kind == "float" and value is None and self.nullable:
            return None
        if self.kind == "bool":
            return None if isinstance(value, (bool, np.bool_)) else f"must be a bool, got {value!r}"
        if self.kind == "int":
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
            if not ok:
                return f"must be an int, got {value!r}"
        values = value if self.kind == "floats" else (value,)
        if self.kind == "floats" and (not isinstance(value, (tuple, list)) or len(value) != self.count):
            return f"must be a tuple of {self.count} floats, got {value!r}"
        for k, v in enumerate(values):
            if v is None and k < len(self.nullable) and self.nullable[k]:
                continue
            number = _real(v)
            if number is None:
                return f"must be a real number, got {type(v).__name__}" if self.kind == "float" else \
                    f"must hold real numbers, got {v!r}"
            for bound, holds, text in ((self.low, lambda b: number >= b, ">="), (self.high, lambda b: number <= b, "<="),
                                       (self.below, lambda b: number < b, "<")):
                if bound is not None and not holds(bound):
                    return f"must be {text} {bound:g}, got {v!r}" if self.kind != "floats" else \
                        f"must hold values {text} {bound:g}, got {value!r}"
        return None


def _real(value) -> float | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point() \
            and value.device.type in ("cpu", "cuda"):
        return float(value)  # a tensor lr, as torch.optim allows
    return None


def _mix(*parts: int) -> int:
    """splitmix64 over the parts: a step's stochastic-rounding seed from (seed, group, t)."""
    x = 0
    for part in parts:
        x = (x + (part & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        x ^= x >> 31
    return x


_SIXTEEN_BIT = (torch.float16, torch.bfloat16)
_STATE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _GroupPlan:
    """A param group's usual step: which parameters have gradients, their states, and one
    float32 counter tensor whose elements are the states' ``step`` tensors (0-d views, as
    torch.optim's own), so a step increments them all in one operation."""

    __slots__ = ("choice", "params", "states", "steps", "counter", "buckets", "host", "kinds")

    @classmethod
    def make(cls, choice: int, params: list, states: list, buckets: dict) -> "_GroupPlan":
        plan = cls()
        plan.choice, plan.params, plan.states = choice, list(params), list(states)
        plan.counter = torch.tensor([float(state["step"]) for state in states], dtype=torch.float32)
        plan.steps = [plan.counter[k] for k in range(len(states))]
        for state, view in zip(states, plan.steps):
            state["step"] = view
        position = {id(p): k for k, p in enumerate(params)}
        plan.buckets = [[position[id(tensors[0])] for tensors, _, _ in members] for members in buckets.values()]
        # (a parameter's type and device cannot change while it is the same object with the
        # same kind: whether a bucket runs on NumPy views is decided once)
        plan.host = [_on_host([params[k] for k in positions]) for positions in plan.buckets]
        plan.kinds = [(p.device, p.dtype) for p in params]
        return plan

    def fits(self, choice: int, params: list, state: dict) -> bool:
        """The same op and parameters as when planned, each gradient dense, each parameter's
        device and dtype and state dict as planned, each step counter still the plan's (a
        state replaced, cleared or reloaded is planned anew)."""
        return (choice == self.choice and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params))
                and all(p.grad.layout is torch.strided for p in params)
                and [(p.device, p.dtype) for p in params] == self.kinds
                and all(state.get(p) is s for p, s in zip(params, self.states))
                and all(s.get("step") is view for s, view in zip(self.states, self.steps)))


class SpecOptimizer(torch.optim.Optimizer):
    _ARGS: tuple[OptimArg, ...] = ()
    _OPS: tuple = ()  # the Operators a step may feed (opgen.runtime.operator)
    _MULTIS: tuple = ()  # their multi-tensor forms
    _STATE_DTYPE = "weight"  # or "float32": float32 states beside 16-bit parameters
    _HOST_STATE: tuple[str, ...] = ()

    def __init__(self, params, defaults: dict, *, state_dtype=None, rounding="nearest", seed=0, max_grad_norm=None,
                 foreach=None, fused=None, capturable=False, differentiable=False) -> None:
        name = type(self).__name__
        if differentiable:
            raise ValueError(f"{name}(): argument 'differentiable' must be False: the step runs fused kernels, "
                             "which autograd cannot differentiate")
        if capturable:
            raise ValueError(f"{name}(): argument 'capturable' must be False: the step reads its step counts on "
                             "the host, so it cannot be captured in a CUDA graph")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"{name}(): argument 'rounding' must be 'nearest' or 'stochastic', got {rounding!r}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, (bool, np.bool_)) or not 0 <= seed < 2 ** 64:
            raise ValueError(f"{name}(): argument 'seed' must be an int in [0, 2**64), got {seed!r}")
        if state_dtype is not None and state_dtype not in _STATE_DTYPES:
            raise ValueError(f"{name}(): argument 'state_dtype' must be None or one of torch.float16, "
                             f"torch.bfloat16, torch.float32, torch.float64, got {state_dtype!r}")
        self._state_dtype, self._rounding, self._seed = state_dtype, rounding, int(seed)
        self._max_grad_norm = check_clip(name, max_grad_norm)
        #: the global gradient norm of the last step, where max_grad_norm is set (else None)
        self.last_grad_norm: float | None = None
        self._grad_scale = 1.0  # the step's gradient factor (clipping by the global norm)
        self._views: dict = {}  # CPU buckets' NumPy views (see _host_views)
        self._plans: dict[int, _GroupPlan] = {}  # per param group: the usual step (see _planned_step)
        for arg in self._ARGS:  # the constructor's values: errors name the argument
            problem = arg.problem(defaults[arg.name])
            if problem is not None:
                raise ValueError(f"{name}(): argument '{arg.name}' {problem}")
        message = self._check(defaults)
        if message is not None:
            raise ValueError(message)
        super().__init__(params, defaults)

    # -- hyperparameters --------------------------------------------------------------------
    def _check_group(self, group: dict) -> None:
        for arg in self._ARGS:
            problem = arg.problem(group[arg.name])
            if problem is not None:
                index = next(k for k, g in enumerate(self.param_groups) if g is group)
                raise ValueError(f"{type(self).__name__}: param group {index}: '{arg.name}' {problem}")
        message = self._check(group)
        if message is not None:
            raise ValueError(message)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()  # refused: the optimizer stays as it was
            raise

    # -- states -----------------------------------------------------------------------------
    def _new_state_dtype(self, p: torch.Tensor) -> torch.dtype:
        if self._state_dtype is not None:
            return self._state_dtype
        if self._STATE_DTYPE == "float32" and p.dtype in _SIXTEEN_BIT:
            return torch.float32
        return p.dtype

    def _states_for(self, p: torch.Tensor, op, group: dict) -> tuple[dict, bool]:
        """The parameter's state, created at its first step, with every state ``op`` reads
        (an alternative op with more states, chosen later, adds its own), and whether this
        created any of them (the expressions' ``initial``)."""
        state = self.state[p]
        missing = [t.name for t in op.tensors if t.role is TensorRole.STATE and t.name not in state]
        if "step" not in state or missing or any(k not in state for k in self._HOST_STATE):
            initial, host = self._initial(group)
            if "step" not in state:  # (a first step, or a state saved by an optimizer that counts none)
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for key, value in zip(self._HOST_STATE, host):
                state.setdefault(key, value)
            dtype = self._new_state_dtype(p)
            per_tensor = {t.name: getattr(torch, t.dtype) for t in op.tensors if t.per_tensor}  # (their dtype fixed)
            # a grid op's (its parameters are (..., rows, cols)): torch's (..., rows, 1) and (..., 1, cols)
            row, col = grid_axis_shapes(tuple(p.shape) if p.dim() >= 2 else (1, 1))
            per_axis = {t.name: row if t.per_row else col for t in op.tensors if t.per_row or t.per_col}
            for key in missing:
                value = initial[key]
                with torch.no_grad():
                    if key in per_tensor:  # one value per parameter
                        state[key] = torch.full((1,), 0.0 if value is None else value, dtype=per_tensor[key],
                                                device=p.device)
                    elif key in per_axis:
                        state[key] = torch.full(per_axis[key], value, dtype=dtype, device=p.device)
                    elif value is None:
                        state[key] = p.detach().clone(memory_format=torch.preserve_format).to(dtype)
                    elif value == 0.0:
                        state[key] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                    else:
                        state[key] = torch.full_like(p, value, dtype=dtype, memory_format=torch.preserve_format)
        return state, bool(missing)

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        self._views.clear()
        self._plans.clear()
        for group in self.param_groups:  # a state dict from an older or other class: the defaults
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        # torch.optim casts floating states to their parameter's dtype: keep the saved dtypes
        saved_ids = [pid for g in state_dict["param_groups"] for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            for key, value in saved.get(pid, {}).items():
                if key != "step" and isinstance(value, torch.Tensor) and value.dtype != self.state[p][key].dtype:
                    self.state[p][key] = value.detach().to(device=p.device, copy=True)

    # -- the step ---------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # every group's hyperparameters before any update
            self._check_group(group)
        self._grad_scale = 1.0 if self._max_grad_norm is None else self._clip_factor()
        for index, group in enumerate(self.param_groups):
            self._group_step(index, group)
        return loss

    def _group_step(self, index: int, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not self._PER_PARAMETER:
            parts = {self._choice(group, None): params} if params else {}
        else:  # the op by each parameter's shape (a vector's op beside a matrix's)
            parts, by_ndim = {}, {}
            for p in params:
                ndim = p.dim()
                choice = by_ndim.get(ndim)
                if choice is None:
                    choice = by_ndim[ndim] = self._choice(group, ndim)
                parts.setdefault(choice, []).append(p)
        for key in [k for k in self._plans if k[0] == index and k[1] not in parts]:
            del self._plans[key]  # (an op no longer chosen: its plan would keep its tensors alive)
        # the ops called per tensor first: each checks all its tensors before it writes any, so
        # a refused gradient there leaves the whole group as it was
        order = sorted(parts, key=lambda c: (self._MULTIS[c] is not None, c))
        for choice in order:  # refused before any part is written
            self._check_part(self._OPS[choice], index, group, parts[choice])
        for choice in order:
            self._part_step(index, group, choice, parts[choice])

    def _check_part(self, op, index: int, group: dict, params: list) -> None:
        """A grid op's parameters have at least two dimensions (its (rows, cols) slices: one
        value per row and per column of each), dense gradients, and on a device two
        dimensions exactly (its CUDA kernels take one slice): anything else is refused before
        any state is made or any tensor written."""
        if Schedule.GRID not in op.schedules:
            return
        for p in params:
            device_slices = p.dim() > 2 and p.device.type != "cpu"
            if p.dim() < 2 or p.grad.layout is not torch.strided or device_slices:
                k = next(k for k, q in enumerate(group["params"]) if q is p)
                what = f"has shape {tuple(p.shape)}" if p.dim() < 2 else f"has a {p.grad.layout} gradient" \
                    if p.grad.layout is not torch.strided else f"has shape {tuple(p.shape)} on {p.device}"
                where = "; its CUDA kernels take matrices (rows, cols): slices run on the CPU" if device_slices else ""
                raise ValueError(f"{type(self).__name__}: parameter {k} of param group {index} {what}; {op.name} "
                                 "keeps one value per row and per column of each (rows, cols) slice of a weight "
                                 f"(..., rows, cols) with a dense gradient{where}")

    def _part_step(self, index: int, group: dict, choice: int, params: list) -> None:
        """The step of a group's parameters that feed one op."""
        op, multi = self._OPS[choice], self._MULTIS[choice]
        plan = self._plans.get((index, choice))
        if plan is not None and plan.fits(choice, params, self.state):
            try:
                return self._planned_step(plan, op, multi, index, group)
            except (TypeError, ValueError):
                del self._plans[(index, choice)]  # refused: the counters are back; the full path says why
        self._plans.pop((index, choice), None)
        state_names = op._state_names
        states, created = [], []
        for p in params:
            state = self.state[p]
            fresh = False
            if len(state) < len(state_names) + 1 or "step" not in state or not all(k in state for k in state_names):
                state, fresh = self._states_for(p, op, group)
            states.append(state)
            created.append(fresh)
        host_before = [tuple(state[k] for k in self._HOST_STATE) for state in states]
        try:
            self._slow_step(index, group, choice, op, multi, params, states, created)
        except (TypeError, ValueError):
            for state, host in zip(states, host_before):  # a refused call leaves the counts as they were
                state["step"] = state["step"] - 1 if not isinstance(state["step"], torch.Tensor) \
                    else state["step"].sub_(1)
                for key, value in zip(self._HOST_STATE, host):
                    state[key] = value
            raise

    def _slow_step(self, index: int, group: dict, choice: int, op, multi, params: list, states: list,
                   created: list) -> None:
        state_names = op._state_names
        steps = [state["step"] for state in states]
        if all(isinstance(s, torch.Tensor) and s.device.type == "cpu" and s.dtype is torch.float32 and s.dim() == 0
               for s in steps):
            torch._foreach_add_(steps, 1)  # one call for the group (torch.optim's own step tensors)
            counts = [int(c) for c in torch.stack(steps).tolist()]
        else:  # steps as saved by another optimizer (a CUDA or float64 tensor, a number)
            for state in states:
                state["step"] = state["step"] + 1 if not isinstance(state["step"], torch.Tensor) \
                    else state["step"].add_(1)
            counts = [int(state["step"]) for state in states]
        if op.reduces:  # refused before any bucket runs: a shard or a device tensor in a later one
            self._check_whole(op, params)
        buckets: dict[tuple, list] = {}
        values_for: dict[tuple, tuple] = {}  # (t, host) -> the op's parameter values
        sparse = False
        for p, state, t, fresh in zip(params, states, counts, created):
            host = tuple(state[k] for k in self._HOST_STATE)
            if host:
                host = self._advance(t, host, group)
                for key, value in zip(self._HOST_STATE, host):
                    state[key] = value
            key = (t, host, fresh, p.dtype)
            values = values_for.get(key)
            if values is None:
                values = values_for[key] = self._values(choice, t, host, group, fresh, _machine_eps(p.dtype))
            grad = p.grad
            tensors = (p, grad, *(state[name] for name in state_names))
            if grad.layout is not torch.strided:
                op(tensors, values, p, *self._rounding_args(index, t))
                sparse = True
                continue
            states_dtype = state[state_names[0]].dtype if state_names else p.dtype
            buckets.setdefault((p.device, p.dtype, states_dtype), []).append((tensors, values, t))
        for members in buckets.values():
            self._multi_call(op, multi, index, members)
        if not sparse and not self._HOST_STATE:
            self._plans[(index, choice)] = _GroupPlan.make(choice, params, states, buckets)

    @staticmethod
    def _check_whole(op, params: list) -> None:
        """An op whose math reduces whole tensors: every parameter whole (no FSDP2 shard), and
        on the CPU where the op has no CUDA kernels."""
        for k, p in enumerate(params):
            for what, tensor in (("parameter", p), ("gradient", p.grad)):
                placement = sharded(tensor)
                if placement is not None:
                    raise TypeError(f"{op.name}: {what} {k} of the group {shard_refusal(op.name, placement)}")
            if not op.runs_on_device and p.device.type != "cpu":
                raise TypeError(f"{op.name}: parameter {k} of the group is on {p.device}, but {op.name} has no CUDA "
                                "kernels (it runs on the host)")

    def _planned_step(self, plan: "_GroupPlan", op, multi, index: int, group: dict) -> None:
        """The usual step: the same parameters with gradients as last time, their states and
        step counters as we left them. One increment of the group's shared step counter,
        the parameter values once per distinct step count, one kernel call per bucket."""
        plan.counter.add_(1)
        try:
            counts = [int(c) for c in plan.counter.tolist()]
            values_for: dict[tuple, tuple] = {}
            state_names, params, states = op._state_names, plan.params, plan.states
            for positions, host in zip(plan.buckets, plan.host):
                ts = [counts[k] for k in positions]
                dtype = plan.kinds[positions[0]][1]
                for t in set(ts):
                    if (t, dtype) not in values_for:
                        values_for[(t, dtype)] = self._values(plan.choice, t, (), group, False, _machine_eps(dtype))
                bucket = [params[k] for k in positions]
                lists = (bucket, [p.grad for p in bucket],
                         *([states[k][name] for k in positions] for name in state_names))
                if multi is None:
                    self._each_call(op, index, lists, [values_for[(t, dtype)] for t in ts], ts, host)
                    continue
                if len(set(ts)) == 1:
                    columns = [values_for[(ts[0], dtype)][k] for k in op.kernel_params]
                else:
                    columns = [np.array([values_for[(t, dtype)][k] for t in ts]) for k in op.kernel_params]
                self._bucket_call(op, multi, index, lists, columns, max(ts), host)
        except BaseException:
            plan.counter.sub_(1)
            raise

    def _clip_factor(self) -> float:
        """The step's gradient factor: the global L2 norm of every gradient of every group
        (in double; the C norms kernel for CPU tensors, blocked: the same bits on any thread
        count), clip_grad_norm_'s factor from it. Refused before anything is written where
        the norm would be one rank's part of it (a sharded parameter) or a sparse gradient's."""
        sums = []
        multi = next((m for m in self._MULTIS if m is not None), None)  # (its sums of squares: the op's own)
        for group in self.param_groups:
            by_kind: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                for what, tensor in (("parameter", p), ("gradient", p.grad)):
                    placement = sharded(tensor)
                    if placement is not None:
                        raise TypeError(f"{type(self).__name__}: max_grad_norm needs the norm over every rank, but a "
                                        f"{what} is sharded ({placement}): clip with torch.nn.utils.clip_grad_norm_")
                if p.grad.layout is not torch.strided:
                    raise TypeError(f"{type(self).__name__}: max_grad_norm clips dense gradients; a parameter has a "
                                    f"{p.grad.layout} gradient")
                by_kind.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
            for (device, _), grads in by_kind.items():
                if multi is not None and device.type == "cpu" and not any(map(_is_distributed, grads)):
                    sums += multi.grad_sums_of_squares([_grad_view(g) for g in grads])
                else:
                    sums += [float(torch.sum(g.detach().double() ** 2)) for g in grads]
        self.last_grad_norm = math.sqrt(math.fsum(sums))
        return clip_factor(self._max_grad_norm, self.last_grad_norm)

    def _rounding_args(self, index: int, t: int) -> tuple:
        if self._rounding == "nearest":
            return "nearest", None
        return "stochastic", _mix(self._seed, index, t)

    @staticmethod
    def _columns(op, members: list) -> list:
        """The multi kernel's parameter values: one value, or one per tensor where the step
        counts (or host states) of the bucket's tensors differ."""
        first = members[0][1]
        same = all(values is first or values == first for _, values, _ in members)
        if same:
            return [first[k] for k in op.kernel_params]
        return [np.array([values[k] for _, values, _ in members]) for k in op.kernel_params]

    def _multi_call(self, op, multi, index: int, members: list) -> None:
        lists = tuple(list(group) for group in zip(*(tensors for tensors, _, _ in members)))
        if multi is None:
            self._each_call(op, index, lists, [values for _, values, _ in members], [t for _, _, t in members],
                            _on_host(lists[0]))
            return
        self._bucket_call(op, multi, index, lists, self._columns(op, members), max(t for _, _, t in members),
                          _on_host(lists[0]))

    def _each_call(self, op, index: int, lists: tuple, values: list, ts: list, host: bool) -> None:
        """An op without a multi-tensor kernel (a grid op): one call per tensor, in place, its
        stochastic-rounding stream from the group, the step count and its place in the bucket.

        On the host, each tensor's call is checked once and kept ready (``Operator.prepare``)
        while its parameter's and states' views are the same: later steps vouch for the new
        gradient (a plain C-contiguous CPU tensor of the parameter's dtype and shape, sharing
        no byte with what the call writes) and run the kernel; any other gradient takes the
        checked call, which names what is wrong."""
        weight, grad = op.weight_index, op.grad_index
        views = self._host_views(op, index, lists) if host else lists
        # the calls kept with the views (made again with them when a tensor or its memory changed)
        kept = self._views[(index, op.name, tuple(id(t) for k, lst in enumerate(lists) if k != grad for t in lst))][3] \
            if host else None
        ready = kept if kept else None
        made, runs = [], []  # every tensor's call checked (or vouched for) before any runs
        for k, (tensors, vals, t) in enumerate(zip(zip(*views), values, ts)):
            rounding, seed = self._rounding_args(index, t)
            rounding = check_rounding(op.name, rounding, None if seed is None else _mix(seed, k))
            if ready is not None:
                run, spans = ready[k]
                w = tensors[weight]  # (its NumPy view: the gradient must match it)
                pointer = None if run is None else _TENSORS.host_pointers([tensors[grad]], [w])
                if pointer is not None and not _overlaps(pointer[0], w.nbytes, spans):
                    runs.append((run, (pointer[0], tuple(vals[j] for j in op.kernel_params), self._grad_scale,
                                       rounding)))
                    continue
            if not host:  # (device tensors: checked as each call runs)
                runs.append((op._checked_call, (tensors, vals, tensors[weight], None, "out", rounding,
                                                self._grad_scale)))
                continue
            tensors = tuple(_grad_view(x) if j == grad else x for j, x in enumerate(tensors))
            call = op.check(tensors, vals, tensors[weight], rounding=rounding)
            call.grad_scale = self._grad_scale
            runs.append((op.execute, (call,)))
            written = [x for j, x in enumerate(tensors) if j != grad]
            made.append((call, [(x.ctypes.data, x.ctypes.data + x.nbytes) for x in written]))
        for run, args in runs:
            run(*args)
        if host and ready is None and len(made) == len(values):
            kept[:] = [(op.prepare(call), spans) for call, spans in made]
        if host:
            bump_versions([x for k, lst in enumerate(lists) if k != op.grad_index for x in lst])

    def _bucket_call(self, op, multi, index: int, lists: tuple, columns: list, t: int, host: bool) -> None:
        """One multi-tensor call over a bucket's lists (the op's tensors in order; ``host``:
        plain CPU tensors, which go to the C kernel as NumPy views)."""
        if host:
            views = self._host_views(op, index, lists)
            multi(views, tuple(columns), views[op.weight_index], *self._rounding_args(index, t),
                  grad_scale=self._grad_scale)
            # written through NumPy views: the autograd version counters, as torch's in-place ops
            bump_versions([x for k, lst in enumerate(lists) if k != op.grad_index for x in lst])
            return
        multi(lists, tuple(columns), lists[op.weight_index], *self._rounding_args(index, t),
              grad_scale=self._grad_scale)

    def _host_views(self, op, index: int, lists: tuple) -> tuple:
        """NumPy views of a CPU bucket's tensors: the parameters' and states' kept from step
        to step (the multi kernel then reuses its checks and pointer tables, re-checking only
        the new gradients), made again when any tensor or its memory changed."""
        grad = op.grad_index
        fixed = [t for k, lst in enumerate(lists) if k != grad for t in lst]
        key = (index, op.name, tuple(map(id, fixed)))
        cached = self._views.get(key)
        pointers = [(t.data_ptr(), t.shape, t.stride(), t.dtype) for t in fixed]  # memory and layout
        if cached is None or cached[0] != pointers or any(a is not b for a, b in zip(cached[1], fixed)):
            views = [[_TENSORS.view(t) for t in lst] if k != grad else None for k, lst in enumerate(lists)]
            cached = self._views[key] = (pointers, fixed, views, [])  # (and _each_call's kept calls)
        views = list(cached[2])
        # the gradients as they are: a cached plan takes plain CPU tensors by their pointers
        # (new ones every step), and the full checks view any other
        views[grad] = lists[grad]
        return tuple(views)

