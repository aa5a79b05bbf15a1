"""MXNet's multi_* ops: its calling convention and MultiSGDKernel's arithmetic (section 2.15).

The per-group reference is tests/reference.py's multi_* functions (MultiSGDKernel: the
momentum form even without momentum); the numerics grid (test_numerics.py) runs these ops too,
with one group.
"""

from __future__ import annotations

import numpy as np
import pytest

import generated
import reference
from reference import assert_close


def groups(count, shapes_seed=0, dtype=np.float32, mp=False, with_mom=False):
    rng = np.random.default_rng(shapes_seed)
    out = []
    for k in range(count):
        n = int(rng.integers(1, 40))
        w = rng.normal(size=n).astype(dtype)
        g = rng.normal(size=n).astype(dtype)
        group = [w, g]
        if with_mom:
            group.append(rng.normal(size=n).astype(np.float32 if mp else dtype))
        if mp:
            group.append(w.astype(np.float32) + np.float32(0.001))
        out.append(group)
    return out


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("clip", [-1.0, 0.3])
def test_multi_sgd_update_is_mxnet_kernel(backend, dtype, clip):
    data = groups(5, 1, dtype)
    lrs, wds = [0.1, 0.2, 0.05, 0.3, 0.01], [0.0, 0.1, 0.01, 0.5, 0.2]
    expected = [reference.multi_sgd_update(w, g, lr, wd, rescale_grad=0.7, clip_gradient=clip)[0]
                for (w, g), lr, wd in zip(data, lrs, wds)]
    weights = [w for w, _ in data]
    flat = [a for group in data for a in group]
    out = generated.multi_sgd_update(*flat, lrs=lrs, wds=wds, rescale_grad=0.7, clip_gradient=clip,
                                     num_weights=5, out=weights)
    assert len(out) == 5 and all(o is w for o, w in zip(out, weights))
    for k, (got, want) in enumerate(zip(weights, expected)):
        assert_close(got, want, f"weight {k}")


def test_multi_sgd_update_rounds_like_mxnet_not_like_sgd_update():
    """MXNet: multi_sgd computes w + (0*0 - (lr*wd)*w - (lr*rg)*g), bit for bit in float32
    with opgen's per-call rule (``lr*wd`` and ``lr*rg`` in double, rounded once)."""
    rng = np.random.default_rng(7)
    w, g = rng.normal(size=4096).astype(np.float32), rng.normal(size=4096).astype(np.float32)
    (want,) = reference.multi_sgd_update(w, g, 0.1, 0.3)
    assert not np.array_equal(want, reference.sgd_update(w, g, lr=0.1, wd=0.3)[0])  # 5.5: ~31% differ
    got = generated.multi_sgd_update(w.copy(), g, lrs=[0.1], wds=[0.3])[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=lambda d: d.__name__)
def test_multi_mp_sgd_mom_update(backend, dtype):
    data = groups(4, 2, dtype, mp=True, with_mom=True)
    lrs, wds = [0.1, 0.2, 0.05, 0.3], [0.0, 0.1, 0.01, 0.5]
    expected = [reference.multi_mp_sgd_mom_update(w, g, mom, w32, lr, wd, momentum=0.9)[1:]
                for (w, g, mom, w32), lr, wd in zip(data, lrs, wds)]
    flat = [a for group in data for a in group]
    weights = [group[0] for group in data]
    out = generated.multi_mp_sgd_mom_update(*flat, lrs=lrs, wds=wds, momentum=0.9, num_weights=4, out=weights)
    for k, ((w, _, mom, w32), (new_mom, new_w32)) in enumerate(zip(data, expected)):
        assert_close(w32, new_w32, f"weight32 {k}")
        assert_close(mom, new_mom, f"mom {k}")
        np.testing.assert_array_equal(out[k], w32.astype(dtype))  # out = weight32 in the weight's dtype


def test_multi_mp_sgd_update_and_sgd_mom(backend):
    data = groups(3, 3, np.float16, mp=True)
    flat = [a for group in data for a in group]
    expected = [reference.multi_mp_sgd_update(w, g, w32, 0.1, 0.01)[1] for w, g, w32 in data]
    generated.multi_mp_sgd_update(*flat, lrs=[0.1] * 3, wds=[0.01] * 3, num_weights=3)
    for (w, g, w32), want in zip(data, expected):
        assert_close(w32, want, "weight32")
    data = groups(3, 4, np.float32, with_mom=True)
    expected = [reference.multi_sgd_mom_update(w, g, m, 0.1, 0.01, momentum=0.5) for w, g, m in data]
    flat = [a for group in data for a in group]
    out = generated.multi_sgd_mom_update(flat, lrs=[0.1] * 3, wds=[0.01] * 3, momentum=0.5, num_weights=3)
    for (w, g, m), o, (want_w, want_m) in zip(data, out, expected):
        assert_close(o, want_w, "weight")
        assert_close(m, want_m, "mom")


def test_no_sixty_tensor_cap():
    data = groups(200, 5)
    flat = [a for group in data for a in group]
    expected = [reference.multi_sgd_update(w, g, 0.01, 0.0)[0] for w, g in data]
    out = generated.multi_sgd_update(*flat, lrs=[0.01] * 200, wds=[0.0] * 200, num_weights=200)
    for o, want in zip(out, expected):
        assert_close(o, want, "weight")


@pytest.mark.parametrize("call, exc, match", [
    (lambda f: generated.multi_sgd_update(*f, lrs=[0.1, 0.1], wds=[0.0, 0.0], num_weights=3), ValueError,
     r"'data' holds 4 arrays but num_weights=3 needs 6"),
    (lambda f: generated.multi_sgd_update(*f, lrs=[0.1], wds=[0.0, 0.0], num_weights=2), ValueError,
     r"'lrs' has 1 values for 2 tensors"),
    (lambda f: generated.multi_sgd_update(*f, lrs=0.1, wds=[0.0, 0.0], num_weights=2), TypeError, r"'lrs' must be a sequence"),
    (lambda f: generated.multi_sgd_update(*f, lrs=[0.1, 0.1], wds=[0.0, 0.0], num_weights="2"), TypeError,
     r"'num_weights' must be a non-negative integer"),
    (lambda f: generated.multi_sgd_update(*f[:3], f[3].astype(np.float64), lrs=[0.1, 0.1], wds=[0.0, 0.0], num_weights=2),
     TypeError, r"'data\[3\]' has dtype float64"),
    (lambda f: generated.multi_sgd_update(*f, lrs=[0.1, 0.1], num_weights=2), TypeError, "wds"),
])
def test_bad_calls_name_the_argument_and_change_nothing(call, exc, match):
    data = groups(2, 6)
    flat = [a for group in data for a in group]
    before = [a.copy() for a in flat]
    with pytest.raises(exc, match=match):
        call(flat)
    for a, b in zip(flat, before):
        np.testing.assert_array_equal(a, b)
