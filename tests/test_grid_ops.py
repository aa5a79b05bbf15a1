"""Grid ops: a weight's (rows, cols) slices with per-row and per-column values (opgen/expr/grid.py).

The Adafactor specs against their independent references (tests/reference.py: the paper's
algorithm and torch.optim.Adafactor's documented one) and against torch.optim.Adafactor
itself; the determinism of their reductions across thread counts; their checks; and the
spec language's grid rules (row_mean and col_mean in dense ops, per_col states, reductions
of per-row values), on specs of our own, against float64 references written from the math.
"""

from __future__ import annotations

import textwrap

import ml_dtypes
import numpy as np
import pytest

import cases
import generated
import reference
from opgen.errors import SpecError
from opgen.runtime import use_backend
from opgen.spec.loader import parse_spec
from packages import build_package

BACKENDS = ["c", "numpy"]
GRID_OPS = cases.GRID_OPS
SHAPES = [(1, 1), (7, 33), (65, 17), (300, 5), (1, 100), (100, 1)]
# weights (..., rows, cols), each slice factored on its own: (4, 600, 20) runs its slices side by
# side (two row blocks each, on two threads or more), (2, 1, 5000) in turn (too wide for a
# thread's scratch), the others in turn (too few elements for a second thread)
SLICED_SHAPES = [(2, 7, 33), (3, 1, 5), (4, 3, 3, 3), (2, 65, 17), (5, 1, 1), (2, 300, 5), (4, 600, 20), (2, 1, 5000)]
DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
DTYPE_IDS = ["float16", "bfloat16", "float32", "float64"]

PARAMS = {
    "adafactor_update": {
        "defaults": {},
        "plain": dict(lr=0.02, relative_step=False, scale_parameter=False),
        "mixed": dict(lr=0.05, decay_rate=-0.5, eps1=1e-20, eps2=1e-2, clip_threshold=0.5, wd=0.1),
    },
    "torch_adafactor_update": {
        "defaults": {},
        "mixed": dict(lr=0.05, beta2_decay=-0.5, eps1=1e-6, eps2=1e-2, d=0.5, weight_decay=0.1, maximize=True),
    },
}
PSETS = [(op, pset) for op in GRID_OPS for pset in PARAMS[op]]


def test_every_grid_op_has_parameter_sets_and_a_reference():
    assert set(GRID_OPS) == set(PARAMS) == {"adafactor_update", "torch_adafactor_update"}
    for op in GRID_OPS:
        assert callable(getattr(reference, op))


def _steps(op, pset, shape, dtype, backend, steps=3, state_dtype=None, column=False):
    case = cases.make_case(op, cases.seed("grid", op, pset, shape, np.dtype(dtype).name, backend), shape, dtype,
                           per_row_column=column, state_dtype=state_dtype)
    rng = np.random.default_rng(cases.seed("grid-grads", op, shape))
    weight, states = case.weight.copy(), [s.copy() for s in case.states]
    expected_w, expected_states = weight.copy(), [s.copy() for s in states]
    for step in range(steps):
        grad = (rng.normal(size=shape)).astype(dtype)
        params = dict(PARAMS[op][pset], t=step + 1)
        with use_backend(backend):
            weight = case.op.fn(weight, grad, *states, **params)
        expected_w, *expected_states = case.op.ref(expected_w, grad, *expected_states, **params)
    return case, weight, states, expected_w, expected_states


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES + SLICED_SHAPES, ids=[cases.shape_id(s) for s in SHAPES + SLICED_SHAPES])
@pytest.mark.parametrize("op,pset", PSETS, ids=[f"{o}-{p}" for o, p in PSETS])
def test_grid_ops_follow_their_references(op, pset, shape, dtype, backend):
    """Matrices, and weights (..., rows, cols): each slice's row and column means and mean of
    its row factors its own, the RMS norms over the whole weight (the references: torch's
    last-two-dimension factoring, over NumPy axes -1 and -2)."""
    case, weight, states, expected_w, expected_states = _steps(op, pset, shape, dtype, backend,
                                                               column=pset == "mixed")
    case.check(weight, expected_w, "weight")
    for name, actual, expected in zip(case.op.states, states, expected_states):
        case.check(actual, expected, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("combo", cases.STATE_DTYPE_COMBOS, ids=cases.STATE_DTYPE_COMBO_IDS)
@pytest.mark.parametrize("op", GRID_OPS)
def test_states_in_a_precision_of_their_own(op, combo, backend):
    weight_dtype, state_dtype = combo
    case, weight, states, expected_w, expected_states = _steps(op, "mixed", (9, 14), weight_dtype, backend,
                                                               state_dtype=state_dtype)
    assert all(s.dtype == np.dtype(state_dtype) for s in states)
    case.check(weight, expected_w, "weight")
    for name, actual, expected in zip(case.op.states, states, expected_states):
        case.check(actual, expected, name)


def test_adafactor_by_hand():
    """One step of the paper's algorithm on a 2 x 2 weight, worked out by hand: t = 1, so
    beta2 = 0 and the factors are the means of g^2 (eps1 = 0); V = R C / mean(R)."""
    w = np.array([[1.0, -2.0], [0.5, 4.0]])
    g = np.array([[1.0, 1.0], [2.0, 0.0]])
    # R = [1, 2], C = [2.5, 0.5], mean(R) = 1.5; V = [[5/3, 1/3], [10/3, 2/3]]
    # U = g / sqrt(V) = [[sqrt(3/5), sqrt(3)], [2 sqrt(3/10), 0]], RMS(U) = sqrt((0.6 + 3 + 1.2) / 4) = sqrt(1.2)
    u = np.array([[np.sqrt(0.6), np.sqrt(3.0)], [2 * np.sqrt(0.3), 0.0]]) / np.sqrt(1.2)
    alpha = np.sqrt((1 + 4 + 0.25 + 16) / 4) * 0.01  # RMS(W) * min(lr, 1 / sqrt(1))
    for backend in BACKENDS:
        r, c = np.zeros(2), np.zeros(2)
        with use_backend(backend):
            out = generated.adafactor_update(w, g, r, c, t=1, eps1=0.0)
        np.testing.assert_allclose(r, [1.0, 2.0], rtol=1e-15)
        np.testing.assert_allclose(c, [2.5, 0.5], rtol=1e-15)
        np.testing.assert_allclose(out, w - alpha * u, rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("settings", [{}, dict(lr=0.05, weight_decay=0.1), dict(maximize=True, eps=(1e-6, 1e-2), d=1.5)],
                         ids=["defaults", "weight_decay", "maximize"])
def test_torch_adafactor_follows_torch_optim_for_100_steps(settings, backend):
    """torch_adafactor_update stepping a (24, 10) parameter of a small least-squares model
    as torch.optim.Adafactor steps its own copy, 100 steps, within float32 tolerance."""
    torch = pytest.importorskip("torch")
    if not hasattr(torch.optim, "Adafactor"):
        pytest.skip("this torch has no torch.optim.Adafactor (torch >= 2.5)")
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 24, generator=gen), torch.randn(64, 10, generator=gen)
    ours = torch.randn(24, 10, generator=gen)
    theirs = torch.nn.Parameter(ours.clone())
    opt = torch.optim.Adafactor([theirs], **settings)
    eps1, eps2 = settings.get("eps", (None, 1e-3))
    params = dict(lr=settings.get("lr", 1e-2), weight_decay=settings.get("weight_decay", 0.0),
                  maximize=settings.get("maximize", False), eps2=eps2, d=settings.get("d", 1.0))
    if eps1 is not None:
        params["eps1"] = eps1
    row_var, col_var = torch.zeros(24, 1), torch.zeros(1, 10)
    for t in range(1, 101):
        opt.zero_grad()
        loss = ((x @ theirs - y) ** 2).mean()
        loss.backward()
        ours_param = ours.clone().requires_grad_(True)
        ((x @ ours_param - y) ** 2).mean().backward()
        opt.step()
        with use_backend(backend):
            generated.torch_adafactor_update(ours, ours_param.grad, row_var, col_var, t=t, out=ours, **params)
    state = opt.state[theirs]
    np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(row_var.numpy(), state["row_var"].numpy(), rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(col_var.numpy(), state["col_var"].numpy(), rtol=2e-4, atol=1e-7)


THREADS_SCRIPT = textwrap.dedent("""\
    import sys, numpy as np, generated
    rng = np.random.default_rng(3)
    out = []
    for shape in ((700, 513), (3, 40_000), (40_000, 3), (1, 1)):
        w, g = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
        r, c = rng.uniform(0.001, 0.01, shape[0]).astype(np.float32), rng.uniform(0.001, 0.01, shape[1]).astype(np.float32)
        for op in (generated.adafactor_update, generated.torch_adafactor_update):
            rr, cc = r.copy(), c.copy()
            out += [op(w, g, rr, cc, t=4).view(np.uint32), rr.view(np.uint32), cc.view(np.uint32)]
    for shape in ((3, 300, 513), (50, 40, 30), (2, 3, 40_000), (4, 600, 20), (8, 1, 5000)):
        w, g = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
        r, c = rng.uniform(0.001, 0.01, shape[:-1]).astype(np.float32), rng.uniform(0.001, 0.01, (shape[0], shape[2])).astype(np.float32)
        for op in (generated.adafactor_update, generated.torch_adafactor_update):
            rr, cc = r.copy(), c.copy()
            out += [op(w, g, rr, cc, t=4).view(np.uint32), rr.view(np.uint32), cc.view(np.uint32)]
    np.savez(sys.argv[1], *out)
    """)


def test_the_bits_do_not_depend_on_the_thread_count(tmp_path):
    """1, 2, 3 and 8 OpenMP threads, in fresh processes: the row blocks of the passes are
    fixed by the shape, the blocks' sums combined in a fixed order, and a sliced weight's
    slices' sums in slice order."""
    results = cases.saved_arrays_by_thread_count(THREADS_SCRIPT, [], (1, 2, 3, 8), tmp_path)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_c_and_numpy_agree_to_rounding():
    rng = np.random.default_rng(9)
    w, g = rng.normal(size=(513, 129)).astype(np.float32), rng.normal(size=(513, 129)).astype(np.float32)
    results = []
    for backend in BACKENDS:
        r, c = np.full(513, 0.01, np.float32), np.full(129, 0.01, np.float32)
        with use_backend(backend):
            results.append((generated.adafactor_update(w, g, r, c, t=2), r, c))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=3e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", GRID_OPS)
def test_torch_cpu_tensors_are_updated_in_place(op, backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    w, g = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    r, c = np.full((6, 1), 0.01, np.float32), np.full((1, 4), 0.01, np.float32)
    tw, tr, tc = torch.from_numpy(w.copy()), torch.from_numpy(r.copy()), torch.from_numpy(c.copy())
    fn = getattr(generated, op)
    with use_backend(backend):
        expected = fn(w, g, r, c, t=2)
        result = fn(tw, torch.from_numpy(g), tr, tc, t=2, out=tw)
    assert result is tw
    np.testing.assert_array_equal(tw.numpy(), expected)
    np.testing.assert_array_equal(tr.numpy(), r)
    np.testing.assert_array_equal(tc.numpy(), c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)], ids=cases.shape_id)
def test_an_empty_weight_leaves_nothing_wrong(shape, backend):
    """No element: the weight stays empty; a mean over no element is NaN (in both backends)."""
    w = np.zeros(shape, np.float32)
    r, c = np.zeros(shape[0], np.float32), np.zeros(shape[1], np.float32)
    with use_backend(backend):
        out = generated.adafactor_update(w, w.copy(), r, c, t=1)
    assert out.shape == shape
    assert np.isnan(r).all() and np.isnan(c).all()


@pytest.mark.parametrize("shape", [(64, 10_000_000), (10_000_000, 3), (4096, 4096), (1, 1), (0, 7), (7, 0)],
                         ids=cases.shape_id)
def test_the_row_blocks_bound_the_column_sums(shape):
    """A pass's blocks each keep their column sums: at most abi.GRID_PARTIALS doubles in all
    per column mean (or one block's), at most GRID_MAX_BLOCKS blocks, every row in one."""
    from opgen.targets import abi

    rows, cols = shape
    block_rows = abi.grid_block_rows(rows, cols)
    blocks = -(-rows // block_rows)
    assert blocks <= abi.GRID_MAX_BLOCKS and blocks * block_rows >= rows
    assert blocks * cols <= max(abi.GRID_PARTIALS, cols)


def test_a_wide_weight_takes_few_blocks_and_matches_the_reference():
    rng = np.random.default_rng(8)
    shape = (6, 2_000_003)  # two blocks of three rows (GRID_PARTIALS // cols = 2)
    w, g = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    r, c = np.full(6, 0.01, np.float32), np.full(shape[1], 0.01, np.float32)
    expected = reference.adafactor_update(w, g, r.copy(), c.copy(), t=3)
    out = generated.adafactor_update(w, g, r, c, t=3)
    for actual, e in zip((out, r, c), expected):
        cases.check(actual, e, "adafactor_update", np.float32, "wide")


# -- weights of three or more dimensions: (..., rows, cols), each slice factored on its own ---------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sliced_weight_by_hand(backend):
    """torch_adafactor_update at t = 1 (the factors become the means of g^2) on two 1 x 2
    slices, worked out by hand. Slice 0: g = [1, 1], R = [1], C = [1, 1], mean(R) = 1, so
    U = [1, 1]. Slice 1: g = [2, 0], R = [2], C = [4, 0], mean(R) = 2 (its own: the whole
    weight's 1.5 would give other values), V = R C / 2 = [4, 0], U = [2 / 2, 0] = [1, 0]. The
    clipping reads the whole update: RMS(U) = sqrt(3 / 4), over d = 0.5 that is sqrt(3)
    (each slice's own would divide slice 0 by 2 and slice 1 by sqrt(2)). RMS(W) = 1, so
    alpha = min(lr, 1) = 0.01."""
    w = np.ones((2, 1, 2))
    g = np.array([[[1.0, 1.0]], [[2.0, 0.0]]])
    r, c = np.zeros((2, 1, 1)), np.zeros((2, 1, 2))
    with use_backend(backend):
        out = generated.torch_adafactor_update(w, g, r, c, t=1, d=0.5)
    np.testing.assert_allclose(r.ravel(), [1.0, 2.0], rtol=1e-15)
    np.testing.assert_allclose(c.reshape(2, 2), [[1.0, 1.0], [4.0, 0.0]], rtol=1e-15)
    u = np.array([[[1.0, 1.0]], [[1.0, 0.0]]]) / np.sqrt(3.0)
    np.testing.assert_allclose(out, 1.0 - 0.01 * u, rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)], ids=cases.shape_id)
def test_an_empty_sliced_weight_leaves_nothing_wrong(shape, backend):
    """No element: the weight stays empty; a slice's mean over no element is NaN."""
    w = np.zeros(shape, np.float32)
    r, c = np.zeros(shape[:-1], np.float32), np.zeros((*shape[:-2], shape[-1]), np.float32)
    with use_backend(backend):
        out = generated.torch_adafactor_update(w, w.copy(), r, c, t=1)
    assert out.shape == shape
    assert np.isnan(r).all() and np.isnan(c).all()


def test_sliced_stochastic_rounding_keys_each_element_of_the_whole_weight():
    """bfloat16 with stochastic rounding: the C kernel and the NumPy reference draw the same
    bits for every element, row and column of a sliced weight (keyed by their place in the
    whole weight), so two equal slices, equal under rounding to nearest, round apart; and the
    same bits in both backends where many small slices run side by side."""
    rng = np.random.default_rng(12)
    one_w = rng.normal(size=(1, 9, 40)).astype(ml_dtypes.bfloat16)
    one_g = rng.normal(size=(1, 9, 40)).astype(ml_dtypes.bfloat16)
    w, g = np.concatenate([one_w, one_w]), np.concatenate([one_g, one_g])
    results = {}
    for rounding in ("nearest", "stochastic"):
        for backend in BACKENDS:
            r, c = np.full((2, 9, 1), 0.5, ml_dtypes.bfloat16), np.full((2, 1, 40), 0.5, ml_dtypes.bfloat16)
            with use_backend(backend):
                out = generated.torch_adafactor_update(w, g, r, c, t=3, rounding=rounding, seed=7)
            results[rounding, backend] = [a.view(np.uint16) for a in (out, r, c)]
        for a, b in zip(results[rounding, "c"], results[rounding, "numpy"]):
            np.testing.assert_array_equal(a, b)
    nearest, stochastic = results["nearest", "c"], results["stochastic", "c"]
    for a in nearest:
        np.testing.assert_array_equal(a[0], a[1])
    assert not np.array_equal(stochastic[0][0], stochastic[0][1])
    assert not np.array_equal(stochastic[1][0], stochastic[1][1]) or not np.array_equal(stochastic[2][0],
                                                                                        stochastic[2][1])
    w, g = (rng.normal(size=(24, 30, 40)).astype(ml_dtypes.bfloat16) for _ in range(2))
    side_by_side = []
    for backend in BACKENDS:
        r, c = np.full((24, 30), 0.5, ml_dtypes.bfloat16), np.full((24, 40), 0.5, ml_dtypes.bfloat16)
        with use_backend(backend):
            out = generated.torch_adafactor_update(w, g, r, c, t=3, rounding="stochastic", seed=9)
        side_by_side.append([a.view(np.uint16) for a in (out, r, c)])
    for a, b in zip(*side_by_side):
        np.testing.assert_array_equal(a, b)


def test_sliced_weights_refuse_device_arrays_clearly():
    """The CUDA kernels take one (rows, cols) slice: a sliced device weight is a ValueError
    naming it, before anything is written."""
    cupy = pytest.importorskip("cupy")
    try:
        w = cupy.ones((2, 3, 4), cupy.float32)
    except Exception as exc:  # (no device here)
        pytest.skip(f"no CUDA device: {type(exc).__name__}")
    r, c = cupy.zeros((2, 3), cupy.float32), cupy.zeros((2, 4), cupy.float32)
    with pytest.raises(ValueError, match="'weight' has shape \\(2, 3, 4\\); .* CUDA kernels take 2-D weights"):
        generated.torch_adafactor_update(w, w.copy(), r, c, t=1)
    assert float(r.sum()) == 0.0


BAD_CALLS = {
    "1-D weight": (lambda w, g, r, c: (w[0], g[0], r, c), ValueError,
                   "'weight' has shape \\(4,\\); .* must be \\(rows, cols\\), or \\(\\.\\.\\., rows, cols\\)"),
    "0-d weight": (lambda w, g, r, c: (w[0, 0, ...], g[0, 0, ...], r, c), ValueError, "'weight' has shape \\(\\)"),
    "3-D weight, 2-D states": (lambda w, g, r, c: (w[None], g[None], r, c), ValueError,
                               "'row_var' has shape \\(3,\\); .* shape \\(1, 3\\) or \\(1, 3, 1\\)"),
    "3-D weight, col_var of another slice count": (
        lambda w, g, r, c: (np.stack([w, w]), np.stack([g, g]), np.stack([r, r]), c[None]), ValueError,
        "'col_var' has shape \\(1, 4\\); .* shape \\(2, 4\\) or \\(2, 1, 4\\)"),
    "3-D weight, grad of another slice count": (
        lambda w, g, r, c: (np.stack([w, w]), g[None], np.stack([r, r]), np.stack([c, c])), ValueError,
        "'grad' has shape \\(1, 3, 4\\)"),
    "row_var of the columns": (lambda w, g, r, c: (w, g, c, c), ValueError, "'row_var' has shape \\(4,\\); it holds "
                                                                          "one value per row"),
    "col_var of the rows": (lambda w, g, r, c: (w, g, r, r), ValueError, "'col_var' has shape \\(3,\\); it holds "
                                                                        "one value per column"),
    "col_var as a column": (lambda w, g, r, c: (w, g, r, c.reshape(4, 1)), ValueError, "shape \\(4,\\) or \\(1, 4\\)"),
    "grad of another shape": (lambda w, g, r, c: (w, g.T.copy(), r, c), ValueError, "'grad' has shape \\(4, 3\\)"),
    "read-only state": (lambda w, g, r, c: (w, g, r, _read_only(c)), ValueError, "'col_var' is read-only"),
    "states sharing memory": (lambda w, g, r, c: (w, g, *_overlapping()), ValueError,
                              "'col_var' shares memory with 'row_var'"),
    "float64 grad": (lambda w, g, r, c: (w, g.astype(np.float64), r, c), TypeError, "'grad' has dtype float64"),
}


def _overlapping():
    room = np.full(5, 0.5, np.float32)
    return room[:3], room[1:]


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_bad_calls_name_the_argument_and_change_nothing(case, backend):
    make, error, match = BAD_CALLS[case]
    rng = np.random.default_rng(4)
    w, g = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3, 4)).astype(np.float32)
    r, c = np.full(3, 0.5, np.float32), np.full(4, 0.5, np.float32)
    args = make(w, g, r, c)
    before = [np.array(a, copy=True) for a in (w, g, r, c)]
    with use_backend(backend), pytest.raises(error, match=match):
        generated.adafactor_update(*args, t=1)
    for a, b in zip((w, g, r, c), before):
        np.testing.assert_array_equal(a, b)


def test_bad_parameters_are_refused_before_anything_is_written():
    w, g = np.ones((2, 3), np.float32), np.ones((2, 3), np.float32)
    r, c = np.ones(2, np.float32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="'t'"):
        generated.adafactor_update(w, g, r, c, t=1.5)
    with pytest.raises(TypeError, match="'relative_step'"):
        generated.adafactor_update(w, g, r, c, t=1, relative_step="yes")
    np.testing.assert_array_equal(r, 1.0)


# -- the spec language's grid rules, on specs of our own ------------------------------------------
GRID_SPEC = """\
name: toy_update
summary: A grid op exercising the grid rules.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
  - {name: mom, role: state, doc: An element state}
  - {name: rs, role: state, per_row: true, doc: A per-row state}
  - {name: cs, role: state, per_col: true, doc: A per-column state}
params:
  - {name: lr, type: float, required: true, doc: Step}
math:
  - q = rs + 1
  - mom = 0.5 * mom + grad * q
  - rs = 0.9 * rs + row_mean(grad * grad)
  - cs = 0.5 * cs + col_mean(abs(grad)) + amax(rs)
  - rs = rs + sum(cs) * 0.001
  - z = norm(mom / sqrt(rs * cs + 1))
  - k = row_sum(grad) * col_sum(mom)
  - weight = weight - lr * (mom / (z + 1) + rs * cs) - 0.001 * k
"""


def grid_reference(weight, grad, mom, rs, cs, lr):
    """GRID_SPEC's math in float64, written from the formulas (rs: (rows,), cs: (cols,))."""
    w, g, m = (np.asarray(a, np.float64) for a in (weight, grad, mom))
    rs, cs = np.asarray(rs, np.float64)[:, None], np.asarray(cs, np.float64)[None, :]
    q = rs + 1  # the per-row state before its update
    m = 0.5 * m + g * q
    rs = 0.9 * rs + (g * g).mean(axis=1, keepdims=True)
    cs = 0.5 * cs + np.abs(g).mean(axis=0, keepdims=True) + rs.max()
    rs = rs + cs.sum() * 0.001
    z = np.sqrt(np.sum((m / np.sqrt(rs * cs + 1)) ** 2))
    k = g.sum(axis=1, keepdims=True) * m.sum(axis=0, keepdims=True)  # (mom: its new value)
    w = w - lr * (m / (z + 1) + rs * cs) - 0.001 * k
    return w, m, rs[:, 0], cs[0]


@pytest.fixture(scope="module")
def grid_package(tmp_path_factory):
    return build_package(tmp_path_factory.mktemp("grid"), {"toy_update": GRID_SPEC}, "grid_pkg")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (40, 3), (200, 300)], ids=cases.shape_id)
def test_a_grid_spec_of_every_kind_matches_float64(grid_package, shape, backend):
    rng = np.random.default_rng(shape[0])
    w, g, m = (rng.normal(size=shape) for _ in range(3))
    rs, cs = rng.uniform(0, 1, shape[0]), rng.uniform(0, 1, shape[1])
    expected = grid_reference(w, g, m, rs, cs, 0.1)
    with use_backend(backend):
        out = grid_package.toy_update(w, g, m, rs, cs, lr=0.1)
    for actual, e in zip((out, m, rs, cs), expected):
        np.testing.assert_allclose(actual, e, rtol=1e-12, atol=1e-12)


def test_a_grid_spec_runs_level_by_level():
    op = parse_spec(GRID_SPEC, "specs/toy_update.yaml")
    g = op.grid
    # pass 1: row_mean, col_mean; then amax(rs) over the rows; then cs; sum(cs) over the
    # columns; the second rs; then norm(...) in an element pass; then the update
    assert [p.level for p in g.passes] == [1, 4]
    # row_sum(grad) and col_sum(mom) read no per-row value: pass 1 adds them too
    assert [m.func for m in g.passes[0].means] == ["row_mean", "col_mean", "row_sum", "col_sum"]
    assert [(v.total.func, v.total.level, v.over.name) for v in g.vector_totals] == [("amax", 2, "ROW"),
                                                                                    ("sum", 3, "COL")]
    # q, a per-row temporary, is computed before any pass; each statement has a slot of its own
    assert [(v.statement.target, v.slot, v.level) for v in g.vectors] == [("q", 0, 0), ("rs", 2, 1), ("cs", 1, 2),
                                                                           ("rs", 3, 3)]
    assert [(name, slot) for name, _, slot in g.stores] == [("rs", 3), ("cs", 1)]


def _grid(*math: str, tensors: str = "", extra: str = "", params: str = "") -> str:
    head = GRID_SPEC.split("math:")[0]
    if tensors:
        head = head.replace("params:", tensors + "params:")
    head += params
    return head + extra + "math:\n" + "".join(f"  - {line}\n" for line in math)


BAD_GRID_SPECS = {
    "row state from elements": (_grid("rs = rs + grad", "cs = cs + 1", "mom = mom + grad", "weight = weight - lr * rs"),
                                "'rs' holds one value per row: .* not element values"),
    "col state from rows": (_grid("rs = rs + 1", "cs = cs + rs", "mom = mom + grad", "weight = weight - lr * cs"),
                            "'cs' holds one value per column: .* not per-row values"),
    "row_mean of a per-row value": (_grid("rs = row_mean(rs)", "cs = cs + 1", "mom = mom + grad", "weight = weight - lr * rs"),
                                    "row_mean\\(\\) averages an element expression over each row"),
    "col_mean of a per-column value": (_grid("rs = rs + 1", "cs = col_mean(cs * 2)", "mom = mom + grad",
                                             "weight = weight - lr * rs"), "col_mean\\(\\) averages"),
    "row_sum of a per-column value": (_grid("rs = row_sum(cs)", "cs = cs + 1", "mom = mom + grad",
                                            "weight = weight - lr * rs"), "row_sum\\(\\) adds an element expression"),
    "row_sum in a row-sparse op": (_grid("rs = rs + row_sum(grad)", "cs = cs + 1", "mom = mom + grad",
                                         "weight = weight - lr * rs * cs", extra="row_sparse: {lazy: true}\n"),
                                   "dense gradients only"),
    "per_col on a gradient": (_grid("weight = weight - lr * grad").replace("{name: grad, role: grad,",
                                                                          "{name: grad, role: grad, per_col: true,"),
                              "only states can hold one value per column"),
    "per_col and per_row": (_grid("weight = weight - lr * grad").replace("per_col: true", "per_col: true, per_row: true"),
                            "only states can hold one value per (row|column)"),
    "row_sparse": (_grid("rs = rs + 1", "cs = cs + 1", "mom = mom + grad", "weight = weight - lr * rs * cs",
                         extra="row_sparse: {lazy: true}\n"), "dense gradients only"),
    "multi": (_grid("rs = rs + 1", "cs = cs + 1", "mom = mom + grad", "weight = weight - lr * rs * cs",
                    extra="multi: {count: n}\n", params="  - {name: n, type: int, default: 1, doc: Count}\n"),
              "cannot have multi"),
    "skip_if": (_grid("rs = rs + 1", "cs = cs + 1", "mom = mom + grad", "weight = weight - lr * rs * cs",
                      extra="skip_if: lr == 0\n"), "cannot have skip_if"),
    "per-tensor state": (_grid("rs = rs + 1", "cs = cs + 1", "mom = mom + grad", "s = s + 1", "weight = weight - lr * s",
                               tensors="  - {name: s, role: state, per_tensor: true, dtype: float32, doc: S}\n"),
                         "cannot have the per-tensor state 's'"),
    "col state never written": (_grid("rs = rs + 1", "mom = mom + grad", "weight = weight - lr * rs * cs"),
                                "state 'cs' is never written"),
}


@pytest.mark.parametrize("case", BAD_GRID_SPECS, ids=list(BAD_GRID_SPECS))
def test_bad_grid_specs_are_spec_errors_with_a_location(case):
    text, match = BAD_GRID_SPECS[case]
    with pytest.raises(SpecError, match=match) as info:
        parse_spec(text, "specs/toy_update.yaml")
    assert str(info.value).startswith("specs/toy_update.yaml:")


def test_row_mean_in_a_dense_op_is_a_grid_op_with_per_row_values():
    """row_mean(...) in an op without row_sparse: a per-row temporary, dense, 2-D."""
    text = """\
    name: toy_update
    summary: Each row's step scaled by its mean square.
    tensors:
      - {name: weight, role: weight, doc: Weight}
      - {name: grad, role: grad, doc: Gradient}
    params:
      - {name: lr, type: float, required: true, doc: Step}
    math:
      - ms = row_mean(grad * grad)
      - weight = weight - lr * grad / sqrt(ms + 1)
    """
    op = parse_spec(textwrap.dedent(text), "specs/toy_update.yaml")
    assert op.grid is not None and op.schedules == (op.schedules[0],) and op.schedules[0].value == "grid"
    assert op.grid.row_slots == 2 and op.grid.col_slots == 0  # the row mean's and ms's
