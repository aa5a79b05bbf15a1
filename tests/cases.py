"""What the suites know about each op, and the inputs and parameter values they use.

Nothing about an op's arguments is restated here. Its tensors (names, roles, fixed dtypes,
per-row states) and parameters (names, types, required, bounds) come from the generated
metadata, ``generated.<op>._OP``. What that metadata does not say (row-sparse support,
``output``, ``skip_if``, ``multi``, ignored parameters) comes from the op's spec in
specs/, whose file names are the list of ops. Only the parameter VALUES chosen for the tests
(:data:`PARAMS`) and the way plausible inputs are drawn (:data:`STATE_VALUES`,
:data:`SCALAR_VALUES`, :data:`GRAD_SCALE`) are written by hand.

:class:`Case` holds one call's arrays and parameters; it calls the generated op (MXNet's
multi_* ops through their flat calling convention, with one group) and the independent
reference (tests/reference.py) the same way for every op. A call's states that the spec does
not fix to a dtype may be kept in a state dtype of their own (:data:`STATE_DTYPE_COMBOS`,
``make_case(..., state_dtype=...)``).
"""

from __future__ import annotations

import functools
import importlib
import zlib
from pathlib import Path

import numpy as np
import yaml

import ml_dtypes

import generated
import reference
from generated import RowSparseArray
from opgen.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent

#: every op, one per spec
#: the update ops (a weight and a gradient); the ops that only reduce (tensors all inputs:
#: multi_sum_sq, multi_all_finite) have suites of their own (tests/test_reduction_ops.py)
ALL_OPS = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
REDUCTION_OPS = [name for name in ALL_OPS if load_spec(ROOT / "specs" / f"{name}.yaml").reduction]
#: the grid ops: a 2-D weight with per-row and per-column values (Adafactor's factored moments);
#: they take 2-D weights only, so they have a suite of their own too (tests/test_grid_ops.py)
GRID_OPS = [name for name in ALL_OPS if load_spec(ROOT / "specs" / f"{name}.yaml").grid is not None]
OPS = [name for name in ALL_OPS if name not in REDUCTION_OPS and name not in GRID_OPS]

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
DTYPE_IDS = ["float16", "bfloat16", "float32", "float64"]
_DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")

#: the (weight dtype, state dtype) pairs with states in a precision of their own, beside the
#: usual states of the weight's dtype (reference.MIXED_STATE_DTYPES): the states the spec
#: does not fix share the state dtype; the gradient and ``out`` have the weight's
STATE_DTYPE_COMBOS = [(np.float16, np.float32), (ml_dtypes.bfloat16, np.float32),
                      (np.float32, ml_dtypes.bfloat16)]
STATE_DTYPE_COMBO_IDS = [f"{np.dtype(w).name}+{np.dtype(s).name}-states" for w, s in STATE_DTYPE_COMBOS]


def shape_id(shape) -> str:
    return "shape=" + "x".join(map(str, shape))


def seed(*parts) -> int:
    """A deterministic seed per test case (hash() of str is salted per process)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


# =============================================================================================
# The ops, from their metadata and specs
# =============================================================================================
def _fixed_dtype(value):
    if value is None:
        return None
    for name in _DTYPE_NAMES:
        if value == name:
            return np.dtype(name)
    raise AssertionError(f"unknown fixed dtype {value!r}")


class Op:
    """One op: its generated function, its reference function and its argument table."""

    def __init__(self, name: str) -> None:
        meta = importlib.import_module(f"generated.{name}")._OP
        spec = yaml.safe_load((ROOT / "specs" / f"{name}.yaml").read_text())
        self.name = name
        self.fn = getattr(generated, name)
        self.ref = getattr(reference, name)
        self.meta_tensors = tuple(meta.tensors)
        self.meta_params = tuple(meta.params)

        tensors = self.meta_tensors
        #: every tensor's name, in signature order
        self.tensor_names = tuple(t.name for t in tensors)
        self.weight = next(t.name for t in tensors if t.role == "weight")
        self.grad = next(t.name for t in tensors if t.role == "grad")
        self.states = tuple(t.name for t in tensors if t.role == "state")
        #: read-only arrays beside the gradient (mp lamb phase 1's weight32)
        self.inputs = tuple(t.name for t in tensors if t.role == "input")
        #: numbers or one-element arrays read once per call (adamw's rescale_grad, lamb's r1, r2)
        self.scalars = tuple(t.name for t in tensors if t.role == "scalar")
        #: tensor name -> its fixed dtype (mixed-precision master weights and states)
        self.fixed = {t.name: _fixed_dtype(t.dtype) for t in tensors if t.dtype is not None}
        #: the states without a fixed dtype: they share the call's state dtype
        self.free_states = tuple(s for s in self.states if s not in self.fixed)
        self.per_row = frozenset(t.name for t in tensors if t.per_row)
        #: states of one value per column of a 2-D weight (the grid ops)
        self.per_col = frozenset(t.name for t in tensors if t.per_col)
        #: states of one value per tensor (NovoGrad's v): shape (1,)
        self.per_tensor = frozenset(t.name for t in tensors if t.per_tensor)
        #: (a per-tensor state's fixed dtype, one wide value, does not make an op mixed precision)
        self.mixed_precision = bool(set(self.fixed) - self.per_tensor)

        params = self.meta_params
        self.params = tuple(p.name for p in params)
        self.param = {p.name: p for p in params}
        self.required = tuple(p.name for p in params if p.required)
        self.bounds = {p.name: tuple(p.bounds) for p in params if p.bounds is not None}
        #: the clipping bounds the math reads (clip_gradient, clip_grad, clip_weights)
        self.clip_params = tuple(p.name for p in params if p.name.startswith("clip") and p.in_kernel)
        #: the step counter (ftml, lamb phase 1): a required int parameter ``t``
        self.step_param = next((p.name for p in params if p.name == "t" and p.type == "int"), None)

        row_sparse = spec.get("row_sparse") or {}
        lazy = row_sparse.get("lazy")
        #: the bool parameter that chooses lazy or standard row-sparse updates
        self.lazy_param = lazy if isinstance(lazy, str) else None
        self.lazy_default = next((p.get("default") for p in spec.get("params", [])
                                  if p["name"] == self.lazy_param), None)
        self.always_lazy = lazy is True
        #: False for the sparse-only ops (adagrad, group_adagrad)
        self.dense = row_sparse.get("dense", True) is not False
        #: the op writes a temporary (lamb phase 1's g) to out and only reads the weight
        self.output = spec.get("output") is not None
        #: the output's fixed dtype (mp lamb phase 1's float32 g), None: the weight's
        self.output_dtype = meta.output_dtype
        self.skip_if = spec.get("skip_if")
        #: MXNet's flat multi-tensor convention: {count: PARAM, per_tensor: {lr: lrs, ...}}
        self.multi = spec.get("multi")
        self.ignored = frozenset(p["name"] for p in spec.get("params", []) if p.get("ignored"))
        #: each parameter's default as the spec gives it (None: required)
        self.defaults = {p["name"]: p.get("default") for p in spec.get("params", [])}
        self.has_multi_variant = hasattr(generated, f"{name}_multi")
        #: the op's math reduces whole tensors (norm, sum, ...): one element reaches every element
        self.reduces = load_spec(ROOT / "specs" / f"{name}.yaml").totals is not None
        #: False where the op refuses row-sparse gradients (ops with whole-tensor reductions)
        self.row_sparse_kernels = bool({s.value for s in meta.schedules} & {"lazy", "standard"})

    def __repr__(self) -> str:
        return f"Op({self.name!r})"

    @property
    def sparse_modes(self) -> dict:
        """Row-sparse modes: name -> extra keyword arguments ({} for none at all)."""
        if self.multi or not self.row_sparse_kernels:
            return {}
        if self.lazy_param:
            return {"lazy": {self.lazy_param: True}, "standard": {self.lazy_param: False}}
        if self.always_lazy:
            return {"lazy": {}}
        return {"standard": {}}

    def out_dtype(self, dtype) -> np.dtype:
        """The dtype of ``out`` in a call whose weight is ``dtype``."""
        return np.dtype(dtype) if self.output_dtype is None else self.output_dtype

    def dtype_of(self, name: str, dtype, state_dtype=None) -> np.dtype:
        """The dtype of tensor ``name`` in a call whose weight is ``dtype`` and whose states
        are ``state_dtype`` (default: ``dtype``): its fixed dtype, else the state dtype for a
        state, else (the weight, the gradient, a scalar input) ``dtype``."""
        if name in self.fixed:
            return self.fixed[name]
        if name in self.states:
            return np.dtype(dtype if state_dtype is None else state_dtype)
        return np.dtype(dtype)


@functools.lru_cache(maxsize=None)
def op(name: str) -> Op:
    return Op(name)


def ops(where=lambda o: True) -> list[str]:
    """The ops (names) for which ``where(Op)`` holds."""
    return [name for name in OPS if where(op(name))]


#: the ops with the usual call (not MXNet's flat multi-tensor convention)
SINGLE = ops(lambda o: not o.multi)
#: the ops that take a row-sparse gradient
ROW_SPARSE = ops(lambda o: bool(o.sparse_modes))
#: the ops with fixed-dtype (float32) tensors
MIXED_PRECISION = ops(lambda o: o.mixed_precision and not o.multi)


def ops_with_free_states(where=lambda o: True) -> list[str]:
    """The ops (names) with at least one state without a fixed dtype (MXNet's multi_* ops
    included), for which ``where(Op)`` holds: those a call may give a state dtype of its own."""
    return ops(lambda o: bool(o.free_states) and where(o))


#: the ops whose states may be kept in their own precision (STATE_DTYPE_COMBOS)
MIXED_STATE_OPS = ops_with_free_states()


def check(actual, expected, name: str, weight_dtype, what: str = "") -> None:
    """reference.assert_close with the op's tolerance (float32-level for mp ops' float64 weights)."""
    reference.assert_close(actual, expected, f"{name}: {what}", weight_dtype=weight_dtype,
                           mixed_precision=op(name).mixed_precision)


# =============================================================================================
# Parameter values (by hand)
# =============================================================================================
# "defaults": the required parameters only; "mixed": wd, rescale_grad and clipping together
# (bounds small enough that N(0,1) gradients get clipped, checked by
# test_numerics.test_parameter_sets_that_clip_really_clip). The first four ops have more sets,
# one per parameter. Each op's step counter `t` is set per step (step_params), not here.
#: Adam with torch's semantics (with and without AMSGrad's maximum)
_TORCH_ADAM = {
    "defaults": dict(step_size=0.01 / (1 - 0.9 ** 3)),
    "mixed": dict(step_size=0.02, beta1=0.8, beta2=0.99, eps=1e-6, bias_correction2_sqrt=(1 - 0.99 ** 3) ** 0.5,
                  weight_decay=0.1, decay=0.999, maximize=True),
}
PARAMS = {
    "sgd_update": {
        "defaults": dict(lr=0.1),
        "wd": dict(lr=0.1, wd=0.01),
        "rescale": dict(lr=0.1, rescale_grad=0.5),
        "clip": dict(lr=0.1, rescale_grad=2.0, clip_gradient=0.7),
        "clip0_off": dict(lr=0.1, clip_gradient=0.0),
        "clipneg_off": dict(lr=0.1, clip_gradient=-0.5),
        "mixed": dict(lr=0.05, wd=0.1, rescale_grad=1.5, clip_gradient=1.0),
    },
    "sgd_mom_update": {
        "defaults": dict(lr=0.1),
        "momentum": dict(lr=0.1, momentum=0.9),
        "wd": dict(lr=0.1, momentum=0.9, wd=0.01),
        "rescale": dict(lr=0.1, momentum=0.5, rescale_grad=0.25),
        "clip": dict(lr=0.1, momentum=0.9, clip_gradient=0.5),
        "clip0_off": dict(lr=0.1, momentum=0.9, clip_gradient=0.0),
        "mixed": dict(lr=0.05, momentum=0.8, wd=0.1, rescale_grad=2.0, clip_gradient=1.0),
    },
    "adam_update": {
        "defaults": dict(lr=0.01),
        "wd": dict(lr=0.01, wd=0.1),
        "betas_eps": dict(lr=0.02, beta1=0.8, beta2=0.99, epsilon=0.5),
        "rescale": dict(lr=0.01, rescale_grad=0.125),
        "clip": dict(lr=0.01, clip_gradient=0.5),
        "clip0_off": dict(lr=0.01, clip_gradient=0.0),
        "mixed": dict(lr=0.03, beta1=0.85, beta2=0.995, epsilon=1e-6, wd=0.05, rescale_grad=3.0,
                      clip_gradient=1.2),
    },
    "rmsprop_update": {
        "defaults": dict(lr=0.01),
        "wd": dict(lr=0.01, wd=0.1),
        "gamma_eps": dict(lr=0.01, gamma1=0.9, epsilon=1e-3),
        "rescale": dict(lr=0.01, rescale_grad=0.5),
        "clip": dict(lr=0.01, clip_gradient=0.5),
        "clip0_off": dict(lr=0.01, clip_gradient=0.0),
        "clip_weights": dict(lr=0.5, clip_weights=0.8),
        "clip_weights0_off": dict(lr=0.5, clip_weights=0.0),
        "mixed": dict(lr=0.05, gamma1=0.9, epsilon=1e-4, wd=0.05, rescale_grad=2.0,
                      clip_gradient=1.0, clip_weights=1.5),
    },
    "nag_mom_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, momentum=0.9, wd=0.02, rescale_grad=1.5, clip_gradient=0.8),
    },
    "rmspropalex_update": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.05, gamma1=0.9, gamma2=0.8, epsilon=1e-4, wd=0.05, rescale_grad=2.0,
                      clip_gradient=1.0, clip_weights=1.2),
    },
    "ftrl_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.2, lamda1=0.05, beta=0.5, wd=0.1, rescale_grad=0.5, clip_gradient=0.4),
    },
    "ftml_update": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.02, beta1=0.7, beta2=0.99, epsilon=1e-4, wd=0.05, rescale_grad=2.0,
                      clip_grad=1.0),
    },
    "signsgd_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, wd=0.1, rescale_grad=-2.0, clip_gradient=0.1),
    },
    "signum_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, momentum=0.9, wd=0.05, rescale_grad=1.5, clip_gradient=0.5,
                      wd_lh=0.02),
    },
    "adagrad_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, epsilon=1e-3, rescale_grad=2.0, clip_gradient=1.0),
    },
    "adamw_update": {
        "defaults": dict(rescale_grad=1.0, lr=0.01, eta=1.0),
        "mixed": dict(rescale_grad=1.5, lr=0.02, eta=0.5, beta1=0.8, beta2=0.99, epsilon=1e-6,
                      wd=0.1, clip_gradient=1.0),
    },
    "mp_sgd_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, wd=0.1, rescale_grad=1.5, clip_gradient=1.0),
    },
    "mp_sgd_mom_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, momentum=0.9, wd=0.05, rescale_grad=1.5, clip_gradient=1.0),
    },
    "mp_nag_mom_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, momentum=0.9, wd=0.02, rescale_grad=1.5, clip_gradient=0.8),
    },
    "mp_adamw_update": {
        "defaults": dict(rescale_grad=1.0, lr=0.01, eta=1.0),
        "mixed": dict(rescale_grad=1.5, lr=0.02, eta=0.5, beta1=0.8, beta2=0.99, epsilon=1e-6,
                      wd=0.1, clip_gradient=1.0),
    },
    "lamb_update": {
        "defaults": dict(lr=0.01, wd=0.0),
        "wd": dict(lr=0.01, wd=0.1),
        "no_bias_correction": dict(lr=0.02, wd=0.01, bias_correction=False),
        "bounds": dict(lr=0.05, wd=0.01, lower_bound=0.5, upper_bound=3.0),
        "mixed": dict(lr=0.02, beta1=0.8, beta2=0.99, epsilon=1e-4, wd=0.05, rescale_grad=2.0,
                      clip_gradient=1.0, lower_bound=0.1, upper_bound=10.0),
    },
    "lars_update": {
        "defaults": dict(lr=10.0),  # LARS's rates are large: the trust ratio brings them down (lars_eta)
        "momentum_wd": dict(lr=0.5, momentum=0.9, wd=0.01),
        "trust": dict(lr=1.0, lars_eta=0.02, epsilon=1e-3, wd=0.1),
        "mixed": dict(lr=0.3, momentum=0.5, lars_eta=0.01, epsilon=1e-6, wd=0.05, rescale_grad=2.0,
                      clip_gradient=0.5),
    },
    "lamb_update_phase1": {
        "defaults": dict(wd=0.0),
        "mixed": dict(beta1=0.8, beta2=0.99, epsilon=1e-4, bias_correction=False, wd=0.05,
                      rescale_grad=2.0, clip_gradient=1.0),
    },
    "lamb_update_phase2": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.05, lower_bound=0.5, upper_bound=3.0),
    },
    "mp_lamb_update_phase1": {
        "defaults": dict(wd=0.0),
        "wd": dict(wd=0.1),
        "mixed": dict(beta1=0.8, beta2=0.99, epsilon=1e-4, bias_correction=False, wd=0.05,
                      rescale_grad=2.0, clip_gradient=1.0),
    },
    "mp_lamb_update_phase2": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.05, lower_bound=0.5, upper_bound=3.0),
    },
    "group_adagrad_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, rescale_grad=2.0, clip_gradient=0.5, epsilon=1e-3),
    },
    # MXNet's multi-tensor ops: the values of one group (lrs=[lr], wds=[wd])
    "multi_sgd_update": {
        "defaults": dict(lr=0.1, wd=0.01),
        "mixed": dict(lr=0.05, wd=0.1, rescale_grad=1.5, clip_gradient=1.0),
    },
    "multi_sgd_mom_update": {
        "defaults": dict(lr=0.1, wd=0.01),
        "mixed": dict(lr=0.05, wd=0.05, momentum=0.9, rescale_grad=1.5, clip_gradient=1.0),
    },
    "multi_adamw_update": {
        "defaults": dict(lr=0.01, eta=1.0, wd=0.0),
        "mixed": dict(rescale_grad=1.5, lr=0.02, eta=0.5, beta1=0.8, beta2=0.99, epsilon=1e-6, wd=0.1,
                      clip_gradient=1.0),
    },
    "multi_mp_adamw_update": {
        "defaults": dict(lr=0.01, eta=1.0, wd=0.0),
        "mixed": dict(rescale_grad=1.5, lr=0.02, eta=0.5, beta1=0.8, beta2=0.99, epsilon=1e-6, wd=0.1,
                      clip_gradient=1.0),
    },
    "novograd_update": {
        "defaults": dict(lr=0.01),
        "wd": dict(lr=0.01, wd=0.1),
        "mixed": dict(lr=0.02, beta1=0.9, beta2=0.9, epsilon=1e-4, wd=0.05, grad_averaging=True),
    },
    "multi_lamb_update": {
        "defaults": dict(lr=0.01, wd=0.0),
        "wd": dict(lr=0.01, wd=0.1),
        "bounds": dict(lr=0.05, wd=0.01, lower_bound=0.5, upper_bound=3.0),
        "mixed": dict(lr=0.02, beta1=0.8, beta2=0.99, epsilon=1e-4, wd=0.05, rescale_grad=2.0,
                      clip_gradient=1.0, lower_bound=0.1, upper_bound=10.0, bias_correction=False),
    },
    "multi_mp_lamb_update": {
        "defaults": dict(lr=0.01, wd=0.0),
        "bounds": dict(lr=0.05, wd=0.01, lower_bound=0.5, upper_bound=3.0),
        "mixed": dict(lr=0.02, beta1=0.8, beta2=0.99, epsilon=1e-4, wd=0.05, rescale_grad=2.0,
                      clip_gradient=1.0, lower_bound=0.1, upper_bound=10.0, bias_correction=False),
    },
    "multi_mp_sgd_update": {
        "defaults": dict(lr=0.1, wd=0.01),
        "mixed": dict(lr=0.05, wd=0.1, rescale_grad=1.5, clip_gradient=1.0),
    },
    "multi_mp_sgd_mom_update": {
        "defaults": dict(lr=0.1, wd=0.01),
        "mixed": dict(lr=0.05, wd=0.05, momentum=0.9, rescale_grad=1.5, clip_gradient=1.0),
    },
    # torch.optim's semantics: the per-step host values as the classes compute them at t = 3
    "torch_adam_update": _TORCH_ADAM,
    "torch_amsgrad_update": _TORCH_ADAM,
    "torch_nadam_update": {
        "defaults": dict(grad_step=0.002, avg_step=0.01),
        "mixed": dict(grad_step=0.003, avg_step=0.02, beta1=0.8, beta2=0.99, eps=1e-6, bias_correction2=1 - 0.99 ** 3,
                      weight_decay=0.1, decay=0.999, maximize=True),
    },
    "torch_adafactor_vector_update": {
        "defaults": {},
        "mixed": dict(lr=0.05, beta2_decay=-0.5, eps1=1e-6, eps2=1e-2, d=0.5, weight_decay=0.1, maximize=True),
    },
    "torch_sgd_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, weight_decay=0.1, maximize=True),
    },
    "torch_sgd_momentum_update": {
        "defaults": dict(lr=0.1),
        "first": dict(lr=0.1, momentum=0.9, first=True),
        "nesterov": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
        "mixed": dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1, maximize=True),
    },
    "torch_adagrad_update": {
        "defaults": dict(clr=0.01),
        "mixed": dict(clr=0.01 / (1 + 2 * 0.1), eps=1e-6, weight_decay=0.1, maximize=True),
    },
    "torch_rmsprop_update": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.02, alpha=0.9, eps=1e-4, weight_decay=0.1, maximize=True),
    },
    "torch_rmsprop_momentum_update": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.02, alpha=0.9, eps=1e-4, weight_decay=0.1, momentum=0.9, maximize=True),
    },
    "torch_rmsprop_centered_update": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.02, alpha=0.9, eps=1e-4, weight_decay=0.1, maximize=True),
    },
    "torch_rmsprop_centered_momentum_update": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.02, alpha=0.9, eps=1e-4, weight_decay=0.1, momentum=0.9, maximize=True),
    },
}
# MXNet's preloaded multi ops run the multi ops' kernel: the same parameter sets
PARAMS.update({f"preloaded_{name}": PARAMS[name] for name in
               ("multi_sgd_update", "multi_sgd_mom_update", "multi_mp_sgd_update", "multi_mp_sgd_mom_update")})


def step_params(name: str, params: dict, step: int = 0) -> dict:
    """``params`` plus the op's step counter ``t`` = step + 1 (ftml, lamb phase 1)."""
    params = dict(params)
    counter = op(name).step_param
    if counter is not None and counter not in params:
        params[counter] = step + 1
    return params


# =============================================================================================
# Inputs
# =============================================================================================
#: how a plausible value of a state is drawn, by state name: ("normal", sd) or
#: ("uniform", low, high). weight32 (the float32 master weight) is drawn like a weight; the
#: mp ops' weight is then weight32 cast to the weight's dtype.
STATE_VALUES = {
    "mom": ("normal", 0.05),
    "mean": ("normal", 0.1),
    "var": ("uniform", 0.0, 0.01),
    "n": ("uniform", 0.0, 0.1),
    "history": ("uniform", 0.0, 0.1),
    "d": ("uniform", 0.0, 1.0),
    "v": ("uniform", 0.0, 0.01),
    "z": ("normal", 0.1),
    "g": ("normal", 0.05),
    "delta": ("normal", 0.01),
    "weight32": ("normal", 1.0),
    # torch.optim's state names
    "exp_avg": ("normal", 0.1),
    "exp_avg_sq": ("uniform", 0.0, 0.01),
    "max_exp_avg_sq": ("uniform", 0.0, 0.02),
    "momentum_buffer": ("normal", 0.05),
    "state_sum": ("uniform", 0.0, 0.1),
    "square_avg": ("uniform", 0.05, 0.1),  # above grad_avg ** 2: centered RMSprop takes its root
    "grad_avg": ("normal", 0.05),
    # Adafactor's factored second moment
    "row_var": ("uniform", 0.001, 0.01),
    "col_var": ("uniform", 0.001, 0.01),
    "variance": ("uniform", 0.0, 0.01),  # (a second moment: never negative)
}

#: the gradient's scale, where N(0, 1) does not fit (lamb phase 2's g is a direction)
GRAD_SCALE = {"lamb_update_phase2": 0.1, "mp_lamb_update_phase2": 0.1}


def _norm(a, dtype):
    a = a.data if isinstance(a, RowSparseArray) else a  # a row-sparse array's zero rows add nothing
    return np.array([np.linalg.norm(np.asarray(a).astype(np.float64))], dtype=dtype)


#: values for the scalar inputs that a parameter set does not give, by name: lamb phase 2's
#: r1 and r2 are the norms of the weight and of g
SCALAR_VALUES = {
    "r1": lambda case: _norm(case.weight, case.dtype),
    "r2": lambda case: _norm(case.grad, case.dtype),
}


def _draw(rng, how, shape):
    if how[0] == "normal":
        return rng.normal(0.0, how[1], size=shape)
    return rng.uniform(how[1], how[2], size=shape)


def rows_for(shape) -> np.ndarray:
    """Rows 1, n//2 and n-1 (sorted, unique)."""
    n = shape[0]
    return np.array(sorted({1, n // 2, n - 1}), dtype=np.int64)


def random_rows(rng, n: int) -> np.ndarray:
    """A random half of the rows (at least one), sorted."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, (n + 1) // 2)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def rsp(data, rows, shape) -> RowSparseArray:
    return RowSparseArray(data, np.asarray(rows, dtype=np.int64), shape)


def empty_rsp(shape, dtype) -> RowSparseArray:
    return RowSparseArray(np.zeros((0,) + tuple(shape[1:]), dtype=dtype), np.array([], dtype=np.int64), shape)


def _dense(a):
    return reference.densify(a.data, a.indices, a.shape) if isinstance(a, RowSparseArray) else a


def _copy(a):
    if isinstance(a, RowSparseArray):
        return RowSparseArray(a.data.copy(), a.indices, a.shape)
    return a.copy() if isinstance(a, np.ndarray) else a


def buffers(values) -> list:
    """The ndarrays among ``values`` (a row-sparse array's data and indices included)."""
    found = []
    for v in values:
        if isinstance(v, RowSparseArray):
            found.extend([v.data, v.indices])
        elif isinstance(v, np.ndarray):
            found.append(v)
    return found


def snapshot(arrays) -> list:
    return [np.array(a, copy=True) for a in buffers(arrays)]


def assert_unchanged(arrays, before, what: str = "bad call") -> None:
    """Every ndarray among ``arrays`` holds the bytes (and dtype) of its ``snapshot``."""
    now = buffers(arrays)
    assert len(now) == len(before)
    for k, (a, b) in enumerate(zip(now, before)):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{what}: array {k} was modified"


class Case:
    """One call: the op's tensors (signature order) and its parameters.

    ``params`` may hold scalar inputs (adamw's rescale_grad), which are then passed in their
    place in the signature. ``case(out=...)`` calls the generated op, ``case.expected()`` the
    reference on the same inputs (a row-sparse grad densified). ``dtype`` is the weight's (the
    gradient's); ``state_dtype`` that of the states without a fixed dtype (default: ``dtype``).
    """

    def __init__(self, name: str, arrays: dict, params: dict, dtype, state_dtype=None) -> None:
        self.op = op(name)
        self.name = name
        self.arrays = dict(arrays)
        self.params = dict(params)
        self.dtype = np.dtype(dtype)
        self.state_dtype = self.dtype if state_dtype is None else np.dtype(state_dtype)

    # -- the tensors ------------------------------------------------------------------------
    @property
    def weight(self):
        return self.arrays[self.op.weight]

    @weight.setter
    def weight(self, value):
        self.arrays[self.op.weight] = value

    @property
    def grad(self):
        return self.arrays[self.op.grad]

    @grad.setter
    def grad(self, value):
        self.arrays[self.op.grad] = value

    @property
    def states(self) -> list:
        return [self.arrays[n] for n in self.op.states]

    @states.setter
    def states(self, values):
        for n, v in zip(self.op.states, values, strict=True):
            self.arrays[n] = v

    def inputs(self) -> list:
        """The tensors in signature order (scalar inputs from ``params`` where given there)."""
        return [self.params[n] if n in self.params else self.arrays[n] for n in self.op.tensor_names]

    def kwargs(self) -> dict:
        return {k: v for k, v in self.params.items() if k not in self.op.tensor_names}

    def all_arrays(self) -> list:
        """Everything the call can see (for snapshots)."""
        return self.inputs()

    # -- calls ----------------------------------------------------------------------------
    def __call__(self, out=None, **extra):
        return call(self.name, self.inputs(), {**self.kwargs(), **extra}, out)

    def lazy_rows(self, extra=None):
        """The rows a call with the keyword arguments ``extra`` changes, if it is a lazy
        row-sparse update (the grad's indices); None for a dense or standard update."""
        if not isinstance(self.grad, RowSparseArray):
            return None
        lazy = self.op.always_lazy
        if self.op.lazy_param:
            lazy = bool((extra or {}).get(self.op.lazy_param, self.op.lazy_default))
        return self.grad.indices if lazy else None

    def expected(self, extra=None) -> tuple:
        """The reference's ``(out, *states)`` for a call with the keyword arguments ``extra``."""
        return self.reference(self.lazy_rows(extra))

    def reference(self, rows=None) -> tuple:
        """The reference on these inputs (a row-sparse grad densified); ``rows``: lazy update."""
        kwargs = self.kwargs()
        if rows is not None:
            kwargs["rows"] = rows
        return self.op.ref(*[_dense(a) for a in self.inputs()], **kwargs)

    def scale_grad(self, factor) -> None:
        """Multiply the gradient (a row-sparse one's data) by ``factor``, in place."""
        g = self.grad.data if isinstance(self.grad, RowSparseArray) else self.grad
        g *= factor
        self.new_scalars()

    def copy(self) -> Case:
        new = Case(self.name, {k: _copy(v) for k, v in self.arrays.items()}, self.params, self.dtype,
                   self.state_dtype)
        new.params = {k: _copy(v) for k, v in self.params.items()}
        return new

    def snapshot(self) -> list:
        return snapshot(self.all_arrays())

    def assert_unchanged(self, before, what: str = "bad call") -> None:
        assert_unchanged(self.all_arrays(), before, f"{self.name}: {what}")

    def check(self, actual, expected, what: str = "") -> None:
        """cases.check, the message naming the call's dtype and shape."""
        check(actual, expected, self.name, self.dtype, f"{self.where()} {what}")

    def where(self) -> str:
        """``float32 shape=7x33``; ``bfloat16/float32-states shape=7x33`` with states of
        another dtype."""
        dtypes = self.dtype.name
        if self.state_dtype != self.dtype:
            dtypes += f"/{self.state_dtype.name}-states"
        return f"{dtypes} {shape_id(np.shape(self.weight))}"

    def check_states(self, expected_states, what: str = "") -> None:
        for name, s, e in zip(self.op.states, self.states, expected_states, strict=True):
            self.check(s, e, f"{what} {name}")

    # -- new inputs -----------------------------------------------------------------------
    def new_grad(self, rng, rows=None) -> None:
        """A new N(0, 1) gradient: row-sparse on a random half of the rows (or ``rows``) for
        the sparse-only ops, dense otherwise; then new values for the generated scalar inputs."""
        shape = self.weight.shape
        dense = (rng.normal(0.0, 1.0, size=shape) * GRAD_SCALE.get(self.name, 1.0)).astype(
            self.op.dtype_of(self.op.grad, self.dtype))
        if not self.op.dense:
            rows = random_rows(rng, shape[0]) if rows is None else rows
            self.grad = rsp(dense[rows].copy(), rows, shape)
        else:
            self.grad = dense
        self.new_scalars()

    def new_scalars(self) -> None:
        for name in self.op.scalars:
            if name not in self.params:
                self.arrays[name] = SCALAR_VALUES[name](self)


def make_case(name: str, seed_: int, shape, dtype, params: dict | None = None, *,
              per_row_column: bool = False, grad_rows=None, state_dtype=None) -> Case:
    """Deterministic inputs: a N(0, 1) weight, plausible states (STATE_VALUES; per-row states
    of shape (rows,), or (rows, 1) with ``per_row_column``; a grid op's weight (..., rows,
    cols): (..., rows) or (..., rows, 1), its per-column ones (..., cols) or (..., 1, cols)), a gradient (Case.new_grad) and the
    scalar inputs. An mp op's weight is its weight32 cast to the weight's dtype.

    The states without a fixed dtype are stored as ``state_dtype`` (default: ``dtype``; it is
    ignored for an op without such states); the values drawn are the same whatever it is
    (only the final cast differs)."""
    info = op(name)
    rng = np.random.default_rng(seed_)
    weight = rng.normal(0.0, 1.0, size=shape).astype(dtype)
    values = {}
    for state in info.states + info.inputs:
        if state in info.per_tensor:
            sshape = (1,)
        elif state in info.per_row and name in GRID_OPS:  # (..., rows, cols): each slice's rows
            sshape = (*shape[:-1], 1) if per_row_column else tuple(shape[:-1])
        elif state in info.per_row:
            sshape = (shape[0], 1) if per_row_column else (shape[0],)
        elif state in info.per_col:  # (a grid op's: each slice's columns)
            sshape = (*shape[:-2], 1, shape[-1]) if per_row_column else (*shape[:-2], shape[-1])
        else:
            sshape = shape
        values[state] = _draw(rng, STATE_VALUES[state], sshape)
    if name == "rmspropalex_update":  # n >= g*g: a variance estimate
        values["n"] = values["g"] * values["g"] + rng.uniform(0.01, 0.1, size=shape)
    arrays = {info.weight: weight}
    for state in info.states + info.inputs:
        arrays[state] = np.asarray(values[state]).astype(info.dtype_of(state, dtype, state_dtype))
    if "weight32" in info.states + info.inputs:
        arrays[info.weight] = arrays["weight32"].astype(dtype)
    case = Case(name, arrays, params or {}, dtype, state_dtype if info.free_states else None)
    case.new_grad(rng, rows=grad_rows)  # the grad, then the scalar inputs
    return case


def multi_call_args(name: str, groups: list, kwargs: dict, count: int = 1) -> tuple[list, dict]:
    """MXNet's flat multi-tensor convention: ``data`` (the flat ``groups``, then the trailing
    parameters' arrays: MXNet's preloaded lrs, wds, multi adamw's rescale_grad) and the
    keywords (per-tensor lists of ``count`` equal values, the count)."""
    info = op(name)
    per_tensor = info.multi["per_tensor"]
    kw = {per_tensor.get(k, k): ([v] * count if k in per_tensor else v) for k, v in kwargs.items()}
    kw[info.multi["count"]] = count
    data = list(groups)
    for public in info.multi.get("trailing", []):
        param = next((k for k, v in per_tensor.items() if v == public), public)
        value = kwargs[param] if param in kwargs else info.defaults.get(param)
        kw.pop(public, None)
        per = public != param
        data.append(np.array([value] * count if per else [value], np.float64))  # (exact: the reference reads it)
    return data, kw


def call(name: str, args, kwargs: dict, out=None):
    """Call the generated op; MXNet's multi_* ops with one group (``lrs=[lr]``, ...)."""
    info = op(name)
    if info.multi:
        args, kw = multi_call_args(name, list(args), kwargs)
        result = info.fn(*args, **kw, out=None if out is None else [out])
        assert isinstance(result, list) and len(result) == 1, result
        return result[0]
    return info.fn(*args, **kwargs, out=out)


def saved_arrays_by_thread_count(script: str, args: list[str], threads: tuple[int, ...], folder: Path) -> list:
    """Runs ``script`` (which np.savez-es its arrays to its first argument) in a fresh
    process per OpenMP thread count, from the project root; each run's arrays, in order."""
    import os
    import subprocess
    import sys

    results = []
    for count in threads:
        path = folder / f"t{count}.npz"
        run = subprocess.run([sys.executable, "-c", script, str(path), *args], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(count)})
        assert run.returncode == 0, run.stderr
        with np.load(path) as data:
            results.append([data[k] for k in sorted(data.files, key=lambda f: int(f.split("_")[1]))])
    return results


def float32_values_with_specials(size: int, layout: str, special_bits: list[int], base: float, exponents: tuple[int, int]):
    """``size`` float32 values of magnitudes base ** exponents (seeded by the size), with the
    special patterns nowhere ("normal values only"), one in ~97 places ("specials scattered")
    or in a run of 48 from a random place ("specials in runs")."""
    rng = np.random.default_rng(size)
    values = (rng.normal(size=size) * float(base) ** rng.integers(*exponents, size)).astype(np.float32)
    if layout != "normal values only":
        specials = np.array(special_bits, np.uint32).view(np.float32)
        if layout == "specials scattered":
            where = rng.choice(size, size=max(1, size // 97), replace=False)
            values[where] = rng.choice(specials, size=len(where))
        else:
            start = rng.integers(0, size)
            values[start:start + 48] = np.resize(specials, len(values[start:start + 48]))
    return values
