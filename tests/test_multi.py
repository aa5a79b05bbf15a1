"""OP_multi: many tensors in one call, against the independent reference applied per tensor,
for every op that has one (README: "exists for every op with a dense update of its weight and
no scalar input or skip condition")."""

from __future__ import annotations

import numpy as np
import pytest

import cases
import generated
import reference
from cases import PARAMS

SHAPES = [(3,), (5, 4), (0,), (1000,), (2, 3, 4), (1,)]
MULTI = cases.ops(lambda o: o.has_multi_variant)


def test_multi_exists_where_the_readme_says():
    expected = cases.ops(lambda o: o.dense and not o.multi and not o.output and not o.scalars
                         and o.skip_if is None and not o.inputs)
    assert MULTI == expected


def make_cases(op: str, dtype, seed: int = 3, params=None) -> list:
    return [cases.make_case(op, seed + k, shape, dtype, params) for k, shape in enumerate(SHAPES)]


def lists(made):
    """weights, grads, one list per state."""
    info = made[0].op
    return ([c.weight for c in made], [c.grad for c in made],
            [[c.arrays[name] for c in made] for name in info.states])


def make_lists(op: str, dtype, seed: int = 3):
    return lists(make_cases(op, dtype, seed))


def _per_tensor(op):
    """Per-tensor lr and wd, clipping at 0.5, the op's other required parameters."""
    info = cases.op(op)
    n = len(SHAPES)
    per = {}
    if "lr" in info.params:
        per["lr"] = [0.01 * (k + 1) for k in range(n)]
    if "wd" in info.params and "wd" not in info.bounds:
        per["wd"] = np.linspace(0.0, 0.1, n)
    clip = next((k for k in info.clip_params if k != "clip_weights"), None)
    fixed = cases.step_params(op, {k: v for k, v in PARAMS[op]["defaults"].items() if k not in per})
    if clip is not None:
        fixed[clip] = 0.5
    return per, fixed


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=cases.DTYPE_IDS)
@pytest.mark.parametrize("op", MULTI)
def test_multi_matches_reference_per_tensor(backend, op, dtype):
    info = cases.op(op)
    per, fixed = _per_tensor(op)
    made = make_cases(op, dtype)
    for k, case in enumerate(made):
        case.params = dict(fixed, **{name: values[k] for name, values in per.items()})
    weights, grads, states = lists(made)
    for step in range(2):  # the second call reuses the first call's checks and pointer tables
        expected = [case.expected() for case in made]  # the reference is pure: from the inputs
        outs = getattr(generated, f"{op}_multi")(weights, grads, *states, **per, **fixed, out=weights)
        assert all(o is w for o, w in zip(outs, weights))
        for k, case in enumerate(made):
            case.check(weights[k], expected[k][0], f"step {step} weights[{k}]")
            for j, name in enumerate(info.states):
                case.check(states[j][k], expected[k][j + 1], f"step {step} {name}s[{k}]")


def test_multi_out_none_returns_new_arrays_and_keeps_weights(backend):
    weights, grads, (means, variances) = make_lists("adam_update", np.float32)
    before = [w.copy() for w in weights]
    states_before = [(m.copy(), v.copy()) for m, v in zip(means, variances)]
    outs = generated.adam_update_multi(weights, grads, means, variances, lr=0.1)
    for k, (o, w) in enumerate(zip(outs, weights)):
        assert o is not w
        np.testing.assert_array_equal(w, before[k])
        want = reference.adam_update(before[k], grads[k], *states_before[k], lr=0.1)[0]
        reference.assert_close(o, want, f"out[{k}]")


def test_multi_sees_a_changed_list():
    weights, grads, (moms,) = make_lists("sgd_mom_update", np.float32)
    generated.sgd_mom_update_multi(weights, grads, moms, lr=0.1, out=weights)
    fresh = [np.ones_like(g) for g in grads]
    w0 = [w.copy() for w in weights]
    m0 = [m.copy() for m in moms]
    generated.sgd_mom_update_multi(weights, fresh, moms, lr=0.1, momentum=0.5, out=weights)
    for k in range(len(SHAPES)):
        want_w, want_m = reference.sgd_mom_update(w0[k], fresh[k], m0[k], lr=0.1, momentum=0.5)
        reference.assert_close(weights[k], want_w, f"weights[{k}]")
        reference.assert_close(moms[k], want_m, f"moms[{k}]")


def test_multi_has_no_tensor_cap():
    ws = [np.full(4, 1.0, np.float32) for _ in range(300)]
    gs = [np.full(4, 2.0, np.float32) for _ in range(300)]
    generated.sgd_update_multi(ws, gs, lr=0.25, out=ws)
    assert all(np.array_equal(w, np.full(4, 0.5, np.float32)) for w in ws)


@pytest.mark.parametrize("call, exc, match", [
    (lambda w, g, m, v: generated.adam_update_multi(w, g[:2], m, v, lr=0.1), ValueError, "'grads' holds 2"),
    (lambda w, g, m, v: generated.adam_update_multi(w, g, m, v, lr=[0.1, 0.2]), ValueError, "'lr' has 2 values"),
    (lambda w, g, m, v: generated.adam_update_multi(w, g, m, v, lr="fast"), TypeError, "'lr'"),
    (lambda w, g, m, v: generated.adam_update_multi(w, g, m, v[:-1] + [np.zeros(7, np.float32)], lr=0.1),
     ValueError, r"'vars\[5\]' has shape \(7,\)"),
    (lambda w, g, m, v: generated.adam_update_multi(w, g[:-1] + [g[-1].astype(np.float64)], m, v, lr=0.1),
     TypeError, r"'grads\[5\]' has dtype float64"),
    (lambda w, g, m, v: generated.adam_update_multi(w[0], g, m, v, lr=0.1), TypeError, "'weights' must be a list"),
    (lambda w, g, m, v: generated.adam_update_multi(w, g, m, v, lr=0.1, out=w[:1]), ValueError, "'out' holds 1"),
])
def test_multi_bad_calls_change_nothing(call, exc, match):
    weights, grads, (means, variances) = make_lists("adam_update", np.float32)
    snapshot = [a.copy() for a in weights + grads + means + variances]
    with pytest.raises(exc, match=match):
        call(weights, grads, means, variances)
    for a, b in zip(weights + grads + means + variances, snapshot):
        np.testing.assert_array_equal(a, b)


def _adam_lists(n=4, size=6, dtype=np.float32):
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=size).astype(dtype) for _ in range(n)]
    means = [np.zeros(size, dtype) for _ in range(n)]
    vars_ = [np.zeros(size, dtype) for _ in range(n)]
    return weights, means, vars_


def test_new_gradients_each_call_reuse_the_plan_and_match_the_reference():
    """The optimizer loop: the same weights and states in place, new gradient arrays every
    step (a backward pass allocates them); every step against the reference."""
    weights, means, vars_ = _adam_lists()
    expected = [(w.copy(), m.copy(), v.copy()) for w, m, v in zip(weights, means, vars_)]
    rng = np.random.default_rng(6)
    for step in range(4):
        grads = [rng.normal(size=6).astype(np.float32) for _ in weights]
        generated.adam_update_multi(weights, grads, means, vars_, lr=0.01, out=weights)
        expected = [reference.adam_update(w, g, m, v, 0.01) for (w, m, v), g in zip(expected, grads)]
        for w, m, v, (ew, em, ev) in zip(weights, means, vars_, expected):
            reference.assert_close(w, ew, f"step {step}")
            reference.assert_close(v, ev, f"step {step}")


@pytest.mark.parametrize("make_bad, exc, message", [
    (lambda w, m, v: m[1], ValueError, r"argument 'means\[1\]' shares memory with 'grads\[1\]'"),
    (lambda w, m, v: w[3], ValueError, r"argument 'out\[3\]' shares memory with 'grads\[1\]' of another tensor"),
    (lambda w, m, v: np.zeros(6, np.float64), TypeError, r"grads\[1\]' has dtype float64"),
    (lambda w, m, v: np.zeros(5, np.float32), ValueError, r"grads\[1\]' has shape \(5,\)"),
    (lambda w, m, v: np.zeros(12, np.float32)[::2], None, None),  # strided: the general path, still right
], ids=["overlaps-a-state", "is-a-weight", "dtype", "shape", "strided"])
def test_a_new_gradient_is_checked_against_the_plan(make_bad, exc, message):
    weights, means, vars_ = _adam_lists()
    grads = [np.ones(6, np.float32) for _ in weights]
    generated.adam_update_multi(weights, grads, means, vars_, lr=0.01, out=weights)  # planned
    grads = [np.ones(6, np.float32) for _ in weights]
    grads[1] = make_bad(weights, means, vars_)
    before = [a.copy() for a in weights + means + vars_]
    if exc is None:
        generated.adam_update_multi(weights, grads, means, vars_, lr=0.01, out=weights)
        return
    with pytest.raises(exc, match=message):
        generated.adam_update_multi(weights, grads, means, vars_, lr=0.01, out=weights)
    for a, b in zip(weights + means + vars_, before):
        assert np.array_equal(a, b)
