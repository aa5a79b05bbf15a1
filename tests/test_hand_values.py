"""One step of each op on a few elements, expected values worked out by hand.

The expected numbers are written as the seed / reference-doc formulas with literal numbers
(MXNet kernel operand order, reference doc sections 2.1-2.14), plus the decimal value they
evaluate to. Both tests/reference.py and the generated ops are checked against them, so the
reference itself is checked too. Tensors are listed in signature order (weight, grad,
states...), as the op's metadata orders them.
"""

from __future__ import annotations

from math import sqrt

import numpy as np
import pytest

import cases
import generated
import reference as ref
from cases import DTYPE_IDS as ALL_DTYPE_IDS
from cases import DTYPES as ALL_DTYPES

# float64 computes in double with double parameters (deviation 7.3), so the hand values
# (computed in Python double) must match closely. In float32 the parameters are rounded
# to float32 first, so e.g. 1 - beta2 is 0.0009999871 rather than 0.001 (a 1.3e-5 relative
# change that reaches the weight through sqrt(var)); the hand values, written with
# the exact decimals, therefore get rtol 1e-4 in float32. The exact float32 parameter
# rounding is checked on its own by test_float32_rounds_parameters_first.
TOL = {np.float64: dict(rtol=1e-12, atol=1e-15), np.float32: dict(rtol=1e-4, atol=1e-7)}
DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["float64", "float32"]


def check(actual, expected, dtype, what):
    assert np.asarray(actual).dtype == np.dtype(dtype), what
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, err_msg=what, **TOL[dtype])


def arr(values, dtype):
    return np.array(values, dtype=dtype)


# =============================================================================================
# The cases: op -> {case: () -> (tensors, params, expected (out, states...))}
# =============================================================================================
# -- adam (seed: m = b1*m + (1-b1)*g ; v = b2*v + (1-b2)*g^2 ; w -= lr*m/(sqrt(v)+eps)) ----------
def _adam_case_plain():
    w, g, m, v = [1.0, -2.0, 0.5], [0.1, -0.2, 0.3], [0.5, 0.0, -0.1], [0.01, 0.0, 0.04]
    params = dict(lr=0.1)
    m_exp = [0.9 * 0.5 + 0.1 * 0.1,        # 0.46
             0.9 * 0.0 + 0.1 * -0.2,       # -0.02
             0.9 * -0.1 + 0.1 * 0.3]       # -0.06
    v_exp = [0.999 * 0.01 + 0.001 * 0.1 * 0.1,   # 0.01
             0.999 * 0.0 + 0.001 * 0.2 * 0.2,    # 0.00004
             0.999 * 0.04 + 0.001 * 0.3 * 0.3]   # 0.04005
    w_exp = [1.0 - 0.1 * 0.46 / (sqrt(0.01) + 1e-8),      # 0.5400000459999954
             -2.0 - 0.1 * -0.02 / (sqrt(0.00004) + 1e-8),  # -1.6837727339823716
             0.5 - 0.1 * -0.06 / (sqrt(0.04005) + 1e-8)]   # 0.5299812660617071
    assert w_exp == pytest.approx([0.5400000459999954, -1.6837727339823716, 0.5299812660617071], rel=1e-12)
    assert m_exp == pytest.approx([0.46, -0.02, -0.06], rel=1e-12)
    assert v_exp == pytest.approx([0.01, 0.00004, 0.04005], rel=1e-12)
    return (w, g, m, v), params, (w_exp, m_exp, v_exp)


def _adam_case_wd_rescale_clip():
    # gr = g*rg + w*wd, then clipped to +-0.5 (reference doc 2.5: wd inside the clip)
    w, g, m, v = [0.5, -1.0], [0.3, 0.05], [0.0, 0.2], [0.0, 0.01]
    params = dict(lr=0.1, wd=0.1, rescale_grad=2.0, clip_gradient=0.5)
    gr = [min(0.3 * 2.0 + 0.5 * 0.1, 0.5),   # 0.65 -> clipped to 0.5
          0.05 * 2.0 + -1.0 * 0.1]           # 0.0
    assert gr == [0.5, 0.0]
    m_exp = [0.9 * 0.0 + 0.1 * 0.5, 0.9 * 0.2 + 0.1 * 0.0]          # 0.05, 0.18
    v_exp = [0.999 * 0.0 + 0.001 * 0.5 * 0.5, 0.999 * 0.01 + 0.0]  # 0.00025, 0.00999
    w_exp = [0.5 - 0.1 * 0.05 / (sqrt(0.00025) + 1e-8),    # 0.18377243398303555
             -1.0 - 0.1 * 0.18 / (sqrt(0.00999) + 1e-8)]   # -1.1800900495382831
    assert w_exp == pytest.approx([0.18377243398303555, -1.1800900495382831], rel=1e-12)
    return (w, g, m, v), params, (w_exp, m_exp, v_exp)


def _adam_case_eps_outside_sqrt():
    # epsilon = 4 makes "outside sqrt" (adam) visibly different from "inside" (rmsprop)
    w, g, m, v = [0.0], [1.0], [0.0], [0.0]
    params = dict(lr=1.0, epsilon=4.0)
    m_exp = [0.1 * 1.0]
    v_exp = [0.001 * 1.0 * 1.0]
    w_exp = [0.0 - 1.0 * 0.1 / (sqrt(0.001) + 4.0)]  # -0.024803907890482632
    assert w_exp == pytest.approx([-0.024803907890482632], rel=1e-12)
    return (w, g, m, v), params, (w_exp, m_exp, v_exp)


# -- sgd: out = (1 - lr*wd)*w - (lr*rg)*g, or - lr*clip(rg*g) ----------------------------------
def _sgd_case(name):
    w, g = [1.0, -0.5, 2.0], [0.5, 1.0, -4.0]
    cases_ = {
        "wd_rescale": (dict(lr=0.1, wd=0.01, rescale_grad=0.5),
                       [(1 - 0.1 * 0.01) * 1.0 - (0.1 * 0.5) * 0.5,     # 0.974
                        (1 - 0.1 * 0.01) * -0.5 - (0.1 * 0.5) * 1.0,    # -0.5495
                        (1 - 0.1 * 0.01) * 2.0 - (0.1 * 0.5) * -4.0],   # 2.198
                       [0.974, -0.5495, 2.198]),
        "clip": (dict(lr=0.1, wd=0.01, rescale_grad=0.5, clip_gradient=1.5),
                 [0.999 * 1.0 - 0.1 * 0.25,       # 0.974 (0.25 not clipped)
                  0.999 * -0.5 - 0.1 * 0.5,       # -0.5495
                  0.999 * 2.0 - 0.1 * -1.5],      # -2.0 clipped to -1.5 -> 2.148
                 [0.974, -0.5495, 2.148]),
    }
    params, w_exp, decimal = cases_[name]
    assert w_exp == pytest.approx(decimal, rel=1e-12)
    return (w, g), params, (w_exp,)


# -- sgd_mom: mom = mu*mom - (lr*wd)*w - (lr*rg)*g ; out = w + mom ------------------------------
def _sgd_mom_case():
    w, g, mom = [1.0, -1.0, 3.0], [0.2, -0.4, 1.0], [0.1, 0.0, 0.0]
    params = dict(lr=0.1, momentum=0.9, wd=0.01)
    mom_exp = [0.9 * 0.1 - (0.1 * 0.01) * 1.0 - 0.1 * 0.2,      # 0.069
               0.9 * 0.0 - (0.1 * 0.01) * -1.0 - 0.1 * -0.4,    # 0.041
               0.9 * 0.0 - (0.1 * 0.01) * 3.0 - 0.1 * 1.0]      # -0.103
    w_exp = [1.0 + mom_exp[0], -1.0 + mom_exp[1], 3.0 + mom_exp[2]]  # 1.069, -0.959, 2.897
    assert mom_exp == pytest.approx([0.069, 0.041, -0.103], rel=1e-12)
    assert w_exp == pytest.approx([1.069, -0.959, 2.897], rel=1e-12)
    return (w, g, mom), params, (w_exp, mom_exp)


# -- rmsprop: n = (1-g1)*(gr*gr) + g1*n ; out = w - lr*(gr/sqrt(n+eps)) -------------------------
def _rmsprop_case(name):
    w, g, n = [1.0, -2.0], [0.5, 0.1], [0.0, 1.0]
    n_exp = [0.1 * (0.5 * 0.5) + 0.9 * 0.0,    # 0.025
             0.1 * (0.1 * 0.1) + 0.9 * 1.0]    # 0.901
    w_exp = [1.0 - 0.01 * (0.5 / sqrt(0.025 + 1e-8)),    # 0.9683772297228697
             -2.0 - 0.01 * (0.1 / sqrt(0.901 + 1e-8))]   # -2.0010535074281233
    assert n_exp == pytest.approx([0.025, 0.901], rel=1e-12)
    assert w_exp == pytest.approx([0.9683772297228697, -2.0010535074281233], rel=1e-12)
    return {
        "plain": ((w, g, n), dict(lr=0.01, gamma1=0.9), (w_exp, n_exp)),
        # clip_weights=1.5: -2.0010535 is clipped to -1.5, 0.968 stays
        "clip_weights": ((w, g, n), dict(lr=0.01, gamma1=0.9, clip_weights=1.5),
                         ([w_exp[0], -1.5], n_exp)),
        # epsilon INSIDE the sqrt: n = 0.05*1*1 = 0.05 ; out = 0 - 1*(1/sqrt(0.05 + 4))
        "eps_inside_sqrt": (([0.0], [1.0], [0.0]), dict(lr=1.0, epsilon=4.0),
                            ([-1.0 / sqrt(0.05 + 4.0)], [0.05])),  # -0.4969039949999533
        # wd inside the gradient: gr = rg*g + wd*w = 2*0.25 + 0.5*1 = 1.0 ; clipped to 0.8
        "wd_rescale_clip": (([1.0], [0.25], [0.0]),
                            dict(lr=0.1, gamma1=0.5, wd=0.5, rescale_grad=2.0, clip_gradient=0.8),
                            ([1.0 - 0.1 * (0.8 / sqrt(0.5 * 0.64 + 1e-8))], [0.5 * 0.64])),
    }[name]


def _literal(tensors, params, expected):
    return lambda: (tensors, params, expected)


HAND = {
    "adam_update": {"plain": _adam_case_plain, "wd_rescale_clip": _adam_case_wd_rescale_clip,
                    "eps_outside_sqrt": _adam_case_eps_outside_sqrt},
    "sgd_update": {name: (lambda name=name: _sgd_case(name)) for name in ("wd_rescale", "clip")},
    "sgd_mom_update": {"plain": _sgd_mom_case},
    "rmsprop_update": {name: (lambda name=name: _rmsprop_case(name))
                       for name in ("plain", "clip_weights", "eps_inside_sqrt", "wd_rescale_clip")},
    # 2.3: mom_s = mu*mom ; gg = clip(rg*g) + wd*w ; out = w - mom_s + (mu+1)*(mom_s - lr*gg)
    #      mom' = mom_s - lr*gg (old w)
    # e0: rg*g = 0.8 (no clip), gg = 0.81, mom_s = 0.09, out = 0.91 + 1.9*0.009 = 0.9271, mom' = 0.009
    # e1: rg*g = -4 -> -1.5, gg = -1.505, mom_s = 0, out = -0.5 + 1.9*0.1505 = -0.21405, mom' = 0.1505
    "nag_mom_update": {"step": _literal(
        [[1.0, -0.5], [0.4, -2.0], [0.1, 0.0]],
        dict(lr=0.1, momentum=0.9, wd=0.01, rescale_grad=2.0, clip_gradient=1.5),
        [[0.9271, -0.21405], [0.009, 0.1505]])},
    # 2.7: gr = rg*g + wd*w (clip 1.0); n = 0.1*gr*gr + 0.9*n ; g = 0.1*gr + 0.9*g
    #      delta = 0.8*delta - lr*gr/sqrt(n - g*g + 1e-4) ; out = w + delta (clip to +-1.5)
    # e0: gr = 0.4+0.2 = 0.6, n = 0.036+0.09 = 0.126, g = 0.06+0.045 = 0.105,
    #     delta = 0.008 - 0.06/sqrt(0.126-0.011025+0.0001) = -0.16887268091227597
    # e1: gr = 6-0.4 -> 1.0, n = 0.1, g = 0.1, delta = -0.1/sqrt(0.0901) = -0.33314830232638476,
    #     out = -2.3331... -> clipped to -1.5
    "rmspropalex_update": {"step": _literal(
        [[1.0, -2.0], [0.2, 3.0], [0.1, 0.0], [0.05, 0.0], [0.01, 0.0]],
        dict(lr=0.1, gamma1=0.9, gamma2=0.8, epsilon=1e-4, wd=0.2, rescale_grad=2.0,
             clip_gradient=1.0, clip_weights=1.5),
        [[0.831127319087724, -1.5], [0.126, 0.1], [0.105, 0.1],
         [-0.16887268091227597, -0.33314830232638476]])},
    # 2.8: gr = clip(rg*g) ; z += gr - (sqrt(n+gr^2) - sqrt(n))*w/lr ; n += gr^2
    #      out = (sign(z)*l1 - z)/((beta + sqrt(n))/lr + wd) if |z| > l1 else 0
    # e0: gr = 0.2, z = 0.3 - (sqrt(0.29)-0.5)*0.5/0.1 = 0.10741759643274817, n = 0.29,
    #     out = (0.05 - z)/((1+sqrt(0.29))/0.1 + 0.1) = -0.003707909934952328
    # e1: gr = -1.5 -> -1, z = -1.2 - (1-0)*(-0.3)/0.1 = 1.8, n = 1, out = -1.75/20.1
    # e2: gr = 0, z = 0.001 (|z| <= 0.05 -> out 0), n = 0.04
    "ftrl_update": {"step": _literal(
        [[0.5, -0.3, 0.2], [0.4, -3.0, 0.0], [0.1, -0.2, 0.001], [0.25, 0.0, 0.04]],
        dict(lr=0.1, lamda1=0.05, beta=1.0, wd=0.1, rescale_grad=0.5, clip_gradient=1.0),
        [[-0.003707909934952328, -1.75 / 20.1, 0.0], [0.10741759643274817, 1.8, 0.001],
         [0.29, 1.0, 0.04]])},
    # 2.9 (t = 2): gr = g + 0.1*w (clip 1); v = 0.9*v + 0.1*gr^2 ;
    #      d_t = (1-0.6^2)/0.1*(sqrt(v/(1-0.9^2)) + 1e-3) ; z = 0.6*z + 0.4*gr - (d_t - 0.6*d)*w
    #      out = -z/d_t
    # e0: gr = 0.4, v = 0.052, d_t = 6.4*(sqrt(0.052/0.19)+0.001) = 3.354549528195821,
    #     z = 0.34 - d_t = -3.014549528195821, out = 0.898645109531931
    # e1: gr = 1.95 -> 1, v = 0.1, d_t = 6.4*(sqrt(0.1/0.19)+0.001) = 4.6494480007040755,
    #     z = 0.4 + 0.5*d_t = 2.7247240003520377, out = -0.5860317181608283
    "ftml_update": {"step": _literal(
        [[1.0, -0.5], [0.3, 2.0], [0.5, 0.0], [0.04, 0.0], [-0.2, 0.0]],
        dict(lr=0.1, beta1=0.6, beta2=0.9, epsilon=1e-3, t=2, wd=0.1, rescale_grad=1.0,
             clip_grad=1.0),
        [[0.898645109531931, -0.5860317181608283], [3.354549528195821, 4.6494480007040755],
         [0.052, 0.1], [-3.014549528195821, 2.7247240003520377]])},
    # 2.10: out = (1 - lr*wd)*w - lr*sign(g) = 0.95*w - 0.1*sign(g); rescale/clip ignored
    "signsgd_update": {"step": _literal(
        [[1.0, -2.0, 0.5], [0.3, -0.1, 0.0]],
        dict(lr=0.1, wd=0.5, rescale_grad=-4.0, clip_gradient=0.01),
        [[0.85, -1.8, 0.475]])},
    # 2.10: mom = 0.9*mom - 0.1*0.1*w - 0.1*clip(0.5*g, 1) ; out = (1 - 0.1*0.2)*w + 0.1*sign(mom)
    # e0: mom = 0.18 - 0.01 - 0.025 = 0.145, out = 0.98 + 0.1 = 1.08
    # e1: mom = -0.009 + 0.01 - 0.1 = -0.099, out = -0.98 - 0.1 = -1.08
    "signum_update": {"step": _literal(
        [[1.0, -1.0], [0.5, 4.0], [0.2, -0.01]],
        dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=0.5, clip_gradient=1.0, wd_lh=0.2),
        [[1.08, -1.08], [0.145, -0.099]])},
    # 2.12: sg = clip(0.5*g, 1) ; m = 0.9*m + 0.1*sg ; v = 0.99*v + 0.01*sg^2 ;
    #       out = w - 0.5*(0.1*m/(sqrt(v) + 1e-3) + 0.1*w)
    # e0: sg = 0.1, m = 0.1, v = 0.01, out = 1 - 0.5*(0.01/0.101 + 0.1) = 0.9004950495049505
    # e1: sg = -1.5 -> -1, m = -0.1, v = 0.01, out = -2 - 0.5*(-0.01/0.101 - 0.2) = -1.8504950495049504
    "adamw_update": {"step": _literal(
        [[1.0, -2.0], [0.2, -3.0], [0.1, 0.0], [0.01, 0.0]],
        dict(rescale_grad=0.5, lr=0.1, eta=0.5, beta1=0.9, beta2=0.99, epsilon=1e-3, wd=0.1,
             clip_gradient=1.0),
        [[0.9004950495049505, -1.8504950495049504], [0.1, -0.1], [0.01, 0.01]])},
    # 2.13 (t = 2): gr = clip(0.5*g, 1) ; m = 0.9*m + 0.1*gr ; v = 0.99*v + 0.01*gr^2 ;
    #      g = (m/(1-0.81))/(sqrt(v/(1-0.9801)) + 1e-3) + 0.1*w
    # e0: gr = 0.1, m = 0.1, v = 0.01, g = (0.1/0.19)/(sqrt(0.01/0.0199)+0.001) + 0.1
    # e1: gr = -2 -> -1, m = -0.1, v = 0.01, g = (-0.1/0.19)/(sqrt(0.01/0.0199)+0.001) - 0.05
    "lamb_update_phase1": {"step": _literal(
        [[1.0, -0.5], [0.2, -4.0], [0.1, 0.0], [0.01, 0.0]],
        dict(beta1=0.9, beta2=0.99, epsilon=1e-3, t=2, bias_correction=True, wd=0.1,
             rescale_grad=0.5, clip_gradient=1.0),
        [[0.8414138953960676, -0.7914138953960669], [0.1, -0.1], [0.01, 0.01]])},
}
HAND_CASES = [(op, name) for op in HAND for name in HAND[op]]
HAND_IDS = [f"{op}-{name}" for op, name in HAND_CASES]


def test_hand_cases_are_for_ops():
    assert set(HAND) <= set(cases.OPS)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,case", HAND_CASES, ids=HAND_IDS)
def test_hand_values_reference(op, case, dtype):
    tensors, params, expected = HAND[op][case]()
    outs = cases.op(op).ref(*[arr(t, dtype) for t in tensors], **params)
    assert len(outs) == len(expected)
    for k, (a, e) in enumerate(zip(outs, expected)):
        check(a, e, dtype, f"{op} reference output {k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,case", HAND_CASES, ids=HAND_IDS)
def test_hand_values(backend, op, case, dtype):
    """out=weight updates the weight in place (an output op: returns g, the weight only read);
    out=None returns the new weight and leaves the weight alone; states in place either way."""
    info = cases.op(op)
    tensors, params, expected = HAND[op][case]()
    for mode in ("weight", "none"):
        arrays = [arr(t, dtype) for t in tensors]
        weight, states = arrays[0], arrays[len(arrays) - len(info.states):]
        if mode == "weight" and not info.output:
            out = info.fn(*arrays, **params, out=weight)
            assert out is weight
        else:
            out = info.fn(*arrays, **params)
            assert out is not weight
            assert weight.tolist() == arr(tensors[0], dtype).tolist(), f"out={mode} leaves the weight unchanged"
        assert len(expected) == 1 + len(states)
        check(out, expected[0], dtype, f"{op} out (out={mode})")
        for k, (a, e) in enumerate(zip(states, expected[1:])):
            check(a, e, dtype, f"{op} {info.states[k]} (out={mode})")


def test_lamb_phase1_no_bias_correction_hand(backend):
    # g = m/(sqrt(v) + eps) + wd*w with m = [0.1, -0.1], v = [0.01, 0.01] (the case above):
    # [0.1/0.101 + 0.1, -0.1/0.101 - 0.05] = [1.0900990099009902, -1.0400990099009901]
    tensors, params, _ = HAND["lamb_update_phase1"]["step"]()
    arrays = [np.array(t, dtype=np.float64) for t in tensors]
    params = dict(params, bias_correction=False)
    g = generated.lamb_update_phase1(*arrays, **params)
    check(g, [1.0900990099009902, -1.0400990099009901], np.float64, "g")
    check(arrays[0], [1.0, -0.5], np.float64, "weight untouched")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sgd_mom_stores_negative_velocity(backend, dtype):
    """Reference doc 2.2: after the first step from mom=0, mom = -lr*g."""
    mom = np.zeros(3, dtype=dtype)
    weight = arr([1.0, 2.0, 3.0], dtype)
    generated.sgd_mom_update(weight, arr([1.0, -2.0, 0.5], dtype), mom, lr=0.5, momentum=0.9)
    check(mom, [-0.5, 1.0, -0.25], dtype, "mom")


# =============================================================================================
# Mixed precision: the weight is NaN (never read), states in their fixed dtype
# =============================================================================================
# tensors (grad, states...); expected (states'...), the last being weight32'
MP_HAND = {
    # 2.4: w32 = (1 - 0.1*0.1)*w32 - 0.1*clip(2*g, 3): 0.99*1 - 0.1 = 0.89 ; 1.98 + 0.3 = 2.28
    "mp_sgd_update": (
        [[0.5, -4.0], [1.0, 2.0]],
        dict(lr=0.1, wd=0.1, rescale_grad=2.0, clip_gradient=3.0),
        [[0.89, 2.28]]),
    # 2.4: mom = 0.9*mom - 0.1*0.1*w32 - 0.1*clip(2*g, 3) ; w32 += mom
    # e0: mom = 0.09 - 0.01 - 0.1 = -0.02, w32 = 0.98 ; e1: mom = -0.18 - 0.02 + 0.3 = 0.1, w32 = 2.1
    "mp_sgd_mom_update": (
        [[0.5, -4.0], [0.1, -0.2], [1.0, 2.0]],
        dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=2.0, clip_gradient=3.0),
        [[-0.02, 0.1], [0.98, 2.1]]),
    # 2.4 MP_NAGMomKernel: m = 0.9*mom ; w = w - m + 1.9*(m - 0.1*(2*g + 0.1*w)) ;
    #     mom = m - 0.1*(2*g + 0.1*w_NEW)
    # (grads are exact in float16)
    # e0: m = 0.09, w = 0.91 + 1.9*(0.09 - 0.1*(0.75 + 0.1)) = 0.9195,
    #     mom = 0.09 - 0.1*(0.75 + 0.1*0.9195) = 0.005805   (the old weight would give 0.005)
    # e1: m = 0, w = -1 + 1.9*0.11 = -0.791, mom = -0.1*(-1 - 0.0791) = 0.10791
    "mp_nag_mom_update": (
        [[0.375, -0.5], [0.1, 0.0], [1.0, -1.0]],
        dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=2.0),
        [[0.005805, 0.10791], [0.9195, -0.791]]),
    # 2.12 MPAdamWKernel, in fp32 from weight32: sg = clip(0.5*g, 1) ; m = 0.9*m + 0.1*sg ;
    #      v = 0.99*v + 0.01*sg^2 ; w32 = w32 - 0.5*(0.1*m/(sqrt(v) + 1e-3) + 0.1*w32)
    # e0: sg = 0.125, m = 0.1025, v = 0.01005625,
    #     w32 = 1 - 0.5*(0.01025/(sqrt(0.01005625) + 0.001) + 0.1) = 0.8993981367988492
    # e1: sg = -1.5 -> -1, m = -0.1, v = 0.01, w32 = -2 - 0.5*(-0.01/0.101 - 0.2) = -1.8504950495049504
    "mp_adamw_update": (
        [[0.25, -3.0], [0.1, 0.0], [0.01, 0.0], [1.0, -2.0]],
        dict(rescale_grad=0.5, lr=0.1, eta=0.5, beta1=0.9, beta2=0.99, epsilon=1e-3, wd=0.1,
             clip_gradient=1.0),
        [[0.1025, -0.1], [0.01005625, 0.01], [0.8993981367988492, -1.8504950495049504]]),
}


def _mp_hand_run(fn, op, wdtype, is_ref):
    info = cases.op(op)
    tensors, params, expected = MP_HAND[op]
    grad = np.array(tensors[0], dtype=wdtype)
    states = [np.array(t, dtype=info.dtype_of(name, wdtype)) for name, t in zip(info.states, tensors[1:], strict=True)]
    weight = np.full(grad.shape, np.nan, dtype=wdtype)
    if is_ref:
        out, *new_states = fn(weight, grad, *states, **params)
    else:
        out = fn(weight, grad, *states, **params, out=weight)
        new_states = states
    for k, (a, e) in enumerate(zip(new_states, expected, strict=True)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a.astype(np.float64), e, rtol=1e-5, atol=1e-7,
                                   err_msg=f"{op} state {k}")
    w32 = np.array(expected[-1], dtype=np.float32)
    np.testing.assert_allclose(np.asarray(out).astype(np.float64),
                               w32.astype(wdtype).astype(np.float64),
                               rtol=1e-3 if wdtype == np.float16 else 1e-5, atol=1e-7,
                               err_msg=f"{op} out")
    assert np.asarray(out).dtype == np.dtype(wdtype)


def test_mp_hand_cases_are_the_mixed_precision_ops():
    """Every mixed-precision op that writes its float32 master weight has hand values here;
    mp lamb's two phases (an output op, scalar inputs) have theirs below."""
    assert sorted(MP_HAND) == [op for op in cases.MIXED_PRECISION if not op.startswith("mp_lamb_update_phase")]
    assert {op for op in cases.MIXED_PRECISION if op.startswith("mp_lamb_update_phase")} == \
        {"mp_lamb_update_phase1", "mp_lamb_update_phase2"}


@pytest.mark.parametrize("wdtype", ALL_DTYPES, ids=ALL_DTYPE_IDS)
@pytest.mark.parametrize("is_ref", [True, False], ids=["reference", "generated"])
def test_mp_lamb_phase1_by_hand(wdtype, is_ref):
    """2.13, in float32 from weight32 (the weight is NaN: never read): t = 1 with bias
    correction, so m_hat = g and v_hat = g * g; g_out = g / (|g| + 1e-6) + 0.1 * weight32:
    [1 / (1 + 1e-6) + 0.1, -2 / (2 + 1e-6) + 0.2]; mean = 0.1 * g, var = 0.001 * g * g."""
    fn = cases.op("mp_lamb_update_phase1").ref if is_ref else generated.mp_lamb_update_phase1
    weight, grad = np.full(2, np.nan, wdtype), np.array([1.0, -2.0], wdtype)
    mean, var, weight32 = np.zeros(2, np.float32), np.zeros(2, np.float32), np.array([1.0, 2.0], np.float32)
    result = fn(weight, grad, mean, var, weight32, t=1, wd=0.1)
    out, mean, var = result if is_ref else (result, mean, var)
    assert np.asarray(out).dtype == np.float32
    np.testing.assert_allclose(out, [1 / (1 + 1e-6) + 0.1, -2 / (2 + 1e-6) + 0.2], rtol=1e-6)
    np.testing.assert_allclose(mean, [0.1, -0.2], rtol=1e-6)
    np.testing.assert_allclose(var, [0.001, 0.004], rtol=1e-5)
    np.testing.assert_array_equal(weight32, [1.0, 2.0])


@pytest.mark.parametrize("wdtype", ALL_DTYPES, ids=ALL_DTYPE_IDS)
@pytest.mark.parametrize("is_ref", [True, False], ids=["reference", "generated"])
def test_mp_lamb_phase2_by_hand(wdtype, is_ref):
    """2.13 from weight32 (the weight is NaN: never read): r1 = 2, r2 = 4, lr = 0.1, so the
    step is 0.05 and weight32 [1, 2] becomes [0.95, 2.05]; upper_bound = 1 makes r1 = 1 (step
    0.025); r2 = 0 leaves lr unscaled. The weight is weight32 rounded to its dtype."""
    fn = cases.op("mp_lamb_update_phase2").ref if is_ref else generated.mp_lamb_update_phase2
    g = np.array([1.0, -1.0], np.float32)
    for kwargs, r2, expected in [({}, 4.0, [0.95, 2.05]), ({"upper_bound": 1.0}, 4.0, [0.975, 2.025]),
                                 ({}, 0.0, [0.9, 2.1])]:
        weight, weight32 = np.full(2, np.nan, wdtype), np.array([1.0, 2.0], np.float32)
        r1, r2 = np.array([2.0], np.float32), np.array([r2], np.float32)
        if is_ref:
            out, weight32 = fn(weight, g, r1, r2, weight32, lr=0.1, **kwargs)
        else:
            out = fn(weight, g, r1, r2, weight32, lr=0.1, **kwargs, out=weight)
            assert out is weight
        np.testing.assert_allclose(weight32, expected, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(weight32).astype(wdtype))


@pytest.mark.parametrize("wdtype", ALL_DTYPES, ids=ALL_DTYPE_IDS)
@pytest.mark.parametrize("op", list(MP_HAND))
def test_mp_hand_values_reference(op, wdtype):
    _mp_hand_run(cases.op(op).ref, op, wdtype, True)


@pytest.mark.parametrize("wdtype", ALL_DTYPES, ids=ALL_DTYPE_IDS)
@pytest.mark.parametrize("op", list(MP_HAND))
def test_mp_hand_values(backend, op, wdtype):
    _mp_hand_run(cases.op(op).fn, op, wdtype, False)


# =============================================================================================
# Row-sparse only: adagrad and group_adagrad by hand
# =============================================================================================
W32 = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]


def _adagrad_hand(fn, dtype, is_ref):
    # 2.11: gr = clip(2*g, 3) ; h += gr^2 ; out = w - (gr/sqrt(h + 0.01))*0.1, rows 0 and 2 only
    # row0: gr = [1, -2], h = [1.25, 4.0], out = [1 - 0.1/sqrt(1.26), 2 + 0.2/sqrt(4.01)]
    # row2: gr = [4 -> 3, 0], h = [9.5, 0.1], out = [5 - 0.3/sqrt(9.51), 6]
    weight = np.array(W32, dtype=dtype)
    history = np.array([[0.25, 0.0], [1.0, 1.0], [0.5, 0.1]], dtype=dtype)
    rows = np.array([0, 2])
    data = np.array([[0.5, -1.0], [2.0, 0.0]], dtype=dtype)
    params = dict(lr=0.1, epsilon=0.01, rescale_grad=2.0, clip_gradient=3.0)
    if is_ref:
        weight, history = fn(weight, ref.densify(data, rows, (3, 2)), history, **params, rows=rows)
    else:
        fn(weight, cases.rsp(data, rows, (3, 2)), history, **params, out=weight)
    check(weight, [[1 - 0.1 / sqrt(1.26), 2 + 0.2 / sqrt(4.01)], [3.0, 4.0],
                   [5 - 0.3 / sqrt(9.51), 6.0]], dtype, "adagrad weight")
    check(weight, [[0.9109129193625252, 2.0998752338877846], [3.0, 4.0],
                   [4.902718334731172, 6.0]], dtype, "adagrad weight (decimals)")
    check(history, [[1.25, 4.0], [1.0, 1.0], [9.5, 0.1]], dtype, "adagrad history")


def _group_adagrad_hand(fn, dtype, is_ref, hshape):
    # 2.14: row 1 only: gr = clip(2*[0.5, -3], 2) = [1, -2] ; h1 = 0.2 + (1 + 4)/2 = 2.7
    #       out row1 = w - (0.1*gr)/sqrt(2.7 + 0.01) = [3 - 0.1/sqrt(2.71), 4 + 0.2/sqrt(2.71)]
    weight = np.array(W32, dtype=dtype)
    history = np.array([0.1, 0.2, 0.3], dtype=dtype).reshape(hshape)
    rows = np.array([1])
    data = np.array([[0.5, -3.0]], dtype=dtype)
    params = dict(lr=0.1, rescale_grad=2.0, clip_gradient=2.0, epsilon=0.01)
    if is_ref:
        weight, history = fn(weight, ref.densify(data, rows, (3, 2)), history, **params, rows=rows)
    else:
        fn(weight, cases.rsp(data, rows, (3, 2)), history, **params, out=weight)
    check(weight, [[1.0, 2.0], [2.9392543260769215, 4.121491347846157], [5.0, 6.0]],
          dtype, "group_adagrad weight")
    assert history.shape == hshape
    check(history.reshape(3), [0.1, 2.7, 0.3], dtype, "group_adagrad history")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_hand_adagrad_reference(dtype):
    _adagrad_hand(ref.adagrad_update, dtype, True)
    _group_adagrad_hand(ref.group_adagrad_update, dtype, True, (3,))
    _group_adagrad_hand(ref.group_adagrad_update, dtype, True, (3, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_hand_adagrad(backend, dtype):
    _adagrad_hand(generated.adagrad_update, dtype, False)


@pytest.mark.parametrize("hshape", [(3,), (3, 1)], ids=["N", "Nx1"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_hand_group_adagrad(backend, dtype, hshape):
    _group_adagrad_hand(generated.group_adagrad_update, dtype, False, hshape)


# =============================================================================================
# dtype rules (deviations 7.2, 7.3 and the float32 parameter rounding)
# =============================================================================================
def test_float64_uses_double_parameters(backend):
    """Deviation 7.3: lr=0.1 acts as the double 0.1, not float32(0.1) = 0.100000001490116."""
    out = generated.sgd_update(arr([1.0], np.float64), arr([1.0], np.float64), lr=0.1)
    assert out[0] == 1.0 - 0.1  # 0.9
    assert out[0] != 1.0 - float(np.float32(0.1))
    (r,) = ref.sgd_update(arr([1.0], np.float64), arr([1.0], np.float64), lr=0.1)
    assert r[0] == 1.0 - 0.1


def test_float32_per_call_values_are_computed_in_double(backend):
    """In float32, ``1 - beta1`` is computed once per call in double and rounded once:
    float32(0.1) = 0.10000000149, not float32(1) - float32(0.9) = 0.10000002384 (MXNet's)."""
    m_exp = np.float32(0.1)            # 0.10000000149011612 = float32(1 - 0.9)
    v_exp = np.float32(0.001)          # 0.0010000000474974513 = float32(1 - 0.999)
    assert m_exp != np.float32(1) - np.float32(0.9)
    assert v_exp != np.float32(1) - np.float32(0.999)
    for impl in ("ref", "op"):
        weight, grad = arr([0.0], np.float32), arr([1.0], np.float32)
        mean, var = arr([0.0], np.float32), arr([0.0], np.float32)
        if impl == "ref":
            _, mean, var = ref.adam_update(weight, grad, mean, var, lr=0.5)
        else:
            generated.adam_update(weight, grad, mean, var, lr=0.5, out=weight)
        assert mean[0] == m_exp, impl
        assert var[0] == v_exp, impl


@pytest.mark.parametrize("op", ["adam_update", "rmsprop_update"])
def test_float16_zero_grad_zero_state_is_not_nan(backend, op):
    """Deviation 7.2: float16 computes in float32, so epsilon=1e-8 does not vanish (MXNet: NaN)."""
    info = cases.op(op)
    weight = arr([1.0, -0.5, 0.25], np.float16)
    grad = np.zeros(3, np.float16)
    states = [np.zeros(3, np.float16) for _ in info.states]
    out = info.fn(weight, grad, *states, lr=0.01)
    assert out.dtype == np.float16
    assert out.tobytes() == weight.tobytes()
    assert all(not np.isnan(s).any() for s in states)
    r = info.ref(weight, grad, *[np.zeros(3, np.float16) for _ in states], lr=0.01)
    assert r[0].tobytes() == weight.tobytes()


def test_float16_rounds_once_on_store(backend):
    """Deviation 7.2: float16 computes in float32 and rounds once when storing.

    sgd, w=0.640625, g=-0.85791015625 (both exact halves), lr=0.01, wd=0.1:
    (1 - 0.01*0.1)*0.640625 - (0.01*1)*-0.85791015625 = 0.639984375 + 0.0085791015625
    = 0.6485634765625; the half spacing in [0.5, 1) is 2**-11, 0.6485634765625 * 2048
    = 1328.2 -> 1328/2048 = 0.6484375. (MXNet's rounding of every intermediate to half
    gives 0.64892578125 instead.)
    """
    w, g = arr([0.640625], np.float16), arr([-0.85791015625], np.float16)
    assert (1 - 0.01 * 0.1) * 0.640625 - (0.01 * 1) * -0.85791015625 == pytest.approx(0.6485634765625)
    out = generated.sgd_update(w, g, lr=0.01, wd=0.1)
    assert out.dtype == np.float16
    assert float(out[0]) == 0.6484375
    (r,) = ref.sgd_update(w, g, lr=0.01, wd=0.1)
    assert float(r[0]) == 0.6484375
