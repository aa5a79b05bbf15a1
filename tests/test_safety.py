"""Memory safety and error paths found in review: each case here once went wrong."""

from __future__ import annotations

import numpy as np
import pytest

import generated
import reference
from opgen.errors import SpecError
from opgen.spec.loader import parse_spec


def test_row_sparse_indices_are_a_private_read_only_copy():
    idx = np.array([1, 3])
    rsp = generated.RowSparseArray(np.ones((2, 2), np.float32), idx, (5, 2))
    idx[0] = 4  # the caller reuses its buffer: the checked indices must not change
    assert rsp.indices.tolist() == [1, 3]
    with pytest.raises(ValueError):
        rsp.indices[0] = 9
    with pytest.raises(AttributeError):
        rsp.indices = np.array([0, 9])


def test_row_sparse_data_reshaped_after_construction_is_refused(backend):
    data = np.ones((2, 4), np.float32)
    rsp = generated.RowSparseArray(data, [0, 1], (3, 4))
    data.shape = (4, 2)
    w = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="'grad' data has shape"):
        generated.sgd_update(w, rsp, lr=0.1, out=w)


def _lists(n=3, size=5):
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=size).astype(np.float32) for _ in range(n)]
    gs = [rng.normal(size=size).astype(np.float32) for _ in range(n)]
    return ws, gs


def test_multi_refuses_one_weight_for_two_tensors(backend):
    ws, gs = _lists(2)
    before = ws[0].copy()
    with pytest.raises(ValueError, match="shares memory"):
        generated.sgd_update_multi([ws[0], ws[0]], gs, lr=0.1, out=[ws[0], ws[0]])
    np.testing.assert_array_equal(ws[0], before)


def test_multi_refuses_an_out_that_is_another_tensors_grad(backend):
    ws, gs = _lists(2)
    out = [np.empty_like(ws[0]), gs[0]]
    with pytest.raises(ValueError, match="shares memory"):
        generated.sgd_update_multi(ws, gs, lr=0.1, out=out)


def test_multi_checks_every_tensor_before_updating_any(backend):
    ws, gs = _lists(3)
    before = [w.copy() for w in ws]
    gs[2] = gs[2].astype(np.float64)
    with pytest.raises(TypeError, match=r"grads\[2\]"):
        generated.sgd_update_multi(ws, gs, lr=0.1, out=ws)
    for w, b in zip(ws, before):
        np.testing.assert_array_equal(w, b)


def test_multi_refuses_row_sparse_gradients(backend):
    ws, gs = _lists(2)
    rsp = generated.RowSparseArray(np.ones(1, np.float32), [2], (5,))
    with pytest.raises(TypeError, match=r"grads\[1\]' is row-sparse"):
        generated.sgd_update_multi(ws, [gs[0], rsp], lr=0.1, out=ws)


def test_multi_refuses_row_sparse_gradients_after_its_plan_is_cached(backend):
    """A warm plan (the same weights, in place) still refuses a row-sparse gradient, with
    nothing written, and serves the next plain call."""
    ws, gs = _lists(2)
    generated.sgd_update_multi(ws, gs, lr=0.1, out=ws)  # plans (on C) and caches
    before = [w.copy() for w in ws]
    rsp = generated.RowSparseArray(np.ones(1, np.float32), [2], ws[1].shape)
    with pytest.raises(TypeError, match=r"grads\[1\]' is row-sparse"):
        generated.sgd_update_multi(ws, [gs[0], rsp], lr=0.1, out=ws)
    for w, b in zip(ws, before):
        np.testing.assert_array_equal(w, b)
    generated.sgd_update_multi(ws, gs, lr=0.1, out=ws)
    for w, b, g in zip(ws, before, gs):
        np.testing.assert_array_equal(w, (b - np.float32(0.1) * g).astype(np.float32))


def test_multi_checks_per_tensor_parameter_ranges(backend):
    n = 2
    rng = np.random.default_rng(1)
    w = [rng.normal(size=4).astype(np.float32) for _ in range(n)]
    g = [rng.normal(size=4).astype(np.float32) for _ in range(n)]
    states = [[np.zeros(4, np.float32) for _ in range(n)] for _ in range(3)]
    with pytest.raises(ValueError, match="'beta1' holds 1.5"):
        generated.ftml_update_multi(w, g, *states, lr=0.1, t=1, beta1=[0.5, 1.5], out=w)


def test_output_op_with_a_strided_weight(backend):
    rng = np.random.default_rng(2)
    base = rng.normal(size=(4, 8)).astype(np.float32)
    weight = base[:, ::2]  # not contiguous
    grad = rng.normal(size=(4, 4)).astype(np.float32)
    m1, v1 = np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32)
    m2, v2 = m1.copy(), v1.copy()
    got = generated.lamb_update_phase1(weight, grad, m1, v1, t=1, wd=0.01)
    want = generated.lamb_update_phase1(np.ascontiguousarray(weight), grad, m2, v2, t=1, wd=0.01)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(m1, m2)


@pytest.mark.parametrize("kwargs, match", [(dict(lr=0.1, t=2 ** 70, wd=0.0), "'t' is"),
                                           (dict(lr=10 ** 400, t=1, wd=0.0), "'lr' is too large")])
def test_huge_numbers_are_value_errors(backend, kwargs, match):
    w = np.ones(4, np.float32)
    states = [np.zeros(4, np.float32) for _ in range(3)]
    with pytest.raises(ValueError, match=match):
        generated.ftml_update(w, np.ones(4, np.float32), *states, **kwargs)


ROW_SPEC = """\
name: rows_update
summary: x
tensors:
  - {name: weight, role: weight, doc: w}
  - {name: grad, role: grad, doc: g}
  - {name: history, role: state, per_row: true, doc: h}
params:
  - {name: lr, type: float, required: true, doc: lr}
row_sparse: {lazy: true, dense: false}
math:
  - gr = grad / sqrt(history + 1)
  - history += row_mean(gr * gr)
  - weight = weight - lr * gr
"""


def test_an_element_statement_before_the_row_step_may_not_read_per_row_values():
    with pytest.raises(SpecError, match=r"rows_update.yaml:11:5: element statements before the per-row ones"):
        parse_spec(ROW_SPEC, "specs/rows_update.yaml", "rows_update")


def test_output_and_skip_if_together_are_refused():
    spec = ROW_SPEC.replace("history, role: state, per_row: true", "mom, role: state").replace(
        "row_sparse: {lazy: true, dense: false}\n", "output: step\nskip_if: lr == 0\n").replace(
        "  - gr = grad / sqrt(history + 1)\n  - history += row_mean(gr * gr)\n  - weight = weight - lr * gr\n",
        "  - mom = mom + grad\n  - step = lr * mom + weight\n")
    with pytest.raises(SpecError, match="cannot have skip_if"):
        parse_spec(spec, "specs/rows_update.yaml", "rows_update")


def test_multi_results_of_a_cached_second_call_are_right(backend):
    ws, gs = _lists(3)
    moms = [np.zeros_like(w) for w in ws]
    expected_w, expected_m = [w.copy() for w in ws], [m.copy() for m in moms]
    for _ in range(2):
        generated.sgd_mom_update_multi(ws, gs, moms, lr=0.1, momentum=0.9, out=ws)
        for k in range(3):
            expected_w[k], expected_m[k] = reference.sgd_mom_update(expected_w[k], gs[k], expected_m[k], lr=0.1,
                                                                    momentum=0.9)
        for k in range(3):
            reference.assert_close(ws[k], expected_w[k], f"weights[{k}]")
            reference.assert_close(moms[k], expected_m[k], f"moms[{k}]")
