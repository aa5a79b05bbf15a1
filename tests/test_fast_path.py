"""The per-call fast path (plain arrays, C backend) must check what the general path checks."""

from __future__ import annotations

import numpy as np
import pytest

import generated
import reference
from opgen.runtime import available_backends, use_backend

pytestmark = pytest.mark.skipif("c" not in available_backends(), reason="needs the C backend")


def arrays(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=n).astype(np.float32) for _ in range(2)] + [np.zeros(n, np.float32),
                                                                        np.full(n, 0.5, np.float32)]


@pytest.fixture(autouse=True)
def warm():
    with use_backend("c"):
        w, g, m, v = arrays()
        generated.adam_update(w, g, m, v, lr=0.1, out=w)  # loads the kernel: later calls may take the fast path
        yield


def test_fast_path_result_is_the_reference():
    w, g, m, v = arrays(seed=1)
    want = reference.adam_update(w, g, m, v, lr=0.1, wd=0.01)
    got = generated.adam_update(w, g, m, v, lr=0.1, wd=0.01, out=w)
    assert got is w
    for a, b in zip((w, m, v), want):
        reference.assert_close(a, b)


def test_out_none_leaves_the_weight():
    w, g, m, v = arrays(seed=2)
    before = w.copy()
    got = generated.adam_update(w, g, m, v, lr=0.1)
    assert got is not w and np.array_equal(w, before)


@pytest.mark.parametrize("case, exc, match", [
    ("same state twice", ValueError, "shares memory"),
    ("grad is the weight", ValueError, "shares memory"),
    ("read-only state", ValueError, "read-only"),
    ("bool lr", TypeError, "'lr'"),
    ("string beta1", TypeError, "'beta1'"),
    ("int lazy_update 2", TypeError, "'lazy_update'"),
    ("int64 weight", TypeError, "'weight'"),
])
def test_bad_calls_are_caught_after_warm_up(case, exc, match):
    w, g, m, v = arrays(seed=3)
    kwargs = dict(lr=0.1)
    tensors = [w, g, m, v]
    if case == "same state twice":
        tensors = [w, g, m, m]
    elif case == "grad is the weight":
        tensors = [w, w, m, v]
    elif case == "read-only state":
        v.flags.writeable = False
    elif case == "bool lr":
        kwargs = dict(lr=True)
    elif case == "string beta1":
        kwargs = dict(lr=0.1, beta1="0.9")
    elif case == "int lazy_update 2":
        kwargs = dict(lr=0.1, lazy_update=2)
    elif case == "int64 weight":
        tensors = [np.ones(16, np.int64), g, m, v]
    before = [t.copy() for t in tensors]
    with pytest.raises(exc, match=match):
        generated.adam_update(*tensors, **kwargs, out=tensors[0])
    for t, b in zip(tensors, before):
        np.testing.assert_array_equal(t, b)


def test_views_numpy_scalars_and_strided_arrays_are_still_right():
    base = np.random.default_rng(4).normal(size=64).astype(np.float32)
    w, g = base[:16].copy(), base[16:32]  # g is a view (base is not None)
    m, v = np.zeros(16, np.float32), np.full(16, 0.5, np.float32)
    want = reference.adam_update(w, g, m, v, lr=0.1)
    generated.adam_update(w, g, m, v, lr=np.float32(0.1), out=w)  # numpy scalar: general path
    for a, b in zip((w, m, v), want):
        reference.assert_close(a, b)
    w2 = np.zeros(32, np.float32)[::2]  # strided weight
    w2[:] = want[0]
    m2, v2 = want[1].copy(), want[2].copy()
    want2 = reference.adam_update(w2, g, m2, v2, lr=0.1)
    generated.adam_update(w2, g, m2, v2, lr=0.1, out=w2)
    reference.assert_close(w2, want2[0])


def test_a_plain_call_takes_the_fast_path(monkeypatch):
    """After warm-up, plain arrays never reach the general path (whose checks cost ~15 µs)."""
    import sys

    operator = sys.modules["generated.adam_update"]._OP

    def general_path(*args, **kwargs):
        raise AssertionError("the general path was used for a plain call")

    monkeypatch.setattr(operator, "_checked_call", general_path)
    w, g, m, v = arrays(seed=5)
    want = reference.adam_update(w, g, m, v, lr=0.1)
    generated.adam_update(w, g, m, v, lr=0.1, out=w)
    reference.assert_close(w, want[0])


def _mixed(seed):
    import ml_dtypes

    rng = np.random.default_rng(seed)
    w, g = (rng.normal(size=16).astype(ml_dtypes.bfloat16) for _ in range(2))
    return [w, g, np.zeros(16, np.float32), np.full(16, 0.5, np.float32)]


def test_a_plain_mixed_precision_call_takes_the_fast_path(monkeypatch):
    """bf16 weights with float32 states (the usual mixed-precision setup) take the fast path
    too once their kernel is loaded (the general path cost 30 µs a call), with the result
    of the reference."""
    import sys

    tensors = _mixed(6)
    generated.adam_update(*_mixed(7), lr=0.1, out=None)  # loads this variant's kernel
    operator = sys.modules["generated.adam_update"]._OP
    want = reference.adam_update(*tensors, lr=0.1)

    def general_path(*args, **kwargs):
        raise AssertionError("the general path was used for a plain mixed-precision call")

    monkeypatch.setattr(operator, "_checked_call", general_path)
    generated.adam_update(*tensors, lr=0.1, out=tensors[0])
    for a, b in zip((tensors[0], *tensors[2:]), want):
        reference.assert_close(a, b)


@pytest.mark.parametrize("case, match", [
    ("states of two dtypes", "'var'"),
    ("float32 grad beside a bf16 weight", "'grad'"),
    ("bf16 states beside a float16 weight", "'mean'"),
])
def test_mixed_precision_refusals_after_warm_up(case, match):
    """A warm mixed-precision fast path still refuses each dtype it has no kernel for,
    before anything is written."""
    import ml_dtypes

    generated.adam_update(*_mixed(8), lr=0.1, out=None)
    w, g, m, v = _mixed(9)
    if case == "states of two dtypes":
        v = v.astype(ml_dtypes.bfloat16)
    elif case == "float32 grad beside a bf16 weight":
        g = g.astype(np.float32)
    else:
        w, g = w.astype(np.float16), g.astype(np.float16)
        m, v = m.astype(ml_dtypes.bfloat16), v.astype(ml_dtypes.bfloat16)
    tensors = [w, g, m, v]
    before = [t.copy() for t in tensors]
    with pytest.raises(TypeError, match=match):
        generated.adam_update(*tensors, lr=0.1, out=w)
    for t, b in zip(tensors, before):
        np.testing.assert_array_equal(t.view(np.uint8), b.view(np.uint8))
