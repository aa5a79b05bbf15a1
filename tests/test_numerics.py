"""Dense updates against the hand-written reference (tests/reference.py).

Every op x backend x dtype x shape x parameter set, three consecutive steps with the
states carried, plus the out= contract and NaN propagation.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import generated
import reference as ref
from reference import OPS, assert_close, make_inputs

DTYPES = [np.float16, np.float32, np.float64]
DTYPE_IDS = ["float16", "float32", "float64"]
SHAPES = [(0,), (1,), (7,), (1000,), (3, 4, 5), (257, 33)]
SHAPE_IDS = ["shape=" + "x".join(map(str, s)) for s in SHAPES]

# Parameter sets. "clip" sets use bounds small enough that N(0,1) gradients get clipped
# (checked by test_clip_parameter_sets_are_meaningful).
PARAMS = {
    "sgd_update": {
        "defaults": dict(lr=0.1),
        "wd": dict(lr=0.1, wd=0.01),
        "rescale": dict(lr=0.1, rescale_grad=0.5),
        "clip": dict(lr=0.1, rescale_grad=2.0, clip_gradient=0.7),
        "clip0_off": dict(lr=0.1, clip_gradient=0.0),
        "clipneg_off": dict(lr=0.1, clip_gradient=-0.5),
        "all": dict(lr=0.05, wd=0.1, rescale_grad=1.5, clip_gradient=1.0),
    },
    "sgd_mom_update": {
        "defaults": dict(lr=0.1),
        "momentum": dict(lr=0.1, momentum=0.9),
        "wd": dict(lr=0.1, momentum=0.9, wd=0.01),
        "rescale": dict(lr=0.1, momentum=0.5, rescale_grad=0.25),
        "clip": dict(lr=0.1, momentum=0.9, clip_gradient=0.5),
        "clip0_off": dict(lr=0.1, momentum=0.9, clip_gradient=0.0),
        "all": dict(lr=0.05, momentum=0.8, wd=0.1, rescale_grad=2.0, clip_gradient=1.0),
    },
    "adam_update": {
        "defaults": dict(lr=0.01),
        "wd": dict(lr=0.01, wd=0.1),
        "betas_eps": dict(lr=0.02, beta1=0.8, beta2=0.99, epsilon=0.5),
        "rescale": dict(lr=0.01, rescale_grad=0.125),
        "clip": dict(lr=0.01, clip_gradient=0.5),
        "clip0_off": dict(lr=0.01, clip_gradient=0.0),
        "all": dict(lr=0.03, beta1=0.85, beta2=0.995, epsilon=1e-6, wd=0.05, rescale_grad=3.0,
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
        "all": dict(lr=0.05, gamma1=0.9, epsilon=1e-4, wd=0.05, rescale_grad=2.0,
                    clip_gradient=1.0, clip_weights=1.5),
    },
}

CASES = [(op, name) for op in OPS for name in PARAMS[op]]
CASE_IDS = [f"{op}-{name}" for op, name in CASES]


def _impl(op):
    return getattr(generated, op)


def _seed(*parts) -> int:
    """A deterministic seed per test case (hash() of str is salted per process)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,pset", CASES, ids=CASE_IDS)
def test_dense_three_steps_match_reference(backend, op, pset, dtype, shape):
    params = PARAMS[op][pset]
    state_names, ref_fn = OPS[op]
    fn = _impl(op)
    seed = _seed(op, pset, np.dtype(dtype).name, shape)
    weight, _, states = make_inputs(op, seed, shape, dtype)
    ref_weight, ref_states = weight.copy(), [s.copy() for s in states]
    rng = np.random.default_rng(seed + 1)
    for step in range(3):
        grad = rng.normal(0.0, 1.0, size=shape).astype(dtype)
        grad_before = grad.copy()
        expected = ref.as_tuple(ref_fn(ref_weight, grad, *ref_states, **params))
        ref_weight, ref_states = expected[0], list(expected[1:])

        state_objs = list(states)
        result = fn(weight, grad, *states, **params, out=weight)
        assert result is weight
        assert_close(weight, ref_weight, f"{op} step {step} weight")
        for name, s, obj, e in zip(state_names, states, state_objs, ref_states):
            assert s is obj
            assert_close(s, e, f"{op} step {step} {name}")
        assert grad.tobytes() == grad_before.tobytes(), "grad must not be modified"


@pytest.mark.parametrize("op,pset", [c for c in CASES if "clip" in c[1] or c[1] == "all"],
                         ids=[i for c, i in zip(CASES, CASE_IDS) if "clip" in c[1] or c[1] == "all"])
def test_clip_parameter_sets_are_meaningful(op, pset):
    """Reference-only sanity: 'clip' sets really clip; 'clip0_off' equals no clipping."""
    params = dict(PARAMS[op][pset])
    _, ref_fn = OPS[op]
    weight, grad, states = make_inputs(op, 11, (1000,), np.float64)
    got = ref.as_tuple(ref_fn(weight, grad, *states, **params))
    unclipped = dict(params)
    key = "clip_weights" if pset.startswith("clip_weights") else "clip_gradient"
    unclipped[key] = -1.0
    if pset == "all":  # turn every clip off
        unclipped["clip_gradient"] = -1.0
        unclipped.pop("clip_weights", None)
    plain = ref.as_tuple(ref_fn(weight, grad, *states, **unclipped))
    same = all(np.array_equal(a, b) for a, b in zip(got, plain))
    if pset.endswith("_off"):
        assert same
    else:
        assert not same


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_clip_zero_and_negative_mean_off(backend, op, dtype):
    """Deviation 7.1: clip_gradient <= 0 turns clipping off (MXNet clips to 0 at exactly 0)."""
    fn = _impl(op)
    params = dict(PARAMS[op]["defaults"])
    outs = []
    for clip in (-1.0, 0.0, -0.5):
        weight, grad, states = make_inputs(op, 5, (4, 6), dtype)
        grad *= 3
        outs.append([fn(weight, grad, *states, **params, clip_gradient=clip), *states])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert a.tobytes() == b.tobytes()
    # and clipping at 0 would have left the weight unchanged for adam/rmsprop; check it moved
    weight, grad, states = make_inputs(op, 5, (4, 6), dtype)
    assert not np.array_equal(outs[1][0], weight)


# -- the out= contract --------------------------------------------------------------------
OUT_DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_out_none_returns_new_array(backend, op, dtype):
    params = PARAMS[op]["all"]
    _, ref_fn = OPS[op]
    weight, grad, states = make_inputs(op, 21, (3, 4, 5), dtype)
    w0 = weight.copy()
    expected = ref.as_tuple(ref_fn(weight, grad, *states, **params))
    result = _impl(op)(weight, grad, *states, **params)
    assert isinstance(result, np.ndarray)
    assert result is not weight
    assert not np.shares_memory(result, weight)
    assert weight.tobytes() == w0.tobytes(), "out=None must leave weight unchanged"
    assert_close(result, expected[0], "out")
    for s, e in zip(states, expected[1:]):
        assert_close(s, e, "state")  # states are still updated in place


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_out_is_weight_updates_in_place(backend, op, dtype):
    params = PARAMS[op]["all"]
    _, ref_fn = OPS[op]
    weight, grad, states = make_inputs(op, 22, (3, 4, 5), dtype)
    expected = ref.as_tuple(ref_fn(weight, grad, *states, **params))
    result = _impl(op)(weight, grad, *states, **params, out=weight)
    assert result is weight
    assert_close(weight, expected[0], "weight")
    for s, e in zip(states, expected[1:]):
        assert_close(s, e, "state")


@pytest.mark.parametrize("dtype", OUT_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_out_separate_array(backend, op, dtype):
    params = PARAMS[op]["all"]
    _, ref_fn = OPS[op]
    weight, grad, states = make_inputs(op, 23, (3, 4, 5), dtype)
    w0 = weight.copy()
    out = np.full_like(weight, 123.0)
    expected = ref.as_tuple(ref_fn(weight, grad, *states, **params))
    result = _impl(op)(weight, grad, *states, **params, out=out)
    assert result is out
    assert weight.tobytes() == w0.tobytes(), "a separate out must leave weight unchanged"
    assert_close(out, expected[0], "out")
    for s, e in zip(states, expected[1:]):
        assert_close(s, e, "state")


@pytest.mark.parametrize("op", list(OPS))
def test_out_modes_agree_bitwise(backend, op):
    """out=None, out=weight and a separate out give the same bits."""
    params = PARAMS[op]["all"]
    fn = _impl(op)
    results = []
    for mode in ("none", "weight", "separate"):
        weight, grad, states = make_inputs(op, 24, (5, 7), np.float32)
        out = {"none": None, "weight": weight, "separate": np.empty_like(weight)}[mode]
        r = fn(weight, grad, *states, **params, out=out)
        results.append([r.tobytes()] + [s.tobytes() for s in states])
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("op", ["sgd_update", "sgd_mom_update", "adam_update"])
def test_lazy_update_flag_irrelevant_for_dense_grad(backend, op):
    params = PARAMS[op]["all"]
    fn = _impl(op)
    got = []
    for lazy in (True, False):
        weight, grad, states = make_inputs(op, 25, (6, 5), np.float32)
        r = fn(weight, grad, *states, **params, lazy_update=lazy)
        got.append([r.tobytes()] + [s.tobytes() for s in states])
    assert got[0] == got[1]


# -- NaN propagation -----------------------------------------------------------------------
@pytest.mark.parametrize("clip", [-1.0, 0.5], ids=["noclip", "clip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_nan_in_grad_propagates(backend, op, dtype, clip):
    """A NaN gradient element makes that element's weight and states NaN (clip keeps NaN)."""
    state_names, ref_fn = OPS[op]
    params = dict(PARAMS[op]["defaults"], wd=0.01, clip_gradient=clip)
    if op == "sgd_mom_update":
        params["momentum"] = 0.9
    weight, grad, states = make_inputs(op, 31, (9,), dtype)
    grad[[2, 7]] = np.nan
    expected = ref.as_tuple(ref_fn(weight, grad, *states, **params))
    result = _impl(op)(weight, grad, *states, **params)
    nan = np.zeros(9, dtype=bool)
    nan[[2, 7]] = True
    assert np.isnan(result[nan]).all()
    assert np.isfinite(result[~nan]).all()
    assert_close(result, expected[0], "weight")
    for name, s, e in zip(state_names, states, expected[1:]):
        assert np.isnan(s[nan]).all(), name
        assert np.isfinite(s[~nan]).all(), name
        assert_close(s, e, name)
