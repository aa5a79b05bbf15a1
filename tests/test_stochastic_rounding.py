"""Stochastic rounding end to end (issue 10): ``rounding="stochastic", seed=...`` on every
generated function rounds each store into float16 and bfloat16 with random bits that are a
pure function of (seed, tensor, stored tensor, element): bit-identical between the C
kernels and the NumPy reference, on any thread count and in every schedule, and unbiased.
The rounding itself is tested against scalar references in tests/test_rounding.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import cases
import generated
from generated import RowSparseArray, use_backend
from opgen.runtime import available_backends

ROOT = Path(__file__).resolve().parent.parent
BF16 = np.dtype(ml_dtypes.bfloat16)
HALVES = [np.dtype(np.float16), BF16]
needs_c = pytest.mark.skipif("c" not in available_backends(), reason="no C compiler")


def bits(arrays) -> list:
    return [np.asarray(a).view(np.uint16).copy() if np.asarray(a).dtype.itemsize == 2 else np.asarray(a).copy()
            for a in arrays]


def run_case(op: str, dtype, backend: str, seed, shape=(7, 33), rounding="stochastic"):
    params = cases.step_params(op, cases.PARAMS[op]["mixed"], 1)
    case = cases.make_case(op, cases.seed(op, "sr"), shape, dtype, params)
    with use_backend(backend):
        result = case(rounding=rounding, seed=seed)
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    return bits([*results, *case.states])


@needs_c
@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.name)
@pytest.mark.parametrize("op", cases.OPS)
def test_c_and_numpy_round_every_op_to_the_same_bits(op, dtype):
    c, reference = run_case(op, dtype, "c", 12345), run_case(op, dtype, "numpy", 12345)
    for a, b in zip(c, reference, strict=True):
        np.testing.assert_array_equal(a, b)
    nearest = run_case(op, dtype, "c", None, rounding="nearest")
    if any(a.dtype == np.uint16 for a in c):  # something is stored in 16 bits
        assert any((a != b).any() for a, b in zip(c, nearest)), "stochastic rounding changed nothing"
    else:  # every result has a fixed wide dtype (mp lamb phase 1: float32 g and states)
        assert all((a == b).all() for a, b in zip(c, nearest)), "stochastic rounding changed a wide store"


@needs_c
def test_a_seed_gives_the_same_bits_and_another_seed_others():
    first, again = run_case("adam_update", BF16, "c", 7), run_case("adam_update", BF16, "c", 7)
    other = run_case("adam_update", BF16, "c", 8)
    assert all((a == b).all() for a, b in zip(first, again))
    assert all((a != b).any() for a, b in zip(first, other))


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_stores_into_wide_types_are_unchanged_by_the_mode(dtype):
    stochastic, nearest = run_case("adam_update", dtype, "c", 99), run_case("adam_update", dtype, "c", None,
                                                                            rounding="nearest")
    assert all((a == b).all() for a, b in zip(stochastic, nearest))


@needs_c
def test_the_bits_do_not_depend_on_the_thread_count(tmp_path):
    """One and four OpenMP threads over 200,000 elements (several threads' shares), dense,
    lazy row-sparse and multi-tensor, in fresh processes."""
    script = textwrap.dedent("""\
        import sys, numpy as np, ml_dtypes, generated
        from generated import RowSparseArray
        bf = ml_dtypes.bfloat16
        rng = np.random.default_rng(1)
        w = rng.normal(size=(2000, 100)).astype(bf); g = rng.normal(size=(2000, 100)).astype(bf)
        m, v = np.zeros_like(w), np.zeros_like(w)
        out = [generated.adam_update(w, g, m, v, lr=0.01, rounding="stochastic", seed=5).view(np.uint16)]
        rows = np.arange(0, 2000, 3)
        rsp = RowSparseArray(g[rows], rows, w.shape)
        out.append(generated.adam_update(w, rsp, m.copy(), v.copy(), lr=0.01, rounding="stochastic", seed=6)
                   .view(np.uint16))
        ws = [w.copy(), w[:700].copy()]; gs = [g.copy(), g[:700].copy()]
        ms = [np.zeros_like(x) for x in ws]; vs = [np.zeros_like(x) for x in ws]
        generated.adam_update_multi(ws, gs, ms, vs, lr=0.01, out=ws, rounding="stochastic", seed=7)
        out += [x.view(np.uint16) for x in ws + ms]
        np.savez(sys.argv[1], *out)
        """)
    results = []
    for threads in (1, 4):
        path = tmp_path / f"t{threads}.npz"
        run = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        assert run.returncode == 0, run.stderr
        with np.load(path) as data:
            results.append([data[k] for k in sorted(data.files, key=lambda f: int(f.split("_")[1]))])
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_c
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_row_sparse_rows_round_as_the_dense_update_does(backend):
    """The random bits follow the element's index in the weight, so a lazy update of some
    rows stores exactly the dense update's bits on them, and the standard update is the
    dense update."""
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(40, 24)).astype(BF16)
    rows = np.array([0, 3, 17, 39])
    data = rng.normal(size=(4, 24)).astype(BF16)
    dense_grad = np.zeros_like(weight)
    dense_grad[rows] = data
    kw = dict(lr=0.01, rounding="stochastic", seed=2024)
    with use_backend(backend):
        dm, dv = np.zeros_like(weight), np.zeros_like(weight)
        dense = generated.adam_update(weight, dense_grad, dm, dv, **kw)
        sm, sv = np.zeros_like(weight), np.zeros_like(weight)
        standard = generated.adam_update(weight, RowSparseArray(data, rows, weight.shape), sm, sv,
                                         lazy_update=False, **kw)
        lm, lv = np.zeros_like(weight), np.zeros_like(weight)
        lazy = generated.adam_update(weight, RowSparseArray(data, rows, weight.shape), lm, lv, **kw)
    for a, b in ((standard, dense), (sm, dm), (sv, dv)):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    for a, b in ((lazy, dense), (lm, dm), (lv, dv)):
        np.testing.assert_array_equal(a[rows].view(np.uint16), b[rows].view(np.uint16))


@needs_c
def test_per_row_states_and_outputs_round_the_same_in_c_and_numpy():
    """group_adagrad's per-row history (index: the row) and lamb phase 1's output."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(30, 16)).astype(np.float16)
    rows = np.array([2, 5, 29])
    grad = RowSparseArray(rng.normal(size=(3, 16)).astype(np.float16), rows, weight.shape)
    history0 = np.abs(rng.normal(size=30)).astype(np.float16)
    results = {}
    for backend in ("c", "numpy"):
        history = history0.copy()
        with use_backend(backend):
            out = generated.group_adagrad_update(weight, grad, history, lr=0.1, rounding="stochastic", seed=11)
        results[backend] = (out.view(np.uint16), history.view(np.uint16))
    for a, b in zip(results["c"], results["numpy"]):
        np.testing.assert_array_equal(a, b)
    assert (results["c"][1][rows] != history0[rows].view(np.uint16)).any()  # the rows' history moved
    others = np.setdiff1d(np.arange(30), rows)
    assert (results["c"][1][others] == history0[others].view(np.uint16)).all()


@needs_c
@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.name)
def test_multi_tensor_rounding_is_the_same_on_the_kernel_and_the_general_path(dtype):
    """The multi kernel keys tensor t by (seed, t); the general path (the NumPy backend,
    tensor by tensor) reaches the same key: the same bits either way."""
    rng = np.random.default_rng(4)
    sizes = (10, 1000, 333)
    runs = {}
    for backend in ("c", "numpy"):
        ws = [rng.normal(size=n).astype(dtype) for n in sizes] if not runs else [w.copy() for w in runs["w0"]]
        runs.setdefault("w0", [w.copy() for w in ws])
        gs = [np.linspace(-1, 1, n).astype(dtype) for n in sizes]
        ms, vs = [np.zeros_like(w) for w in ws], [np.zeros_like(w) for w in ws]
        with use_backend(backend):
            generated.adam_update_multi(ws, gs, ms, vs, lr=0.01, out=ws, rounding="stochastic", seed=77)
        runs[backend] = bits(ws + ms + vs)
    for a, b in zip(runs["c"], runs["numpy"], strict=True):
        np.testing.assert_array_equal(a, b)


@needs_c
def test_the_mxnet_multi_convention_takes_the_rounding_arguments_too():
    rng = np.random.default_rng(6)
    data = []
    for n in (5, 9):
        data += [rng.normal(size=n).astype(BF16), rng.normal(size=n).astype(BF16)]
    outs = {}
    for backend in ("c", "numpy"):
        with use_backend(backend):
            outs[backend] = bits(generated.multi_sgd_update(*[a.copy() for a in data], lrs=[0.01, 0.02],
                                                            wds=[0.0, 0.1], num_weights=2, rounding="stochastic",
                                                            seed=3))
    for a, b in zip(outs["c"], outs["numpy"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", ["c", "numpy"])
@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.name)
def test_an_update_below_half_an_ulp_survives_on_average(backend, dtype):
    """sgd on w = 1 with lr * grad an eighth of the ulp below 1: to nearest, w never moves;
    stochastically, the mean over 100,000 elements moves by the update (within 5 standard
    errors of the two-point distribution)."""
    if backend == "c" and "c" not in available_backends():
        pytest.skip("no C compiler")
    ulp = 2.0 ** -8 if dtype == BF16 else 2.0 ** -11  # the gap below 1.0
    step = ulp / 8
    n = 100_000
    w, g = np.ones(n, dtype), np.ones(n, dtype)
    with use_backend(backend):
        nearest = generated.sgd_update(w, g, lr=step)
        sr = generated.sgd_update(w, g, lr=step, rounding="stochastic", seed=1)
    assert (nearest.astype(np.float64) == 1.0).all()
    values = sr.astype(np.float64)
    assert set(np.unique(values)) == {1.0, 1.0 - ulp}
    p = 1 / 8
    assert abs(values.mean() - (1.0 - step)) < 5 * ulp * np.sqrt(p * (1 - p) / n)


@needs_c
def test_a_thousand_small_steps_track_the_float32_trajectory():
    """1,000 sgd steps on bfloat16 weights, each update under half an ulp: round-to-nearest
    leaves the weights where they started; stochastic rounding (a new seed each step)
    follows the float32 run within a few standard deviations."""
    n, steps, lr = 4096, 1000, 2.0 ** -12
    rng = np.random.default_rng(8)
    start = rng.uniform(1.0, 2.0, n).astype(BF16)  # ulp 2**-7 here: lr * grad < half of it
    grad = rng.uniform(0.5, 1.0, n).astype(BF16)
    nearest, stochastic, exact = start.copy(), start.copy(), start.astype(np.float32)
    g32 = grad.astype(np.float32)
    for step in range(steps):
        generated.sgd_update(nearest, grad, lr=lr, out=nearest)
        generated.sgd_update(stochastic, grad, lr=lr, out=stochastic, rounding="stochastic", seed=1000 + step)
        exact = exact - np.float32(lr) * g32
    assert (nearest == start).all()
    drift = stochastic.astype(np.float64) - exact.astype(np.float64)
    # each step adds an independent rounding error of mean 0 and variance <= ulp**2 / 4
    bound = np.sqrt(steps) * 2.0 ** -7 / 2
    assert abs(drift.mean()) < 5 * bound / np.sqrt(n)
    assert np.percentile(np.abs(drift), 99) < 4 * bound
    moved = start.astype(np.float64) - exact
    assert (moved > 0.12).all()  # the float32 run moved by many ulps


@pytest.mark.parametrize("kwargs, exc, message", [
    (dict(rounding="up"), ValueError, "sgd_update(): argument 'rounding' must be 'nearest' or 'stochastic', got 'up'"),
    (dict(rounding="stochastic"), TypeError, "sgd_update(): argument 'seed' is required with rounding='stochastic'"),
    (dict(rounding="stochastic", seed=-1), ValueError, "sgd_update(): argument 'seed' must lie in [0, 2**64), got -1"),
    (dict(rounding="stochastic", seed=2 ** 64), ValueError, "sgd_update(): argument 'seed' must lie in [0, 2**64)"),
    (dict(rounding="stochastic", seed=1.5), TypeError, "sgd_update(): argument 'seed' must be None or an int"),
    (dict(rounding="stochastic", seed=True), TypeError, "sgd_update(): argument 'seed' must be None or an int"),
    (dict(rounding=None), ValueError, "sgd_update(): argument 'rounding' must be 'nearest' or 'stochastic'"),
])
def test_bad_rounding_arguments_are_refused_before_anything_is_written(backend, kwargs, exc, message):
    w = np.ones(4, BF16)
    with pytest.raises(exc) as info:
        generated.sgd_update(w, np.ones(4, BF16), lr=0.1, out=w, **kwargs)
    assert str(info.value).startswith(message)
    assert w.astype(np.float32).tolist() == [1.0] * 4
    ws = [np.ones(4, BF16)]
    with pytest.raises(exc) as info:
        generated.sgd_update_multi(ws, [np.ones(4, BF16)], lr=0.1, out=ws, **kwargs)
    assert str(info.value).startswith(message.replace("sgd_update()", "sgd_update_multi()"))
    assert ws[0].astype(np.float32).tolist() == [1.0] * 4


def test_the_rounding_arguments_are_keyword_only_and_documented():
    import inspect

    for name in ("adam_update", "adam_update_multi", "multi_sgd_update", "lamb_update_phase1"):
        parameters = inspect.signature(getattr(generated, name)).parameters
        assert parameters["rounding"].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters["rounding"].default == "nearest" and parameters["seed"].default is None
        assert "rounding : {'nearest', 'stochastic'}, optional" in getattr(generated, name).__doc__
