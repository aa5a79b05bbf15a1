"""Whole-tensor reductions in the spec language (sum, avg, norm, rms, amax): their values
against NumPy float64, by hand, the same bits on any thread count and on any block split,
empty and non-finite tensors, and the spec errors they can raise.

The ops under test are built here from small specs (a package of their own), so every
reduction function, a reduction that reads another's result (two passes) and a reduction
of a state the math has just updated are covered; lamb_update (specs/) is checked by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cases
import generated
from opgen.errors import SpecError
from opgen.runtime import use_backend
from opgen.spec.loader import parse_spec
from packages import build_package

BACKENDS = ["c", "numpy"]

TOTALS_SPEC = """\
name: totals
summary: Every reduction function, one of them over another's result.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
  - {name: mom, role: state, doc: Momentum}
params:
  - {name: lr, type: float, required: true, doc: Step}
math:
  - mom = 0.5 * mom + grad
  - c = avg(grad)
  - s = rms(grad - c)
  - a = amax(abs(mom))
  - z = sum(grad)
  - nm = norm(mom)
  - weight = weight - lr * ((grad - c) / (s + 1) + mom / (a + 1) + z * 0.001 + nm * 0.001)
"""


def totals_reference(weight, grad, mom, lr):
    """The TOTALS_SPEC math in float64, written from the formulas."""
    with np.errstate(all="ignore"):
        return _totals_reference(*(np.asarray(x, np.float64) for x in (weight, grad, mom)), lr)


def _totals_reference(w, g, m, lr):
    m = 0.5 * m + g
    c = g.mean() if g.size else np.nan
    s = np.sqrt(((g - c) ** 2).mean()) if g.size else np.nan
    a = np.abs(m).max() if m.size else -np.inf
    z, nm = g.sum(), np.sqrt((m * m).sum())
    return w - lr * ((g - c) / (s + 1) + m / (a + 1) + z * 0.001 + nm * 0.001), m


@pytest.fixture(scope="module")
def totals_package(tmp_path_factory):
    return build_package(tmp_path_factory.mktemp("totals"), {"totals": TOTALS_SPEC}, "totals_pkg")


def _inputs(n: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype),
            rng.normal(scale=0.1, size=n).astype(dtype))


SIZES = [1, 2, 7, 8, 9, 63, 2047, 2048, 2049, 100_003, 1_048_576 + 5]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("n", SIZES)
def test_every_reduction_matches_float64(totals_package, backend, dtype, n):
    """Sizes around the 8 lanes, the 2,048-element blocks and the 512-block cap."""
    weight, grad, mom = _inputs(n, dtype, n)
    expected_w, expected_m = totals_reference(weight, grad, mom, 0.1)
    with use_backend(backend):
        result = totals_package.totals(weight, grad, mom, lr=0.1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(mom, expected_m, rtol=tol, atol=tol)
    np.testing.assert_allclose(result, expected_w, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_by_hand(totals_package, backend):
    """Four elements, every total worked out on paper.

    grad = [1, 2, 3, 6], mom = 0 -> mom = grad; c = 3; grad - c = [-2, -1, 0, 3], s = sqrt(14/4);
    a = 6; z = 12; nm = sqrt(50)."""
    weight = np.zeros(4)
    grad, mom = np.array([1.0, 2.0, 3.0, 6.0]), np.zeros(4)
    with use_backend(backend):
        result = totals_package.totals(weight, grad, mom, lr=1.0)
    s, nm = np.sqrt(3.5), np.sqrt(50.0)
    expected = -(np.array([-2.0, -1.0, 0.0, 3.0]) / (s + 1) + grad / 7 + 0.012 + nm * 0.001)
    np.testing.assert_allclose(result, expected, rtol=1e-14)
    np.testing.assert_array_equal(mom, grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_tensor_is_a_no_op(totals_package, backend):
    weight, grad, mom = (np.zeros(0, np.float32) for _ in range(3))
    with use_backend(backend):
        result = totals_package.totals(weight, grad, mom, lr=0.1)
    assert result.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_element_reaches_every_reduction(totals_package, backend, bad):
    """NaN or inf in one gradient element makes the sums, means and norms non-finite, so every
    weight: the same non-finite pattern as the float64 reference (NaN is never dropped by amax)."""
    weight, grad, mom = _inputs(5000, np.float64, 3)
    grad[1234] = bad
    expected_w, expected_m = totals_reference(weight, grad, mom, 0.1)
    with use_backend(backend), np.errstate(all="ignore"):
        result = totals_package.totals(weight, grad, mom, lr=0.1)
    np.testing.assert_array_equal(np.isnan(result), np.isnan(expected_w))
    assert not np.isfinite(result).any()
    np.testing.assert_allclose(mom, expected_m, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_amax_keeps_nan(totals_package, backend):
    """amax over a state holding NaN is NaN (not the largest of the others)."""
    weight, grad, mom = np.ones(3000), np.zeros(3000), np.ones(3000)
    mom[2999] = np.nan  # the last block's last element, so no later max can hide it
    with use_backend(backend), np.errstate(all="ignore"):
        result = totals_package.totals(weight, grad, mom, lr=0.1)
    assert np.isnan(result).all()


THREADS_SCRIPT = textwrap.dedent("""\
    import sys, numpy as np, generated
    sys.path.insert(0, sys.argv[2])
    import totals_pkg
    rng = np.random.default_rng(7)
    out = []
    for n in (3_000_001, 150_001):
        w, g = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
        m, v = rng.normal(scale=0.1, size=n).astype(np.float32), rng.uniform(0, 0.01, n).astype(np.float32)
        out.append(generated.lamb_update(w, g, m, v, lr=0.01, t=3, wd=0.01).view(np.uint32))
        mom = m.copy()
        out.append(totals_pkg.totals(w, g, mom, lr=0.1).view(np.uint32))
    # the multi-tensor form: each tensor's own norms, in one C call
    ws = [rng.normal(size=n).astype(np.float32) for n in (700_001, 5, 0, 90_000)]
    gs = [rng.normal(size=w.size).astype(np.float32) for w in ws]
    ms, vs = [np.zeros_like(w) for w in ws], [np.zeros_like(w) for w in ws]
    out += [a.view(np.uint32) for a in generated.lars_update_multi(ws, gs, ms, lr=1.0, momentum=0.9, wd=0.01)]
    out += [a.view(np.uint32) for a in ms]
    np.savez(sys.argv[1], *out)
    """)


def test_the_bits_do_not_depend_on_the_thread_count(totals_package, tmp_path):
    """1, 2, 3 and 8 OpenMP threads, in fresh processes, over sizes several threads share."""
    package_root = Path(totals_package.__file__).parent.parent
    results = cases.saved_arrays_by_thread_count(THREADS_SCRIPT, [str(package_root)], (1, 2, 3, 8), tmp_path)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_c_and_numpy_agree_to_rounding(totals_package):
    """The C blocks and NumPy's sum differ only in the order of additions in double."""
    weight, grad, mom = _inputs(300_000, np.float32, 11)
    results = []
    for backend in BACKENDS:
        m = mom.copy()
        with use_backend(backend):
            results.append((totals_package.totals(weight, grad, m, lr=0.1), m))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-6)


# -- lamb_update by hand --------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_lamb_trust_ratio_by_hand(backend):
    """w = [3, 4] (||w|| = 5), g = [1, 1], zero states, t = 1, wd = 0: the bias-corrected
    m and v are g and g*g, u = g / (|g| + eps) = [1, 1] / (1 + eps), ||u|| = sqrt(2) / (1 + eps),
    so w' = w - lr * 5 / sqrt(2) * [1, 1] (the eps cancels)."""
    weight, grad = np.array([3.0, 4.0]), np.array([1.0, 1.0])
    mean, var = np.zeros(2), np.zeros(2)
    with use_backend(backend):
        result = generated.lamb_update(weight, grad, mean, var, lr=0.1, t=1, wd=0.0)
    np.testing.assert_allclose(result, weight - 0.1 * 5 / np.sqrt(2), rtol=1e-14)
    np.testing.assert_allclose(mean, [0.1, 0.1], rtol=1e-14)
    np.testing.assert_allclose(var, [0.001, 0.001], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lamb_bounds_and_zero_norms_by_hand(backend):
    """A zero weight: r1 = 0, so lr is used unscaled (w' = -lr * u); upper_bound = 1 caps
    ||w|| = 5 at 1; lower_bound = 10 raises it to 10."""
    grad = np.array([2.0, -2.0])
    u = np.array([1.0, -1.0]) / (1 + 1e-6 / 2)  # g / (|g| + eps) at t = 1
    for kwargs, expected in [
        (dict(weight=np.zeros(2)), -0.1 * u),
        (dict(weight=np.array([3.0, 4.0]), upper_bound=1.0), None),
        (dict(weight=np.array([3.0, 4.0]), lower_bound=10.0), None),
    ]:
        weight = kwargs.pop("weight")
        with use_backend(backend):
            result = generated.lamb_update(weight, grad, np.zeros(2), np.zeros(2), lr=0.1, t=1, wd=0.0, **kwargs)
        if expected is None:
            r1 = min(5.0, kwargs["upper_bound"]) if "upper_bound" in kwargs else max(5.0, kwargs["lower_bound"])
            expected = weight - 0.1 * r1 / np.linalg.norm(u) * u
        np.testing.assert_allclose(result, expected, rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lars_layer_rate_by_hand(backend):
    """w = [3, 4] (||w|| = 5), g = [0, 2] (||g|| = 2), wd = 0.5, lars_eta = 0.1, lr = 1,
    epsilon = 0.5: the layer's rate is 0.1 * 5 / (2 + 0.5 * 5 + 0.5) = 0.1, so from a zero
    momentum mom = -0.1 * 0.5 * w - 0.1 * g = [-0.15, -0.4], w' = [2.85, 3.6]. A clip bound
    of 1 clips the update's gradient to [0, 1] but not the norm (MXNet's LARS):
    mom = [-0.15, -0.3]."""
    weight, grad = np.array([3.0, 4.0]), np.array([0.0, 2.0])
    for clip, expected_mom in [(-1.0, [-0.15, -0.4]), (1.0, [-0.15, -0.3])]:
        mom = np.zeros(2)
        with use_backend(backend):
            result = generated.lars_update(weight, grad, mom, lr=1.0, lars_eta=0.1, epsilon=0.5, wd=0.5,
                                           clip_gradient=clip)
        np.testing.assert_allclose(mom, expected_mom, rtol=1e-14)
        np.testing.assert_allclose(result, weight + np.array(expected_mom), rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lars_zero_norms_use_the_plain_rate(backend):
    """A zero weight or a zero gradient: the layer's rate is lr itself (0 / 0 never happens)."""
    for weight, grad in [(np.zeros(2), np.array([1.0, -2.0])), (np.array([1.0, 2.0]), np.zeros(2))]:
        mom = np.zeros(2)
        with use_backend(backend):
            result = generated.lars_update(weight, grad, mom, lr=0.5, wd=0.1)
        np.testing.assert_array_equal(mom, -0.5 * 0.1 * weight - 0.5 * grad)
        assert np.isfinite(result).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_novograd_by_hand(backend):
    """w = [3, 4], g = [1, 2], wd = 0.1, lr = 0.1, epsilon = 0: step 1 sets v = ||g||^2 = 5 and
    m = g / sqrt(5) + 0.1 * w; step 2 keeps v = 0.98 * 5 + 0.02 * 5 = 5 and
    m = 0.95 * m + g / sqrt(5) + 0.1 * w'; w' = w - 0.1 * m each step. v is one float32 value."""
    weight, grad = np.array([3.0, 4.0]), np.array([1.0, 2.0])
    mom, v = np.zeros(2), np.zeros(1, np.float32)
    w, m = weight.copy(), np.zeros(2)
    for t in (1, 2):
        with use_backend(backend):
            weight = generated.novograd_update(weight, grad, mom, v, lr=0.1, t=t, wd=0.1, epsilon=0.0)
        m = (0.95 * m if t > 1 else 0) + grad / np.sqrt(5.0) + 0.1 * w
        w = w - 0.1 * m
        np.testing.assert_allclose(v, [5.0], rtol=1e-15)
        np.testing.assert_allclose(mom, m, rtol=1e-14)
        np.testing.assert_allclose(weight, w, rtol=1e-14)


def test_norms_square_in_double():
    """float32 elements of 1e20: their squares overflow float32, not double, so LARS's norms
    are finite (w = [3e20, 4e20]: ||w|| = 5e20)."""
    for backend in BACKENDS:
        with use_backend(backend):
            w = np.array([3e20, 4e20], np.float32)
            g = np.array([3e20, 4e20], np.float32)
            mom = np.zeros(2, np.float32)
            out = generated.lars_update(w, g, mom, lr=1.0, lars_eta=0.1)
            # rate = 0.1 * 5e20 / 5e20 = 0.1: mom = -0.1 * g
            np.testing.assert_allclose(mom, -0.1 * g, rtol=1e-6)
            assert np.isfinite(out).all()


def test_a_maximum_of_signed_zeros_is_positive_zero():
    """npmath.total_max and the C kernels' maximum: +0 beside -0 in any order, -0 alone."""
    from opgen.runtime import npmath
    for x in ([-0.0, -0.0, 0.0, -0.0], [0.0, -0.0], [-0.0, 0.0]):
        assert not np.signbit(npmath.total_max(np.array(x)))
    assert np.signbit(npmath.total_max(np.array([-0.0, -0.0])))


def test_int_per_tensor_values_outside_int64_are_refused():
    data = [np.ones(3, np.float32), np.ones(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32)]
    before = [a.copy() for a in data]
    with pytest.raises(ValueError, match=r"argument 'step_count' holds 18446744073709551615 at 0, outside the 64-bit"):
        generated.multi_lamb_update(*data, learning_rates=[0.1], wds=[0.0], step_count=np.array([2**64 - 1], np.uint64),
                                    num_tensors=1, out=[data[0]])
    for a, b in zip(data, before):
        np.testing.assert_array_equal(a, b)


PER_TENSOR_READS = """\
name: reads_update
summary: A per-tensor state read before and after its assignment.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
  - {name: c, role: state, per_tensor: true, dtype: float32, doc: A count}
  - {name: v, role: state, per_tensor: true, dtype: float64, doc: A squared norm}
params:
  - {name: lr, type: float, required: true, doc: Step}
math:
  - weight = weight - lr * c * grad
  - c = c + 1
  - weight = weight - lr * v * grad
  - v = 0.5 * v + sum(grad * grad)
  - weight = weight + 0 * c * v
"""


def test_a_per_tensor_state_is_read_as_its_old_value_before_its_assignment(tmp_path):
    """c = 1.5, v = 2 before the call, four ones: the first two statements read c = 1.5 and
    v = 2, so w = 1 - 0.1 * 1.5 - 0.1 * 2 = 0.65, then c = 2.5 and v = 1 + 4 = 5; C and NumPy."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "reads_update.yaml").write_text(PER_TENSOR_READS)
    env = {**os.environ, "OPGEN_CACHE_DIR": str(tmp_path / "c")}
    run = subprocess.run([sys.executable, "-m", "opgen", "build", "--specs", "specs", "--out", "reads_pkg"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    check = textwrap.dedent("""\
        import numpy as np
        from reads_pkg import reads_update, use_backend
        for backend in ("c", "numpy"):
            with use_backend(backend):
                c, v = np.array([1.5], np.float32), np.array([2.0])
                w = reads_update(np.ones(4), np.ones(4), c, v, lr=0.1)
                assert np.allclose(w, 0.65, rtol=1e-12, atol=0), (backend, w)
                assert c[0] == 2.5 and v[0] == 5.0, (backend, c, v)
        print("ok")
        """)
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_per_tensor_states_are_checked():
    """v must be one value of the states' dtype, writeable; a refused call writes nothing."""
    weight, grad, mom = np.ones(4, np.float32), np.ones(4, np.float32), np.zeros(4, np.float32)
    for v, exc, match in [(np.zeros(2, np.float32), ValueError, r"argument 'v' has shape \(2,\); it holds one value"),
                          (np.zeros((1, 1), np.float32), ValueError, "shape"),
                          (np.zeros(1, np.float64), TypeError, "argument 'v' has dtype float64; it must be float32"),
                          (np.zeros(1, np.float32)[:1].view(), None, None)]:
        if exc is None:  # a read-only view
            v.flags.writeable = False
            exc, match = ValueError, "argument 'v' is read-only"
        before = [weight.copy(), mom.copy(), v.copy()]
        with pytest.raises(exc, match=match):
            generated.novograd_update(weight, grad, mom, v, lr=0.1, t=1, out=weight)
        for a, b in zip([weight, mom, v], before):
            np.testing.assert_array_equal(a, b)
    v0 = np.zeros((), np.float32)  # a 0-d array is one value too
    generated.novograd_update(weight, grad, mom, v0, lr=0.1, t=1, out=weight)
    assert v0 == 4.0


def test_lamb_refuses_row_sparse_gradients():
    grad = generated.RowSparseArray(np.ones((1, 3), np.float32), np.array([0]), (2, 3))
    weight = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="'grad' must be dense"):
        generated.lamb_update(weight, grad, np.zeros_like(weight), np.zeros_like(weight), lr=0.1, t=1, wd=0.0)
    np.testing.assert_array_equal(weight, 1.0)


# -- spec errors -----------------------------------------------------------------------------
BASE = """\
name: toy_update
summary: A toy.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
params:
  - {name: lr, type: float, required: true, doc: Step}
"""


def _spec(*math: str, extra: str = "") -> str:
    return BASE + extra + "math:\n" + "".join(f"  - {line}\n" for line in math)


BAD_SPECS = {
    "uniform_argument": (_spec("weight = weight - norm(lr) * grad"), "reads no tensor"),
    "uniform_literal": (_spec("weight = weight - lr * sum(2.0) * grad"), "reads no tensor"),
    "arity": (_spec("weight = weight - lr * norm(grad, grad) * grad"), "norm"),
    "row_sparse": (_spec("weight = weight - lr * norm(grad) * grad", extra="row_sparse: {lazy: true}\n"),
                   "dense gradients only"),
    "skip_if": (_spec("weight = weight - lr * grad", extra="skip_if: norm(grad) > 1\n"), "only the math"),
    "too_many": (_spec(*[f"x{i} = norm(grad * {i + 1})" for i in range(17)],
                       "weight = weight - lr * (" + " + ".join(f"x{i}" for i in range(17)) + ") * grad"),
                 "at most 16 reductions"),
    "of_a_condition": (_spec("weight = weight - lr * sum(isnan(grad)) * grad"), "needs a number"),
    "unknown_mean": (_spec("weight = weight - lr * mean(grad) * grad"), "mean"),
    # per-tensor states: one value, assigned per call
    "per_tensor_elementwise": (_spec("s = s + grad", "weight = weight - lr * s * grad").replace(
        "params:", "  - {name: s, role: state, per_tensor: true, dtype: float32, doc: Sum}\nparams:"), "the same for every element"),
    "per_tensor_not_a_state": (_spec("weight = weight - lr * grad").replace(
        "{name: grad, role: grad,", "{name: grad, role: grad, per_tensor: true,"), "only states can hold one value"),
    "per_tensor_row_sparse": (_spec("s = s + sum(grad)", "weight = weight - lr * s * grad",
                                    extra="row_sparse: {lazy: true}\n").replace(
        "params:", "  - {name: s, role: state, per_tensor: true, dtype: float32, doc: Sum}\nparams:"), "dense gradients only"),
    "per_tensor_never_written": (_spec("weight = weight - lr * s * grad").replace(
        "params:", "  - {name: s, role: state, per_tensor: true, dtype: float32, doc: Sum}\nparams:"), "never written"),
    "per_tensor_16_bit": (_spec("s = s + sum(grad)", "weight = weight - lr * s * grad").replace(
        "params:", "  - {name: s, role: state, per_tensor: true, doc: Sum}\nparams:"), "needs 'dtype: float32'"),
    "per_tensor_condition": (_spec("s = lr > 0", "weight = weight - lr * grad").replace(
        "params:", "  - {name: s, role: state, per_tensor: true, dtype: float32, doc: Sum}\nparams:"), "cannot store a bool"),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_bad_reductions_are_spec_errors_with_a_location(case):
    text, match = BAD_SPECS[case]
    with pytest.raises(SpecError, match=match) as info:
        parse_spec(text, "specs/toy_update.yaml")
    assert str(info.value).startswith("specs/toy_update.yaml:")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["list", "flat"])
def test_multi_tensor_calls_reduce_each_tensor_on_its_own(backend, form):
    """lamb_update_multi (lists) and MXNet's multi_lamb_update (one flat list): every tensor's
    result is the single-tensor lamb_update's, bit for bit, with its own lr, wd and t (its own
    trust ratio; an empty tensor among them changes nothing)."""
    rng = np.random.default_rng(5)
    shapes = [(300, 7), (5,), (0,), (40_000,)]
    lrs, wds, ts = [0.1, 0.2, 0.3, 0.4], [0.01, 0.0, 0.1, 0.05], [1, 2, 3, 4]
    ws = [rng.normal(size=s).astype(np.float32) for s in shapes]
    gs = [rng.normal(size=s).astype(np.float32) for s in shapes]
    ms = [rng.normal(scale=0.1, size=s).astype(np.float32) for s in shapes]
    vs = [rng.uniform(0, 0.01, size=s).astype(np.float32) for s in shapes]
    with use_backend(backend):
        expected = [(generated.lamb_update(w, g, m.copy(), v.copy(), lr=lr, t=t, wd=wd), m, v)
                    for w, g, m, v, lr, wd, t in zip(ws, gs, ms, vs, lrs, wds, ts)]
        m2, v2 = [m.copy() for m in ms], [v.copy() for v in vs]
        single = [(w, g, m.copy(), v.copy()) for w, g, m, v in zip(ws, gs, ms, vs)]
        for (w, g, m, v), lr, wd, t in zip(single, lrs, wds, ts):
            generated.lamb_update(w, g, m, v, lr=lr, t=t, wd=wd)
        if form == "list":
            results = generated.lamb_update_multi(ws, gs, m2, v2, lr=lrs, wd=wds, t=ts)
        else:
            data = [a for group in zip(ws, gs, m2, v2) for a in group]
            results = generated.multi_lamb_update(*data, learning_rates=lrs, wds=wds, step_count=ts, num_tensors=4)
    for k, (result, (w, g, m, v)) in enumerate(zip(results, single)):
        np.testing.assert_array_equal(result, expected[k][0], err_msg=f"tensor {k}")
        np.testing.assert_array_equal(m2[k], m, err_msg=f"mean {k}")
        np.testing.assert_array_equal(v2[k], v, err_msg=f"var {k}")


REASSIGNED = """\
name: reassigned_update
summary: Two reductions of one name between its assignments.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
  - {name: mom, role: state, doc: Momentum}
params:
  - {name: lr, type: float, required: true, doc: Step}
math:
  - x = grad
  - a = sum(x)
  - x = grad * 2
  - b = sum(x)
  - mom = mom + a + 10 * b + 100 * sum(mom)
  - mom = mom * 2
  - weight = weight - lr * (sum(mom) + 0 * x) * grad
"""


def test_a_reduction_sees_the_values_at_its_place(tmp_path):
    """Reductions in one pass of a name reassigned between them: each is over the value at
    its place (a = sum(grad) = 4, b = sum(2 grad) = 8 on four ones; sum(mom) before mom's
    update, then of the new mom), on C and NumPy."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "reassigned_update.yaml").write_text(REASSIGNED)
    run = subprocess.run([sys.executable, "-m", "opgen", "build", "--specs", "specs", "--out", "reassigned_pkg"],
                         cwd=tmp_path, capture_output=True, text=True, env={**os.environ,
                                                                              "OPGEN_CACHE_DIR": str(tmp_path / "c")})
    assert run.returncode == 0, run.stderr
    check = textwrap.dedent("""\
        import numpy as np
        from reassigned_pkg import reassigned_update, use_backend
        for backend in ("c", "numpy"):
            with use_backend(backend):
                mom = np.full(4, 0.5)
                w = reassigned_update(np.ones(4), np.ones(4), mom, lr=0.01)
                # mom = 0.5 + 4 + 80 + 100 * 2 = 284.5, then 569; sum(new mom) = 2276
                assert np.array_equal(mom, np.full(4, 569.0)), (backend, mom)
                assert np.allclose(w, 1 - 0.01 * 2276), (backend, w)
        print("ok")
        """)
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "OPGEN_CACHE_DIR": str(tmp_path / "c")})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_nested_reductions_are_two_passes():
    """A reduction of an expression holding another reduction: both compute, the outer one in
    a later pass."""
    op = parse_spec(_spec("c = avg(grad)", "weight = weight - lr * norm(grad - c) * grad"),
                    "specs/toy_update.yaml")
    assert len(op.totals.passes) == 2
