"""Bad calls raise TypeError/ValueError naming the argument, before anything is written
(reference doc section 1.7-1.9 and deviation 7.9), for every op.

The bad calls are derived from each op's metadata: every tensor of the wrong shape, dtype or
kind, every state read-only or a number, every parameter of the wrong type or missing (if
required), bad outs, unknown keywords, and row-sparse grads that do not fit the weight.
MXNet's multi_* ops have their own bad calls (test_mxnet_multi.py); scalar inputs (adamw's
rescale_grad, lamb's r1, r2) are checked in test_special_rules.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import cases
from cases import PARAMS, RowSparseArray

SHAPE = (6,)
OPS = cases.SINGLE


def base(op: str) -> cases.Case:
    """A good call: float32, shape (6,), the op's required parameters."""
    return cases.make_case(op, 7, SHAPE, np.float32, cases.step_params(op, PARAMS[op]["defaults"]))


def _map(a, f):
    """``f`` applied to an array, or to a row-sparse array's data."""
    if isinstance(a, RowSparseArray):
        return RowSparseArray(f(a.data), a.indices, a.shape)
    return f(a)


def set_tensor(name, make):
    def apply(case):
        case.arrays[name] = make(case.arrays[name])
    return apply


def set_param(name, value):
    def apply(case):
        case.params[name] = value
    return apply


def drop_param(name):
    def apply(case):
        del case.params[name]
    return apply


def set_out(make):
    def apply(case):
        case.out = make(case)
    return apply


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def int_all(case):
    for name in (case.op.weight, *case.op.states):
        case.arrays[name] = (case.arrays[name] * 10).astype(np.int32)
    if not isinstance(case.grad, RowSparseArray):
        case.grad = (case.grad * 10).astype(np.int32)


def rsp_wrong_shape(g):
    return RowSparseArray(np.ones((2,), np.float32), np.array([0, 6]), (7,))


def rsp_wrong_dtype(g):
    return RowSparseArray(np.ones((2,), np.float16), np.array([0, 3]), SHAPE)


def ro_out(case):
    o = np.zeros(SHAPE, np.float32)
    o.flags.writeable = False
    return o


def _named(name):
    return rf"\b{name}\b"


def bad_calls(op: str) -> list:
    """(id, mutation, exception, match) for every bad call of ``op``."""
    info = cases.op(op)
    calls = []
    grad_is_sparse = not info.dense
    # shapes (the weight sets the shape; a wrong one shows up at the next tensor)
    for name in (info.grad, *info.states):
        if name == info.grad and grad_is_sparse:
            continue  # a dense grad is refused outright (test_row_sparse); see the rsp cases below
        for size in (3, 4, 5, 7, 12):
            calls.append((f"{name}_shape_{size}", set_tensor(name, lambda a, n=size: np.zeros(n, a.dtype)),
                          ValueError, name))
        if name in info.per_tensor:  # one value per tensor: (1,) or (), nothing else
            calls.append((f"{name}_two_values", set_tensor(name, lambda a: np.zeros(2, a.dtype)), ValueError, name))
            calls.append((f"{name}_1x1", set_tensor(name, lambda a: np.zeros((1, 1), a.dtype)), ValueError, name))
            continue
        calls.append((f"{name}_same_size_other_shape", set_tensor(name, lambda a: a.reshape(2, 3)),
                      ValueError, name))
        if name not in info.per_row:  # a per-row state may be (rows,) or (rows, 1)
            calls.append((f"{name}_shape_6x1", set_tensor(name, lambda a: np.zeros((6, 1), a.dtype)),
                          ValueError, name))
    # dtypes: every tensor but the weight (whose dtype is the call's), floats and integers
    for name in (info.grad, *info.states):
        for dt in (np.float16, np.float64, np.int32, np.int64):
            calls.append((f"{name}_{np.dtype(dt).name}",
                          set_tensor(name, lambda a, dt=dt: _map(a, lambda x: x.astype(dt))),
                          TypeError, name))
    calls.append(("all_int32", int_all, TypeError, info.weight))
    # not arrays
    for name in (info.weight, info.grad, *info.states):
        calls.append((f"{name}_list", set_tensor(name, lambda a: (a.data if isinstance(a, RowSparseArray) else a).tolist()),
                      TypeError, name))
    for name in info.states:
        calls.append((f"{name}_scalar", set_tensor(name, lambda a: 0.0), TypeError, name))
        calls.append((f"{name}_read_only", set_tensor(name, read_only), ValueError, name))
    # parameters
    for name in info.required:
        calls.append((f"missing_{name}", drop_param(name), TypeError, name))
    for name in info.params:
        calls.append((f"{name}_string", set_param(name, "0.9"), TypeError, name))
    calls.append(("unknown_keyword", set_param("foo", 1.0), TypeError, "foo"))
    if "lazy_update" not in info.params:
        calls.append(("lazy_update_not_a_parameter", set_param("lazy_update", True), TypeError, "lazy_update"))
    # out
    calls += [
        ("out_shape", set_out(lambda c: np.zeros(5, np.float32)), ValueError, "out"),
        ("out_same_size_other_shape", set_out(lambda c: np.zeros((3, 2), np.float32)), ValueError, "out"),
        ("out_float64", set_out(lambda c: np.zeros(SHAPE, np.float64)), TypeError, "out"),
        ("out_float16", set_out(lambda c: np.zeros(SHAPE, np.float16)), TypeError, "out"),
        ("out_list", set_out(lambda c: [0.0] * 6), TypeError, "out"),
        ("out_read_only", set_out(ro_out), ValueError, "out"),
    ]
    # row-sparse grads that do not fit the weight
    if info.sparse_modes:
        calls += [
            ("rsp_grad_shape", set_tensor(info.grad, rsp_wrong_shape), ValueError, info.grad),
            ("rsp_grad_dtype", set_tensor(info.grad, rsp_wrong_dtype), TypeError, info.grad),
        ]
    return calls


@pytest.mark.parametrize("op", OPS)
def test_bad_calls(backend, op):
    """Every bad call of bad_calls(op) raises, naming the argument, and modifies no array (all
    of them are tried; the failures are reported together)."""
    failures = []
    for case_id, mutate, exc, match in bad_calls(op):
        case = base(op)
        case.out = None
        mutate(case)
        arrays = case.all_arrays() + [case.out]
        before = cases.snapshot(arrays)
        try:
            with pytest.raises(exc, match=_named(match)):
                case(out=case.out)
            cases.assert_unchanged(arrays, before, "a bad call must not modify any array")
        except (Exception, pytest.fail.Exception) as error:  # no error, another one, a write
            failures.append(f"{case_id}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("op", cases.ops(lambda o: bool(o.states) and not o.output and not o.multi))
def test_bad_call_with_out_is_weight_leaves_everything(backend, op):
    """The weight is the out: a late error (the last state read-only) must not have written it."""
    case = base(op)
    last = case.op.states[-1]
    case.arrays[last] = read_only(case.arrays[last])
    before = case.snapshot()
    with pytest.raises(ValueError, match=_named(last)):
        case(out=case.weight)
    case.assert_unchanged(before)
