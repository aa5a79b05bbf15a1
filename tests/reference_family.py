"""Independent NumPy reference for the second family of optimizer updates.

Written by hand from /work/shared/reference/mxnet-optimizers.md: the MXNet 1.9.1 CPU
kernels in their statement and operand order (sections 2.3, 2.4, 2.7-2.14), with the
opgen deviations of section 7:

* clipping (clip_gradient, clip_weights, clip_grad, lamb's lower/upper bound) happens
  only when the bound is > 0 (7.1);
* float16 storage: compute in float32, round once when storing (7.2);
* float32: compute in float32, every scalar parameter first rounded to float32;
* float64: compute in double with the parameters at double precision (7.3);
* nag_mom_update: the new momentum always uses the OLD weight (7.5);
* adamw_update never writes its grad input (7.6).

Multi-precision (mp_*) ops compute in float32 from ``weight32`` (section 2.4 / 2.12) and
never read the low-precision weight; ``out`` is ``weight32``'s new value cast to the
weight's dtype. (For a float64 weight an implementation may compute in double; the tests
compare that case with a float32-level tolerance, see :func:`tolerance`.)

Nothing here imports ``opgen`` or ``generated``.

Every function is pure: it returns ``(new_weight_or_out, *new_states)`` as fresh arrays
(states in the order they appear in the op's signature) and never writes its inputs.
``grad`` is always a dense array; ``rows`` (where an op has it) selects the lazy
row-sparse update: ``None`` means every row, an index array means only those rows change
and every other row of the weight and of the states is returned bit-identical.
"""

from __future__ import annotations

import math

import numpy as np

from reference import TOLERANCES, compute_dtype, densify  # noqa: F401  (re-exported)

__all__ = [
    "adagrad_update",
    "adamw_update",
    "densify",
    "ftml_update",
    "ftrl_update",
    "group_adagrad_update",
    "lamb_update_phase1",
    "lamb_update_phase2",
    "mp_adamw_update",
    "mp_nag_mom_update",
    "mp_sgd_mom_update",
    "mp_sgd_update",
    "nag_mom_update",
    "rmspropalex_update",
    "signsgd_update",
    "signum_update",
    "tolerance",
]


# -- helpers ----------------------------------------------------------------------------
def _clip(x, bound):
    """``x > b ? b : (x < -b ? -b : x)``; NaN passes through (mshadow_op::clip)."""
    return np.where(x > bound, bound, np.where(x < -bound, -bound, x))


def _sign(x, ct):
    """``(x > 0) - (x < 0)``: sign(0) = sign(NaN) = 0 (mshadow_op::sign)."""
    return (x > 0).astype(ct) - (x < 0).astype(ct)


def _to(ct, *arrays):
    return [np.array(a, dtype=ct, copy=True) for a in arrays]


def _scalars(ct, *params):
    return [ct(p) for p in params]


def _keep_rows(original, new, rows):
    """``new`` on ``rows``, ``original`` (bit-identical) elsewhere."""
    if rows is None:
        return new
    keep = np.array(original, copy=True)
    idx = np.asarray(rows, dtype=np.int64)
    if idx.size:
        keep[idx] = new[idx]
    return keep


def _store(results, dtypes, originals=None, rows=None):
    """Round each result to its storage dtype (once); apply the lazy row selection."""
    out = []
    for k, (r, dt) in enumerate(zip(results, dtypes)):
        stored = np.asarray(r).astype(dt)
        if rows is not None:
            stored = _keep_rows(originals[k], stored, rows)
        out.append(stored)
    return tuple(out)


def _same_dtype(*arrays):
    dt = arrays[0].dtype
    for a in arrays:
        assert a.dtype == dt, "reference: all tensors of a single-precision op share one dtype"
    return dt


def _check_mp(weight, grad, *fp32):
    assert weight.dtype == grad.dtype, "reference: mp weight and grad share one dtype"
    for a in fp32:
        assert a.dtype == np.float32, "reference: mp states and weight32 are float32"


def _rescale_value(rescale_grad) -> float:
    """adamw's rescale_grad: a Python float or a one-element array."""
    return float(np.asarray(rescale_grad).reshape(-1)[0])


def _adamw_skips(rescale_grad) -> bool:
    """Section 2.12 skip rule: rescale_grad 0, NaN or +-Inf skips the whole update."""
    r = _rescale_value(rescale_grad)
    return r == 0.0 or not math.isfinite(r)


def tolerance(op: str, weight_dtype, array_dtype=None):
    """(rtol, atol) for comparing an array stored as ``array_dtype`` (default: the weight's).

    The per-dtype tolerances of tests/reference.py. Exception: a multi-precision op with a
    float64 weight may compute in float64 or in float32 (the brief allows both), so all its
    arrays get a float32-level tolerance (1e-5, 1e-6).
    """
    weight_dtype = np.dtype(weight_dtype)
    array_dtype = weight_dtype if array_dtype is None else np.dtype(array_dtype)
    if op.startswith("mp_") and weight_dtype == np.float64:
        return (1e-5, 1e-6)
    return TOLERANCES[array_dtype]


# -- nag_mom_update (2.3 NAGMomKernel, deviation 7.5) ------------------------------------
def nag_mom_update(weight, grad, mom, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0):
    storage = _same_dtype(weight, grad, mom)
    ct = compute_dtype(storage)
    w, g, m = _to(ct, weight, grad, mom)
    lr_, mu_, wd_, rg_, clip_ = _scalars(ct, lr, momentum, wd, rescale_grad, clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        m = mu_ * m
        if clip_gradient > 0:
            gg = _clip(rg_ * g, clip_) + wd_ * w
        else:
            gg = rg_ * g + wd_ * w
        out = w - m + (mu_ + one) * (m - lr_ * gg)
        m = m - lr_ * gg  # old weight, whatever out is (7.5)
    return _store([out, m], [storage, storage])


# -- rmspropalex_update (2.7 RMSPropAlexUpdateKernel) -----------------------------------
def rmspropalex_update(weight, grad, n, g, delta, lr, gamma1=0.95, gamma2=0.9, epsilon=1e-8,
                       wd=0.0, rescale_grad=1.0, clip_gradient=-1.0, clip_weights=-1.0):
    storage = _same_dtype(weight, grad, n, g, delta)
    ct = compute_dtype(storage)
    w, gd, n_, g_, d_ = _to(ct, weight, grad, n, g, delta)
    lr_, g1, g2, eps, wd_, rg_, clip_, clipw = _scalars(
        ct, lr, gamma1, gamma2, epsilon, wd, rescale_grad, clip_gradient, clip_weights)
    one = ct(1)
    with np.errstate(all="ignore"):
        gr = rg_ * gd + wd_ * w
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        n_ = ((one - g1) * gr) * gr + g1 * n_
        g_ = (one - g1) * gr + g1 * g_
        d_ = g2 * d_ - (lr_ * gr) / np.sqrt(n_ - g_ * g_ + eps)
        out = w + d_
        if clip_weights > 0:
            out = _clip(out, clipw)
    return _store([out, n_, g_, d_], [storage] * 4)


# -- ftrl_update (2.8 FtrlUpdateKernel) --------------------------------------------------
def ftrl_update(weight, grad, z, n, lr, lamda1=0.01, beta=1.0, wd=0.0, rescale_grad=1.0,
                clip_gradient=-1.0):
    storage = _same_dtype(weight, grad, z, n)
    ct = compute_dtype(storage)
    w, g, z_, n_ = _to(ct, weight, grad, z, n)
    lr_, l1, beta_, wd_, rg_, clip_ = _scalars(ct, lr, lamda1, beta, wd, rescale_grad,
                                               clip_gradient)
    with np.errstate(all="ignore"):
        gr = g * rg_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        z_ = z_ + (gr - ((np.sqrt(n_ + gr * gr) - np.sqrt(n_)) * w) / lr_)  # old weight
        n_ = n_ + gr * gr
        active = (np.abs(z_) > l1).astype(ct)
        out = (_sign(z_, ct) * l1 - z_) / ((beta_ + np.sqrt(n_)) / lr_ + wd_) * active
    return _store([out, z_, n_], [storage] * 3)


# -- ftml_update (2.9 FTMLKernel) --------------------------------------------------------
def ftml_update(weight, grad, d, v, z, lr, *, beta1=0.6, beta2=0.999, epsilon=1e-8, t,
                wd=0.0, rescale_grad=1.0, clip_grad=-1.0):
    storage = _same_dtype(weight, grad, d, v, z)
    ct = compute_dtype(storage)
    w, g, d_, v_, z_ = _to(ct, weight, grad, d, v, z)
    lr_, b1, b2, eps, wd_, rg_, clip_ = _scalars(ct, lr, beta1, beta2, epsilon, wd,
                                                 rescale_grad, clip_grad)
    one = ct(1)
    b1t = ct(b1 ** int(t))
    b2t = ct(b2 ** int(t))
    with np.errstate(all="ignore"):
        gr = rg_ * g + wd_ * w
        if clip_grad > 0:
            gr = _clip(gr, clip_)
        v_ = b2 * v_ + (one - b2) * (gr * gr)
        d_t = (one - b1t) / lr_ * (np.sqrt(v_ / (one - b2t)) + eps)
        z_ = b1 * z_ + (one - b1) * gr - (d_t - b1 * d_) * w
        d_ = d_t
        out = -z_ / d_t
    return _store([out, d_, v_, z_], [storage] * 4)


# -- signsgd_update (2.10 SignSGDKernel): rescale_grad and clip_gradient ignored -----------
def signsgd_update(weight, grad, lr, wd=0.0, rescale_grad=1.0, clip_gradient=-1.0):
    storage = _same_dtype(weight, grad)
    ct = compute_dtype(storage)
    w, g = _to(ct, weight, grad)
    lr_, wd_ = _scalars(ct, lr, wd)
    one = ct(1)
    with np.errstate(all="ignore"):
        out = (one - lr_ * wd_) * w - lr_ * _sign(g, ct)
    return _store([out], [storage])


# -- signum_update (2.10 SignumKernel) ---------------------------------------------------
def signum_update(weight, grad, mom, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                  clip_gradient=-1.0, wd_lh=0.0):
    storage = _same_dtype(weight, grad, mom)
    ct = compute_dtype(storage)
    w, g, m = _to(ct, weight, grad, mom)
    lr_, mu_, wd_, rg_, clip_, wdlh = _scalars(ct, lr, momentum, wd, rescale_grad,
                                               clip_gradient, wd_lh)
    one = ct(1)
    with np.errstate(all="ignore"):
        if clip_gradient > 0:
            m = mu_ * m - (one - mu_) * wd_ * w - (one - mu_) * _clip(rg_ * g, clip_)
        else:
            m = mu_ * m - (one - mu_) * wd_ * w - (one - mu_) * rg_ * g
        out = (one - lr_ * wdlh) * w + lr_ * _sign(m, ct)
    return _store([out, m], [storage, storage])


# -- adagrad_update (2.11 AdagradDnsRspDnsKernel; lazy, wd must be 0) --------------------
def adagrad_update(weight, grad, history, lr, epsilon=1e-7, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0, rows=None):
    assert wd == 0.0, "reference: adagrad has no weight decay"
    storage = _same_dtype(weight, grad, history)
    ct = compute_dtype(storage)
    w, g, h = _to(ct, weight, grad, history)
    lr_, eps, rg_, clip_ = _scalars(ct, lr, epsilon, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        gr = g * rg_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        h = h + gr * gr
        out = w - (gr / np.sqrt(h + eps)) * lr_
    return _store([out, h], [storage] * 2, [weight, history], rows)


# -- adamw_update (2.12 AdamWUpdate::Forward, deviation 7.6) -----------------------------
def _adamw_math(w, g, m, v, rg, lr, eta, beta1, beta2, epsilon, wd, clip_gradient, ct):
    lr_, eta_, b1, b2, eps, wd_, clip_ = _scalars(ct, lr, eta, beta1, beta2, epsilon, wd,
                                                  clip_gradient)
    rg_ = ct(rg)
    one = ct(1)
    with np.errstate(all="ignore"):
        sg = rg_ * g
        if clip_gradient > 0:
            sg = _clip(sg, clip_)
        m = b1 * m + (one - b1) * sg
        v = b2 * v + (one - b2) * (sg * sg)
        out = w - eta_ * ((lr_ * m) / (np.sqrt(v) + eps) + wd_ * w)
    return out, m, v


def adamw_update(weight, grad, mean, var, rescale_grad, lr, eta, beta1=0.9, beta2=0.999,
                 epsilon=1e-8, wd=0.0, clip_gradient=-1.0):
    storage = _same_dtype(weight, grad, mean, var)
    if _adamw_skips(rescale_grad):
        return (weight.copy(), mean.copy(), var.copy())
    ct = compute_dtype(storage)
    w, g, m, v = _to(ct, weight, grad, mean, var)
    out, m, v = _adamw_math(w, g, m, v, _rescale_value(rescale_grad), lr, eta, beta1, beta2,
                            epsilon, wd, clip_gradient, ct)
    return _store([out, m, v], [storage] * 3)


# -- multi-precision ops (2.4, 2.12): fp32 math from weight32, weight never read ---------
def mp_sgd_update(weight, grad, weight32, lr, wd=0.0, rescale_grad=1.0, clip_gradient=-1.0,
                  rows=None):
    _check_mp(weight, grad, weight32)
    ct = np.float32
    g, w = _to(ct, grad, weight32)
    lr_, wd_, rg_, clip_ = _scalars(ct, lr, wd, rescale_grad, clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        if clip_gradient > 0:
            w = (one - lr_ * wd_) * w - lr_ * _clip(rg_ * g, clip_)
        else:
            w = (one - lr_ * wd_) * w - (lr_ * rg_) * g
    (w32,) = _store([w], [np.float32], [weight32], rows)
    return (w32.astype(weight.dtype), w32)


def mp_sgd_mom_update(weight, grad, mom, weight32, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                      clip_gradient=-1.0, rows=None):
    _check_mp(weight, grad, mom, weight32)
    ct = np.float32
    g, m, w = _to(ct, grad, mom, weight32)
    lr_, mu_, wd_, rg_, clip_ = _scalars(ct, lr, momentum, wd, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        if clip_gradient > 0:
            m = mu_ * m - lr_ * wd_ * w - lr_ * _clip(rg_ * g, clip_)
        else:
            m = mu_ * m - lr_ * wd_ * w - lr_ * rg_ * g
        w = w + m
    m, w32 = _store([m, w], [np.float32] * 2, [mom, weight32], rows)
    return (w32.astype(weight.dtype), m, w32)


def mp_nag_mom_update(weight, grad, mom, weight32, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                      clip_gradient=-1.0):
    """MP_NAGMomKernel: the new momentum's wd term uses the UPDATED fp32 weight (2.4, 5.10).

    Section 7.5 (old weight) is about nag_mom_update's dependence on aliasing; the mp kernel
    does not depend on aliasing and section 7 lists no deviation for it.
    """
    _check_mp(weight, grad, mom, weight32)
    ct = np.float32
    g, m, w = _to(ct, grad, mom, weight32)
    lr_, mu_, wd_, rg_, clip_ = _scalars(ct, lr, momentum, wd, rescale_grad, clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        sg = _clip(rg_ * g, clip_) if clip_gradient > 0 else rg_ * g
        m = mu_ * m
        w = w - m + (mu_ + one) * (m - lr_ * (sg + wd_ * w))
        m = m - lr_ * (sg + wd_ * w)  # w is the updated weight here
    m, w32 = _store([m, w], [np.float32] * 2)
    return (w32.astype(weight.dtype), m, w32)


def mp_nag_mom_update_old_weight(weight, grad, mom, weight32, lr, momentum=0.0, wd=0.0,
                                 rescale_grad=1.0, clip_gradient=-1.0):
    """The alternative reading (momentum from the old fp32 weight), for diagnostics only."""
    _check_mp(weight, grad, mom, weight32)
    ct = np.float32
    g, m, w = _to(ct, grad, mom, weight32)
    lr_, mu_, wd_, rg_, clip_ = _scalars(ct, lr, momentum, wd, rescale_grad, clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        sg = _clip(rg_ * g, clip_) if clip_gradient > 0 else rg_ * g
        m = mu_ * m
        gg = sg + wd_ * w
        w = w - m + (mu_ + one) * (m - lr_ * gg)
        m = m - lr_ * gg
    m, w32 = _store([m, w], [np.float32] * 2)
    return (w32.astype(weight.dtype), m, w32)


def mp_adamw_update(weight, grad, mean, var, weight32, rescale_grad, lr, eta, beta1=0.9,
                    beta2=0.999, epsilon=1e-8, wd=0.0, clip_gradient=-1.0):
    _check_mp(weight, grad, mean, var, weight32)
    if _adamw_skips(rescale_grad):
        return (weight.copy(), mean.copy(), var.copy(), weight32.copy())
    ct = np.float32
    g, m, v, w = _to(ct, grad, mean, var, weight32)
    out, m, v = _adamw_math(w, g, m, v, np.float32(_rescale_value(rescale_grad)), lr, eta,
                            beta1, beta2, epsilon, wd, clip_gradient, ct)
    m, v, w32 = _store([m, v, out], [np.float32] * 3)
    return (w32.astype(weight.dtype), m, v, w32)


# -- lamb (2.13) -------------------------------------------------------------------------
def lamb_update_phase1(weight, grad, mean, var, *, beta1=0.9, beta2=0.999, epsilon=1e-6, t,
                       bias_correction=True, wd, rescale_grad=1.0, clip_gradient=-1.0):
    """Returns ``(g, mean, var)``: g is the update direction (dtype of the weight)."""
    storage = _same_dtype(weight, grad, mean, var)
    ct = compute_dtype(storage)
    w, gd, m, v = _to(ct, weight, grad, mean, var)
    b1, b2, eps, wd_, rg_, clip_ = _scalars(ct, beta1, beta2, epsilon, wd, rescale_grad,
                                            clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        gr = gd * rg_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        m = b1 * m + (one - b1) * gr
        v = b2 * v + (one - b2) * gr * gr
        if bias_correction:
            b1t = ct(b1 ** int(t))
            b2t = ct(b2 ** int(t))
            g = (m / (one - b1t)) / (np.sqrt(v / (one - b2t)) + eps) + wd_ * w
        else:
            g = m / (np.sqrt(v) + eps) + wd_ * w
    return _store([g, m, v], [storage] * 3)


def lamb_update_phase2(weight, g, r1, r2, lr, lower_bound=-1.0, upper_bound=-1.0):
    """``w - lr' * g``; a bound applies when it is >= 0 (MXNet's kernel, 2.13: 7.1 covers
    clip_gradient, clip_weights and clip_grad only); r1' or r2 == 0: lr unscaled."""
    storage = _same_dtype(weight, g, r1, r2)
    ct = compute_dtype(storage)
    w, gg = _to(ct, weight, g)
    r1_ = ct(np.asarray(r1).reshape(-1)[0])
    r2_ = ct(np.asarray(r2).reshape(-1)[0])
    lr_, lb, ub = _scalars(ct, lr, lower_bound, upper_bound)
    with np.errstate(all="ignore"):
        if lower_bound >= 0:
            r1_ = max(r1_, lb)
        if upper_bound >= 0:
            r1_ = min(r1_, ub)
        if r1_ == 0 or r2_ == 0:
            lr_eff = lr_
        else:
            lr_eff = (lr_ * r1_) / r2_
        out = w - lr_eff * gg
    return _store([out], [storage])


# -- group_adagrad_update (2.14 GroupAdagradDnsRspKernel; lazy) --------------------------
def group_adagrad_update(weight, grad, history, lr, rescale_grad=1.0, clip_gradient=-1.0,
                         epsilon=1e-5, rows=None):
    """history: one value per row, shape (N,) or (N, 1); the result keeps its shape."""
    storage = _same_dtype(weight, grad, history)
    ct = compute_dtype(storage)
    n_rows = weight.shape[0]
    assert history.shape in ((n_rows,), (n_rows, 1)), "reference: history is one value per row"
    w, g = _to(ct, weight, grad)
    h = np.array(history, dtype=ct).reshape(n_rows)
    lr_, rg_, clip_, eps = _scalars(ct, lr, rescale_grad, clip_gradient, epsilon)
    row_length = int(np.prod(weight.shape[1:], dtype=np.int64))
    with np.errstate(all="ignore"):
        gr = g * rg_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        gr2 = gr.reshape(n_rows, row_length)
        h = h + (gr2 * gr2).sum(axis=1, dtype=ct) / ct(row_length)
        hb = h.reshape((n_rows,) + (1,) * (weight.ndim - 1))
        out = w - (lr_ * gr) / np.sqrt(hb + eps)
    return _store([out, h.reshape(history.shape)], [storage] * 2, [weight, history], rows)
