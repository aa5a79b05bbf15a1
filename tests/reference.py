"""Independent NumPy reference for the four optimizer updates under test.

Written by hand from /work/shared/reference/mxnet-optimizers.md (sections 2.1, 2.2,
2.5, 2.6: MXNet 1.9.1 CPU kernels, same statement and operand order) with the opgen
deviations of section 7:

* clipping (clip_gradient, clip_weights) happens only when the bound is > 0;
* float16 storage: compute in float32, round once when storing;
* float32: compute in float32, every scalar parameter first rounded to float32
  (so ``1 - beta1`` is ``float32(1) - float32(beta1)``);
* float64: compute in double with the parameters at double precision.

Nothing here imports ``opgen`` or ``generated``.

Every function is pure: it returns ``(new_weight, *new_states)`` as fresh arrays of the
storage dtype and never writes its inputs. ``grad`` is always dense. ``rows`` selects
the row-sparse "lazy" update: ``None`` means the dense update over every element; an
index array (or boolean mask over dimension 0) means only those rows change and every
other row of the weight and of the states is returned bit-identical. The "standard"
row-sparse update is the dense update with a gradient that is zero on missing rows;
build that gradient with :func:`densify`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "adam_update",
    "compute_dtype",
    "densify",
    "rmsprop_update",
    "sgd_mom_update",
    "sgd_update",
]


def compute_dtype(dtype) -> type:
    """float64 for float64 storage; float32 for float16 and float32 storage."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64
    if dtype in (np.dtype(np.float16), np.dtype(np.float32)):
        return np.float32
    raise TypeError(f"reference: unsupported dtype {dtype}")


def densify(data: np.ndarray, indices, shape) -> np.ndarray:
    """The dense gradient of a row-sparse one: ``data[k]`` at row ``indices[k]``, zero elsewhere."""
    dense = np.zeros(tuple(shape), dtype=data.dtype)
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size:
        dense[idx] = data
    return dense


def _clip(x, bound):
    """``x > b ? b : (x < -b ? -b : x)``; NaN passes through (mshadow_op::clip)."""
    return np.where(x > bound, bound, np.where(x < -bound, -bound, x))


def _prepare(arrays, params):
    """Convert tensors and scalar parameters to the compute dtype of the first array."""
    storage = arrays[0].dtype
    for a in arrays:
        assert a.dtype == storage, "reference: all tensors must share one dtype"
    ct = compute_dtype(storage)
    tensors = [np.array(a, dtype=ct, copy=True) for a in arrays]
    scalars = [ct(p) for p in params]
    return storage, ct, tensors, scalars


def _finish(storage, originals, results, rows):
    """Round the results to the storage dtype; under ``rows`` keep the other rows bit-identical."""
    stored = [np.asarray(r).astype(storage) for r in results]
    if rows is None:
        return tuple(stored)
    final = []
    for orig, new in zip(originals, stored):
        keep = np.array(orig, copy=True)
        if keep.ndim == 0:
            raise ValueError("reference: row-sparse update needs at least one dimension")
        sel = np.asarray(rows)
        if sel.dtype == bool:
            keep[sel] = new[sel]
        elif sel.size:
            keep[sel.astype(np.int64)] = new[sel.astype(np.int64)]
        final.append(keep)
    return tuple(final)


# -- sgd_update (section 2.1, SGDKernel) ------------------------------------------------
def sgd_update(weight, grad, lr, wd=0.0, rescale_grad=1.0, clip_gradient=-1.0, rows=None):
    storage, ct, (w, g), (lr_, wd_, rg_, clip_) = _prepare(
        [weight, grad], [lr, wd, rescale_grad, clip_gradient])
    one = ct(1)
    with np.errstate(all="ignore"):
        if clip_gradient > 0:
            out = (one - lr_ * wd_) * w - lr_ * _clip(rg_ * g, clip_)
        else:
            out = (one - lr_ * wd_) * w - (lr_ * rg_) * g
    return _finish(storage, [weight], [out], rows)[0]


# -- sgd_mom_update (section 2.2, SGDMomKernel) -----------------------------------------
def sgd_mom_update(weight, grad, mom, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0, rows=None):
    storage, ct, (w, g, m), (lr_, mu_, wd_, rg_, clip_) = _prepare(
        [weight, grad, mom], [lr, momentum, wd, rescale_grad, clip_gradient])
    with np.errstate(all="ignore"):
        if clip_gradient > 0:
            m = mu_ * m - (lr_ * wd_) * w - lr_ * _clip(rg_ * g, clip_)
        else:
            m = mu_ * m - (lr_ * wd_) * w - (lr_ * rg_) * g
        out = w + m
    return _finish(storage, [weight, mom], [out, m], rows)


# -- adam_update (section 2.5, AdamUpdateKernel) ----------------------------------------
def adam_update(weight, grad, mean, var, lr, beta1=0.9, beta2=0.999, epsilon=1e-8, wd=0.0,
                rescale_grad=1.0, clip_gradient=-1.0, rows=None):
    storage, ct, (w, g, m, v), (lr_, b1_, b2_, eps_, wd_, rg_, clip_) = _prepare(
        [weight, grad, mean, var], [lr, beta1, beta2, epsilon, wd, rescale_grad, clip_gradient])
    one = ct(1)
    with np.errstate(all="ignore"):
        gr = g * rg_ + w * wd_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        m = b1_ * m + (one - b1_) * gr
        v = b2_ * v + ((one - b2_) * gr) * gr
        out = w - (lr_ * m) / (np.sqrt(v) + eps_)
    return _finish(storage, [weight, mean, var], [out, m, v], rows)


# -- rmsprop_update (section 2.6, RMSPropUpdateKernel) ----------------------------------
def rmsprop_update(weight, grad, n, lr, gamma1=0.95, epsilon=1e-8, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0, clip_weights=-1.0, rows=None):
    storage, ct, (w, g, s), (lr_, g1_, eps_, wd_, rg_, clip_, clipw_) = _prepare(
        [weight, grad, n], [lr, gamma1, epsilon, wd, rescale_grad, clip_gradient, clip_weights])
    one = ct(1)
    with np.errstate(all="ignore"):
        gr = rg_ * g + wd_ * w
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        s = (one - g1_) * (gr * gr) + g1_ * s
        out = w - lr_ * (gr / np.sqrt(s + eps_))
        if clip_weights > 0:
            out = _clip(out, clipw_)
    return _finish(storage, [weight, n], [out, s], rows)


# =====================================================================================
# Helpers shared by the test modules (comparison tolerances, input generation).
# =====================================================================================

#: (rtol, atol) per storage dtype. float32: a few ulps; float16: about one half ulp;
#: float64: the reference follows the same operand order in double.
TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-6),
    np.dtype(np.float32): (1e-6, 1e-7),
    np.dtype(np.float64): (1e-12, 1e-15),
}

#: op name -> (state names, reference function)
OPS = {
    "sgd_update": ((), sgd_update),
    "sgd_mom_update": (("mom",), sgd_mom_update),
    "adam_update": (("mean", "var"), adam_update),
    "rmsprop_update": (("n",), rmsprop_update),
}

#: ops with a ``lazy_update`` parameter
LAZY_OPS = ("sgd_update", "sgd_mom_update", "adam_update")


def assert_close(actual, expected, what: str = "") -> None:
    """Same dtype and shape, values within the dtype's tolerance, NaN where expected."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    rtol, atol = TOLERANCES[expected.dtype]
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def make_state(op: str, name: str, rng, shape, dtype) -> np.ndarray:
    """A plausible optimizer state: signed for mean/mom, non-negative for var/n."""
    if name == "mean":
        x = rng.normal(0.0, 0.1, size=shape)
    elif name == "mom":
        x = rng.normal(0.0, 0.05, size=shape)
    elif name == "var":
        x = rng.uniform(0.0, 0.01, size=shape)
    elif name == "n":
        x = rng.uniform(0.0, 0.1, size=shape)
    else:  # pragma: no cover - table is closed
        raise KeyError(name)
    return np.asarray(x).astype(dtype)


def make_inputs(op: str, seed: int, shape, dtype):
    """(weight, grad, [states...]) with deterministic values."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 1.0, size=shape).astype(dtype)
    grad = rng.normal(0.0, 1.0, size=shape).astype(dtype)
    states = [make_state(op, s, rng, shape, dtype) for s in OPS[op][0]]
    return weight, grad, states


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)
