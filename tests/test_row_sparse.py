"""Row-sparse gradients: lazy and standard updates, empty gradients, out=, validation.

Reference doc sections 2.1, 2.2, 2.5 (sparse storage paths), 3.2, 3.4, and section 7
deviations 4 (indices validated) and 7 (any out accepted for row-sparse updates).
"""

from __future__ import annotations

import numpy as np
import pytest

import generated
import reference as ref
from generated import RowSparseArray
from reference import LAZY_OPS, OPS, assert_close, densify, make_inputs

DTYPES = [np.float16, np.float32, np.float64]
DTYPE_IDS = ["float16", "float32", "float64"]
# 1-D weight (row length 1), 2-D, 3-D
SHAPES = [(10,), (8, 3), (6, 2, 3)]
SHAPE_IDS = ["1d", "2d", "3d"]

# wd != 0 everywhere so that lazy and standard differ on the missing rows.
PARAMS = {
    "sgd_update": dict(lr=0.1, wd=0.05, rescale_grad=1.5, clip_gradient=1.0),
    "sgd_mom_update": dict(lr=0.1, momentum=0.9, wd=0.05, rescale_grad=1.5, clip_gradient=1.0),
    "adam_update": dict(lr=0.01, wd=0.05, rescale_grad=1.5, clip_gradient=1.0),
    "rmsprop_update": dict(lr=0.01, wd=0.05, rescale_grad=1.5, clip_gradient=1.0, clip_weights=2.0),
}


def _rows_for(shape):
    n = shape[0]
    return np.array(sorted({1, n // 2, n - 1}), dtype=np.int64)


def _rsp(seed, shape, dtype, rows):
    rng = np.random.default_rng(seed)
    data = rng.normal(0.0, 1.0, size=(len(rows),) + tuple(shape[1:])).astype(dtype)
    return RowSparseArray(data, rows, shape)


def _fn(op):
    return getattr(generated, op)


def _mask(shape, rows):
    m = np.zeros(shape[0], dtype=bool)
    m[rows] = True
    return m


# -- lazy --------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", LAZY_OPS)
def test_lazy_updates_only_grad_rows(backend, op, dtype, shape):
    params = PARAMS[op]
    state_names, ref_fn = OPS[op]
    weight, _, states = make_inputs(op, 100, shape, dtype)
    rows = _rows_for(shape)
    grad = _rsp(101, shape, dtype, rows)
    w0, s0 = weight.copy(), [s.copy() for s in states]
    expected = ref.as_tuple(ref_fn(w0, densify(grad.data, grad.indices, shape), *s0, **params, rows=rows))

    result = _fn(op)(weight, grad, *states, **params, lazy_update=True, out=weight)
    assert result is weight
    other = ~_mask(shape, rows)
    assert weight[other].tobytes() == w0[other].tobytes(), "rows not in grad must be bit-identical"
    for name, s, before in zip(state_names, states, s0):
        assert s[other].tobytes() == before[other].tobytes(), f"{name}: rows not in grad must be bit-identical"
    assert_close(weight, expected[0], "weight")
    for name, s, e in zip(state_names, states, expected[1:]):
        assert_close(s, e, name)
    # the updated rows really changed
    assert not np.array_equal(weight[rows], w0[rows])


@pytest.mark.parametrize("op", LAZY_OPS)
def test_lazy_is_the_default(backend, op):
    params = PARAMS[op]
    shape = (8, 3)
    rows = _rows_for(shape)
    results = []
    for kwargs in ({}, {"lazy_update": True}):
        weight, _, states = make_inputs(op, 102, shape, np.float32)
        r = _fn(op)(weight, _rsp(103, shape, np.float32, rows), *states, **params, **kwargs)
        results.append([r.tobytes()] + [s.tobytes() for s in states])
    assert results[0] == results[1]
    weight, _, _ = make_inputs(op, 102, shape, np.float32)
    other = ~_mask(shape, rows)
    r = np.frombuffer(results[0][0], dtype=np.float32).reshape(shape)
    assert r[other].tobytes() == weight[other].tobytes()


# -- standard ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_standard_equals_dense_with_zero_rows(backend, op, dtype, shape):
    """lazy_update=False (rmsprop: always) = dense update with zero gradient on missing rows."""
    params = PARAMS[op]
    state_names, ref_fn = OPS[op]
    rows = _rows_for(shape)
    grad = _rsp(104, shape, dtype, rows)
    dense_grad = densify(grad.data, grad.indices, shape)
    kwargs = {} if op == "rmsprop_update" else {"lazy_update": False}

    weight, _, states = make_inputs(op, 105, shape, dtype)
    expected = ref.as_tuple(ref_fn(weight, dense_grad, *states, **params))
    result = _fn(op)(weight, grad, *states, **params, **kwargs, out=weight)
    assert result is weight
    assert_close(weight, expected[0], "weight")
    for name, s, e in zip(state_names, states, expected[1:]):
        assert_close(s, e, name)

    # the same op with the densified gradient
    w2, _, s2 = make_inputs(op, 105, shape, dtype)
    _fn(op)(w2, dense_grad, *s2, **params, out=w2)
    assert_close(weight, w2, "weight vs dense op")
    for name, a, b in zip(state_names, states, s2):
        assert_close(a, b, f"{name} vs dense op")

    # with wd != 0 every row moves, including rows not in the gradient
    w0, _, _ = make_inputs(op, 105, shape, dtype)
    other = ~_mask(shape, rows)
    assert (weight[other] != w0[other]).any()


@pytest.mark.parametrize("op", ["sgd_update"])
def test_sgd_lazy_equals_standard_without_wd(backend, op):
    """Reference doc 2.1: with wd=0, lazy and standard sgd are identical."""
    shape = (9, 2)
    rows = _rows_for(shape)
    got = []
    for lazy in (True, False):
        weight, _, _ = make_inputs(op, 106, shape, np.float32)
        got.append(_fn(op)(weight, _rsp(107, shape, np.float32, rows), lr=0.1, lazy_update=lazy).tobytes())
    assert got[0] == got[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "standard"])
@pytest.mark.parametrize("op", LAZY_OPS)
def test_all_rows_present_equals_dense(backend, op, lazy, dtype):
    params = PARAMS[op]
    shape = (5, 4)
    grad = _rsp(108, shape, dtype, np.arange(5))
    weight, _, states = make_inputs(op, 109, shape, dtype)
    r = _fn(op)(weight, grad, *states, **params, lazy_update=lazy)
    w2, _, s2 = make_inputs(op, 109, shape, dtype)
    d = _fn(op)(w2, grad.data.copy(), *s2, **params)
    assert_close(r, d, "weight")
    for a, b in zip(states, s2):
        assert_close(a, b, "state")


# -- empty gradient ------------------------------------------------------------------------------
def _empty(shape, dtype):
    return RowSparseArray(np.zeros((0,) + tuple(shape[1:]), dtype=dtype), np.array([], dtype=np.int64), shape)


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("op", LAZY_OPS)
def test_empty_grad_lazy_is_noop(backend, op, shape):
    params = PARAMS[op]
    weight, _, states = make_inputs(op, 110, shape, np.float32)
    w0, s0 = weight.copy(), [s.copy() for s in states]
    out = _fn(op)(weight, _empty(shape, np.float32), *states, **params, lazy_update=True)
    assert out is not weight
    assert out.tobytes() == w0.tobytes()
    assert weight.tobytes() == w0.tobytes()
    for s, b in zip(states, s0):
        assert s.tobytes() == b.tobytes()
    # out=weight: still nothing changes
    res = _fn(op)(weight, _empty(shape, np.float32), *states, **params, lazy_update=True, out=weight)
    assert res is weight
    assert weight.tobytes() == w0.tobytes()


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("op", list(OPS))
def test_empty_grad_standard_is_full_zero_grad_step(backend, op, shape):
    """Reference doc 3.4: the standard path runs the full zero-gradient update (sgd: decay)."""
    params = PARAMS[op]
    state_names, ref_fn = OPS[op]
    kwargs = {} if op == "rmsprop_update" else {"lazy_update": False}
    weight, _, states = make_inputs(op, 111, shape, np.float32)
    w0 = weight.copy()
    expected = ref.as_tuple(ref_fn(weight, np.zeros(shape, np.float32), *states, **params))
    out = _fn(op)(weight, _empty(shape, np.float32), *states, **params, **kwargs)
    assert weight.tobytes() == w0.tobytes()
    assert_close(out, expected[0], "weight")
    for name, s, e in zip(state_names, states, expected[1:]):
        assert_close(s, e, name)
    assert (out != w0).all() if op == "sgd_update" else (out != w0).any()


def test_sgd_standard_empty_grad_decays_every_row(backend):
    weight = np.array([[1.0, -2.0], [4.0, 0.5], [-8.0, 3.0]], dtype=np.float64)
    out = generated.sgd_update(weight, _empty(weight.shape, np.float64), lr=0.1, wd=0.5, lazy_update=False)
    np.testing.assert_allclose(out, (1 - 0.1 * 0.5) * weight, rtol=1e-15)


# -- out -------------------------------------------------------------------------------------------
OUT_CASES = [(op, lazy) for op in OPS for lazy in (True, False) if op in LAZY_OPS or not lazy]


@pytest.mark.parametrize("op,lazy", OUT_CASES,
                         ids=[f"{op}-{'lazy' if lazy else 'standard'}" for op, lazy in OUT_CASES])
def test_out_separate_gets_whole_new_weight(backend, op, lazy):
    """Deviation 7.7: any out is accepted and receives the whole new weight."""
    params = PARAMS[op]
    shape = (8, 3)
    rows = _rows_for(shape)
    kwargs = {} if op == "rmsprop_update" else {"lazy_update": lazy}
    grad = _rsp(112, shape, np.float32, rows)

    wa, _, sa = make_inputs(op, 113, shape, np.float32)
    expected = _fn(op)(wa, grad, *sa, **params, **kwargs, out=wa)

    weight, _, states = make_inputs(op, 113, shape, np.float32)
    w0 = weight.copy()
    out = np.full_like(weight, np.nan)
    res = _fn(op)(weight, grad, *states, **params, **kwargs, out=out)
    assert res is out
    assert weight.tobytes() == w0.tobytes()
    assert out.tobytes() == expected.tobytes()
    for a, b in zip(states, sa):
        assert a.tobytes() == b.tobytes()
    if lazy:
        other = ~_mask(shape, rows)
        assert out[other].tobytes() == w0[other].tobytes()

    weight, _, states = make_inputs(op, 113, shape, np.float32)
    res = _fn(op)(weight, grad, *states, **params, **kwargs)
    assert res is not weight
    assert weight.tobytes() == w0.tobytes()
    assert res.tobytes() == expected.tobytes()


# -- the RowSparseArray class --------------------------------------------------------------------
def test_rowsparse_attributes():
    data = np.ones((2, 3), dtype=np.float32)
    r = RowSparseArray(data, np.array([0, 4], dtype=np.int32), (5, 3))
    assert r.indices.dtype == np.int64
    assert r.indices.tolist() == [0, 4]
    assert tuple(r.shape) == (5, 3)
    assert r.dtype == np.float32
    assert r.data.shape == (2, 3)


@pytest.mark.parametrize(
    "indices,exc,match",
    [
        ([2, 1, 4], ValueError, "indices"),
        ([1, 1, 4], ValueError, "indices"),
        ([-1, 2, 4], ValueError, "indices"),
        ([0, 2, 6], ValueError, "indices"),
        ([0, 2, 5], ValueError, "indices"),
        (np.array([0.0, 1.0, 2.0]), TypeError, "indices"),
        (np.array([[0, 1, 2]]), ValueError, "indices|data"),
    ],
    ids=["unsorted", "duplicate", "negative", "out_of_range", "equal_to_rows", "float", "two_dimensional"],
)
def test_rowsparse_bad_indices(indices, exc, match):
    data = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(exc, match=match):
        RowSparseArray(data, np.asarray(indices) if not isinstance(indices, np.ndarray) else indices, (5, 2))


@pytest.mark.parametrize(
    "data,shape,exc",
    [
        (np.ones((3, 3), np.float32), (5, 2), ValueError),   # wrong row length
        (np.ones((2, 2), np.float32), (5, 2), ValueError),   # fewer rows than indices
        (np.ones((4, 2), np.float32), (5, 2), ValueError),   # more rows than indices
        (np.ones((3,), np.float32), (5, 2), ValueError),     # missing row dimension
        ([[1.0, 1.0]] * 3, (5, 2), TypeError),               # not an array
    ],
    ids=["row_length", "too_few_rows", "too_many_rows", "wrong_ndim", "list"],
)
def test_rowsparse_bad_data(data, shape, exc):
    with pytest.raises(exc, match="data"):
        RowSparseArray(data, np.array([0, 2, 4]), shape)


def test_rowsparse_1d_data_shape():
    r = RowSparseArray(np.ones(2, np.float64), np.array([3, 7]), (10,))
    assert r.data.shape == (2,)
    with pytest.raises(ValueError, match="data"):
        RowSparseArray(np.ones((2, 1), np.float64), np.array([3, 7]), (10,))


# -- grad / weight mismatch -------------------------------------------------------------------------
@pytest.mark.parametrize("op", list(OPS))
def test_rsp_grad_shape_mismatch(backend, op):
    params = PARAMS[op]
    weight, _, states = make_inputs(op, 120, (6, 3), np.float32)
    before = [weight.tobytes()] + [s.tobytes() for s in states]
    for shape in [(7, 3), (6, 4), (18,)]:
        rows = np.array([0, 2, 5])
        grad = RowSparseArray(np.ones((3,) + shape[1:], np.float32), rows, shape)
        with pytest.raises(ValueError, match="grad"):
            _fn(op)(weight, grad, *states, **params, out=weight)
    assert [weight.tobytes()] + [s.tobytes() for s in states] == before


@pytest.mark.parametrize("op", list(OPS))
def test_rsp_grad_dtype_mismatch(backend, op):
    params = PARAMS[op]
    weight, _, states = make_inputs(op, 121, (6, 3), np.float32)
    before = [weight.tobytes()] + [s.tobytes() for s in states]
    grad = RowSparseArray(np.ones((2, 3), np.float64), np.array([1, 3]), (6, 3))
    with pytest.raises(TypeError, match="grad"):
        _fn(op)(weight, grad, *states, **params, out=weight)
    assert [weight.tobytes()] + [s.tobytes() for s in states] == before


@pytest.mark.parametrize("shape", [(0,), (0, 3)], ids=["0", "0x3"])
@pytest.mark.parametrize("lazy", [True, False], ids=["lazy", "standard"])
@pytest.mark.parametrize("op", LAZY_OPS)
def test_zero_row_weight_with_empty_grad(backend, op, lazy, shape):
    params = PARAMS[op]
    weight, _, states = make_inputs(op, 122, shape, np.float32)
    out = _fn(op)(weight, _empty(shape, np.float32), *states, **params, lazy_update=lazy)
    assert out.shape == shape and out.dtype == np.float32
