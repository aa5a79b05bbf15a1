"""Clipping by the global gradient norm, fused into every multi-tensor update (issue 12):
``OP_multi(..., max_grad_norm=c)`` multiplies every gradient element, as it is loaded, by
torch.nn.utils.clip_grad_norm_'s factor min(1, c / (norm + 1e-6)), where norm is the L2 norm
of all the call's gradients. The references here: the independent float64 reference applied
to gradients scaled by a factor computed from a float64 norm in NumPy, torch's own
clip_grad_norm_, and values by hand."""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest

import cases
import generated
from opgen.runtime import available_backends, use_backend

from test_multi import MULTI, SHAPES, _per_tensor, lists, make_cases


def _norm64(grads) -> float:
    return math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads))


@pytest.mark.parametrize("dtype", cases.DTYPES, ids=cases.DTYPE_IDS)
@pytest.mark.parametrize("op", MULTI)
def test_clipped_multi_update_is_the_reference_on_scaled_gradients(backend, op, dtype):
    """max_grad_norm a quarter of (norm + 1e-6), so the factor is 1/4 (a power of two: the
    scaled gradient is exact in every dtype, so the reference can take it in the gradient's
    own dtype): each tensor is the reference's update on its gradient / 4; the gradients
    themselves are not changed."""
    info = cases.op(op)
    per, fixed = _per_tensor(op)
    made = make_cases(op, dtype, seed=11)
    for k, case in enumerate(made):
        case.params = dict(fixed, **{name: values[k] for name, values in per.items()})
    weights, grads, states = lists(made)
    grads_before = [g.copy() for g in grads]
    norm = _norm64(grads)
    max_grad_norm = 0.25 * (norm + 1e-6)
    factor = 0.25
    expected = []
    for case in made:
        scaled = case.copy()
        scaled.grad = (np.asarray(case.grad, np.float64) * factor).astype(case.grad.dtype)
        expected.append(scaled.expected())
    getattr(generated, f"{op}_multi")(weights, grads, *states, **per, **fixed, out=weights,
                                      max_grad_norm=max_grad_norm)
    for k, case in enumerate(made):
        case.check(weights[k], expected[k][0], f"clipped weights[{k}]")
        for j, name in enumerate(info.states):
            case.check(states[j][k], expected[k][j + 1], f"clipped {name}s[{k}]")
        np.testing.assert_array_equal(grads[k].view(np.uint8), grads_before[k].view(np.uint8))


@pytest.mark.parametrize("op", ["adam_update", "sgd_mom_update", "lamb_update", "torch_adam_update"])
def test_a_norm_below_the_limit_changes_nothing_bit_for_bit(backend, op):
    """The factor is then exactly 1, and x * 1 is x: the same bits as without clipping."""
    results = []
    for clip in (None, 1e30):
        made = make_cases(op, np.float32, seed=12)
        per, fixed = _per_tensor(op)
        weights, grads, states = lists(made)
        getattr(generated, f"{op}_multi")(weights, grads, *states, **per, **fixed, out=weights, max_grad_norm=clip)
        results.append([w.copy() for w in weights] + [s.copy() for group in states for s in group])
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_sgd_by_hand(backend):
    """Gradients [3, 0] and [4] (global norm 5), max_grad_norm 1: sgd with lr 1 subtracts
    g / (5 + 1e-6) from zero weights."""
    weights = [np.zeros(2), np.zeros(1)]
    grads = [np.array([3.0, 0.0]), np.array([4.0])]
    generated.sgd_update_multi(weights, grads, lr=1.0, out=weights, max_grad_norm=1.0)
    factor = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(weights[0], [-3.0 * factor, 0.0], rtol=1e-15)
    np.testing.assert_allclose(weights[1], [-4.0 * factor], rtol=1e-15)


def test_mxnet_style_multi_ops_clip_too(backend):
    """The flat (MXNet) multi ops take the same argument: multi_sgd_update's data list."""
    rng = np.random.default_rng(3)
    ws = [rng.normal(size=n).astype(np.float32) for n in (5, 40)]
    gs = [rng.normal(size=n).astype(np.float32) * 10 for n in (5, 40)]
    norm = _norm64(gs)
    data = [a for pair in zip([w.copy() for w in ws], gs) for a in pair]
    outs = generated.multi_sgd_update(*data, lrs=[0.5, 0.25], wds=[0.0, 0.0], num_weights=2, max_grad_norm=1.0)
    factor = 1.0 / (norm + 1e-6)
    for w, g, lr, o in zip(ws, gs, (0.5, 0.25), outs):
        np.testing.assert_allclose(o, w - lr * (g.astype(np.float64) * factor), rtol=1e-6, atol=1e-7)


def test_the_factor_is_torch_clip_grad_norm_s():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    shapes = [(30, 7), (1000,), (3,)]
    ws = [rng.normal(size=s).astype(np.float32) for s in shapes]
    gs = [rng.normal(size=s).astype(np.float32) * 3 for s in shapes]
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
    for p, g in zip(params, gs):
        p.grad = torch.from_numpy(g.copy())
    torch_norm = torch.nn.utils.clip_grad_norm_(params, max_norm=2.0)
    assert float(torch_norm) == pytest.approx(_norm64(gs), rel=1e-6)
    with torch.no_grad():
        for p in params:
            p -= 0.1 * p.grad
    generated.sgd_update_multi(ws, gs, lr=0.1, out=ws, max_grad_norm=2.0)
    for w, p in zip(ws, params):
        np.testing.assert_allclose(w, p.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_a_non_finite_norm_gives_torch_s_non_finite_factor(backend):
    """An infinite gradient: the norm is inf, the factor 0 (torch's max_norm / inf), so the
    infinite element becomes NaN (inf * 0) and the finite ones 0; a NaN gradient makes the
    factor NaN and every update NaN, as torch's clip_grad_norm_ does."""
    weights = [np.ones(3, np.float32), np.ones(2, np.float32)]
    grads = [np.array([1.0, np.inf, 2.0], np.float32), np.array([1.0, 1.0], np.float32)]
    generated.sgd_update_multi(weights, grads, lr=1.0, out=weights, max_grad_norm=1.0)
    assert weights[0][0] == 1.0 and np.isnan(weights[0][1]) and weights[0][2] == 1.0
    assert weights[1].tolist() == [1.0, 1.0]
    weights = [np.ones(2, np.float32)]
    generated.sgd_update_multi(weights, [np.array([np.nan, 1.0], np.float32)], lr=1.0, out=weights,
                               max_grad_norm=1.0)
    assert np.isnan(weights[0]).all()


@pytest.mark.parametrize("value, exc, match", [
    (0.0, ValueError, "must be positive and finite"),
    (-1.0, ValueError, "must be positive and finite"),
    (float("nan"), ValueError, "must be positive and finite"),
    (float("inf"), ValueError, "must be positive and finite"),
    ("1.0", TypeError, "must be None or a number"),
    (True, TypeError, "must be None or a number"),
    ([1.0], TypeError, "must be None or a number"),
])
def test_bad_limits_are_refused_before_anything_is_written(value, exc, match):
    weights, grads, (means, variances) = lists(make_cases("adam_update", np.float32))
    before = [a.copy() for a in weights + means + variances]
    with pytest.raises(exc, match=f"adam_update_multi\\(\\): argument 'max_grad_norm' {match}"):
        generated.adam_update_multi(weights, grads, means, variances, lr=0.1, out=weights, max_grad_norm=value)
    for a, b in zip(weights + means + variances, before):
        np.testing.assert_array_equal(a, b)


def test_a_zero_d_array_limit_is_a_number(backend):
    weights, grads, (means, variances) = lists(make_cases("adam_update", np.float32))
    other = [w.copy() for w in weights], [m.copy() for m in means], [v.copy() for v in variances]
    generated.adam_update_multi(weights, grads, means, variances, lr=0.1, out=weights, max_grad_norm=np.array(0.5))
    generated.adam_update_multi(other[0], grads, other[1], other[2], lr=0.1, out=other[0], max_grad_norm=0.5)
    for a, b in zip(weights, other[0]):
        np.testing.assert_array_equal(a, b)


THREADS_SCRIPT = textwrap.dedent("""\
    import sys, numpy as np, generated
    rng = np.random.default_rng(5)
    sizes = (3_000_001, 7, 0, 250_000)
    ws = [rng.normal(size=n).astype(np.float32) for n in sizes]
    gs = [rng.normal(size=n).astype(np.float32) for n in sizes]
    ms, vs = [np.zeros_like(w) for w in ws], [np.zeros_like(w) for w in ws]
    generated.adam_update_multi(ws, gs, ms, vs, lr=0.1, out=ws, max_grad_norm=1.0)
    np.savez(sys.argv[1], *[a.view(np.uint32) for a in ws + ms + vs])
    """)


@pytest.mark.skipif("c" not in available_backends(), reason="no C compiler")
def test_the_bits_do_not_depend_on_the_thread_count(tmp_path):
    """The norm is summed in fixed blocks and lanes: 1, 2 and 3 threads give the same factor,
    so the same bits (fresh processes)."""
    results = cases.saved_arrays_by_thread_count(THREADS_SCRIPT, [], (1, 2, 3), tmp_path)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif("c" not in available_backends(), reason="no C compiler")
def test_c_and_numpy_norms_agree_to_rounding():
    """The C norms kernel (blocked, pairwise) and NumPy's float64 sum differ only in the
    order of additions; an empty gradient adds 0."""
    rng = np.random.default_rng(6)
    for dtype in (np.float16, np.float32, np.float64):
        grads = [rng.normal(size=n).astype(dtype) for n in (1, 0, 100_003, 4096)]
        multi = sys.modules["generated.adam_update"]._MULTI
        with use_backend("c"):
            c = multi.grad_sums_of_squares(grads)
        with use_backend("numpy"):
            n = multi.grad_sums_of_squares(grads)
        want = [float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads]
        np.testing.assert_allclose(c, want, rtol=1e-13)
        np.testing.assert_allclose(n, want, rtol=1e-13)
        assert c[1] == 0.0
