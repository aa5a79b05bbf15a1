"""The second family of optimizer ops against tests/reference_family.py.

Reference doc: /work/shared/reference/mxnet-optimizers.md, sections 1, 2.3, 2.4, 2.7-2.14,
3, 4, 5 (MXNet 1.9.1 semantics) and 7 (opgen's deviations). Covered here:

* a grid: backend x dtype x shape x 2 parameter sets, 3 consecutive steps per case, every
  output and state compared with the independent NumPy reference after every step (the
  reference is fed the arrays as they were before the step, so a 1-ulp difference cannot
  snowball through the carried state);
* one step per op against values worked out by hand from the formulas (literal numbers);
* row-sparse gradients (standard update for the dense-kernel ops, lazy for adagrad,
  group_adagrad and mp_sgd / mp_sgd_mom with lazy_update=True);
* the special rules: adamw's skip on rescale_grad 0/NaN/Inf, adagrad's and group_adagrad's
  sparse-only contract, ftml's beta range, the mp ops' dtype rules and their never-read
  weight, lamb phase 2's bounds, nag's aliasing independence, signsgd ignoring rescale and
  clip, clip bounds <= 0 meaning "off", and bad calls leaving every array unchanged.

An op that is not generated yet is skipped ("not generated yet").
"""

from __future__ import annotations

import zlib
from math import sqrt

import numpy as np
import pytest

import generated
import reference_family as rf
from reference_family import densify

DTYPES = [np.float16, np.float32, np.float64]
DTYPE_IDS = ["float16", "float32", "float64"]
SHAPES = [(0,), (1,), (7,), (3, 4, 5), (65, 33)]
SHAPE_IDS = ["shape=" + "x".join(map(str, s)) for s in SHAPES]

# op -> names of the state tensors, in signature order (they follow weight, grad)
STATES = {
    "nag_mom_update": ("mom",),
    "rmspropalex_update": ("n", "g", "delta"),
    "ftrl_update": ("z", "n"),
    "ftml_update": ("d", "v", "z"),
    "signsgd_update": (),
    "signum_update": ("mom",),
    "adagrad_update": ("history",),
    "adamw_update": ("mean", "var"),
    "mp_sgd_update": ("weight32",),
    "mp_sgd_mom_update": ("mom", "weight32"),
    "mp_nag_mom_update": ("mom", "weight32"),
    "mp_adamw_update": ("mean", "var", "weight32"),
    "lamb_update_phase1": ("mean", "var"),
    "lamb_update_phase2": ("r1", "r2"),  # read-only one-element inputs, built per step
    "group_adagrad_update": ("history",),
}
OPS = list(STATES)
MP_OPS = [op for op in OPS if op.startswith("mp_")]
SPARSE_ONLY = ("adagrad_update", "group_adagrad_update")
LAZY_MP = ("mp_sgd_update", "mp_sgd_mom_update")
T_OPS = ("ftml_update", "lamb_update_phase1")  # t = step number (1, 2, 3)

# Two parameter sets per op: "defaults" (required parameters only) and "mixed" (wd,
# rescale_grad and clipping, with bounds small enough that N(0,1) gradients get clipped).
PARAMS = {
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
    "lamb_update_phase1": {
        "defaults": dict(wd=0.0),
        "mixed": dict(beta1=0.8, beta2=0.99, epsilon=1e-4, bias_correction=False, wd=0.05,
                      rescale_grad=2.0, clip_gradient=1.0),
    },
    "lamb_update_phase2": {
        "defaults": dict(lr=0.01),
        "mixed": dict(lr=0.05, lower_bound=0.5, upper_bound=3.0),
    },
    "group_adagrad_update": {
        "defaults": dict(lr=0.1),
        "mixed": dict(lr=0.05, rescale_grad=2.0, clip_gradient=0.5, epsilon=1e-3),
    },
}
PSETS = ("defaults", "mixed")

REF = {op: getattr(rf, op) for op in OPS}


# -- helpers ---------------------------------------------------------------------------------
def _impl(op):
    if not hasattr(generated, op):
        pytest.skip("not generated yet")
    return getattr(generated, op)


def _rsp(data, rows, shape):
    from generated import RowSparseArray
    return RowSparseArray(data, np.asarray(rows, dtype=np.int64), shape)


def _seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


def check(actual, expected, op, weight_dtype, what):
    """Same dtype and shape; values within the tolerance of reference_family.tolerance."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol, atol = rf.tolerance(op, weight_dtype, expected.dtype)
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True, err_msg=f"{op}: {what}")


def _state_dtype(op, dtype):
    return np.float32 if op.startswith("mp_") else dtype


def make_states(op, rng, shape, dtype):
    """Plausible optimizer states for ``op`` (mp states are float32)."""
    sd = _state_dtype(op, dtype)
    n_rows = shape[0]

    def normal(scale):
        return rng.normal(0.0, scale, size=shape)

    def uniform(lo, hi):
        return rng.uniform(lo, hi, size=shape)

    if op == "rmspropalex_update":
        g = normal(0.05)
        n = g * g + uniform(0.01, 0.1)  # n >= g*g: a variance estimate
        vals = [n, g, normal(0.01)]
    elif op == "ftrl_update":
        vals = [normal(0.1), uniform(0.0, 0.1)]
    elif op == "ftml_update":
        vals = [uniform(0.0, 1.0), uniform(0.0, 0.01), normal(0.1)]
    elif op in ("nag_mom_update", "signum_update"):
        vals = [normal(0.05)]
    elif op == "adagrad_update":
        vals = [uniform(0.0, 0.1)]
    elif op == "group_adagrad_update":
        vals = [rng.uniform(0.0, 0.1, size=(n_rows,))]
    elif op in ("adamw_update", "lamb_update_phase1"):
        vals = [normal(0.1), uniform(0.0, 0.01)]
    elif op == "mp_sgd_update":
        vals = [normal(1.0)]
    elif op in ("mp_sgd_mom_update", "mp_nag_mom_update"):
        vals = [normal(0.05), normal(1.0)]
    elif op == "mp_adamw_update":
        vals = [normal(0.1), uniform(0.0, 0.01), normal(1.0)]
    elif op in ("signsgd_update", "lamb_update_phase2"):
        vals = []
    else:  # pragma: no cover
        raise KeyError(op)
    return [np.asarray(v).astype(sd) for v in vals]


def make_case(op, seed, shape, dtype):
    """(weight, states): an mp weight equals weight32 cast to its dtype."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 1.0, size=shape).astype(dtype)
    states = make_states(op, rng, shape, dtype)
    if op.startswith("mp_"):
        weight = states[-1].astype(dtype)
    return weight, states


def _rows(rng, n):
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    k = max(1, (n + 1) // 2)
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


def _snap(arrays):
    return [np.array(a, copy=True) for a in arrays]


def _assert_unchanged(arrays, before, what="bad call"):
    for k, (a, b) in enumerate(zip(arrays, before)):
        a = a.data if hasattr(a, "indices") else a
        b = b.data if hasattr(b, "indices") else b
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f"{what}: array {k} was modified"


def _lamb2_inputs(rng, weight, dtype):
    shape = weight.shape
    g = (rng.normal(0.0, 1.0, size=shape) * 0.1).astype(dtype)
    r1 = np.array([np.linalg.norm(weight.astype(np.float64))], dtype=dtype)
    r2 = np.array([np.linalg.norm(g.astype(np.float64))], dtype=dtype)
    return g, r1, r2


def _t_params(op, params, step):
    params = dict(params)
    if op in T_OPS:
        params["t"] = step + 1
    return params


# =============================================================================================
# 1. The reference grid
# =============================================================================================
CASES = [(op, p) for op in OPS for p in PSETS]
CASE_IDS = [f"{op}-{p}" for op, p in CASES]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,pset", CASES, ids=CASE_IDS)
def test_grid_three_steps(backend, op, pset, dtype, shape):
    fn = _impl(op)
    seed = _seed(op, pset, np.dtype(dtype).name, shape)
    weight, states = make_case(op, seed, shape, dtype)
    if op == "group_adagrad_update" and pset == "mixed":
        states = [states[0].reshape(shape[0], 1).copy()]  # the (N, 1) history form
    rng = np.random.default_rng(seed + 1)
    names = STATES[op]
    for step in range(3):
        params = _t_params(op, PARAMS[op][pset], step)
        w0, s0 = weight.copy(), _snap(states)
        where = f"{op}[{pset}] step {step}"

        if op == "lamb_update_phase2":
            g, r1, r2 = _lamb2_inputs(rng, weight, dtype)
            g0 = g.copy()
            (exp_w,) = REF[op](w0, g, r1, r2, **params)
            result = fn(weight, g, r1, r2, **params, out=weight)
            assert result is weight
            check(weight, exp_w, op, dtype, f"{where} weight")
            assert g.tobytes() == g0.tobytes(), "g must not be modified"
            continue

        grad_dense = rng.normal(0.0, 1.0, size=shape).astype(dtype)
        if op in SPARSE_ONLY:
            rows = _rows(rng, shape[0])
            grad = _rsp(grad_dense[rows].copy(), rows, shape)
            grad_dense = densify(grad.data, rows, shape)
            expected = REF[op](w0, grad_dense, *s0, **params, rows=rows)
        else:
            grad = grad_dense
            expected = REF[op](w0, grad_dense, *s0, **params)
        g_before = np.array(grad.data if op in SPARSE_ONLY else grad, copy=True)

        if op == "lamb_update_phase1":
            result = fn(weight, grad, *states, **params)
            assert isinstance(result, np.ndarray) and result is not weight
            assert weight.tobytes() == w0.tobytes(), "phase 1 must not write the weight"
        else:
            result = fn(weight, grad, *states, **params, out=weight)
            assert result is weight
        check(result, expected[0], op, dtype, f"{where} out")
        for name, s, e in zip(names, states, expected[1:]):
            check(s, e, op, dtype, f"{where} {name}")
        g_after = grad.data if op in SPARSE_ONLY else grad
        assert g_after.tobytes() == g_before.tobytes(), "grad must not be modified"


def test_clip_parameter_sets_clip():
    """Reference-only sanity: each 'mixed' set really clips some N(0,1) gradients."""
    rng = np.random.default_rng(0)
    for op in OPS:
        params = dict(PARAMS[op]["mixed"])
        key = next((k for k in ("clip_gradient", "clip_grad") if k in params), None)
        if key is None or op == "signsgd_update":
            continue
        shape = (200,)
        weight, states = make_case(op, 7, shape, np.float64)
        grad = rng.normal(0.0, 1.0, size=shape)
        kw = _t_params(op, params, 0)
        extra = dict(rows=np.arange(200)) if op in SPARSE_ONLY else {}
        got = REF[op](weight, grad, *states, **kw, **extra)
        kw[key] = -1.0
        plain = REF[op](weight, grad, *states, **kw, **extra)
        assert not all(np.array_equal(a, b) for a, b in zip(got, plain)), op


@pytest.mark.parametrize("op", [o for o in OPS if o not in ("lamb_update_phase2",)])
def test_reference_float32_tracks_float64(op):
    """Reference-only sanity: the float32 path agrees with the float64 path loosely."""
    for pset in PSETS:
        params = _t_params(op, PARAMS[op][pset], 0)
        w64, s64 = make_case(op, 3, (50,), np.float64)
        grad64 = np.random.default_rng(4).normal(0.0, 1.0, size=(50,))
        extra = dict(rows=np.arange(50)) if op in SPARSE_ONLY else {}
        r64 = REF[op](w64, grad64, *s64, **params, **extra)
        w32 = w64.astype(np.float32)
        s32 = [s.astype(np.float32) for s in s64]
        r32 = REF[op](w32, grad64.astype(np.float32), *s32, **params, **extra)
        for a, b in zip(r32, r64):
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{op}[{pset}]")


# =============================================================================================
# 2. One step against values worked out by hand
# =============================================================================================
# Each case: op, tensors (weight, grad, states...) as lists, params, expected (out, states...)
# The expected numbers are the doc's formulas evaluated with the literal numbers shown.
HAND = {
    # 2.3: mom_s = mu*mom ; gg = clip(rg*g) + wd*w ; out = w - mom_s + (mu+1)*(mom_s - lr*gg)
    #      mom' = mom_s - lr*gg (old w)
    # e0: rg*g = 0.8 (no clip), gg = 0.81, mom_s = 0.09, out = 0.91 + 1.9*0.009 = 0.9271, mom' = 0.009
    # e1: rg*g = -4 -> -1.5, gg = -1.505, mom_s = 0, out = -0.5 + 1.9*0.1505 = -0.21405, mom' = 0.1505
    "nag_mom_update": (
        [[1.0, -0.5], [0.4, -2.0], [0.1, 0.0]],
        dict(lr=0.1, momentum=0.9, wd=0.01, rescale_grad=2.0, clip_gradient=1.5),
        [[0.9271, -0.21405], [0.009, 0.1505]]),
    # 2.7: gr = rg*g + wd*w (clip 1.0); n = 0.1*gr*gr + 0.9*n ; g = 0.1*gr + 0.9*g
    #      delta = 0.8*delta - lr*gr/sqrt(n - g*g + 1e-4) ; out = w + delta (clip to +-1.5)
    # e0: gr = 0.4+0.2 = 0.6, n = 0.036+0.09 = 0.126, g = 0.06+0.045 = 0.105,
    #     delta = 0.008 - 0.06/sqrt(0.126-0.011025+0.0001) = -0.16887268091227597
    # e1: gr = 6-0.4 -> 1.0, n = 0.1, g = 0.1, delta = -0.1/sqrt(0.0901) = -0.33314830232638476,
    #     out = -2.3331... -> clipped to -1.5
    "rmspropalex_update": (
        [[1.0, -2.0], [0.2, 3.0], [0.1, 0.0], [0.05, 0.0], [0.01, 0.0]],
        dict(lr=0.1, gamma1=0.9, gamma2=0.8, epsilon=1e-4, wd=0.2, rescale_grad=2.0,
             clip_gradient=1.0, clip_weights=1.5),
        [[0.831127319087724, -1.5], [0.126, 0.1], [0.105, 0.1],
         [-0.16887268091227597, -0.33314830232638476]]),
    # 2.8: gr = clip(rg*g) ; z += gr - (sqrt(n+gr^2) - sqrt(n))*w/lr ; n += gr^2
    #      out = (sign(z)*l1 - z)/((beta + sqrt(n))/lr + wd) if |z| > l1 else 0
    # e0: gr = 0.2, z = 0.3 - (sqrt(0.29)-0.5)*0.5/0.1 = 0.10741759643274817, n = 0.29,
    #     out = (0.05 - z)/((1+sqrt(0.29))/0.1 + 0.1) = -0.003707909934952328
    # e1: gr = -1.5 -> -1, z = -1.2 - (1-0)*(-0.3)/0.1 = 1.8, n = 1, out = -1.75/20.1
    # e2: gr = 0, z = 0.001 (|z| <= 0.05 -> out 0), n = 0.04
    "ftrl_update": (
        [[0.5, -0.3, 0.2], [0.4, -3.0, 0.0], [0.1, -0.2, 0.001], [0.25, 0.0, 0.04]],
        dict(lr=0.1, lamda1=0.05, beta=1.0, wd=0.1, rescale_grad=0.5, clip_gradient=1.0),
        [[-0.003707909934952328, -1.75 / 20.1, 0.0], [0.10741759643274817, 1.8, 0.001],
         [0.29, 1.0, 0.04]]),
    # 2.9 (t = 2): gr = g + 0.1*w (clip 1); v = 0.9*v + 0.1*gr^2 ;
    #      d_t = (1-0.6^2)/0.1*(sqrt(v/(1-0.9^2)) + 1e-3) ; z = 0.6*z + 0.4*gr - (d_t - 0.6*d)*w
    #      out = -z/d_t
    # e0: gr = 0.4, v = 0.052, d_t = 6.4*(sqrt(0.052/0.19)+0.001) = 3.354549528195821,
    #     z = 0.34 - d_t = -3.014549528195821, out = 0.898645109531931
    # e1: gr = 1.95 -> 1, v = 0.1, d_t = 6.4*(sqrt(0.1/0.19)+0.001) = 4.6494480007040755,
    #     z = 0.4 + 0.5*d_t = 2.7247240003520377, out = -0.5860317181608283
    "ftml_update": (
        [[1.0, -0.5], [0.3, 2.0], [0.5, 0.0], [0.04, 0.0], [-0.2, 0.0]],
        dict(lr=0.1, beta1=0.6, beta2=0.9, epsilon=1e-3, t=2, wd=0.1, rescale_grad=1.0,
             clip_grad=1.0),
        [[0.898645109531931, -0.5860317181608283], [3.354549528195821, 4.6494480007040755],
         [0.052, 0.1], [-3.014549528195821, 2.7247240003520377]]),
    # 2.10: out = (1 - lr*wd)*w - lr*sign(g) = 0.95*w - 0.1*sign(g); rescale/clip ignored
    "signsgd_update": (
        [[1.0, -2.0, 0.5], [0.3, -0.1, 0.0]],
        dict(lr=0.1, wd=0.5, rescale_grad=-4.0, clip_gradient=0.01),
        [[0.85, -1.8, 0.475]]),
    # 2.10: mom = 0.9*mom - 0.1*0.1*w - 0.1*clip(0.5*g, 1) ; out = (1 - 0.1*0.2)*w + 0.1*sign(mom)
    # e0: mom = 0.18 - 0.01 - 0.025 = 0.145, out = 0.98 + 0.1 = 1.08
    # e1: mom = -0.009 + 0.01 - 0.1 = -0.099, out = -0.98 - 0.1 = -1.08
    "signum_update": (
        [[1.0, -1.0], [0.5, 4.0], [0.2, -0.01]],
        dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=0.5, clip_gradient=1.0, wd_lh=0.2),
        [[1.08, -1.08], [0.145, -0.099]]),
    # 2.12: sg = clip(0.5*g, 1) ; m = 0.9*m + 0.1*sg ; v = 0.99*v + 0.01*sg^2 ;
    #       out = w - 0.5*(0.1*m/(sqrt(v) + 1e-3) + 0.1*w)
    # e0: sg = 0.1, m = 0.1, v = 0.01, out = 1 - 0.5*(0.01/0.101 + 0.1) = 0.9004950495049505
    # e1: sg = -1.5 -> -1, m = -0.1, v = 0.01, out = -2 - 0.5*(-0.01/0.101 - 0.2) = -1.8504950495049504
    "adamw_update": (
        [[1.0, -2.0], [0.2, -3.0], [0.1, 0.0], [0.01, 0.0]],
        dict(rescale_grad=0.5, lr=0.1, eta=0.5, beta1=0.9, beta2=0.99, epsilon=1e-3, wd=0.1,
             clip_gradient=1.0),
        [[0.9004950495049505, -1.8504950495049504], [0.1, -0.1], [0.01, 0.01]]),
    # 2.13 (t = 2): gr = clip(0.5*g, 1) ; m = 0.9*m + 0.1*gr ; v = 0.99*v + 0.01*gr^2 ;
    #      g = (m/(1-0.81))/(sqrt(v/(1-0.9801)) + 1e-3) + 0.1*w
    # e0: gr = 0.1, m = 0.1, v = 0.01, g = (0.1/0.19)/(sqrt(0.01/0.0199)+0.001) + 0.1
    # e1: gr = -2 -> -1, m = -0.1, v = 0.01, g = (-0.1/0.19)/(sqrt(0.01/0.0199)+0.001) - 0.05
    "lamb_update_phase1": (
        [[1.0, -0.5], [0.2, -4.0], [0.1, 0.0], [0.01, 0.0]],
        dict(beta1=0.9, beta2=0.99, epsilon=1e-3, t=2, bias_correction=True, wd=0.1,
             rescale_grad=0.5, clip_gradient=1.0),
        [[0.8414138953960676, -0.7914138953960669], [0.1, -0.1], [0.01, 0.01]]),
}

# mp ops: tensors (grad, states...) -- the weight is NaN (never read); expected (weight32', states')
MP_HAND = {
    # 2.4: w32 = (1 - 0.1*0.1)*w32 - 0.1*clip(2*g, 3): 0.99*1 - 0.1 = 0.89 ; 1.98 + 0.3 = 2.28
    "mp_sgd_update": (
        [[0.5, -4.0], [1.0, 2.0]],
        dict(lr=0.1, wd=0.1, rescale_grad=2.0, clip_gradient=3.0),
        [[0.89, 2.28]]),
    # 2.4: mom = 0.9*mom - 0.1*0.1*w32 - 0.1*clip(2*g, 3) ; w32 += mom
    # e0: mom = 0.09 - 0.01 - 0.1 = -0.02, w32 = 0.98 ; e1: mom = -0.18 - 0.02 + 0.3 = 0.1, w32 = 2.1
    "mp_sgd_mom_update": (
        [[0.5, -4.0], [0.1, -0.2], [1.0, 2.0]],
        dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=2.0, clip_gradient=3.0),
        [[-0.02, 0.1], [0.98, 2.1]]),
    # 2.4 MP_NAGMomKernel: m = 0.9*mom ; w = w - m + 1.9*(m - 0.1*(2*g + 0.1*w)) ;
    #     mom = m - 0.1*(2*g + 0.1*w_NEW)
    # (grads are exact in float16)
    # e0: m = 0.09, w = 0.91 + 1.9*(0.09 - 0.1*(0.75 + 0.1)) = 0.9195,
    #     mom = 0.09 - 0.1*(0.75 + 0.1*0.9195) = 0.005805   (the old weight would give 0.005)
    # e1: m = 0, w = -1 + 1.9*0.11 = -0.791, mom = -0.1*(-1 - 0.0791) = 0.10791
    "mp_nag_mom_update": (
        [[0.375, -0.5], [0.1, 0.0], [1.0, -1.0]],
        dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=2.0),
        [[0.005805, 0.10791], [0.9195, -0.791]]),
    # 2.12 MPAdamWKernel, in fp32 from weight32: sg = clip(0.5*g, 1) ; m = 0.9*m + 0.1*sg ;
    #      v = 0.99*v + 0.01*sg^2 ; w32 = w32 - 0.5*(0.1*m/(sqrt(v) + 1e-3) + 0.1*w32)
    # e0: sg = 0.125, m = 0.1025, v = 0.01005625,
    #     w32 = 1 - 0.5*(0.01025/(sqrt(0.01005625) + 0.001) + 0.1) = 0.8993981367988492
    # e1: sg = -1.5 -> -1, m = -0.1, v = 0.01, w32 = -2 - 0.5*(-0.01/0.101 - 0.2) = -1.8504950495049504
    "mp_adamw_update": (
        [[0.25, -3.0], [0.1, 0.0], [0.01, 0.0], [1.0, -2.0]],
        dict(rescale_grad=0.5, lr=0.1, eta=0.5, beta1=0.9, beta2=0.99, epsilon=1e-3, wd=0.1,
             clip_gradient=1.0),
        [[0.1025, -0.1], [0.01005625, 0.01], [0.8993981367988492, -1.8504950495049504]]),
}

HAND_TOL = {np.float64: dict(rtol=1e-12, atol=1e-15), np.float32: dict(rtol=1e-4, atol=1e-7)}


def _hand_check(actual, expected, dtype, what):
    assert np.asarray(actual).dtype == np.dtype(dtype), what
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, err_msg=what,
                               **HAND_TOL[dtype])


def _hand_run(fn, op, dtype):
    tensors, params, expected = HAND[op]
    arrays = [np.array(t, dtype=dtype) for t in tensors]
    if fn is REF[op]:
        outs = fn(*arrays, **params)
    elif op == "lamb_update_phase1":
        outs = (fn(*arrays, **params), *arrays[2:])
    else:
        fn(*arrays, **params, out=arrays[0])
        outs = (arrays[0], *arrays[2:])
    for k, (a, e) in enumerate(zip(outs, expected)):
        _hand_check(a, e, dtype, f"{op} output {k}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("op", list(HAND))
def test_hand_values_reference(op, dtype):
    _hand_run(REF[op], op, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("op", list(HAND))
def test_hand_values(backend, op, dtype):
    _hand_run(_impl(op), op, dtype)


def _mp_hand_run(fn, op, wdtype):
    tensors, params, expected = MP_HAND[op]
    grad = np.array(tensors[0], dtype=wdtype)
    states = [np.array(t, dtype=np.float32) for t in tensors[1:]]
    weight = np.full(grad.shape, np.nan, dtype=wdtype)
    if fn is REF[op]:
        out, *new_states = fn(weight, grad, *states, **params)
    else:
        out = fn(weight, grad, *states, **params, out=weight)
        new_states = states
    for k, (a, e) in enumerate(zip(new_states, expected)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a.astype(np.float64), e, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{op} state {k}")
    w32 = np.array(expected[-1], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(out).astype(np.float64),
                               w32.astype(wdtype).astype(np.float64),
                               rtol=1e-3 if wdtype == np.float16 else 1e-5, atol=1e-7,
                               err_msg=f"{op} out")
    assert np.asarray(out).dtype == np.dtype(wdtype)


@pytest.mark.parametrize("wdtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(MP_HAND))
def test_mp_hand_values_reference(op, wdtype):
    _mp_hand_run(REF[op], op, wdtype)


@pytest.mark.parametrize("wdtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(MP_HAND))
def test_mp_hand_values(backend, op, wdtype):
    _mp_hand_run(_impl(op), op, wdtype)


# adagrad and group_adagrad by hand (row-sparse grads)
W32 = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def _adagrad_hand(fn, dtype, is_ref):
    # 2.11: gr = clip(2*g, 3) ; h += gr^2 ; out = w - (gr/sqrt(h + 0.01))*0.1, rows 0 and 2 only
    # row0: gr = [1, -2], h = [1.25, 4.0], out = [1 - 0.1/sqrt(1.26), 2 + 0.2/sqrt(4.01)]
    # row2: gr = [4 -> 3, 0], h = [9.5, 0.1], out = [5 - 0.3/sqrt(9.51), 6]
    weight = np.array(W32, dtype=dtype)
    history = np.array([[0.25, 0.0], [1.0, 1.0], [0.5, 0.1]], dtype=dtype)
    rows = np.array([0, 2])
    data = np.array([[0.5, -1.0], [2.0, 0.0]], dtype=dtype)
    params = dict(lr=0.1, epsilon=0.01, rescale_grad=2.0, clip_gradient=3.0)
    if is_ref:
        weight, history = fn(weight, densify(data, rows, (3, 2)), history, **params, rows=rows)
    else:
        fn(weight, _rsp(data, rows, (3, 2)), history, **params, out=weight)
    _hand_check(weight, [[1 - 0.1 / sqrt(1.26), 2 + 0.2 / sqrt(4.01)], [3.0, 4.0],
                         [5 - 0.3 / sqrt(9.51), 6.0]], dtype, "adagrad weight")
    _hand_check(weight, [[0.9109129193625252, 2.0998752338877846], [3.0, 4.0],
                         [4.902718334731172, 6.0]], dtype, "adagrad weight (decimals)")
    _hand_check(history, [[1.25, 4.0], [1.0, 1.0], [9.5, 0.1]], dtype, "adagrad history")


def _group_adagrad_hand(fn, dtype, is_ref, hshape):
    # 2.14: row 1 only: gr = clip(2*[0.5, -3], 2) = [1, -2] ; h1 = 0.2 + (1 + 4)/2 = 2.7
    #       out row1 = w - (0.1*gr)/sqrt(2.7 + 0.01) = [3 - 0.1/sqrt(2.71), 4 + 0.2/sqrt(2.71)]
    weight = np.array(W32, dtype=dtype)
    history = np.array([0.1, 0.2, 0.3], dtype=dtype).reshape(hshape)
    rows = np.array([1])
    data = np.array([[0.5, -3.0]], dtype=dtype)
    params = dict(lr=0.1, rescale_grad=2.0, clip_gradient=2.0, epsilon=0.01)
    if is_ref:
        weight, history = fn(weight, densify(data, rows, (3, 2)), history, **params, rows=rows)
    else:
        fn(weight, _rsp(data, rows, (3, 2)), history, **params, out=weight)
    _hand_check(weight, [[1.0, 2.0], [2.9392543260769215, 4.121491347846157], [5.0, 6.0]],
                dtype, "group_adagrad weight")
    assert history.shape == hshape
    _hand_check(history.reshape(3), [0.1, 2.7, 0.3], dtype, "group_adagrad history")


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_hand_adagrad_reference(dtype):
    _adagrad_hand(REF["adagrad_update"], dtype, True)
    _group_adagrad_hand(REF["group_adagrad_update"], dtype, True, (3,))
    _group_adagrad_hand(REF["group_adagrad_update"], dtype, True, (3, 1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_hand_adagrad(backend, dtype):
    _adagrad_hand(_impl("adagrad_update"), dtype, False)


@pytest.mark.parametrize("hshape", [(3,), (3, 1)], ids=["N", "Nx1"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_hand_group_adagrad(backend, dtype, hshape):
    _group_adagrad_hand(_impl("group_adagrad_update"), dtype, False, hshape)


# lamb phase 2 by hand: w = [1, -2], g = [0.5, 0.25], lr = 0.1 ; out = w - lr'*g
# lr' = lr*r1'/r2 with r1' = r1 clamped by the bounds that are >= 0 (2.13), or lr if r1' or r2 is 0
LAMB2_CASES = {
    "plain": (2.0, 4.0, {}, 0.05),                           # 0.1*2/4
    "lower_raises": (2.0, 4.0, dict(lower_bound=3.0), 0.075),  # max(2, 3) = 3
    "lower_inactive": (2.0, 4.0, dict(lower_bound=1.0), 0.05),
    "upper_lowers": (2.0, 4.0, dict(upper_bound=1.0), 0.025),  # min(2, 1) = 1 (min, 5.12)
    "upper_inactive": (2.0, 4.0, dict(upper_bound=5.0), 0.05),
    "both": (10.0, 4.0, dict(lower_bound=1.0, upper_bound=3.0), 0.075),
    "upper0_applies": (2.0, 4.0, dict(upper_bound=0.0), 0.1),  # r1' = min(2, 0) = 0 -> lr unscaled
    "lower0_applies": (0.0, 4.0, dict(lower_bound=0.0), 0.1),  # r1' = max(0, 0) = 0 -> lr unscaled
    "negative_bounds_off": (2.0, 4.0, dict(lower_bound=-5.0, upper_bound=-0.5), 0.05),
    "r1_zero": (0.0, 4.0, {}, 0.1),
    "r2_zero": (2.0, 0.0, {}, 0.1),
    "both_zero": (0.0, 0.0, {}, 0.1),
    "r1_negative": (-2.0, 4.0, {}, -0.05),                   # used as is
    "lower_lifts_zero_r1": (0.0, 4.0, dict(lower_bound=2.0), 0.05),
}


def _lamb2_case(fn, name, dtype, is_ref):
    r1v, r2v, bounds, lr_eff = LAMB2_CASES[name]
    weight = np.array([1.0, -2.0], dtype=dtype)
    g = np.array([0.5, 0.25], dtype=dtype)
    r1 = np.array([r1v], dtype=dtype)
    r2 = np.array([r2v], dtype=dtype)
    expected = [1.0 - lr_eff * 0.5, -2.0 - lr_eff * 0.25]
    if is_ref:
        (out,) = fn(weight, g, r1, r2, lr=0.1, **bounds)
    else:
        out = fn(weight, g, r1, r2, lr=0.1, **bounds)
        assert weight.tolist() == [1.0, -2.0], "out=None leaves the weight unchanged"
    tol = dict(rtol=1e-3, atol=1e-6) if dtype == np.float16 else HAND_TOL[dtype]
    np.testing.assert_allclose(np.asarray(out, dtype=np.float64), expected, err_msg=name, **tol)
    assert out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("name", list(LAMB2_CASES))
def test_lamb_phase2_bounds_reference(name):
    for dtype in DTYPES:
        _lamb2_case(REF["lamb_update_phase2"], name, dtype, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(LAMB2_CASES))
def test_lamb_phase2_bounds(backend, name, dtype):
    _lamb2_case(_impl("lamb_update_phase2"), name, dtype, False)


def test_lamb_phase1_no_bias_correction_hand(backend):
    # g = m/(sqrt(v) + eps) + wd*w with m = [0.1, -0.1], v = [0.01, 0.01] (the case above):
    # [0.1/0.101 + 0.1, -0.1/0.101 - 0.05] = [1.0900990099009902, -1.0400990099009901]
    fn = _impl("lamb_update_phase1")
    tensors, params, _ = HAND["lamb_update_phase1"]
    arrays = [np.array(t, dtype=np.float64) for t in tensors]
    params = dict(params, bias_correction=False)
    g = fn(*arrays, **params)
    _hand_check(g, [1.0900990099009902, -1.0400990099009901], np.float64, "g")
    _hand_check(arrays[0], [1.0, -0.5], np.float64, "weight untouched")


# =============================================================================================
# 3. Row-sparse gradients
# =============================================================================================
RSP_SHAPES = [(8,), (6, 3), (5, 2, 3)]
RSP_IDS = ["1d", "2d", "3d"]
STANDARD_RSP = [op for op in OPS if op not in SPARSE_ONLY + ("lamb_update_phase2",)]


def _rsp_rows(shape):
    n = shape[0]
    return np.array(sorted({1, n // 2, n - 1}), dtype=np.int64)


@pytest.mark.parametrize("shape", RSP_SHAPES, ids=RSP_IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op", STANDARD_RSP)
def test_rowsparse_grad_standard_update(backend, op, dtype, shape):
    """A row-sparse grad gives the dense update with zero rows (sections 3.1, 3.2)."""
    fn = _impl(op)
    params = _t_params(op, PARAMS[op]["mixed"], 0)
    extra = dict(lazy_update=False) if op in LAZY_MP else {}
    seed = _seed("rsp", op, np.dtype(dtype).name, shape)
    weight, states = make_case(op, seed, shape, dtype)
    rows = _rsp_rows(shape)
    rng = np.random.default_rng(seed + 1)
    data = rng.normal(0.0, 1.0, size=(len(rows),) + shape[1:]).astype(dtype)
    grad = _rsp(data, rows, shape)
    dense = densify(data, rows, shape)
    expected = REF[op](weight.copy(), dense, *_snap(states), **params)

    # the implementation's own dense result, for comparison
    w_d, s_d = weight.copy(), _snap(states)
    dense_result = fn(w_d, dense.copy(), *s_d, **params, **extra)

    data0 = data.copy()
    result = fn(weight, grad, *states, **params, **extra)
    check(result, expected[0], op, dtype, "out")
    check(result, dense_result, op, dtype, "out vs dense grad")
    for name, s, e, sd in zip(STATES[op], states, expected[1:], s_d):
        check(s, e, op, dtype, name)
        check(s, sd, op, dtype, f"{name} vs dense grad")
    assert grad.data.tobytes() == data0.tobytes(), "grad data must not be modified"


@pytest.mark.parametrize("shape", RSP_SHAPES, ids=RSP_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", LAZY_MP)
def test_mp_lazy_update_is_ignored(backend, op, dtype, shape):
    """mp_sgd / mp_sgd_mom accept lazy_update and ignore it, as MXNet does (2.4, 3.1): a
    row-sparse grad always gets the standard update, every row moving."""
    fn = _impl(op)
    params = PARAMS[op]["mixed"]
    seed = _seed("mplazy", op, np.dtype(dtype).name, shape)
    weight, states = make_case(op, seed, shape, dtype)
    rows = _rsp_rows(shape)
    rng = np.random.default_rng(seed + 1)
    data = rng.normal(0.0, 1.0, size=(len(rows),) + shape[1:]).astype(dtype)
    dense = densify(data, rows, shape)
    expected = REF[op](weight.copy(), dense, *_snap(states), **params)
    for lazy in (None, True, False):
        w, s = weight.copy(), _snap(states)
        extra = {} if lazy is None else dict(lazy_update=lazy)
        out = fn(w, _rsp(data, rows, shape), *s, **params, **extra, out=w)
        check(out, expected[0], op, dtype, f"out (lazy={lazy})")
        for name, a, e in zip(STATES[op], s, expected[1:]):
            check(a, e, op, dtype, f"{name} (lazy={lazy})")


@pytest.mark.parametrize("op", LAZY_MP)
def test_mp_empty_rowsparse_grad(backend, op):
    """Empty grad: the standard update with a zero gradient, lazy_update or not (3.4)."""
    fn = _impl(op)
    params = PARAMS[op]["mixed"]
    shape = (6, 3)
    weight, states = make_case(op, 77, shape, np.float16)
    empty = np.zeros((0, 3), dtype=np.float16)
    expected = REF[op](weight, np.zeros(shape, np.float16), *states, **params)
    for lazy in (True, False):
        w, s = weight.copy(), _snap(states)
        out = fn(w, _rsp(empty, [], shape), *s, **params, lazy_update=lazy)
        check(out, expected[0], op, np.float16, f"out (lazy={lazy})")
        for name, a, e in zip(STATES[op], s, expected[1:]):
            check(a, e, op, np.float16, name)
        assert not np.array_equal(s[-1], states[-1]), "wd must move every row"


@pytest.mark.parametrize("shape", RSP_SHAPES, ids=RSP_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", SPARSE_ONLY)
def test_sparse_only_lazy_rows(backend, op, dtype, shape):
    """adagrad / group_adagrad: rows not in grad are bit-identical (weight and history)."""
    fn = _impl(op)
    params = PARAMS[op]["mixed"]
    weight, states = make_case(op, _seed("lazy", op, shape, np.dtype(dtype).name), shape, dtype)
    rows = _rsp_rows(shape)
    data = np.random.default_rng(5).normal(0.0, 1.0, size=(len(rows),) + shape[1:]).astype(dtype)
    w0, s0 = weight.copy(), _snap(states)
    expected = REF[op](w0, densify(data, rows, shape), *s0, **params, rows=rows)
    out = np.full_like(weight, 7.0)
    result = fn(weight, _rsp(data, rows, shape), *states, **params, out=out)
    assert result is out
    assert weight.tobytes() == w0.tobytes(), "a separate out leaves the weight unchanged"
    other = np.ones(shape[0], dtype=bool)
    other[rows] = False
    assert out[other].tobytes() == w0[other].tobytes(), "out: rows not in grad copied (7.7)"
    assert states[0][other].tobytes() == s0[0][other].tobytes(), "history rows not in grad"
    check(out, expected[0], op, dtype, "out")
    check(states[0], expected[1], op, dtype, "history")


@pytest.mark.parametrize("op", SPARSE_ONLY)
def test_sparse_only_empty_grad_is_noop(backend, op):
    fn = _impl(op)
    shape = (5, 4)
    weight, states = make_case(op, 9, shape, np.float32)
    w0, s0 = weight.copy(), _snap(states)
    result = fn(weight, _rsp(np.zeros((0, 4), np.float32), [], shape), *states, lr=0.1, out=weight)
    assert result is weight
    _assert_unchanged([weight, *states], [w0, *s0], "empty grad")
    result = fn(weight, _rsp(np.zeros((0, 4), np.float32), [], shape), *states, lr=0.1)
    assert result is not weight and result.tobytes() == w0.tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_group_adagrad_history_shapes_agree(backend, dtype):
    fn = _impl("group_adagrad_update")
    shape = (6, 4)
    weight, (hist,) = make_case("group_adagrad_update", 13, shape, dtype)
    rows = np.array([0, 3, 5])
    data = np.random.default_rng(2).normal(0, 1, size=(3, 4)).astype(dtype)
    outs = []
    for hshape in [(6,), (6, 1)]:
        h = hist.reshape(hshape).copy()
        out = fn(weight, _rsp(data, rows, shape), h, lr=0.1, clip_gradient=0.5)
        assert h.shape == hshape
        outs.append((out.tobytes(), h.reshape(6).tobytes()))
    assert outs[0] == outs[1]


# =============================================================================================
# 4. Special rules
# =============================================================================================
# -- adamw skip ------------------------------------------------------------------------------
ADAMW_OPS = ("adamw_update", "mp_adamw_update")


@pytest.mark.parametrize("form", ["float", "array"])
@pytest.mark.parametrize("value", [0.0, np.nan, np.inf, -np.inf], ids=["0", "nan", "inf", "-inf"])
@pytest.mark.parametrize("op", ADAMW_OPS)
def test_adamw_skips_on_zero_nan_inf_rescale(backend, op, value, form):
    """2.12 / 7.6: rescale_grad 0, NaN or +-Inf skips the whole update."""
    fn = _impl(op)
    params = dict(PARAMS[op]["mixed"])
    params["rescale_grad"] = value if form == "float" else np.array([value], dtype=np.float32)
    dtype = np.float16 if op.startswith("mp_") else np.float32
    weight, states = make_case(op, 41, (4, 5), dtype)
    grad = np.random.default_rng(1).normal(size=(4, 5)).astype(dtype)
    before = _snap([weight, grad, *states])

    out = np.full_like(weight, 3.0)
    assert fn(weight, grad, *states, **params, out=out) is out
    assert (out == 3.0).all(), "a separate out keeps its content"
    _assert_unchanged([weight, grad, *states], before, "skip (separate out)")

    assert fn(weight, grad, *states, **params, out=weight) is weight
    _assert_unchanged([weight, grad, *states], before, "skip (out=weight)")

    result = fn(weight, grad, *states, **params)
    assert result is not weight
    _assert_unchanged([weight, grad, *states], before, "skip (out=None)")
    if op == "adamw_update":
        assert result.tobytes() == weight.tobytes(), "out=None: the result equals the weight"
    else:
        # the weight input is never read; equal when weight == weight32 cast (as here)
        assert result.dtype == weight.dtype
        assert result.tobytes() == weight.tobytes()


@pytest.mark.parametrize("op", ADAMW_OPS)
def test_adamw_negative_rescale_is_not_skipped(backend, op):
    fn = _impl(op)
    params = dict(PARAMS[op]["mixed"], rescale_grad=-0.5)
    weight, states = make_case(op, 42, (10,), np.float32)
    grad = np.random.default_rng(3).normal(size=(10,)).astype(np.float32)
    expected = REF[op](weight, grad, *_snap(states), **params)
    out = fn(weight, grad, *states, **params)
    check(out, expected[0], op, np.float32, "out")
    for s, e in zip(states, expected[1:]):
        check(s, e, op, np.float32, "state")


@pytest.mark.parametrize("op", ADAMW_OPS)
def test_adamw_rescale_array_equals_float(backend, op):
    fn = _impl(op)
    res = []
    for rg in (0.5, np.array([0.5], dtype=np.float32)):
        params = dict(PARAMS[op]["mixed"], rescale_grad=rg)
        weight, states = make_case(op, 43, (3, 7), np.float32)
        grad = np.random.default_rng(3).normal(size=(3, 7)).astype(np.float32)
        out = fn(weight, grad, *states, **params)
        res.append([out.tobytes()] + [s.tobytes() for s in states])
    assert res[0] == res[1]


# -- adagrad / group_adagrad contract ---------------------------------------------------------
@pytest.mark.parametrize("op", SPARSE_ONLY)
def test_sparse_only_dense_grad_is_type_error(backend, op):
    fn = _impl(op)
    weight, states = make_case(op, 51, (4, 3), np.float32)
    grad = np.ones((4, 3), dtype=np.float32)
    before = _snap([weight, grad, *states])
    with pytest.raises(TypeError, match="grad"):
        fn(weight, grad, *states, lr=0.1, out=weight)
    _assert_unchanged([weight, grad, *states], before)


@pytest.mark.parametrize("wd", [0.1, -0.01])
def test_adagrad_nonzero_wd_is_value_error(backend, wd):
    fn = _impl("adagrad_update")
    weight, states = make_case("adagrad_update", 52, (4, 3), np.float32)
    grad = _rsp(np.ones((2, 3), np.float32), [0, 2], (4, 3))
    before = _snap([weight, grad.data, *states])
    with pytest.raises(ValueError, match="wd"):
        fn(weight, grad, *states, lr=0.1, wd=wd, out=weight)
    _assert_unchanged([weight, grad.data, *states], before)
    fn(weight, grad, *states, lr=0.1, wd=0.0, out=weight)  # wd=0 is fine


# -- ftml beta range ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,value", [("beta1", 1.5), ("beta1", -0.1), ("beta2", 1.01),
                                        ("beta2", -1.0)])
def test_ftml_beta_out_of_range(backend, name, value):
    fn = _impl("ftml_update")
    weight, states = make_case("ftml_update", 61, (5,), np.float32)
    grad = np.ones(5, dtype=np.float32)
    before = _snap([weight, grad, *states])
    with pytest.raises(ValueError, match=name):
        fn(weight, grad, *states, lr=0.1, t=1, **{name: value}, out=weight)
    _assert_unchanged([weight, grad, *states], before)


@pytest.mark.parametrize("b1,b2", [(0.0, 0.0), (0.0, 0.5), (1.0, 0.999), (0.6, 1.0)])
def test_ftml_beta_bounds_accepted(backend, b1, b2):
    """[0, 1] is closed: the end points are accepted (1.0 may give NaN/Inf, as in MXNet)."""
    fn = _impl("ftml_update")
    weight, states = make_case("ftml_update", 62, (6,), np.float64)
    grad = np.random.default_rng(0).normal(size=6)
    params = dict(lr=0.1, beta1=b1, beta2=b2, t=2)
    expected = REF["ftml_update"](weight, grad, *_snap(states), **params)
    with np.errstate(all="ignore"):
        out = fn(weight, grad, *states, **params)
    check(out, expected[0], "ftml_update", np.float64, "out")


def test_ftml_t_is_required(backend):
    fn = _impl("ftml_update")
    weight, states = make_case("ftml_update", 63, (3,), np.float32)
    with pytest.raises(TypeError):
        fn(weight, np.ones(3, np.float32), *states, 0.1)


# -- mp dtype rules and the never-read weight --------------------------------------------------
MP_STATE_CASES = [(op, k, bad) for op in MP_OPS for k in range(len(STATES[op]))
                  for bad in (np.float16, np.float64)]


@pytest.mark.parametrize("op,k,bad", MP_STATE_CASES,
                         ids=[f"{op}-{STATES[op][k]}-{np.dtype(b).name}" for op, k, b in MP_STATE_CASES])
def test_mp_state_dtype_must_be_float32(backend, op, k, bad):
    fn = _impl(op)
    weight, states = make_case(op, 71, (4, 2), np.float16)
    states[k] = states[k].astype(bad)
    grad = np.ones((4, 2), dtype=np.float16)
    before = _snap([weight, grad, *states])
    with pytest.raises(TypeError, match=STATES[op][k]):
        fn(weight, grad, *states, **PARAMS[op]["mixed"], out=weight)
    _assert_unchanged([weight, grad, *states], before)


@pytest.mark.parametrize("op", MP_OPS)
def test_mp_weight_grad_dtype_mismatch(backend, op):
    fn = _impl(op)
    weight, states = make_case(op, 72, (4, 2), np.float16)
    grad = np.ones((4, 2), dtype=np.float32)
    before = _snap([weight, grad, *states])
    with pytest.raises(TypeError, match="grad|weight"):
        fn(weight, grad, *states, **PARAMS[op]["mixed"], out=weight)
    _assert_unchanged([weight, grad, *states], before)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", MP_OPS)
def test_mp_weight_input_is_never_read(backend, op, dtype):
    """2.4 / 5.11: only weight32 is read; a NaN weight changes nothing."""
    fn = _impl(op)
    params = PARAMS[op]["mixed"]
    weight, states = make_case(op, 73, (5, 3), dtype)
    grad = np.random.default_rng(8).normal(size=(5, 3)).astype(dtype)
    expected = REF[op](weight, grad, *_snap(states), **params)

    results = []
    for fill in (None, np.nan, 1e4):  # None: the weight equals weight32 cast
        w = weight.copy() if fill is None else np.full_like(weight, fill)
        s = _snap(states)
        for mode in ("none", "weight", "separate"):
            w_in = w.copy()
            s_in = _snap(s)
            out = {"none": None, "weight": w_in, "separate": np.full_like(w_in, -9.0)}[mode]
            r = fn(w_in, grad, *s_in, **params, out=out)
            if mode == "none":
                assert r is not w_in and r.dtype == np.dtype(dtype)
            else:
                assert r is out
            check(r, expected[0], op, dtype, f"out (weight={fill}, out={mode})")
            for name, a, e in zip(STATES[op], s_in, expected[1:]):
                check(a, e, op, dtype, f"{name} (weight={fill}, out={mode})")
            results.append([r.tobytes()] + [a.tobytes() for a in s_in])
            # out is weight32's new value cast to the weight's dtype. For a float64 weight the
            # math may run in float64, so out may be the unrounded double: weight32 is then
            # out rounded to float32.
            if np.dtype(dtype) == np.float64:
                assert s_in[-1].tobytes() == r.astype(np.float32).tobytes(), "weight32 != out rounded"
            else:
                assert r.tobytes() == s_in[-1].astype(dtype).tobytes(), "out != weight32 cast"
    assert all(x == results[0] for x in results), "result depends on the weight input"


# -- lamb --------------------------------------------------------------------------------------
@pytest.mark.parametrize("which,arr", [("r1", np.array([1.0, 2.0])), ("r2", np.zeros(0))],
                         ids=["r1-len2", "r2-empty"])
def test_lamb_phase2_r_must_hold_one_element(backend, which, arr):
    fn = _impl("lamb_update_phase2")
    weight = np.array([1.0, -2.0, 3.0])
    g = np.array([0.1, 0.2, 0.3])
    r = {"r1": np.array([2.0]), "r2": np.array([4.0])}
    r[which] = arr.astype(np.float64)
    before = _snap([weight, g, r["r1"], r["r2"]])
    with pytest.raises(ValueError, match=which):
        fn(weight, g, r["r1"], r["r2"], lr=0.1, out=weight)
    _assert_unchanged([weight, g, r["r1"], r["r2"]], before)


@pytest.mark.parametrize("r1", [2.0, np.float32(2.0), np.array(2.0), np.array([[2.0]]), np.array([2.0], np.float16)],
                         ids=["float", "np-scalar", "0d", "1x1", "float16"])
def test_lamb_phase2_r_may_be_a_number_or_any_one_element_array(backend, r1):
    """Documented deviation: r1/r2 are numbers or one-element float arrays of any shape."""
    fn = _impl("lamb_update_phase2")
    weight = np.array([1.0, -2.0], dtype=np.float32)
    g = np.array([0.5, 0.25], dtype=np.float32)
    out = fn(weight, g, r1, np.array([4.0], np.float64), lr=0.1)
    np.testing.assert_allclose(out, [1.0 - 0.05 * 0.5, -2.0 - 0.05 * 0.25], rtol=1e-6)


def test_lamb_phase2_r_rejects_integers_and_text(backend):
    fn = _impl("lamb_update_phase2")
    weight, g = np.ones(2, np.float32), np.ones(2, np.float32)
    with pytest.raises(TypeError, match="r2"):
        fn(weight, g, 1.0, np.array([4], np.int64), lr=0.1)
    with pytest.raises(TypeError, match="r1"):
        fn(weight, g, "2", 4.0, lr=0.1)


def test_lamb_phase1_wd_and_t_required(backend):
    fn = _impl("lamb_update_phase1")
    weight, states = make_case("lamb_update_phase1", 81, (3,), np.float32)
    grad = np.ones(3, np.float32)
    before = _snap([weight, grad, *states])
    with pytest.raises(TypeError):
        fn(weight, grad, *states, t=1)  # no wd
    with pytest.raises(TypeError):
        fn(weight, grad, *states, wd=0.0)  # no t
    _assert_unchanged([weight, grad, *states], before)


def test_lamb_phase1_out_modes(backend):
    """Phase 1 returns g; the weight is read only; a separate out receives g."""
    fn = _impl("lamb_update_phase1")
    params = dict(PARAMS["lamb_update_phase1"]["mixed"], bias_correction=True, t=3)
    weight, states = make_case("lamb_update_phase1", 82, (4, 4), np.float32)
    grad = np.random.default_rng(9).normal(size=(4, 4)).astype(np.float32)
    expected = REF["lamb_update_phase1"](weight, grad, *_snap(states), **params)
    w0 = weight.copy()
    s1 = _snap(states)
    out = np.empty_like(weight)
    assert fn(weight, grad, *s1, **params, out=out) is out
    assert weight.tobytes() == w0.tobytes()
    check(out, expected[0], "lamb_update_phase1", np.float32, "g")
    for s, e in zip(s1, expected[1:]):
        check(s, e, "lamb_update_phase1", np.float32, "state")


# -- nag aliasing (7.5) --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nag_out_weight_equals_out_none(backend, dtype):
    """7.5: the new momentum uses the old weight whatever out is (wd != 0 here)."""
    fn = _impl("nag_mom_update")
    params = dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=1.5, clip_gradient=1.0)
    weight, (mom,) = make_case("nag_mom_update", 91, (6, 5), dtype)
    grad = np.random.default_rng(10).normal(size=(6, 5)).astype(dtype)
    expected = REF["nag_mom_update"](weight, grad, mom, **params)
    res = []
    for mode in ("none", "weight", "separate"):
        w, m = weight.copy(), mom.copy()
        out = {"none": None, "weight": w, "separate": np.empty_like(w)}[mode]
        r = fn(w, grad, m, **params, out=out)
        check(r, expected[0], "nag_mom_update", dtype, f"weight ({mode})")
        check(m, expected[1], "nag_mom_update", dtype, f"mom ({mode})")
        res.append((r.tobytes(), m.tobytes()))
    assert res[0] == res[1] == res[2]


# -- signsgd ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_signsgd_ignores_rescale_and_clip(backend, dtype):
    fn = _impl("signsgd_update")
    weight, _ = make_case("signsgd_update", 101, (5, 4), dtype)
    grad = np.random.default_rng(11).normal(size=(5, 4)).astype(dtype)
    base = fn(weight, grad, lr=0.1, wd=0.05)
    for extra in (dict(rescale_grad=-3.0), dict(rescale_grad=0.0), dict(clip_gradient=1e-3),
                  dict(rescale_grad=100.0, clip_gradient=0.5)):
        assert fn(weight, grad, lr=0.1, wd=0.05, **extra).tobytes() == base.tobytes(), extra


def test_signsgd_nan_grad_sign_is_zero(backend):
    """Section 4: sign(NaN) = 0, so the element gets w*(1 - lr*wd)."""
    fn = _impl("signsgd_update")
    weight = np.array([1.0, 2.0])
    grad = np.array([np.nan, -1.0])
    out = fn(weight, grad, lr=0.1, wd=0.5)
    np.testing.assert_allclose(out, [0.95, 2 * 0.95 + 0.1], rtol=1e-12)


# -- clipping bounds <= 0 are off (7.1) -------------------------------------------------------------
CLIP_KEYS = []
for _op in OPS:
    _sig = PARAMS[_op]["mixed"]
    for _key in ("clip_gradient", "clip_grad", "clip_weights"):
        if _key in _sig and _op != "signsgd_update":
            CLIP_KEYS.append((_op, _key))


@pytest.mark.parametrize("op,key", CLIP_KEYS, ids=[f"{o}-{k}" for o, k in CLIP_KEYS])
def test_clip_zero_or_negative_is_off(backend, op, key):
    fn = _impl(op)
    shape = (4, 6)
    outs = []
    for clip in (None, 0.0, -0.5):
        params = _t_params(op, PARAMS[op]["defaults"], 1)
        if clip is not None:
            params[key] = clip
        weight, states = make_case(op, 111, shape, np.float32)
        grad = (np.random.default_rng(12).normal(size=shape) * 3).astype(np.float32)
        if op in SPARSE_ONLY:
            grad = _rsp(grad[[0, 2]].copy(), [0, 2], shape)
        r = fn(weight, grad, *states, **params)
        outs.append([r.tobytes()] + [s.tobytes() for s in states])
    assert outs[0] == outs[1] == outs[2]


# -- the out= contract for every op -------------------------------------------------------------
@pytest.mark.parametrize("op", [o for o in OPS if o != "lamb_update_phase2"])
def test_out_modes_agree(backend, op):
    """out=None (weight untouched), out=weight and a separate out give the same bits."""
    fn = _impl(op)
    params = _t_params(op, PARAMS[op]["mixed"], 0)
    shape = (5, 7)
    results = []
    modes = ("none", "separate") if op == "lamb_update_phase1" else ("none", "weight", "separate")
    for mode in modes:
        weight, states = make_case(op, 121, shape, np.float32)
        grad = np.random.default_rng(13).normal(size=shape).astype(np.float32)
        if op in SPARSE_ONLY:
            grad = _rsp(grad[[1, 3]].copy(), [1, 3], shape)
        w0 = weight.copy()
        out = {"none": None, "weight": weight, "separate": np.full_like(weight, 5.0)}[mode]
        r = fn(weight, grad, *states, **params, out=out)
        if mode == "none":
            assert isinstance(r, np.ndarray) and r is not weight
            assert not np.shares_memory(r, weight)
        else:
            assert r is out
        if mode != "weight":
            assert weight.tobytes() == w0.tobytes(), f"out={mode} must leave weight unchanged"
        results.append([r.tobytes()] + [s.tobytes() for s in states])
    assert all(x == results[0] for x in results)


def test_lamb_phase2_out_modes(backend):
    fn = _impl("lamb_update_phase2")
    res = []
    for mode in ("none", "weight", "separate"):
        weight = np.linspace(-1, 1, 12).reshape(3, 4)
        g = np.linspace(0.5, -0.5, 12).reshape(3, 4)
        out = {"none": None, "weight": weight, "separate": np.empty_like(weight)}[mode]
        r = fn(weight, g, np.array([2.0]), np.array([3.0]), lr=0.1, out=out)
        if mode != "none":
            assert r is out
        res.append(r.tobytes())
    assert res[0] == res[1] == res[2]


# -- other bad calls leave every array unchanged ----------------------------------------------------
@pytest.mark.parametrize("op", [o for o in OPS if o not in ("lamb_update_phase2",)])
def test_bad_calls_leave_arrays_unchanged(backend, op):
    fn = _impl(op)
    params = _t_params(op, PARAMS[op]["mixed"], 0)
    shape = (4, 3)
    weight, states = make_case(op, 131, shape, np.float32)
    grad_ok = np.ones(shape, dtype=np.float32)
    if op in SPARSE_ONLY:
        grad_ok = _rsp(np.ones((2, 3), np.float32), [0, 3], shape)
    arrays = [weight, *states]
    before = _snap(arrays)
    bad_calls = []
    # a state of the wrong shape
    if states:
        bad = [s.copy() for s in states]
        bad[0] = np.zeros((5, 3), dtype=bad[0].dtype) if bad[0].ndim == 2 else np.zeros(5, bad[0].dtype)
        bad_calls.append(((weight, grad_ok, *bad), STATES[op][0]))
    # an out of the wrong dtype
    bad_calls.append(((weight, grad_ok, *states), "out"))
    for args, name in bad_calls:
        kw = dict(params)
        if name == "out":
            kw["out"] = np.zeros(shape, dtype=np.float64)
        with pytest.raises((TypeError, ValueError), match=name):
            fn(*args, **kw)
        _assert_unchanged(arrays, before, f"{op}: bad {name}")
    # a grad of the wrong dtype (non-mp ops: every tensor shares one dtype)
    if not op.startswith("mp_") and op not in SPARSE_ONLY:
        with pytest.raises(TypeError, match="grad"):
            fn(weight, grad_ok.astype(np.float64), *states, **params)
        _assert_unchanged(arrays, before, f"{op}: bad grad dtype")
