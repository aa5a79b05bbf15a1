"""Independent NumPy reference for every optimizer update in specs/.

Written by hand from /work/shared/reference/mxnet-optimizers.md: the MXNet 1.9.1 CPU kernels
in their statement and operand order (sections 2.1-2.15), with the opgen deviations of
section 7:

* clipping (clip_gradient, clip_weights, clip_grad) happens only when the bound is > 0
  (7.1); lamb's lower/upper bounds apply when they are >= 0, as in MXNet (2.13);
* float16 storage: compute in float32, round once when storing (7.2);
* float32: compute in float32, every scalar parameter rounded to float32, except that a
  value computed from parameters alone (``1 - beta1``, ``lr * wd``, ``1 - beta1 ** t``) is
  computed in double and rounded once (opgen's per-call rule; MXNet computes it in float32
  from rounded parameters): see :func:`_per_call`;
* float64: compute in double with the parameters at double precision (7.3);
* nag_mom_update: the new momentum always uses the OLD weight (7.5);
* adamw_update never writes its grad input (7.6).

Optimizer states in their own precision (an opgen extension, :func:`_call_dtypes`): the
gradient has the weight's dtype W; the states the spec does not fix to a dtype share one
dtype S, either W or, for (W, S), one of (float16, float32), (bfloat16, float32) and
(float32, bfloat16). The math runs in the widest compute dtype of W and S (float32 for each
mixed pair), and each result is rounded once into its own dtype: the new weight (or
``out``) into W, every state into S. Scalar inputs (lamb's r1 and r2, adamw's
rescale_grad) are not states.

Multi-precision (mp_*, multi_mp_*) ops compute in float32 from ``weight32`` (sections 2.4,
2.12, 2.15) and never read the low-precision weight; ``out`` is ``weight32``'s new value cast
to the weight's dtype. (For a float64 weight an implementation may compute in double; such
arrays are compared with a float32-level tolerance, see :func:`tolerance`.)

The multi_* ops (2.15) take MXNet's flat list of (weight, grad, states...) groups; their
reference here is the update of ONE group, with that group's ``lr`` and ``wd``
(``lrs[i]``, ``wds[i]``): MultiSGDKernel, which is the momentum form even without momentum,
``w + (mu*mom - (lr*wd)*w - lr*clip(rg*g))``, and so rounds differently from sgd_update.

Nothing here imports ``opgen`` or ``generated``.

Every function is pure: it returns a tuple ``(new_weight_or_out, *new_states)`` of fresh
arrays (states in the order they appear in the op's signature, each in its storage dtype:
its fixed one, or the call's state dtype) and never writes its inputs. ``grad`` is always a
dense array. ``rows`` (where an op has a lazy row-sparse update) selects it: ``None`` means
the dense update over every element; an index array (or a boolean mask over dimension 0)
means only those rows change and every other row of the weight and of the states is
returned bit-identical. The "standard" row-sparse update is the dense update with a
gradient that is zero on missing rows; build that gradient with :func:`densify`.

The comparison tolerances of the suites (:data:`TOLERANCES`, :func:`tolerance`,
:func:`assert_close`) live here too: they say how close an implementation must be to this
reference.
"""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

__all__ = [
    "adafactor_update",
    "torch_adafactor_update",
    "torch_adafactor_vector_update",
    "MIXED_STATE_DTYPES",
    "TOLERANCES",
    "adagrad_update",
    "adam_update",
    "adamw_update",
    "assert_close",
    "compute_dtype",
    "densify",
    "ftml_update",
    "ftrl_update",
    "group_adagrad_update",
    "lamb_update",
    "lars_update",
    "multi_adamw_update",
    "multi_lamb_update",
    "multi_mp_adamw_update",
    "preloaded_multi_mp_sgd_mom_update",
    "preloaded_multi_mp_sgd_update",
    "preloaded_multi_sgd_mom_update",
    "preloaded_multi_sgd_update",
    "novograd_update",
    "multi_mp_lamb_update",
    "mp_lamb_update_phase1",
    "mp_lamb_update_phase2",
    "lamb_update_phase1",
    "lamb_update_phase2",
    "mp_adamw_update",
    "mp_nag_mom_update",
    "mp_sgd_mom_update",
    "mp_sgd_update",
    "multi_mp_sgd_mom_update",
    "multi_mp_sgd_update",
    "multi_sgd_mom_update",
    "multi_sgd_update",
    "nag_mom_update",
    "rmsprop_update",
    "rmspropalex_update",
    "sgd_mom_update",
    "sgd_update",
    "signsgd_update",
    "signum_update",
    "tolerance",
]


# =====================================================================================
# Helpers
# =====================================================================================
def compute_dtype(dtype) -> type:
    """float64 for float64 storage; float32 for float16, bfloat16 and float32 storage."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64
    if dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)):
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


def _sign(x, ct):
    """``(x > 0) - (x < 0)``: sign(0) = sign(NaN) = 0 (mshadow_op::sign)."""
    return (x > 0).astype(ct) - (x < 0).astype(ct)


def _to(ct, *arrays):
    """Fresh copies of the tensors in the compute dtype."""
    return [np.array(a, dtype=ct, copy=True) for a in arrays]


def _scalars(ct, *params):
    """The scalar parameters rounded to the compute dtype."""
    return [ct(p) for p in params]


def _per_call(ct, value):
    """A value of parameters alone, as opgen computes it once per call: in double (``value``
    is computed from float64 parameters), rounded once to the compute dtype."""
    return ct(value)


def _d(*params):
    """Parameters as float64, for :func:`_per_call` values (no Python float errors: lr=0)."""
    return [np.float64(p) for p in params]


def _keep_rows(original, new, rows):
    """``new`` on ``rows`` (indices or a boolean mask), ``original`` (bit-identical) elsewhere."""
    if rows is None:
        return new
    keep = np.array(original, copy=True)
    if keep.ndim == 0:
        raise ValueError("reference: row-sparse update needs at least one dimension")
    sel = np.asarray(rows)
    if sel.dtype == bool:
        keep[sel] = new[sel]
    elif sel.size:
        idx = sel.astype(np.int64)
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


#: the (weight, state) dtype pairs a call may have besides states of the weight's own dtype
MIXED_STATE_DTYPES = frozenset({
    (np.dtype(np.float16), np.dtype(np.float32)),
    (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)),
    (np.dtype(np.float32), np.dtype(ml_dtypes.bfloat16)),
})


def _call_dtypes(weight, grad, *states):
    """``(ct, weight_dtype, state_dtype)`` of a single-precision op's call, by the rule:

    * the gradient has the weight's dtype W;
    * the states (those the spec does not fix to a dtype: every state of a single-precision
      op) share one dtype S, the call's state dtype; S == W for any supported W, or (W, S)
      is one of :data:`MIXED_STATE_DTYPES`: (float16, float32), (bfloat16, float32),
      (float32, bfloat16). Anything else raises TypeError;
    * the math runs in ``ct``, the widest compute dtype of W and S (:func:`compute_dtype`:
      float32 for every mixed pair);
    * each result is rounded once into its own dtype: the new weight (or ``out``) into W,
      each state into S.

    With no states, S is W. Scalar inputs (lamb's r1 and r2, adamw's rescale_grad) are not
    states and are not passed here.
    """
    w_dt = np.dtype(weight.dtype)
    if np.dtype(grad.dtype) != w_dt:
        raise TypeError(f"reference: grad is {grad.dtype}, the weight {w_dt}: they share one dtype")
    s_dt = np.dtype(states[0].dtype) if states else w_dt
    for s in states:
        if np.dtype(s.dtype) != s_dt:
            raise TypeError(f"reference: states of one call share one dtype ({s.dtype} != {s_dt})")
    if s_dt != w_dt and (w_dt, s_dt) not in MIXED_STATE_DTYPES:
        raise TypeError(f"reference: {s_dt} states beside a {w_dt} weight are not supported")
    ct = np.promote_types(compute_dtype(w_dt), compute_dtype(s_dt)).type
    return ct, w_dt, s_dt


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


# =====================================================================================
# Comparison tolerances
# =====================================================================================
#: (rtol, atol) per storage dtype. float32: a few ulps; float16: about one half ulp;
#: float64: the reference follows the same operand order in double.
TOLERANCES = {
    np.dtype(np.float16): (1e-3, 1e-6),
    np.dtype(ml_dtypes.bfloat16): (8e-3, 1e-6),  # about one half ulp (2**-8)
    np.dtype(np.float32): (1e-6, 1e-7),
    np.dtype(np.float64): (1e-12, 1e-15),
}


def tolerance(weight_dtype, array_dtype=None, *, mixed_precision: bool = False):
    """(rtol, atol) for comparing an array stored as ``array_dtype`` (default: the weight's).

    The per-dtype :data:`TOLERANCES`. Exception: a multi-precision op with a float64 weight
    may compute in float64 or in float32 (the brief allows both), so all its arrays get a
    float32-level tolerance (1e-5, 1e-6).
    """
    weight_dtype = np.dtype(weight_dtype)
    array_dtype = weight_dtype if array_dtype is None else np.dtype(array_dtype)
    if mixed_precision and weight_dtype == np.float64:
        return (1e-5, 1e-6)
    return TOLERANCES[array_dtype]


def assert_close(actual, expected, what: str = "", *, weight_dtype=None,
                 mixed_precision: bool = False) -> None:
    """Same dtype and shape, values within the tolerance, NaN where expected.

    The tolerance is that of the expected array's dtype; for a multi-precision op pass
    ``mixed_precision=True`` and the call's ``weight_dtype`` (see :func:`tolerance`).
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if weight_dtype is None:
        weight_dtype = expected.dtype
    rtol, atol = tolerance(weight_dtype, expected.dtype, mixed_precision=mixed_precision)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    # numpy.testing.assert_allclose's test (equal_nan: NaN where NaN; infinities equal), done
    # directly because the suites call this some 100,000 times; assert_allclose reports.
    with np.errstate(invalid="ignore"):
        ok = (np.abs(a - e) <= atol + rtol * np.abs(e)) | (a == e) | (np.isnan(a) & np.isnan(e))
    if not ok.all():
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)
        raise AssertionError(f"{what}: not within rtol={rtol}, atol={atol}")


# =====================================================================================
# The ops, in the order of the reference doc's section 2
# =====================================================================================
# -- sgd_update (2.1, SGDKernel) --------------------------------------------------------
def sgd_update(weight, grad, lr, wd=0.0, rescale_grad=1.0, clip_gradient=-1.0, rows=None):
    ct, w_dt, _ = _call_dtypes(weight, grad)  # no states
    w, g = _to(ct, weight, grad)
    lr_, wd_, rg_, clip_ = _scalars(ct, lr, wd, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        lr_d, wd_d, rg_d = _d(lr, wd, rescale_grad)
        decay, lr_rg = _per_call(ct, 1 - lr_d * wd_d), _per_call(ct, lr_d * rg_d)
        if clip_gradient > 0:
            out = decay * w - lr_ * _clip(rg_ * g, clip_)
        else:
            out = decay * w - lr_rg * g
    return _store([out], [w_dt], [weight], rows)


# -- sgd_mom_update (2.2, SGDMomKernel) -------------------------------------------------
def sgd_mom_update(weight, grad, mom, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0, rows=None):
    """``mom`` stores the negative velocity: after one step from 0 it is ``-lr*g``."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mom)
    w, g, m = _to(ct, weight, grad, mom)
    lr_, mu_, wd_, rg_, clip_ = _scalars(ct, lr, momentum, wd, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        lr_d, wd_d, rg_d = _d(lr, wd, rescale_grad)
        lr_wd, lr_rg = _per_call(ct, lr_d * wd_d), _per_call(ct, lr_d * rg_d)
        if clip_gradient > 0:
            m = mu_ * m - lr_wd * w - lr_ * _clip(rg_ * g, clip_)
        else:
            m = mu_ * m - lr_wd * w - lr_rg * g
        out = w + m
    return _store([out, m], [w_dt, s_dt], [weight, mom], rows)


# -- nag_mom_update (2.3 NAGMomKernel, deviation 7.5) ------------------------------------
def nag_mom_update(weight, grad, mom, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0):
    """The new momentum's wd term uses the old weight, whatever ``out`` is (7.5)."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mom)
    w, g, m = _to(ct, weight, grad, mom)
    lr_, mu_, wd_, rg_, clip_ = _scalars(ct, lr, momentum, wd, rescale_grad, clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        m = mu_ * m
        if clip_gradient > 0:
            gg = _clip(rg_ * g, clip_) + wd_ * w
        else:
            gg = rg_ * g + wd_ * w
        out = w - m + _per_call(ct, _d(momentum)[0] + 1) * (m - lr_ * gg)
        m = m - lr_ * gg  # old weight, whatever out is (7.5)
    return _store([out, m], [w_dt, s_dt])


# -- multi-precision sgd family (2.4): fp32 math from weight32, weight never read ---------
def mp_sgd_update(weight, grad, weight32, lr, wd=0.0, rescale_grad=1.0, clip_gradient=-1.0,
                  rows=None):
    """MP_SGDKernel. The op accepts ``lazy_update`` and ignores it (2.4): a row-sparse gradient
    gets the standard update. ``rows`` gives the lazy reading, which the op does not have."""
    _check_mp(weight, grad, weight32)
    ct = np.float32
    g, w = _to(ct, grad, weight32)
    lr_, wd_, rg_, clip_ = _scalars(ct, lr, wd, rescale_grad, clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        lr_d, wd_d, rg_d = _d(lr, wd, rescale_grad)
        decay, lr_rg = _per_call(ct, 1 - lr_d * wd_d), _per_call(ct, lr_d * rg_d)
        if clip_gradient > 0:
            w = decay * w - lr_ * _clip(rg_ * g, clip_)
        else:
            w = decay * w - lr_rg * g
    (w32,) = _store([w], [np.float32], [weight32], rows)
    return (w32.astype(weight.dtype), w32)


def mp_sgd_mom_update(weight, grad, mom, weight32, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                      clip_gradient=-1.0, rows=None):
    """MP_SGDMomKernel (``lazy_update`` ignored, as for mp_sgd_update)."""
    _check_mp(weight, grad, mom, weight32)
    ct = np.float32
    g, m, w = _to(ct, grad, mom, weight32)
    lr_, mu_, wd_, rg_, clip_ = _scalars(ct, lr, momentum, wd, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        lr_d, wd_d, rg_d = _d(lr, wd, rescale_grad)
        lr_wd, lr_rg = _per_call(ct, lr_d * wd_d), _per_call(ct, lr_d * rg_d)
        if clip_gradient > 0:
            m = mu_ * m - lr_wd * w - lr_ * _clip(rg_ * g, clip_)
        else:
            m = mu_ * m - lr_wd * w - lr_rg * g
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
        w = w - m + _per_call(ct, _d(momentum)[0] + 1) * (m - lr_ * (sg + wd_ * w))
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
        w = w - m + _per_call(ct, _d(momentum)[0] + 1) * (m - lr_ * gg)
        m = m - lr_ * gg
    m, w32 = _store([m, w], [np.float32] * 2)
    return (w32.astype(weight.dtype), m, w32)


# -- adam_update (2.5, AdamUpdateKernel) ------------------------------------------------
def adam_update(weight, grad, mean, var, lr, beta1=0.9, beta2=0.999, epsilon=1e-8, wd=0.0,
                rescale_grad=1.0, clip_gradient=-1.0, rows=None):
    """No bias correction; wd inside the clip and the moments; epsilon outside the sqrt."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mean, var)
    w, g, m, v = _to(ct, weight, grad, mean, var)
    lr_, b1_, b2_, eps_, wd_, rg_, clip_ = _scalars(ct, lr, beta1, beta2, epsilon, wd,
                                                    rescale_grad, clip_gradient)
    one = ct(1)
    with np.errstate(all="ignore"):
        gr = g * rg_ + w * wd_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        m = b1_ * m + _per_call(ct, 1 - _d(beta1)[0]) * gr
        v = b2_ * v + (_per_call(ct, 1 - _d(beta2)[0]) * gr) * gr
        out = w - (lr_ * m) / (np.sqrt(v) + eps_)
    return _store([out, m, v], [w_dt, s_dt, s_dt], [weight, mean, var], rows)


# -- rmsprop_update (2.6, RMSPropUpdateKernel) ------------------------------------------
def rmsprop_update(weight, grad, n, lr, gamma1=0.95, epsilon=1e-8, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0, clip_weights=-1.0, rows=None):
    """Epsilon inside the sqrt; the new weight is clipped to +-clip_weights when that is > 0."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, n)
    w, g, s = _to(ct, weight, grad, n)
    lr_, g1_, eps_, wd_, rg_, clip_, clipw_ = _scalars(ct, lr, gamma1, epsilon, wd, rescale_grad,
                                                       clip_gradient, clip_weights)
    one = ct(1)
    with np.errstate(all="ignore"):
        gr = rg_ * g + wd_ * w
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        s = _per_call(ct, 1 - _d(gamma1)[0]) * (gr * gr) + g1_ * s
        out = w - lr_ * (gr / np.sqrt(s + eps_))
        if clip_weights > 0:
            out = _clip(out, clipw_)
    return _store([out, s], [w_dt, s_dt], [weight, n], rows)


# -- rmspropalex_update (2.7 RMSPropAlexUpdateKernel) -----------------------------------
def rmspropalex_update(weight, grad, n, g, delta, lr, gamma1=0.95, gamma2=0.9, epsilon=1e-8,
                       wd=0.0, rescale_grad=1.0, clip_gradient=-1.0, clip_weights=-1.0):
    ct, w_dt, s_dt = _call_dtypes(weight, grad, n, g, delta)
    w, gd, n_, g_, d_ = _to(ct, weight, grad, n, g, delta)
    lr_, g1, g2, eps, wd_, rg_, clip_, clipw = _scalars(
        ct, lr, gamma1, gamma2, epsilon, wd, rescale_grad, clip_gradient, clip_weights)
    one = ct(1)
    with np.errstate(all="ignore"):
        gr = rg_ * gd + wd_ * w
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        n_ = (_per_call(ct, 1 - _d(gamma1)[0]) * gr) * gr + g1 * n_
        g_ = _per_call(ct, 1 - _d(gamma1)[0]) * gr + g1 * g_
        d_ = g2 * d_ - (lr_ * gr) / np.sqrt(n_ - g_ * g_ + eps)
        out = w + d_
        if clip_weights > 0:
            out = _clip(out, clipw)
    return _store([out, n_, g_, d_], [w_dt, s_dt, s_dt, s_dt])


# -- ftrl_update (2.8 FtrlUpdateKernel) --------------------------------------------------
def ftrl_update(weight, grad, z, n, lr, lamda1=0.01, beta=1.0, wd=0.0, rescale_grad=1.0,
                clip_gradient=-1.0):
    """z uses the OLD weight and 1/lr; the weight is recomputed from z and n."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, z, n)
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
    return _store([out, z_, n_], [w_dt, s_dt, s_dt])


# -- ftml_update (2.9 FTMLKernel) --------------------------------------------------------
def ftml_update(weight, grad, d, v, z, lr, *, beta1=0.6, beta2=0.999, epsilon=1e-8, t,
                wd=0.0, rescale_grad=1.0, clip_grad=-1.0):
    """``(1-beta1)*g`` in z (not ``(1-beta1^t)``); the clip parameter is ``clip_grad``."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, d, v, z)
    w, g, d_, v_, z_ = _to(ct, weight, grad, d, v, z)
    lr_, b1, b2, eps, wd_, rg_, clip_ = _scalars(ct, lr, beta1, beta2, epsilon, wd,
                                                 rescale_grad, clip_grad)
    with np.errstate(all="ignore"):
        lr_d, b1_d, b2_d = _d(lr, beta1, beta2)
        gr = rg_ * g + wd_ * w
        if clip_grad > 0:
            gr = _clip(gr, clip_)
        v_ = b2 * v_ + _per_call(ct, 1 - b2_d) * (gr * gr)
        d_t = _per_call(ct, (1 - b1_d ** int(t)) / lr_d) * (np.sqrt(v_ / _per_call(ct, 1 - b2_d ** int(t))) + eps)
        z_ = b1 * z_ + _per_call(ct, 1 - b1_d) * gr - (d_t - b1 * d_) * w
        d_ = d_t
        out = -z_ / d_t
    return _store([out, d_, v_, z_], [w_dt, s_dt, s_dt, s_dt])


# -- signsgd_update (2.10 SignSGDKernel): rescale_grad and clip_gradient ignored -----------
def signsgd_update(weight, grad, lr, wd=0.0, rescale_grad=1.0, clip_gradient=-1.0):
    ct, w_dt, _ = _call_dtypes(weight, grad)  # no states
    w, g = _to(ct, weight, grad)
    lr_, wd_ = _scalars(ct, lr, wd)
    one = ct(1)
    with np.errstate(all="ignore"):
        out = _per_call(ct, 1 - _d(lr)[0] * _d(wd)[0]) * w - lr_ * _sign(g, ct)
    return _store([out], [w_dt])


# -- signum_update (2.10 SignumKernel) ---------------------------------------------------
def signum_update(weight, grad, mom, lr, momentum=0.0, wd=0.0, rescale_grad=1.0,
                  clip_gradient=-1.0, wd_lh=0.0):
    """wd inside the momentum, scaled by (1-mu); wd_lh a decoupled ``(1 - lr*wd_lh)*w``."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mom)
    w, g, m = _to(ct, weight, grad, mom)
    lr_, mu_, wd_, rg_, clip_, wdlh = _scalars(ct, lr, momentum, wd, rescale_grad,
                                               clip_gradient, wd_lh)
    lr_d, mu_d, wd_d, rg_d, wdlh_d = _d(lr, momentum, wd, rescale_grad, wd_lh)
    with np.errstate(all="ignore"):
        if clip_gradient > 0:
            m = mu_ * m - _per_call(ct, (1 - mu_d) * wd_d) * w - _per_call(ct, 1 - mu_d) * _clip(rg_ * g, clip_)
        else:
            m = mu_ * m - _per_call(ct, (1 - mu_d) * wd_d) * w - _per_call(ct, (1 - mu_d) * rg_d) * g
        out = _per_call(ct, 1 - lr_d * wdlh_d) * w + lr_ * _sign(m, ct)
    return _store([out, m], [w_dt, s_dt])


# -- adagrad_update (2.11 AdagradDnsRspDnsKernel; lazy, wd must be 0) --------------------
def adagrad_update(weight, grad, history, lr, epsilon=1e-7, wd=0.0, rescale_grad=1.0,
                   clip_gradient=-1.0, rows=None):
    """Sparse only in MXNet (always lazy); epsilon inside the sqrt."""
    assert wd == 0.0, "reference: adagrad has no weight decay"
    ct, w_dt, s_dt = _call_dtypes(weight, grad, history)
    w, g, h = _to(ct, weight, grad, history)
    lr_, eps, rg_, clip_ = _scalars(ct, lr, epsilon, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        gr = g * rg_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        h = h + gr * gr
        out = w - (gr / np.sqrt(h + eps)) * lr_
    return _store([out, h], [w_dt, s_dt], [weight, history], rows)


# -- adamw_update, mp_adamw_update (2.12 AdamWUpdate::Forward, deviation 7.6) ------------
def _adamw_math(w, g, m, v, rg, lr, eta, beta1, beta2, epsilon, wd, clip_gradient, ct):
    lr_, eta_, b1, b2, eps, wd_, clip_ = _scalars(ct, lr, eta, beta1, beta2, epsilon, wd,
                                                  clip_gradient)
    rg_ = ct(rg)
    one = ct(1)
    with np.errstate(all="ignore"):
        sg = rg_ * g
        if clip_gradient > 0:
            sg = _clip(sg, clip_)
        m = b1 * m + _per_call(ct, 1 - _d(beta1)[0]) * sg
        v = b2 * v + _per_call(ct, 1 - _d(beta2)[0]) * (sg * sg)
        out = w - eta_ * ((lr_ * m) / (np.sqrt(v) + eps) + wd_ * w)
    return out, m, v


def adamw_update(weight, grad, mean, var, rescale_grad, lr, eta, beta1=0.9, beta2=0.999,
                 epsilon=1e-8, wd=0.0, clip_gradient=-1.0):
    """Decoupled wd scaled by eta (not lr); rescale_grad 0, NaN or +-Inf skips the update."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mean, var)
    if _adamw_skips(rescale_grad):
        return (weight.copy(), mean.copy(), var.copy())
    w, g, m, v = _to(ct, weight, grad, mean, var)
    out, m, v = _adamw_math(w, g, m, v, _rescale_value(rescale_grad), lr, eta, beta1, beta2,
                            epsilon, wd, clip_gradient, ct)
    return _store([out, m, v], [w_dt, s_dt, s_dt])


def mp_adamw_update(weight, grad, mean, var, weight32, rescale_grad, lr, eta, beta1=0.9,
                    beta2=0.999, epsilon=1e-8, wd=0.0, clip_gradient=-1.0):
    """MPAdamWKernel: the adamw math in fp32 from weight32 (the weight is never read)."""
    _check_mp(weight, grad, mean, var, weight32)
    if _adamw_skips(rescale_grad):
        return (weight.copy(), mean.copy(), var.copy(), weight32.copy())
    ct = np.float32
    g, m, v, w = _to(ct, grad, mean, var, weight32)
    out, m, v = _adamw_math(w, g, m, v, np.float32(_rescale_value(rescale_grad)), lr, eta,
                            beta1, beta2, epsilon, wd, clip_gradient, ct)
    m, v, w32 = _store([m, v, out], [np.float32] * 3)
    return (w32.astype(weight.dtype), m, v, w32)


def _multi_adamw_math(w, g, m, v, rg, lr, eta, beta1, beta2, epsilon, wd, clip_gradient, ct):
    """MultiMPAdamWKernel: the moving averages as ``beta * (m - g) + g`` (2.12)."""
    lr_, eta_, b1, b2, eps, wd_, clip_ = _scalars(ct, lr, eta, beta1, beta2, epsilon, wd, clip_gradient)
    with np.errstate(all="ignore"):
        sg = ct(rg) * g
        if clip_gradient > 0:
            sg = _clip(sg, clip_)
        m = b1 * (m - sg) + sg
        v = b2 * (v - sg * sg) + sg * sg
        out = w - eta_ * ((lr_ * m) / (np.sqrt(v) + eps) + wd_ * w)
    return out, m, v


def multi_adamw_update(weight, grad, mean, var, lr, eta, wd, beta1=0.9, beta2=0.999, epsilon=1e-8,
                       clip_gradient=-1.0, rescale_grad=1.0):
    """One group of multi_adamw_update; rescale_grad 0, NaN or +-Inf skips the call."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mean, var)
    if _adamw_skips(rescale_grad):
        return (weight.copy(), mean.copy(), var.copy())
    w, g, m, v = _to(ct, weight, grad, mean, var)
    out, m, v = _multi_adamw_math(w, g, m, v, _rescale_value(rescale_grad), lr, eta, beta1, beta2, epsilon, wd,
                                  clip_gradient, ct)
    return _store([out, m, v], [w_dt, s_dt, s_dt])


def multi_mp_adamw_update(weight, grad, mean, var, weight32, lr, eta, wd, beta1=0.9, beta2=0.999,
                          epsilon=1e-8, clip_gradient=-1.0, rescale_grad=1.0):
    """One group of multi_mp_adamw_update: float32 from weight32 (the weight is never read)."""
    _check_mp(weight, grad, mean, var, weight32)
    if _adamw_skips(rescale_grad):
        return (weight.copy(), mean.copy(), var.copy(), weight32.copy())
    ct = np.float32
    g, m, v, w = _to(ct, grad, mean, var, weight32)
    out, m, v = _multi_adamw_math(w, g, m, v, np.float32(_rescale_value(rescale_grad)), lr, eta, beta1, beta2,
                                  epsilon, wd, clip_gradient, ct)
    m, v, w32 = _store([m, v, out], [np.float32] * 3)
    return (w32.astype(weight.dtype), m, v, w32)


# -- lamb (2.13) -------------------------------------------------------------------------
def lamb_update_phase1(weight, grad, mean, var, *, beta1=0.9, beta2=0.999, epsilon=1e-6, t,
                       bias_correction=True, wd, rescale_grad=1.0, clip_gradient=-1.0):
    """Returns ``(g, mean, var)``: g is the update direction (the weight's dtype; mean and
    var in the state dtype)."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mean, var)
    w, gd, m, v = _to(ct, weight, grad, mean, var)
    g, m, v = _lamb_direction(ct, w, gd, m, v, beta1, beta2, epsilon, t, bias_correction, wd, rescale_grad,
                              clip_gradient)
    return _store([g, m, v], [w_dt, s_dt, s_dt])


def _lamb_direction(ct, w, gd, m, v, beta1, beta2, epsilon, t, bias_correction, wd, rescale_grad, clip_gradient):
    """Phase 1's math in ``ct``: the new moments and the direction ``g`` (2.13)."""
    b1, b2, eps, wd_, rg_, clip_ = _scalars(ct, beta1, beta2, epsilon, wd, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        gr = gd * rg_
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        b1_d, b2_d = _d(beta1, beta2)
        m = b1 * m + _per_call(ct, 1 - b1_d) * gr
        v = b2 * v + _per_call(ct, 1 - b2_d) * gr * gr
        if bias_correction:
            g = (m / _per_call(ct, 1 - b1_d ** int(t))) / (np.sqrt(v / _per_call(ct, 1 - b2_d ** int(t))) + eps) \
                + wd_ * w
        else:
            g = m / (np.sqrt(v) + eps) + wd_ * w
    return g, m, v


def mp_lamb_update_phase1(weight, grad, mean, var, weight32, *, beta1=0.9, beta2=0.999, epsilon=1e-6, t,
                          bias_correction=True, wd, rescale_grad=1.0, clip_gradient=-1.0):
    """MPLambUpdatePhaseOneKernel, in float32: phase 1 with the weight decay on weight32 (the
    weight is not read). Returns ``(g, mean, var)``, all float32 (weight32 is only read)."""
    for a in (mean, var, weight32):
        assert a.dtype == np.float32, "reference: mp phase 1's mean, var and weight32 are float32"
    ct = np.float32
    gd, m, v, w = _to(ct, grad, mean, var, weight32)
    g, m, v = _lamb_direction(ct, w, gd, m, v, beta1, beta2, epsilon, t, bias_correction, wd, rescale_grad,
                              clip_gradient)
    return _store([g, m, v], [np.float32] * 3)


def _norm64(x) -> np.float64:
    """The L2 norm of ``x``'s values, accumulated in float64 (the order of the sum is NumPy's)."""
    x64 = np.asarray(x, dtype=np.float64).reshape(-1)
    return np.sqrt(np.dot(x64, x64))


def lamb_update(weight, grad, mean, var, lr, *, beta1=0.9, beta2=0.999, epsilon=1e-6, t,
                bias_correction=True, wd, rescale_grad=1.0, clip_gradient=-1.0,
                lower_bound=-1.0, upper_bound=-1.0):
    """LAMB in one call, as the paper's Algorithm 2 with MXNet's parameters: phase 1's
    direction u (in the compute dtype, not rounded to storage), r1 = ||w|| bounded,
    r2 = ||u||, both in float64, then ``w - lr * r1 / r2 * u``; r1 or r2 == 0: lr unscaled."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mean, var)
    w, gd, m, v = _to(ct, weight, grad, mean, var)
    u, m, v = _lamb_direction(ct, w, gd, m, v, beta1, beta2, epsilon, t, bias_correction, wd, rescale_grad,
                              clip_gradient)
    with np.errstate(all="ignore"):
        r1, r2 = _norm64(w), _norm64(u)
        lr_, lb, ub = _d(lr, lower_bound, upper_bound)
        if lower_bound >= 0:
            r1 = max(r1, lb)
        if upper_bound >= 0:
            r1 = min(r1, ub)
        step = lr_ if (r1 == 0 or r2 == 0) else (lr_ * r1) / r2
        out = w - _per_call(ct, step) * u
    return _store([out, m, v], [w_dt, s_dt, s_dt])


def lars_update(weight, grad, mom, lr, momentum=0.0, lars_eta=0.001, epsilon=0.0, wd=0.0,
                rescale_grad=1.0, clip_gradient=-1.0):
    """LARS (You et al. 2017, Algorithm 1) as MXNet's mx.optimizer.LARS steps one layer: the
    layer's rate ``lr * lars_eta * ||w|| / (||g|| + wd * ||w|| + epsilon)`` from the norms of
    the weight and of the rescaled gradient before clipping (in float64; ``lr`` when either
    norm is 0), then sgd_mom_update's ``mom = momentum * mom - rate * wd * w - rate * g``."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mom)
    w, gd, m = _to(ct, weight, grad, mom)
    mu_, rg_, clip_ = _scalars(ct, momentum, rescale_grad, clip_gradient)
    with np.errstate(all="ignore"):
        gr = rg_ * gd
        w_norm, g_norm = _norm64(w), _norm64(gr)
        if clip_gradient > 0:
            gr = _clip(gr, clip_)
        lr_d, eta_d, eps_d, wd_d = _d(lr, lars_eta, epsilon, wd)
        rate = lr_d * eta_d * w_norm / (g_norm + wd_d * w_norm + eps_d) if w_norm > 0 and g_norm > 0 else lr_d
        m = mu_ * m - _per_call(ct, rate * wd_d) * w - _per_call(ct, rate) * gr
        out = w + m
    return _store([out, m], [w_dt, s_dt])


def lamb_update_phase2(weight, g, r1, r2, lr, lower_bound=-1.0, upper_bound=-1.0):
    """``w - lr' * g``; a bound applies when it is >= 0 (MXNet's kernel, 2.13: 7.1 covers
    clip_gradient, clip_weights and clip_grad only); r1' or r2 == 0: lr unscaled."""
    ct, w_dt, _ = _call_dtypes(weight, g)  # no states
    assert r1.dtype == w_dt and r2.dtype == w_dt, "reference: r1 and r2 have the weight's dtype"
    w, gg = _to(ct, weight, g)
    # r1, r2, lr and the bounds enter only the per-call step: computed in double, rounded once
    r1_, r2_ = _d(np.asarray(r1).reshape(-1)[0], np.asarray(r2).reshape(-1)[0])
    lr_, lb, ub = _d(lr, lower_bound, upper_bound)
    with np.errstate(all="ignore"):
        if lower_bound >= 0:
            r1_ = max(r1_, lb)
        if upper_bound >= 0:
            r1_ = min(r1_, ub)
        if r1_ == 0 or r2_ == 0:
            lr_eff = _per_call(ct, lr_)
        else:
            lr_eff = _per_call(ct, (lr_ * r1_) / r2_)
        out = w - lr_eff * gg
    return _store([out], [w_dt])


def mp_lamb_update_phase2(weight, g, r1, r2, weight32, lr, lower_bound=-1.0, upper_bound=-1.0):
    """MPLambUpdatePhaseTwoKernel in float32: ``weight32 - lr' * g`` with lr' as in phase 2,
    into weight32 (opgen's deviation: MXNet never writes it) and, rounded, the weight."""
    for a in (g, weight32):
        assert a.dtype == np.float32, "reference: mp phase 2's g and weight32 are float32"
    ct = np.float32
    w, gg = _to(ct, weight32, g)
    r1_, r2_ = _d(np.asarray(r1).reshape(-1)[0], np.asarray(r2).reshape(-1)[0])
    lr_, lb, ub = _d(lr, lower_bound, upper_bound)
    with np.errstate(all="ignore"):
        if lower_bound >= 0:
            r1_ = max(r1_, lb)
        if upper_bound >= 0:
            r1_ = min(r1_, ub)
        step = _per_call(ct, lr_ if (r1_ == 0 or r2_ == 0) else (lr_ * r1_) / r2_)
        (w32,) = _store([w - step * gg], [np.float32])
    return (w32.astype(weight.dtype), w32)


# -- group_adagrad_update (2.14 GroupAdagradDnsRspKernel; lazy) --------------------------
def group_adagrad_update(weight, grad, history, lr, rescale_grad=1.0, clip_gradient=-1.0,
                         epsilon=1e-5, rows=None):
    """history: one value per row, shape (N,) or (N, 1); the result keeps its shape."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, history)
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
    return _store([out, h.reshape(history.shape)], [w_dt, s_dt], [weight, history], rows)


# -- multi-tensor ops (2.15 MultiSGDKernel): the update of one group ---------------------
def _multi_sgd_kernel(w, g, mom, lr, wd, rescale_grad, clip_gradient, momentum, ct):
    """``mom = mu*mom - (lr*wd)*w - lr*clip(rg*g)`` (no clip: ``(lr*rg)*g``); ``w = w + mom``;
    ``lr*wd`` and ``lr*rg`` computed once per call (:func:`_per_call`)."""
    lr_, wd_, rg_, clip_, mu_ = _scalars(ct, lr, wd, rescale_grad, clip_gradient, momentum)
    lr_d, wd_d, rg_d = _d(lr, wd, rescale_grad)
    with np.errstate(all="ignore"):
        if clip_gradient > 0:
            step = lr_ * _clip(rg_ * g, clip_)
        else:
            step = _per_call(ct, lr_d * rg_d) * g
        mom = mu_ * mom - _per_call(ct, lr_d * wd_d) * w - step
        w = w + mom
    return w, mom


def multi_sgd_update(weight, grad, lr, wd, rescale_grad=1.0, clip_gradient=-1.0):
    """One group of multi_sgd_update: ``w + (0*0 - (lr*wd)*w - (lr*rg)*g)`` (2.15, 5.5)."""
    ct, w_dt, _ = _call_dtypes(weight, grad)  # no states
    w, g = _to(ct, weight, grad)
    w, _ = _multi_sgd_kernel(w, g, np.zeros_like(w), lr, wd, rescale_grad, clip_gradient, 0.0, ct)
    return _store([w], [w_dt])


def multi_sgd_mom_update(weight, grad, mom, lr, wd, momentum=0.0, rescale_grad=1.0,
                         clip_gradient=-1.0):
    """One group of multi_sgd_mom_update."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mom)
    w, g, m = _to(ct, weight, grad, mom)
    w, m = _multi_sgd_kernel(w, g, m, lr, wd, rescale_grad, clip_gradient, momentum, ct)
    return _store([w, m], [w_dt, s_dt])


def novograd_update(weight, grad, mom, v, lr, *, beta1=0.95, beta2=0.98, epsilon=1e-8, wd=0.0, t,
                    grad_averaging=False):
    """NovoGrad (Ginsburg et al. 2019, Algorithm 1): v, one number per tensor, is the squared
    norm of the gradient (float64) at t = 1, then its moving average (in double, rounded once
    to the math type, then to v's dtype); m accumulates the normalized gradient plus the
    weight decay (scaled by 1 - beta1 with grad_averaging)."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, mom)
    assert v.shape in ((1,), ()) and v.dtype == np.float32, "reference: v is one float32 value"
    w, gd, m = _to(ct, weight, grad, mom)
    b1, wd_ = _scalars(ct, beta1, wd)
    with np.errstate(all="ignore"):
        g64 = np.asarray(gd, np.float64).reshape(-1)
        g2 = np.dot(g64, g64)
        b1_d, b2_d = _d(beta1, beta2)
        v_new = g2 if int(t) == 1 else b2_d * np.float64(np.asarray(v).reshape(-1)[0]) + (1 - b2_d) * g2
        v_ct = _per_call(ct, v_new)
        # sqrt(v) + epsilon reads per-call values only: computed in double, rounded once
        step = gd / _per_call(ct, np.sqrt(v_new) + np.float64(epsilon)) + wd_ * w
        m = b1 * m + (_per_call(ct, 1 - b1_d) * step if grad_averaging else step)
        out = w - ct(lr) * m
    out, m = _store([out, m], [w_dt, s_dt])
    return out, m, np.asarray(v_ct).astype(np.float32).reshape(np.shape(v))


def multi_lamb_update(weight, grad, mean, var, lr, *, beta1=0.9, beta2=0.999, epsilon=1e-6, wd,
                      rescale_grad=1.0, lower_bound=-1.0, upper_bound=-1.0, clip_gradient=-1.0,
                      bias_correction=True, t):
    """One group of multi_lamb_update: LAMB with the tensor's own norms (MultiLAMBKernelStep1,
    multi_sum_sq, MultiLAMBKernelStep2), as lamb_update."""
    return lamb_update(weight, grad, mean, var, lr, beta1=beta1, beta2=beta2, epsilon=epsilon, t=t,
                       bias_correction=bias_correction, wd=wd, rescale_grad=rescale_grad,
                       clip_gradient=clip_gradient, lower_bound=lower_bound, upper_bound=upper_bound)


def multi_mp_lamb_update(weight, grad, mean, var, weight32, lr, *, beta1=0.9, beta2=0.999, epsilon=1e-6,
                         wd, rescale_grad=1.0, lower_bound=-1.0, upper_bound=-1.0, clip_gradient=-1.0,
                         bias_correction=True, t):
    """One group of multi_mp_lamb_update: LAMB in float32 on weight32 (the weight is not read);
    the norms of weight32 and of the direction in float64."""
    _check_mp(weight, grad, mean, var, weight32)
    out, m, v = lamb_update(weight32, grad.astype(np.float32), mean, var, lr, beta1=beta1, beta2=beta2,
                            epsilon=epsilon, t=t, bias_correction=bias_correction, wd=wd,
                            rescale_grad=rescale_grad, clip_gradient=clip_gradient, lower_bound=lower_bound,
                            upper_bound=upper_bound)
    return (out.astype(weight.dtype), m, v, out)


def multi_mp_sgd_update(weight, grad, weight32, lr, wd, rescale_grad=1.0, clip_gradient=-1.0):
    """One group of multi_mp_sgd_update: fp32 math from weight32 (the weight is not read)."""
    _check_mp(weight, grad, weight32)
    ct = np.float32
    g, w = _to(ct, grad, weight32)
    w, _ = _multi_sgd_kernel(w, g, np.zeros_like(w), lr, wd, rescale_grad, clip_gradient, 0.0, ct)
    (w32,) = _store([w], [np.float32])
    return (w32.astype(weight.dtype), w32)


def multi_mp_sgd_mom_update(weight, grad, mom, weight32, lr, wd, momentum=0.0, rescale_grad=1.0,
                            clip_gradient=-1.0):
    """One group of multi_mp_sgd_mom_update: fp32 math from weight32 (the weight is not read)."""
    _check_mp(weight, grad, mom, weight32)
    ct = np.float32
    g, m, w = _to(ct, grad, mom, weight32)
    w, m = _multi_sgd_kernel(w, g, m, lr, wd, rescale_grad, clip_gradient, momentum, ct)
    m, w32 = _store([m, w], [np.float32] * 2)
    return (w32.astype(weight.dtype), m, w32)


# =====================================================================================
# torch.optim's semantics (torch 2.x, torch/optim/*.py, _single_tensor_*): the ops the
# generated torch.optim classes feed. The per-step host values (step_size, clr, ...) are
# parameters here; the classes' own tests compare against torch.optim itself.
# =====================================================================================
def _torch_grad(g, w, weight_decay, maximize, ct):
    """``grad = -grad if maximize``; ``grad = grad + weight_decay * param``."""
    g = -g if maximize else g
    return g + ct(weight_decay) * w


def _torch_adam(weight, grad, states, step_size, beta1, beta2, eps, bias_correction2_sqrt, weight_decay, decay,
                maximize, amsgrad, rows):
    ct, w_dt, s_dt = _call_dtypes(weight, grad, *states)
    w, g = _to(ct, weight, grad)
    m, v, *vmax = _to(ct, *states)
    with np.errstate(all="ignore"):
        g = _torch_grad(g, w, weight_decay, maximize, ct)
        m = m + _per_call(ct, 1 - _d(beta1)[0]) * (g - m)  # exp_avg.lerp_(grad, 1 - beta1)
        v = ct(beta2) * v + (_per_call(ct, 1 - _d(beta2)[0]) * g) * g
        denom_v = np.maximum(vmax[0], v) if amsgrad else v
        out = w * ct(decay) - (ct(step_size) * m) / (np.sqrt(denom_v) / ct(bias_correction2_sqrt) + ct(eps))
    results = [out, m, v] + ([denom_v] if amsgrad else [])
    return _store(results, [w_dt] + [s_dt] * len(states), [weight, *states], rows)


def torch_adam_update(param, grad, exp_avg, exp_avg_sq, step_size, beta1=0.9, beta2=0.999, eps=1e-8,
                      bias_correction2_sqrt=1.0, weight_decay=0.0, decay=1.0, maximize=False, rows=None):
    return _torch_adam(param, grad, [exp_avg, exp_avg_sq], step_size, beta1, beta2, eps, bias_correction2_sqrt,
                       weight_decay, decay, maximize, False, rows)


def torch_amsgrad_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, beta1=0.9, beta2=0.999,
                         eps=1e-8, bias_correction2_sqrt=1.0, weight_decay=0.0, decay=1.0, maximize=False,
                         rows=None):
    return _torch_adam(param, grad, [exp_avg, exp_avg_sq, max_exp_avg_sq], step_size, beta1, beta2, eps,
                       bias_correction2_sqrt, weight_decay, decay, maximize, True, rows)


def torch_sgd_update(param, grad, lr, weight_decay=0.0, maximize=False, rows=None):
    ct, w_dt, _ = _call_dtypes(param, grad)
    w, g = _to(ct, param, grad)
    with np.errstate(all="ignore"):
        out = w - ct(lr) * _torch_grad(g, w, weight_decay, maximize, ct)
    return _store([out], [w_dt], [param], rows)


def torch_sgd_momentum_update(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
                              nesterov=False, maximize=False, first=False, rows=None):
    ct, w_dt, s_dt = _call_dtypes(param, grad, momentum_buffer)
    w, g, buf = _to(ct, param, grad, momentum_buffer)
    with np.errstate(all="ignore"):
        d_p = _torch_grad(g, w, weight_decay, maximize, ct)
        buf = d_p.copy() if first else ct(momentum) * buf + _per_call(ct, 1 - _d(dampening)[0]) * d_p
        step = d_p + ct(momentum) * buf if nesterov else buf
        out = w - ct(lr) * step
    return _store([out, buf], [w_dt, s_dt], [param, momentum_buffer], rows)


def torch_adagrad_update(param, grad, state_sum, clr, eps=1e-10, weight_decay=0.0, maximize=False, rows=None):
    ct, w_dt, s_dt = _call_dtypes(param, grad, state_sum)
    w, g, s = _to(ct, param, grad, state_sum)
    with np.errstate(all="ignore"):
        g = _torch_grad(g, w, weight_decay, maximize, ct)
        s = s + g * g
        out = w - (ct(clr) * g) / (np.sqrt(s) + ct(eps))
    return _store([out, s], [w_dt, s_dt], [param, state_sum], rows)


def _torch_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum,
                   maximize, rows):
    states = [s for s in (square_avg, grad_avg, momentum_buffer) if s is not None]
    ct, w_dt, s_dt = _call_dtypes(param, grad, *states)
    w, g = _to(ct, param, grad)
    with np.errstate(all="ignore"):
        g = _torch_grad(g, w, weight_decay, maximize, ct)
        v = ct(alpha) * _to(ct, square_avg)[0] + (_per_call(ct, 1 - _d(alpha)[0]) * g) * g
        results = [v]
        if grad_avg is not None:
            ga = _to(ct, grad_avg)[0]
            ga = ga + _per_call(ct, 1 - _d(alpha)[0]) * (g - ga)
            avg = np.sqrt(v - ga * ga) + ct(eps)
            results.append(ga)
        else:
            avg = np.sqrt(v) + ct(eps)
        if momentum_buffer is not None:
            buf = ct(momentum) * _to(ct, momentum_buffer)[0] + g / avg
            out = w - ct(lr) * buf
            results.append(buf)
        else:
            out = w - (ct(lr) * g) / avg
    return _store([out, *results], [w_dt] + [s_dt] * len(states), [param, *states], rows)


def torch_rmsprop_update(param, grad, square_avg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, maximize=False,
                         rows=None):
    return _torch_rmsprop(param, grad, square_avg, None, None, lr, alpha, eps, weight_decay, 0.0, maximize, rows)


def torch_rmsprop_momentum_update(param, grad, square_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8,
                                  weight_decay=0.0, momentum=0.0, maximize=False, rows=None):
    return _torch_rmsprop(param, grad, square_avg, None, momentum_buffer, lr, alpha, eps, weight_decay, momentum,
                          maximize, rows)


def torch_rmsprop_centered_update(param, grad, square_avg, grad_avg, lr, alpha=0.99, eps=1e-8, weight_decay=0.0,
                                  maximize=False, rows=None):
    return _torch_rmsprop(param, grad, square_avg, grad_avg, None, lr, alpha, eps, weight_decay, 0.0, maximize, rows)


def torch_rmsprop_centered_momentum_update(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99,
                                           eps=1e-8, weight_decay=0.0, momentum=0.0, maximize=False, rows=None):
    return _torch_rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, weight_decay, momentum,
                          maximize, rows)


def torch_nadam_update(param, grad, exp_avg, exp_avg_sq, grad_step, avg_step, beta1=0.9, beta2=0.999, eps=1e-8,
                       bias_correction2=1.0, weight_decay=0.0, decay=1.0, maximize=False, rows=None):
    ct, w_dt, s_dt = _call_dtypes(param, grad, exp_avg, exp_avg_sq)
    w, g, m, v = _to(ct, param, grad, exp_avg, exp_avg_sq)
    with np.errstate(all="ignore"):
        g = _torch_grad(g, w, weight_decay, maximize, ct)
        m = m + _per_call(ct, 1 - _d(beta1)[0]) * (g - m)
        v = ct(beta2) * v + (_per_call(ct, 1 - _d(beta2)[0]) * g) * g
        denom = np.sqrt(v / ct(bias_correction2)) + ct(eps)
        out = w * ct(decay) - (ct(grad_step) * g) / denom - (ct(avg_step) * m) / denom
    return _store([out, m, v], [w_dt, s_dt, s_dt], [param, exp_avg, exp_avg_sq], rows)


# The preloaded ops run MultiSGDKernel as the multi ops do; only their lrs and wds arrive
# as arrays (2.15).
preloaded_multi_sgd_update = multi_sgd_update
preloaded_multi_sgd_mom_update = multi_sgd_mom_update
preloaded_multi_mp_sgd_update = multi_mp_sgd_update
preloaded_multi_mp_sgd_mom_update = multi_mp_sgd_mom_update


# -- Adafactor (Shazeer & Stern 2018), factored: a 2-D weight, per-row and per-column states --
def _mean64(x, axis=None):
    """A mean accumulated in float64 (the reductions of the grid ops are in double); over
    ``axis``, kept (keepdims: broadcasts against the slices)."""
    return np.mean(np.asarray(x, np.float64), axis=axis, keepdims=axis is not None)


def _rms64(x):
    return math.sqrt(_mean64(np.square(np.asarray(x, np.float64)))) if np.size(x) else float("nan")


def _factored_states(row_var, col_var, shape):
    """A weight (..., rows, cols)'s factors as (..., rows, 1) and (..., 1, cols): each
    (rows, cols) slice factored on its own (torch: the last two dimensions)."""
    *lead, rows, cols = shape
    assert row_var.shape in ((*lead, rows), (*lead, rows, 1)), f"reference: row_var shape {row_var.shape}"
    assert col_var.shape in ((*lead, cols), (*lead, 1, cols)), f"reference: col_var shape {col_var.shape}"
    return row_var.reshape(*lead, rows, 1), col_var.reshape(*lead, 1, cols)


def _slice_mean(r):
    """Each slice's mean of its per-row values (..., rows, 1), kept (..., 1, 1)."""
    return _mean64(r, axis=(-2, -1))


def adafactor_update(weight, grad, row_var, col_var, lr=0.01, *, t, decay_rate=-0.8, eps1=1e-30, eps2=1e-3,
                     clip_threshold=1.0, relative_step=True, scale_parameter=True, wd=0.0):
    """Adafactor for a weight matrix (the paper's Algorithm 4, with section 7's relative
    step and section 6's update clipping): the paper writes the row and column factors as
    sums over the columns and the rows and the estimate as R C / (1^T R); here they are the
    means (sums / length), which leaves the estimate R_mean C_mean / mean(R_mean) the same.
    Element math in the compute dtype; the means and RMS norms accumulate in float64, and
    every per-call value is computed in double and rounded once, as opgen computes them."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, row_var, col_var)
    r0, c0 = _factored_states(row_var, col_var, weight.shape)
    w, g, r, c = _to(ct, weight, grad, r0, c0)
    with np.errstate(all="ignore"):
        beta2 = np.float64(1) - np.float64(t) ** np.float64(decay_rate)  # paper: 1 - t^-0.8
        b, one_b = _per_call(ct, beta2), _per_call(ct, 1 - beta2)
        g2 = g * g + ct(eps1)  # G^2 + eps1
        r = b * r + one_b * _mean64(g2, axis=-1).astype(ct)
        c = b * c + one_b * _mean64(g2, axis=-2).astype(ct)
        mean_r = _slice_mean(r).astype(ct)  # (each slice's: a per-call value per slice)
        u = g / np.sqrt(r * c / mean_r)
        u = u / _per_call(ct, max(1.0, _rms64(u) / float(clip_threshold)))  # update clipping
        rho = min(float(lr), 1 / math.sqrt(t)) if relative_step else float(lr)
        alpha = max(float(eps2), _rms64(w)) * rho if scale_parameter else rho
        out = w - _per_call(ct, alpha) * u - _per_call(ct, alpha * float(wd)) * w
    out, r_new, c_new = _store([out, r, c], [w_dt, s_dt, s_dt])
    return out, r_new.reshape(row_var.shape), c_new.reshape(col_var.shape)


def torch_adafactor_update(weight, grad, row_var, col_var, lr=0.01, *, t, beta2_decay=-0.8,
                           eps1=1.1920928955078125e-07, eps2=1e-3, d=1.0, weight_decay=0.0, maximize=False):
    """One step of torch.optim.Adafactor's documented algorithm for a parameter (..., rows, cols)
    (https://pytorch.org/docs/stable/generated/torch.optim.Adafactor.html): the running row
    and column means of g^2 moved by t^beta2_decay, the estimate R C / max(mean(R), eps1)
    floored at eps1^2 before its root, the update clipped by its RMS over d, the step
    alpha = max(eps2, RMS(W_{t-1})) min(lr, 1/sqrt(t)), and the weight first decayed by
    1 - lr * weight_decay."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, row_var, col_var)
    r0, c0 = _factored_states(row_var, col_var, weight.shape)
    w, g, r, c = _to(ct, weight, grad, r0, c0)
    with np.errstate(all="ignore"):
        g = -g if maximize else g
        step = _per_call(ct, np.float64(t) ** np.float64(beta2_decay))
        r = r + step * (_mean64(g * g, axis=-1).astype(ct) - r)
        c = c + step * (_mean64(g * g, axis=-2).astype(ct) - c)
        # torch: row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1), each slice's
        floor = np.maximum(_slice_mean(r), np.float64(eps1)).astype(ct)
        u = g / np.sqrt(np.maximum(r * c / floor, _per_call(ct, float(eps1) ** 2)))
        u = u / _per_call(ct, max(1.0, _rms64(u) / float(d)))
        alpha = max(float(eps2), _rms64(w)) * min(float(lr), 1 / math.sqrt(t))
        out = w * _per_call(ct, 1 - float(lr) * float(weight_decay)) - _per_call(ct, alpha) * u
    out, r_new, c_new = _store([out, r, c], [w_dt, s_dt, s_dt])
    return out, r_new.reshape(row_var.shape), c_new.reshape(col_var.shape)


def torch_adafactor_vector_update(weight, grad, variance, lr=0.01, *, t, beta2_decay=-0.8,
                                  eps1=1.1920928955078125e-07, eps2=1e-3, d=1.0, weight_decay=0.0, maximize=False):
    """One step of torch.optim.Adafactor's documented algorithm for a parameter of at most one
    dimension (its unfactored branch): V moved toward g^2 by t^beta2_decay, the update
    g / sqrt(max(V, eps1^2)) clipped by its RMS over d, the step alpha = max(eps2,
    RMS(W_{t-1})) min(lr, 1/sqrt(t)), the weight first decayed by 1 - lr * weight_decay."""
    ct, w_dt, s_dt = _call_dtypes(weight, grad, variance)
    w, g, v = _to(ct, weight, grad, variance)
    with np.errstate(all="ignore"):
        g = -g if maximize else g
        step = _per_call(ct, np.float64(t) ** np.float64(beta2_decay))
        v = v + step * (g * g - v)
        u = g / np.sqrt(np.maximum(v, _per_call(ct, float(eps1) ** 2)))
        u = u / _per_call(ct, max(1.0, _rms64(u) / float(d)))
        alpha = max(float(eps2), _rms64(w)) * min(float(lr), 1 / math.sqrt(t))
        out = w * _per_call(ct, 1 - float(lr) * float(weight_decay)) - _per_call(ct, alpha) * u
    return _store([out, v], [w_dt, s_dt])
