"""Row-sparse gradients, for every op that takes one: lazy and standard updates, empty
gradients, out=, validation; and the RowSparseArray class.

Reference doc sections 2.1, 2.2, 2.4, 2.5, 2.11, 2.14 (sparse storage paths), 3.1-3.4, and
section 7 deviations 4 (indices validated) and 7 (any out accepted for row-sparse updates).
Which ops have which modes comes from their specs (``row_sparse``): a lazy_update parameter
(lazy and standard), always lazy (adagrad, group_adagrad, which take only row-sparse
gradients) or, for the others, the standard update. MXNet's multi_* ops take dense
gradients only. Parameters: each op's "mixed" set (wd != 0, so lazy and standard differ on
the missing rows).
"""

from __future__ import annotations

import numpy as np
import pytest

import cases
import reference
from cases import DTYPE_IDS, DTYPES, PARAMS, ROW_SPARSE, RowSparseArray

# 1-D weight (row length 1), 2-D, 3-D
SHAPES = [(8,), (10,), (6, 3), (8, 3), (5, 2, 3), (6, 2, 3)]

LAZY = cases.ops(lambda o: "lazy" in o.sparse_modes)
STANDARD = cases.ops(lambda o: "standard" in o.sparse_modes)
MODES = [(op, mode) for op in ROW_SPARSE for mode in cases.op(op).sparse_modes]
MODE_IDS = [f"{op}-{mode}" for op, mode in MODES]
#: the ops that accept a lazy_update flag and ignore it (MXNet's mp_sgd, mp_sgd_mom: 2.4, 3.1)
IGNORED_FLAGS = [(op, p.name) for op in ROW_SPARSE for p in cases.op(op).meta_params
                 if p.type == "bool" and p.name in cases.op(op).ignored]


def _case(op, seed, shape, dtype, rows, data_seed=None):
    """The op's "mixed" parameters and a row-sparse grad on ``rows``."""
    case = cases.make_case(op, seed, shape, dtype, cases.step_params(op, PARAMS[op]["mixed"]))
    rng = np.random.default_rng(seed + 1 if data_seed is None else data_seed)
    info = cases.op(op)
    data = rng.normal(0.0, 1.0, size=(len(rows),) + tuple(shape[1:])).astype(info.dtype_of(info.grad, dtype))
    case.grad = cases.rsp(data, rows, shape)
    case.new_scalars()
    return case


def _extra(op, mode):
    """The keyword arguments that select ``mode`` (a lazy flag the op ignores: False;
    test_ignored_lazy_flag_gives_the_standard_update tries every value)."""
    extra = dict(cases.op(op).sparse_modes[mode])
    for o, flag in IGNORED_FLAGS:
        if o == op:
            extra[flag] = False
    return extra


def _mask(shape, rows):
    m = np.zeros(shape[0], dtype=bool)
    m[rows] = True
    return m


def _moves_every_row(case):
    """With wd != 0 every row changes under the standard update."""
    return case.params.get("wd", 0.0) != 0.0


# -- lazy --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", LAZY)
def test_lazy_updates_only_grad_rows(backend, op, dtype):
    """Rows not in the gradient are bit-identical in the weight (or, with a separate out,
    copied into it, 7.7) and in every state; the others match the reference. Every shape."""
    for shape in SHAPES:
        _lazy_updates_only_grad_rows(op, dtype, shape)


def _lazy_updates_only_grad_rows(op, dtype, shape):
    extra = cases.op(op).sparse_modes["lazy"]
    rows = cases.rows_for(shape)
    other = ~_mask(shape, rows)
    for mode in ("weight", "separate"):
        case = _case(op, cases.seed("lazy", op, np.dtype(dtype).name, shape), shape, dtype, rows)
        w0, s0 = case.weight.copy(), [s.copy() for s in case.states]
        expected = case.expected(extra)
        out = case.weight if mode == "weight" else np.full_like(case.weight, 7.0)
        result = case(out=out, **extra)
        where = f"{case.where()} out={mode}"
        assert result is out, where
        if mode == "separate":
            assert case.weight.tobytes() == w0.tobytes(), f"{where}: a separate out leaves the weight unchanged"
        assert out[other].tobytes() == w0[other].tobytes(), f"{where}: rows not in grad must be bit-identical"
        for name, s, before in zip(case.op.states, case.states, s0, strict=True):
            assert s[other].tobytes() == before[other].tobytes(), f"{where} {name}: rows not in grad must be bit-identical"
        case.check(out, expected[0], f"out={mode} weight")
        case.check_states(expected[1:], f"out={mode}")
        # the updated rows really changed
        assert not np.array_equal(out[rows], w0[rows]), where


@pytest.mark.parametrize("op", cases.ops(lambda o: o.lazy_param is not None))
def test_lazy_is_the_default(backend, op):
    shape = (8, 3)
    rows = cases.rows_for(shape)
    results = []
    for kwargs in ({}, {cases.op(op).lazy_param: True}):
        case = _case(op, 102, shape, np.float32, rows)
        w0 = case.weight.copy()
        r = case(**kwargs)
        results.append([r.tobytes()] + [s.tobytes() for s in case.states])
    assert results[0] == results[1]
    other = ~_mask(shape, rows)
    r = np.frombuffer(results[0][0], dtype=np.float32).reshape(shape)
    assert r[other].tobytes() == w0[other].tobytes()


# -- standard ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", STANDARD)
def test_standard_equals_dense_with_zero_rows(backend, op, dtype):
    """The standard update (lazy_update=False; most ops: always) = the dense update with a zero
    gradient on the missing rows (sections 3.1, 3.2): against the reference and against the
    op's own dense result. Every shape."""
    for shape in SHAPES:
        _standard_equals_dense_with_zero_rows(op, dtype, shape)


def _standard_equals_dense_with_zero_rows(op, dtype, shape):
    info = cases.op(op)
    extra = _extra(op, "standard")
    rows = cases.rows_for(shape)
    case = _case(op, cases.seed("rsp", op, np.dtype(dtype).name, shape), shape, dtype, rows)
    w0 = case.weight.copy()
    expected = case.expected(extra)
    assert case.lazy_rows(extra) is None

    dense = case.copy()  # the op with the densified gradient
    dense.grad = reference.densify(case.grad.data, case.grad.indices, shape)
    dense_result = dense(out=None if info.output else dense.weight)

    data0 = case.grad.data.copy()
    result = case(out=None if info.output else case.weight, **extra)
    if not info.output:
        assert result is case.weight, case.where()
    case.check(result, expected[0], "out")
    case.check(result, dense_result, "out vs dense grad")
    case.check_states(expected[1:], "standard")
    for name, a, b in zip(info.states, case.states, dense.states, strict=True):
        case.check(a, b, f"{name} vs dense grad")
    assert case.grad.data.tobytes() == data0.tobytes(), f"{case.where()}: grad data must not be modified"
    if _moves_every_row(case):  # every row moves, including rows not in the gradient
        other = ~_mask(shape, rows)
        assert (result[other] != w0[other]).any(), case.where()


def test_sgd_lazy_equals_standard_without_wd(backend):
    """Reference doc 2.1: with wd=0, lazy and standard sgd are identical."""
    shape = (9, 2)
    rows = cases.rows_for(shape)
    got = []
    for lazy in (True, False):
        case = _case("sgd_update", 106, shape, np.float32, rows)
        case.params = dict(lr=0.1)
        got.append(case(lazy_update=lazy).tobytes())
    assert got[0] == got[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op,mode", [m for m in MODES if cases.op(m[0]).dense],
                         ids=[i for m, i in zip(MODES, MODE_IDS) if cases.op(m[0]).dense])
def test_all_rows_present_equals_dense(backend, op, mode, dtype):
    info = cases.op(op)
    shape = (5, 4)
    case = _case(op, 109, shape, dtype, np.arange(5))
    dense = case.copy()
    dense.grad = case.grad.data.copy()
    dense.new_scalars()
    r = case(**_extra(op, mode))
    d = dense()
    case.check(r, d, "weight")
    for name, a, b in zip(info.states, case.states, dense.states, strict=True):
        case.check(a, b, name)


# -- empty gradient ------------------------------------------------------------------------------
@pytest.mark.parametrize("op", LAZY)
def test_empty_grad_lazy_is_noop(backend, op):
    for shape in SHAPES + [(5, 4)]:
        _empty_grad_lazy_is_noop(op, shape)


def _empty_grad_lazy_is_noop(op, shape):
    extra = cases.op(op).sparse_modes["lazy"]
    case = _case(op, 110, shape, np.float32, np.zeros(0, np.int64))
    before = case.snapshot()
    w0 = case.weight.copy()
    out = case(**extra)
    assert out is not case.weight, case.where()
    assert out.tobytes() == w0.tobytes(), case.where()
    case.assert_unchanged(before, f"{case.where()} empty grad, out=None")
    # out=weight: still nothing changes
    res = case(out=case.weight, **extra)
    assert res is case.weight, case.where()
    case.assert_unchanged(before, f"{case.where()} empty grad, out=weight")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", STANDARD)
def test_empty_grad_standard_is_full_zero_grad_step(backend, op, dtype):
    """Reference doc 3.4: the standard path runs the full zero-gradient update (sgd: decay)."""
    for shape in SHAPES:
        _empty_grad_standard_is_full_zero_grad_step(op, dtype, shape)


def _empty_grad_standard_is_full_zero_grad_step(op, dtype, shape):
    extra = _extra(op, "standard")
    case = _case(op, 111, shape, dtype, np.zeros(0, np.int64))
    w0 = case.weight.copy()
    s0 = [s.copy() for s in case.states]
    expected = case.expected(extra)
    out = case(**extra)
    where = case.where()
    assert case.weight.tobytes() == w0.tobytes(), where
    case.check(out, expected[0], "weight")
    case.check_states(expected[1:], "empty grad")
    if op == "sgd_update":
        assert (out != w0).all(), where
    elif _moves_every_row(case):
        assert (out != w0).any(), where
        if "weight32" in case.op.states:  # wd moves every row of the master weight
            assert not np.array_equal(case.arrays["weight32"], s0[case.op.states.index("weight32")]), where


def test_sgd_standard_empty_grad_decays_every_row(backend):
    weight = np.array([[1.0, -2.0], [4.0, 0.5], [-8.0, 3.0]], dtype=np.float64)
    from generated import sgd_update
    out = sgd_update(weight, cases.empty_rsp(weight.shape, np.float64), lr=0.1, wd=0.5, lazy_update=False)
    np.testing.assert_allclose(out, (1 - 0.1 * 0.5) * weight, rtol=1e-15)


# -- a lazy_update flag that the op ignores ------------------------------------------------------
@pytest.mark.parametrize("grad", ["rows", "empty"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,flag", IGNORED_FLAGS, ids=[f"{o}-{f}" for o, f in IGNORED_FLAGS])
def test_ignored_lazy_flag_gives_the_standard_update(backend, op, flag, dtype, grad):
    """mp_sgd / mp_sgd_mom accept lazy_update and ignore it, as MXNet does (2.4, 3.1): a
    row-sparse grad always gets the standard update, every row moving; an empty grad is the
    standard update with a zero gradient (3.4), lazy_update or not. Every shape."""
    for shape in SHAPES:
        _ignored_lazy_flag(op, flag, dtype, shape, grad)


def _ignored_lazy_flag(op, flag, dtype, shape, grad):
    rows = cases.rows_for(shape) if grad == "rows" else np.zeros(0, np.int64)
    seed = cases.seed("mplazy", op, np.dtype(dtype).name, shape, grad)
    for lazy in (None, True, False):
        case = _case(op, seed, shape, dtype, rows)
        s0 = [s.copy() for s in case.states]
        expected = case.reference(rows=None)
        extra = {} if lazy is None else {flag: lazy}
        out = case(out=case.weight, **extra)
        case.check(out, expected[0], f"out ({flag}={lazy})")
        case.check_states(expected[1:], f"({flag}={lazy})")
        k = case.op.states.index("weight32")
        assert not np.array_equal(case.states[k], s0[k]), f"{case.where()} {grad} grad: wd must move every row"


# -- out -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op,mode", MODES, ids=MODE_IDS)
def test_out_separate_gets_whole_new_weight(backend, op, mode):
    """Deviation 7.7: any out is accepted and receives the whole new weight."""
    info = cases.op(op)
    extra = _extra(op, mode)
    shape = (8, 3)
    rows = cases.rows_for(shape)

    first = _case(op, 113, shape, np.float32, rows, data_seed=112)
    expected = first(out=None if info.output else first.weight, **extra)

    case = _case(op, 113, shape, np.float32, rows, data_seed=112)
    w0 = case.weight.copy()
    out = np.full_like(case.weight, np.nan)
    res = case(out=out, **extra)
    assert res is out
    assert case.weight.tobytes() == w0.tobytes()
    assert out.tobytes() == expected.tobytes()
    for a, b in zip(case.states, first.states, strict=True):
        assert a.tobytes() == b.tobytes()
    if mode == "lazy":
        other = ~_mask(shape, rows)
        assert out[other].tobytes() == w0[other].tobytes()

    case = _case(op, 113, shape, np.float32, rows, data_seed=112)
    res = case(**extra)
    assert res is not case.weight
    assert case.weight.tobytes() == w0.tobytes()
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


# -- a row-sparse grad that does not fit the weight, a dense grad for a sparse-only op ------------
@pytest.mark.parametrize("op", ROW_SPARSE)
def test_rsp_grad_shape_mismatch(backend, op):
    case = _case(op, 120, (6, 3), np.float32, np.array([0, 2, 5]))
    arrays = [case.weight, *case.states]
    before = cases.snapshot(arrays)
    for shape in [(7, 3), (6, 4), (18,)]:
        case.grad = RowSparseArray(np.ones((3,) + shape[1:], np.float32), np.array([0, 2, 5]), shape)
        with pytest.raises(ValueError, match=rf"\b{case.op.grad}\b"):
            case(out=None if case.op.output else case.weight)
    cases.assert_unchanged(arrays, before, op)


@pytest.mark.parametrize("op", ROW_SPARSE)
def test_rsp_grad_dtype_mismatch(backend, op):
    case = _case(op, 121, (6, 3), np.float32, np.array([1, 3]))
    case.grad = RowSparseArray(np.ones((2, 3), np.float64), np.array([1, 3]), (6, 3))
    before = case.snapshot()
    with pytest.raises(TypeError, match=rf"\b{case.op.grad}\b"):
        case(out=None if case.op.output else case.weight)
    case.assert_unchanged(before)


@pytest.mark.parametrize("shape", [(0,), (0, 3)], ids=["0", "0x3"])
@pytest.mark.parametrize("op,mode", MODES, ids=MODE_IDS)
def test_zero_row_weight_with_empty_grad(backend, op, mode, shape):
    case = _case(op, 122, shape, np.float32, np.zeros(0, np.int64))
    out = case(**_extra(op, mode))
    assert out.shape == shape and out.dtype == np.float32


@pytest.mark.parametrize("op", cases.ops(lambda o: not o.dense))
def test_sparse_only_dense_grad_is_type_error(backend, op):
    """adagrad and group_adagrad have no dense kernel (2.11, 2.14): a dense grad is refused."""
    case = _case(op, 51, (4, 3), np.float32, np.array([0, 2]))
    case.grad = np.ones((4, 3), dtype=np.float32)
    before = case.snapshot()
    with pytest.raises(TypeError, match="grad"):
        case(out=case.weight)
    case.assert_unchanged(before)
