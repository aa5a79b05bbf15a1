"""bfloat16 storage (issue 10): the math in float32, rounded once to nearest even on store,
NaN kept NaN; the C kernels and the NumPy reference (ml_dtypes) give the same bits, in
every op and schedule. The op-by-op numerics against the float64 reference run in the
shared grids (tests/cases.py lists bfloat16 among the dtypes)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import cases
import generated
from generated import RowSparseArray, use_backend
from opgen.runtime import available_backends

BF16 = np.dtype(ml_dtypes.bfloat16)


def test_bfloat16_rounds_once_on_store_by_hand(backend):
    """sgd, w = 1.5, g = 1 (exact in bf16), lr = 2**-9: 1.5 - 2**-9 = 1.498046875. The bf16
    spacing in [1, 2) is 2**-7, so 1.498046875 = 1.5 - 0.25 ulp rounds to 1.5; with
    lr = 3 * 2**-9 it is 1.5 - 0.75 ulp and rounds to 1.5 - 2**-7 = 1.4921875; with
    lr = 2**-8 (half an ulp, a tie) it goes to the even neighbour, 1.5 (0x3fc0)."""
    w, g = np.array([1.5, 1.5, 1.5], BF16), np.ones(3, BF16)
    out = np.empty_like(w)
    generated.sgd_update(w[:1], g[:1], lr=2 ** -9, out=out[:1])
    generated.sgd_update(w[1:2], g[1:2], lr=3 * 2 ** -9, out=out[1:2])
    generated.sgd_update(w[2:], g[2:], lr=2 ** -8, out=out[2:])
    assert out.dtype == BF16
    assert out.astype(np.float64).tolist() == [1.5, 1.4921875, 1.5]
    assert out.view(np.uint16).tolist() == [0x3FC0, 0x3FBF, 0x3FC0]


def test_the_stored_bits_are_ml_dtypes_rounding_of_the_float32_result(backend):
    """Every float32 pattern class through the store: ties both ways, subnormals, the
    largest finite values (rounding to inf), infinities and NaNs of both signs with
    payloads. sgd with lr=0, wd=0 stores the float32 weight... which is itself bf16: so the
    float32 value comes from a float32 grad through multi-precision sgd instead."""
    bits = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x00008000, 0x00018000, 0x007FFFFF, 0x7F7FFFFF,
                     0xFF7F8000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345,
                     0x80000000, 0x00000000], np.uint32)
    values = bits.view(np.float32)
    weight32 = values.copy()
    weight = np.zeros(len(values), BF16)
    grad = np.zeros(len(values), BF16)
    out = generated.mp_sgd_update(weight, grad, weight32, lr=0.0)
    with np.errstate(all="ignore"):
        expected = values.astype(BF16)
    assert out.view(np.uint16).tolist() == expected.view(np.uint16).tolist()


SPECIAL_BITS = [0x3F808000, 0x3F818000, 0x3F808001, 0x00008000, 0x00018000, 0x007FFFFF, 0x80000001, 0x7F7FFFFF,
                0xFF7F8000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x80000000]


@pytest.mark.parametrize("layout", ["normal values only", "specials scattered", "specials in runs"])
@pytest.mark.parametrize("size", [1, 31, 33, 511, 512, 513, 4099, 40_000])
def test_long_stores_are_ml_dtypes_rounding_in_every_block_and_lane(backend, size, layout):
    """Stores of long arrays: the C loops narrow whole blocks of results at a time (with the
    CPU's conversion instruction where it has one, which flushes subnormals and keeps NaN
    payloads), so every size around a vector and a block, and specials anywhere in a vector
    or alone among normal values, must still give ml_dtypes' bits, in one call and in a
    multi-tensor call (two threads share the elements from 16K up)."""
    values = cases.float32_values_with_specials(size, layout, SPECIAL_BITS, 3.0, (-40, 40))
    with np.errstate(all="ignore"):
        expected = values.astype(BF16).view(np.uint16)
    out = generated.mp_sgd_update(np.zeros(size, BF16), np.zeros(size, BF16), values.copy(), lr=0.0)
    np.testing.assert_array_equal(out.view(np.uint16), expected)
    halves = [values[: size // 2].copy(), values[size // 2:].copy()]
    weights = [np.zeros(len(h), BF16) for h in halves]
    generated.mp_sgd_update_multi(weights, [np.zeros_like(w) for w in weights], halves, lr=0.0, out=weights)
    np.testing.assert_array_equal(np.concatenate([w.view(np.uint16) for w in weights]), expected)


@pytest.mark.skipif("c" not in available_backends(), reason="no C compiler")
@pytest.mark.parametrize("op", cases.OPS)
def test_c_and_numpy_give_the_same_bf16_bits_for_every_op(op):
    results = {}
    for backend in ("c", "numpy"):
        params = cases.step_params(op, cases.PARAMS[op]["mixed"], 1)
        case = cases.make_case(op, cases.seed(op, "bf16"), (7, 33), BF16, params)
        with use_backend(backend):
            result = case()
        arrays = [result] if not isinstance(result, (list, tuple)) else list(result)
        results[backend] = [np.asarray(a).view(np.uint16).copy() for a in (*arrays, *case.states)
                            if np.asarray(a).dtype == BF16]
    if not results["c"]:
        assert cases.op(op).output_dtype is not None, op  # only a fixed-dtype output and states
        pytest.skip("no bfloat16 result: the output and the states have fixed dtypes")
    for c, n in zip(results["c"], results["numpy"], strict=True):
        np.testing.assert_array_equal(c, n)


@pytest.mark.skipif("c" not in available_backends(), reason="no C compiler")
def test_row_sparse_and_multi_in_bf16_match_the_dense_update():
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(6, 8)).astype(BF16)
    rows = np.array([1, 4])
    data = rng.normal(size=(2, 8)).astype(BF16)
    dense_grad = np.zeros_like(weight)
    dense_grad[rows] = data
    mean, var = np.zeros_like(weight), np.zeros_like(weight)
    dense = generated.adam_update(weight, dense_grad, mean.copy(), var.copy(), lr=0.01)
    standard = generated.adam_update(weight, RowSparseArray(data, rows, weight.shape), mean.copy(), var.copy(),
                                     lr=0.01, lazy_update=False)
    lazy_mean, lazy_var = mean.copy(), var.copy()
    lazy = generated.adam_update(weight, RowSparseArray(data, rows, weight.shape), lazy_mean, lazy_var, lr=0.01)
    assert standard.view(np.uint16).tolist() == dense.view(np.uint16).tolist()
    assert lazy[rows].view(np.uint16).tolist() == dense[rows].view(np.uint16).tolist()
    others = np.setdiff1d(np.arange(6), rows)
    assert lazy[others].view(np.uint16).tolist() == weight[others].view(np.uint16).tolist()
    ws = [weight.copy(), weight[:3].copy()]
    gs = [dense_grad.copy(), dense_grad[:3].copy()]
    ms, vs = [np.zeros_like(w) for w in ws], [np.zeros_like(w) for w in ws]
    generated.adam_update_multi(ws, gs, ms, vs, lr=0.01, out=ws)
    assert ws[0].view(np.uint16).tolist() == dense.view(np.uint16).tolist()
    assert ws[1].view(np.uint16).tolist() == dense[:3].view(np.uint16).tolist()


def test_bf16_is_refused_beside_other_dtypes():
    w = np.ones(3, BF16)
    with pytest.raises(TypeError, match="'grad'"):
        generated.sgd_update(w, np.ones(3, np.float16), lr=0.1)
    assert w.astype(np.float32).tolist() == [1.0, 1.0, 1.0]
