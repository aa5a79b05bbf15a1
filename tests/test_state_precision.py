"""Optimizer states in their own precision (issue 10): bf16 or float16 weights with float32
states, float32 weights with bf16 states. Every op with states the spec does not fix,
in every schedule, against the independent float64-free reference (tests/reference.py:
the math in the widest dtype of the call, each result rounded once into its own dtype),
C and the NumPy reference to the same bits, the multi-tensor kernel like the single one,
and every combination the docs do not list refused before anything is written."""

from __future__ import annotations

import re
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
F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
ALL = (F16, BF16, F32, F64)
#: (weight dtype, state dtype) of every mixed call, by hand from the issue's rule
COMBOS = [(F16, F32), (BF16, F32), (F32, BF16)]
COMBO_IDS = [f"{w.name}+{s.name}-states" for w, s in COMBOS]
#: the ops with states whose dtype the spec does not fix
FREE = cases.MIXED_STATE_OPS
needs_c = pytest.mark.skipif("c" not in available_backends(), reason="no C compiler")
SHAPES = [(1,), (37,), (7, 33)]


def _case(op, w, s, shape=(7, 33), pset="mixed", step=1, grad_rows=None):
    params = cases.step_params(op, cases.PARAMS[op][pset], step)
    return cases.make_case(op, cases.seed(op, pset, w.name, s.name, shape), shape, w, params,
                           state_dtype=s, grad_rows=grad_rows)


def test_the_free_state_ops_are_the_ops_with_unfixed_states():
    """By hand: every op whose spec has a state without a dtype."""
    assert "adam_update" in FREE and "sgd_mom_update" in FREE and "multi_sgd_mom_update" in FREE
    assert "sgd_update" not in FREE and "mp_sgd_mom_update" not in FREE and "lamb_update_phase2" not in FREE


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("op", FREE)
def test_three_steps_match_the_reference(backend, op, combo):
    """Three steps, states carried in their own dtype, each step against the reference fed
    the same inputs; every parameter set and shape. The results keep their dtypes."""
    w, s = combo
    info = cases.op(op)
    for pset in cases.PARAMS[op]:
        for shape in SHAPES:
            case = _case(op, w, s, shape, pset, 0)
            rng = np.random.default_rng(cases.seed(op, pset, "steps"))
            for step in range(3):
                case.params = cases.step_params(op, cases.PARAMS[op][pset], step)
                case.new_grad(rng)
                expected = case.expected()
                result = case() if info.output else case(out=case.weight)
                assert result.dtype == info.out_dtype(w)
                assert all(a.dtype == (info.fixed.get(n) or s) for n, a in zip(info.states, case.states))
                case.check(result, expected[0], f"[{pset}] step {step} out")
                case.check_states(expected[1:], f"[{pset}] step {step}")
                if not info.output:
                    case.weight = result


@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("op", [o for o in FREE if cases.op(o).sparse_modes])
def test_row_sparse_updates_match_the_reference(backend, op, combo):
    """Lazy and standard row-sparse updates: the reference's result, rows absent from a lazy
    gradient bit-identical in the weight and in every state."""
    w, s = combo
    info = cases.op(op)
    rows = np.array([1, 4, 6])
    for mode, extra in info.sparse_modes.items():
        case = _case(op, w, s)
        dense = case.grad if isinstance(case.grad, np.ndarray) else case.grad.todense()
        case.grad = RowSparseArray(np.ascontiguousarray(dense[rows]), rows, dense.shape)
        before = [case.weight.copy(), *(a.copy() for a in case.states)]
        expected = case.expected(extra)
        result = case(out=case.weight, **extra)
        case.check(result, expected[0], f"{mode} out")
        case.check_states(expected[1:], mode)
        if mode == "lazy":
            other = np.setdiff1d(np.arange(7), rows)
            for now, was in zip([result, *case.states], before):
                assert now[other].tobytes() == was[other].tobytes(), mode


def _bits(arrays) -> list[bytes]:
    return [np.asarray(a).tobytes() for a in arrays]


@needs_c
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
@pytest.mark.parametrize("op", FREE)
def test_c_and_numpy_give_the_same_bits(op, combo, rounding):
    """Both backends round the same float32 values into each tensor's own dtype: to nearest
    even, or with the same random bits."""
    seed = 99 if rounding == "stochastic" else None
    results = {}
    for backend in ("c", "numpy"):
        case = _case(op, *combo)
        with use_backend(backend):
            result = case(rounding=rounding, seed=seed)
        results[backend] = _bits([result, *case.states])
    assert results["c"] == results["numpy"]


@needs_c
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_stochastic_rounding_rounds_the_bf16_states_and_leaves_wide_stores_alone(combo):
    """float32 weights keep round-to-nearest bits whatever the mode (nothing to round), and
    their bf16 states change with it; float16/bf16 weights with float32 states, the reverse."""
    w, s = combo
    nearest, stochastic = _case("adam_update", w, s), _case("adam_update", w, s)
    nearest(out=nearest.weight)
    stochastic(out=stochastic.weight, rounding="stochastic", seed=5)
    wide_same = [a.tobytes() == b.tobytes() for a, b in zip([nearest.weight, *nearest.states],
                                                            [stochastic.weight, *stochastic.states])]
    assert wide_same == [w.itemsize == 4, s.itemsize == 4, s.itemsize == 4]


@needs_c
def test_stochastic_bf16_states_are_unbiased():
    """mean = beta1 * mean + (1 - beta1) * g with a float32 weight: over 400 seeds the bf16
    mean averages to the float32 value, within 5 standard errors (a half-ulp bias would be
    tens of them)."""
    n = 256
    weight = np.ones(n, F32)
    grad = np.ones(n, F32)  # m = 0.1f: 0.8 of the way from one bf16 neighbour to the next
    mean0 = np.zeros(n, BF16)
    exact = np.float64(np.float32(0.1))
    total = np.zeros(n)
    for seed in range(400):
        mean, var = mean0.copy(), np.zeros(n, BF16)
        generated.adam_update(weight, grad, mean, var, lr=0.0, beta1=0.9, rounding="stochastic", seed=seed)
        total += mean.astype(np.float64)
    average = total / 400
    ulp = 2.0 ** (np.floor(np.log2(exact)) - 7)
    assert abs(average.mean() - exact) < 5 * (ulp / 2) / np.sqrt(400 * n)
    nearest = np.zeros(n, BF16)
    generated.adam_update(weight, grad, nearest, np.zeros(n, BF16), lr=0.0, beta1=0.9)
    assert abs(nearest.astype(np.float64)[0] - exact) > 20 * (ulp / 2) / np.sqrt(400 * n)  # the test can fail


@needs_c
@pytest.mark.parametrize("combo", COMBOS, ids=COMBO_IDS)
def test_the_multi_tensor_kernel_equals_the_single_tensor_one(combo):
    """adam_update_multi over tensors of one combination gives the bits of one call each."""
    w, s = combo
    rng = np.random.default_rng(3)
    sizes = [5, 300, 4097]
    weights = [rng.normal(size=n).astype(w) for n in sizes]
    grads = [rng.normal(size=n).astype(w) for n in sizes]
    means = [rng.normal(0, 0.1, size=n).astype(s) for n in sizes]
    vars_ = [rng.uniform(0, 0.01, size=n).astype(s) for n in sizes]
    multi = [[a.copy() for a in group] for group in (weights, means, vars_)]
    generated.adam_update_multi(multi[0], grads, multi[1], multi[2], lr=0.01, out=multi[0])
    for k in range(len(sizes)):
        one = [weights[k].copy(), means[k].copy(), vars_[k].copy()]
        generated.adam_update(one[0], grads[k], one[1], one[2], lr=0.01, out=one[0])
        assert _bits(one) == _bits(group[k] for group in multi)
        assert [a.dtype for a in one] == [w, s, s]


@needs_c
def test_the_multi_tensor_kernel_with_stochastic_rounding_equals_its_general_path():
    """The C multi kernel and the general path (the NumPy reference, tensor by tensor): the
    same random bits for tensor k of a call, for bf16 states beside float32 weights."""
    arrays = {}
    for backend in ("c", "numpy"):
        r = np.random.default_rng(4)
        weights = [r.normal(size=n).astype(F32) for n in (7, 100)]
        grads = [r.normal(size=n).astype(F32) for n in (7, 100)]
        moms = [r.normal(0, 0.1, size=n).astype(BF16) for n in (7, 100)]
        with use_backend(backend):
            generated.sgd_mom_update_multi(weights, grads, moms, lr=0.1, momentum=0.9, out=weights,
                                           rounding="stochastic", seed=17)
        arrays[backend] = _bits(weights + moms)
    assert arrays["c"] == arrays["numpy"]


def test_mixing_combinations_in_one_multi_call_is_refused_before_anything_is_written():
    w = [np.ones(4, F32), np.ones(4, F32)]
    g = [np.ones(4, F32), np.ones(4, F32)]
    m = [np.zeros(4, BF16), np.zeros(4, F32)]
    before = [a.copy() for a in w + m]
    with pytest.raises(TypeError, match=r"sgd_mom_update_multi\(\): argument 'moms\[1\]' has dtype float32 but "
                                        r"the first tensor's states have bfloat16"):
        generated.sgd_mom_update_multi(w, g, m, lr=0.1, momentum=0.9, out=w)
    assert _bits(w + m) == _bits(before)


# -- what is refused -------------------------------------------------------------------------------
def _accepted(op: str) -> set[tuple[str, str]]:
    """(weight, states) pairs the op's documentation page lists."""
    page = (ROOT / "generated" / "docs" / f"{op}.md").read_text()
    table = page[page.index("## Data types"):]
    rows = re.findall(r"^\| ((?:b?float\d+ \| )+)b?float\d+ \|$", table, re.M)
    info = cases.op(op)
    free = [n for n in info.states if n not in info.fixed]
    pairs = set()
    for row in rows:
        cells = row.rstrip(" |").split(" | ")
        pairs.add((cells[0], cells[1] if free else cells[0]))
    return pairs


@pytest.mark.parametrize("op", cases.SINGLE)
def test_every_combination_the_page_lists_runs_and_every_other_is_refused(op):
    """The docs page's table is the truth: each (weight, state) pair it lists updates; each
    it does not list raises TypeError naming the first state, listing what is accepted,
    with every array unchanged."""
    info = cases.op(op)
    accepted = _accepted(op)
    free = [n for n in info.states if n not in info.fixed]
    assert {(d.name, d.name) for d in ALL} <= accepted
    for w in ALL:
        for s in ALL if free else (w,):
            case = _case(op, w, s, (5, 3), "defaults", 1)
            if (w.name, s.name) in accepted:
                result = case() if info.output else case(out=case.weight)
                assert result.dtype == info.out_dtype(w)
                continue
            before = case.snapshot()
            with pytest.raises(TypeError, match=rf"{op}\(\): argument '{free[0]}' has dtype {s.name}, but beside a "
                                                rf"{w.name} '{info.weight}' the states must be .*{op} takes"):
                case(out=case.weight)
            case.assert_unchanged(before)


@pytest.mark.parametrize("op", FREE)
def test_states_of_two_dtypes_in_one_call_are_refused(op):
    info = cases.op(op)
    free = [n for n in info.states if n not in info.fixed]
    if len(free) < 2:
        pytest.skip("one free state")
    case = _case(op, F32, BF16, (5, 3))
    case.arrays[free[1]] = case.arrays[free[1]].astype(F32)
    before = case.snapshot()
    # MXNet's flat multi convention names the arrays data[k] (one group here)
    label = (lambda n: re.escape(f"data[{info.tensor_names.index(n)}]")) if info.multi else (lambda n: n)
    with pytest.raises(TypeError, match=rf"argument '{label(free[1])}' has dtype float32 but '{label(free[0])}' has "
                                        "bfloat16; the states of a call share one dtype"):
        case(out=case.weight)
    case.assert_unchanged(before)


@pytest.mark.parametrize("op", FREE)
def test_a_gradient_in_the_state_dtype_is_refused(op):
    case = _case(op, BF16, F32, (5, 3))
    grad = case.grad.data if isinstance(case.grad, RowSparseArray) else case.grad
    if isinstance(case.grad, RowSparseArray):
        case.grad = RowSparseArray(grad.astype(F32), case.grad.indices, case.grad.shape)
    else:
        case.grad = grad.astype(F32)
    before = case.snapshot()
    # MXNet's flat multi convention names the arrays data[k]
    grad_name, weight_name = ("data\\[1\\]", "data\\[0\\]") if case.op.multi else (case.op.grad, case.op.weight)
    with pytest.raises(TypeError, match=rf"argument '{grad_name}' has dtype float32 but '{weight_name}' has "
                                        "bfloat16; the gradient must have the weight's dtype"):
        case(out=case.weight)
    case.assert_unchanged(before)
