"""Bad calls raise TypeError/ValueError naming the argument, before anything is written
(reference doc section 1.7-1.9 and deviation 7.9); non-contiguous inputs work."""

from __future__ import annotations

import numpy as np
import pytest

import generated
import reference as ref
from generated import RowSparseArray
from reference import OPS, assert_close, make_inputs

SHAPE = (6,)
DEFAULT_PARAMS = {
    "sgd_update": dict(lr=0.1, wd=0.01),
    "sgd_mom_update": dict(lr=0.1, momentum=0.9, wd=0.01),
    "adam_update": dict(lr=0.01, wd=0.01),
    "rmsprop_update": dict(lr=0.01, wd=0.01),
}


class Call:
    """The arguments of one call: tensors by name, parameters, out."""

    def __init__(self, op: str, dtype=np.float32, shape=SHAPE):
        self.op = op
        weight, grad, states = make_inputs(op, 7, shape, dtype)
        self.tensors = {"weight": weight, "grad": grad}
        self.tensors.update(zip(OPS[op][0], states))
        self.params = dict(DEFAULT_PARAMS[op])
        self.out = None
        self.has_out = False

    def arrays(self):
        """Every ndarray the call can see, including a row-sparse grad's data and out."""
        found = []
        for v in list(self.tensors.values()) + [self.out]:
            if isinstance(v, np.ndarray):
                found.append(v)
            elif isinstance(v, RowSparseArray):
                found.extend([v.data, v.indices])
        return found

    def __call__(self):
        kwargs = dict(self.params)
        if self.has_out:
            kwargs["out"] = self.out
        return getattr(generated, self.op)(*self.tensors.values(), **kwargs)


def set_tensor(name, make):
    def apply(call):
        call.tensors[name] = make(call.tensors[name], call)
    return apply


def set_param(name, value):
    def apply(call):
        call.params[name] = value
    return apply


def drop_param(name):
    def apply(call):
        del call.params[name]
    return apply


def set_out(make):
    def apply(call):
        call.out = make(call)
        call.has_out = True
    return apply


def read_only(a, call):
    a = a.copy()
    a.flags.writeable = False
    return a


def int_all(call):
    for k in call.tensors:
        call.tensors[k] = (call.tensors[k] * 10).astype(np.int32)


def rsp_wrong_shape(g, call):
    return RowSparseArray(np.ones((2,), np.float32), np.array([0, 6]), (7,))


def rsp_wrong_dtype(g, call):
    return RowSparseArray(np.ones((2,), np.float16), np.array([0, 3]), SHAPE)


def ro_out(call):
    o = np.zeros(SHAPE, np.float32)
    o.flags.writeable = False
    return o


# (id, op, mutation, exception, match)
CASES = [
    # shapes
    ("grad_shape", "adam_update", set_tensor("grad", lambda a, c: np.ones(5, a.dtype)), ValueError, "grad"),
    ("grad_same_size_other_shape", "adam_update", set_tensor("grad", lambda a, c: a.reshape(2, 3)),
     ValueError, "grad"),
    ("mean_shape", "adam_update", set_tensor("mean", lambda a, c: np.zeros(7, a.dtype)), ValueError, "mean"),
    ("var_shape_after_good_mean", "adam_update", set_tensor("var", lambda a, c: np.zeros((6, 1), a.dtype)),
     ValueError, "var"),
    ("sgd_grad_shape", "sgd_update", set_tensor("grad", lambda a, c: np.ones(4, a.dtype)), ValueError, "grad"),
    ("mom_shape", "sgd_mom_update", set_tensor("mom", lambda a, c: np.zeros(3, a.dtype)), ValueError, "mom"),
    ("n_shape", "rmsprop_update", set_tensor("n", lambda a, c: np.zeros(12, a.dtype)), ValueError, "\\bn\\b"),
    # dtypes
    ("grad_float16", "adam_update", set_tensor("grad", lambda a, c: a.astype(np.float16)), TypeError, "grad"),
    ("mean_float64", "adam_update", set_tensor("mean", lambda a, c: a.astype(np.float64)), TypeError, "mean"),
    ("var_float16", "adam_update", set_tensor("var", lambda a, c: a.astype(np.float16)), TypeError, "var"),
    ("sgd_grad_float64", "sgd_update", set_tensor("grad", lambda a, c: a.astype(np.float64)), TypeError, "grad"),
    ("mom_float16", "sgd_mom_update", set_tensor("mom", lambda a, c: a.astype(np.float16)), TypeError, "mom"),
    ("n_float64", "rmsprop_update", set_tensor("n", lambda a, c: a.astype(np.float64)), TypeError, "\\bn\\b"),
    # integer arrays
    ("all_int32", "adam_update", int_all, TypeError, "weight"),
    ("sgd_all_int32", "sgd_update", int_all, TypeError, "weight"),
    ("grad_int32", "adam_update", set_tensor("grad", lambda a, c: a.astype(np.int32)), TypeError, "grad"),
    ("mean_int64", "adam_update", set_tensor("mean", lambda a, c: a.astype(np.int64)), TypeError, "mean"),
    ("mom_int32", "sgd_mom_update", set_tensor("mom", lambda a, c: a.astype(np.int32)), TypeError, "mom"),
    # missing lr (Python's own TypeError names it)
    ("missing_lr", "adam_update", drop_param("lr"), TypeError, "lr"),
    ("sgd_missing_lr", "sgd_update", drop_param("lr"), TypeError, "lr"),
    ("sgd_mom_missing_lr", "sgd_mom_update", drop_param("lr"), TypeError, "lr"),
    ("rmsprop_missing_lr", "rmsprop_update", drop_param("lr"), TypeError, "lr"),
    # non-array inputs
    ("grad_list", "adam_update", set_tensor("grad", lambda a, c: a.tolist()), TypeError, "grad"),
    ("weight_list", "adam_update", set_tensor("weight", lambda a, c: a.tolist()), TypeError, "weight"),
    ("mean_list", "adam_update", set_tensor("mean", lambda a, c: a.tolist()), TypeError, "mean"),
    ("sgd_grad_list", "sgd_update", set_tensor("grad", lambda a, c: a.tolist()), TypeError, "grad"),
    ("n_scalar", "rmsprop_update", set_tensor("n", lambda a, c: 0.0), TypeError, "\\bn\\b"),
    # bad parameters
    ("lr_string", "adam_update", set_param("lr", "0.1"), TypeError, "lr"),
    ("sgd_lr_string", "sgd_update", set_param("lr", "0.1"), TypeError, "lr"),
    ("beta1_string", "adam_update", set_param("beta1", "0.9"), TypeError, "beta1"),
    ("momentum_string", "sgd_mom_update", set_param("momentum", "0.9"), TypeError, "momentum"),
    ("clip_weights_string", "rmsprop_update", set_param("clip_weights", "1"), TypeError, "clip_weights"),
    ("unknown_keyword", "adam_update", set_param("foo", 1.0), TypeError, "foo"),
    ("rmsprop_lazy_update", "rmsprop_update", set_param("lazy_update", True), TypeError, "lazy_update"),
    # read-only states
    ("mean_read_only", "adam_update", set_tensor("mean", read_only), ValueError, "mean"),
    ("var_read_only", "adam_update", set_tensor("var", read_only), ValueError, "var"),
    ("mom_read_only", "sgd_mom_update", set_tensor("mom", read_only), ValueError, "mom"),
    ("n_read_only", "rmsprop_update", set_tensor("n", read_only), ValueError, "\\bn\\b"),
    # out
    ("out_shape", "adam_update", set_out(lambda c: np.zeros(5, np.float32)), ValueError, "out"),
    ("out_same_size_other_shape", "adam_update", set_out(lambda c: np.zeros((3, 2), np.float32)),
     ValueError, "out"),
    ("out_dtype", "adam_update", set_out(lambda c: np.zeros(SHAPE, np.float64)), TypeError, "out"),
    ("sgd_out_dtype", "sgd_update", set_out(lambda c: np.zeros(SHAPE, np.float16)), TypeError, "out"),
    ("out_list", "adam_update", set_out(lambda c: [0.0] * 6), TypeError, "out"),
    ("out_read_only", "adam_update", set_out(ro_out), ValueError, "out"),
    # row-sparse grad that does not fit the weight
    ("rsp_grad_shape", "adam_update", set_tensor("grad", rsp_wrong_shape), ValueError, "grad"),
    ("rsp_grad_dtype", "sgd_update", set_tensor("grad", rsp_wrong_dtype), TypeError, "grad"),
    ("rmsprop_rsp_grad_shape", "rmsprop_update", set_tensor("grad", rsp_wrong_shape), ValueError, "grad"),
]


@pytest.mark.parametrize("case_id,op,mutate,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_call(backend, case_id, op, mutate, exc, match):
    call = Call(op)
    mutate(call)
    arrays = call.arrays()
    before = [a.tobytes() for a in arrays]
    with pytest.raises(exc, match=match):
        call()
    after = [a.tobytes() for a in arrays]
    assert after == before, "a bad call must not modify any array"


def test_bad_call_with_out_is_weight_leaves_everything(backend):
    """The weight is the out: a late error (read-only var) must not have written it."""
    call = Call("adam_update")
    call.tensors["var"] = read_only(call.tensors["var"], call)
    call.out = call.tensors["weight"]
    call.has_out = True
    arrays = call.arrays()
    before = [a.tobytes() for a in arrays]
    with pytest.raises(ValueError, match="var"):
        call()
    assert [a.tobytes() for a in arrays] == before


# -- non-contiguous inputs ---------------------------------------------------------------------
LAYOUTS = ["stride2", "transposed", "fortran", "negative_stride"]


def _view(base: np.ndarray, layout: str) -> np.ndarray:
    if layout == "stride2":
        return base[::2]
    if layout == "transposed":
        return base.T
    if layout == "fortran":
        return np.asfortranarray(base)
    if layout == "negative_stride":
        return base[::-1, ::3]
    raise KeyError(layout)


@pytest.mark.parametrize("out_mode", ["none", "weight", "strided_out"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=["float16", "float32", "float64"])
@pytest.mark.parametrize("op", list(OPS))
def test_non_contiguous(backend, op, dtype, layout, out_mode):
    state_names, ref_fn = OPS[op]
    params = dict(DEFAULT_PARAMS[op], rescale_grad=1.5, clip_gradient=1.0)
    w_base, g_base, s_bases = make_inputs(op, 41, (10, 9), dtype)
    w_base0, s_bases0 = w_base.copy(), [s.copy() for s in s_bases]
    weight, grad = _view(w_base, layout), _view(g_base, layout)
    states = [_view(s, layout) for s in s_bases]
    if layout != "fortran":
        assert not weight.flags.c_contiguous
    expected = ref.as_tuple(ref_fn(np.ascontiguousarray(weight), np.ascontiguousarray(grad),
                                   *[np.ascontiguousarray(s) for s in states], **params))
    w_before = weight.copy()
    out_base = None
    if out_mode == "none":
        out = None
    elif out_mode == "weight":
        out = weight
    else:
        out_base = np.zeros((weight.shape[0] * 2,) + weight.shape[1:], dtype=dtype)
        out = out_base[1::2]

    result = getattr(generated, op)(weight, grad, *states, **params, out=out)
    if out is not None:
        assert result is out
    assert_close(result, expected[0], "weight")
    if out_mode != "weight":
        assert weight.tobytes() == w_before.tobytes()
    if out_base is not None:
        assert not out_base[0::2].any(), "only the out view may be written"
    for name, s, e in zip(state_names, states, expected[1:]):
        assert_close(s, e, name)  # states updated in place, in the caller's view

    if layout in ("stride2", "negative_stride"):
        # the elements outside the views are untouched
        sel = np.ones(w_base.shape, dtype=bool)
        sel[(slice(None, None, 2),) if layout == "stride2" else (slice(None, None, -1), slice(None, None, 3))] = False
        for base, base0 in zip([w_base] + s_bases, [w_base0] + s_bases0):
            assert base[sel].tobytes() == base0[sel].tobytes()
    if layout != "fortran":  # a real view of the caller's base array: the base sees the update
        if out_mode == "weight":
            assert_close(_view(w_base, layout), expected[0], "base weight view")
        for s_base, e in zip(s_bases, expected[1:]):
            assert_close(_view(s_base, layout), e, "base state view")
