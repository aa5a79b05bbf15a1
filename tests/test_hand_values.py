"""One step of each op on a few elements, expected values worked out by hand.

The expected numbers are written as the seed / reference-doc formulas with literal
numbers (MXNet kernel operand order, reference doc sections 2.1, 2.2, 2.5, 2.6), plus
the decimal value they evaluate to. Both tests/reference.py and the generated ops are
checked against them, so the reference itself is checked too.
"""

from __future__ import annotations

from math import sqrt

import numpy as np
import pytest

import generated
import reference as ref

# float64 computes in double with double parameters (deviation 7.3), so the hand values
# (computed in Python double) must match closely. In float32 the parameters are rounded
# to float32 first, so e.g. 1 - beta2 is 0.0010000467 rather than 0.001 (a 5e-5 relative
# change that reaches the weight through sqrt(var)); the hand values, written with
# the exact decimals, therefore get rtol 1e-4 in float32. The exact float32 parameter
# rounding is checked on its own by test_float32_rounds_parameters_first.
TOL = {np.float64: dict(rtol=1e-12, atol=1e-15), np.float32: dict(rtol=1e-4, atol=1e-7)}
DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["float64", "float32"]


def check(actual, expected, dtype, what):
    assert actual.dtype == np.dtype(dtype), what
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, err_msg=what, **TOL[dtype])


def arr(values, dtype):
    return np.array(values, dtype=dtype)


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


ADAM_CASES = {"plain": _adam_case_plain, "wd_rescale_clip": _adam_case_wd_rescale_clip,
              "eps_outside_sqrt": _adam_case_eps_outside_sqrt}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_hand_values_reference(case, dtype):
    (w, g, m, v), params, (w_exp, m_exp, v_exp) = ADAM_CASES[case]()
    out, m_new, v_new = ref.adam_update(arr(w, dtype), arr(g, dtype), arr(m, dtype), arr(v, dtype), **params)
    check(m_new, m_exp, dtype, "mean")
    check(v_new, v_exp, dtype, "var")
    check(out, w_exp, dtype, "weight")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", list(ADAM_CASES))
def test_adam_hand_values_op(backend, case, dtype):
    (w, g, m, v), params, (w_exp, m_exp, v_exp) = ADAM_CASES[case]()
    weight, grad, mean, var = arr(w, dtype), arr(g, dtype), arr(m, dtype), arr(v, dtype)
    out = generated.adam_update(weight, grad, mean, var, **params, out=weight)
    assert out is weight
    check(mean, m_exp, dtype, "mean")
    check(var, v_exp, dtype, "var")
    check(weight, w_exp, dtype, "weight")


# -- sgd: out = (1 - lr*wd)*w - (lr*rg)*g, or - lr*clip(rg*g) ----------------------------------
def _sgd_cases():
    w, g = [1.0, -0.5, 2.0], [0.5, 1.0, -4.0]
    return {
        "wd_rescale": (w, g, dict(lr=0.1, wd=0.01, rescale_grad=0.5),
                       [(1 - 0.1 * 0.01) * 1.0 - (0.1 * 0.5) * 0.5,     # 0.974
                        (1 - 0.1 * 0.01) * -0.5 - (0.1 * 0.5) * 1.0,    # -0.5495
                        (1 - 0.1 * 0.01) * 2.0 - (0.1 * 0.5) * -4.0],   # 2.198
                       [0.974, -0.5495, 2.198]),
        "clip": (w, g, dict(lr=0.1, wd=0.01, rescale_grad=0.5, clip_gradient=1.5),
                 [0.999 * 1.0 - 0.1 * 0.25,       # 0.974 (0.25 not clipped)
                  0.999 * -0.5 - 0.1 * 0.5,       # -0.5495
                  0.999 * 2.0 - 0.1 * -1.5],      # -2.0 clipped to -1.5 -> 2.148
                 [0.974, -0.5495, 2.148]),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", ["wd_rescale", "clip"])
def test_sgd_hand_values(backend, case, dtype):
    w, g, params, w_exp, decimal = _sgd_cases()[case]
    assert w_exp == pytest.approx(decimal, rel=1e-12)
    check(ref.sgd_update(arr(w, dtype), arr(g, dtype), **params), w_exp, dtype, "reference")
    weight = arr(w, dtype)
    out = generated.sgd_update(weight, arr(g, dtype), **params)
    check(out, w_exp, dtype, "op")
    assert weight.tolist() == arr(w, dtype).tolist()


# -- sgd_mom: mom = mu*mom - (lr*wd)*w - (lr*rg)*g ; out = w + mom ------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sgd_mom_hand_values(backend, dtype):
    w, g, mom = [1.0, -1.0, 3.0], [0.2, -0.4, 1.0], [0.1, 0.0, 0.0]
    params = dict(lr=0.1, momentum=0.9, wd=0.01)
    mom_exp = [0.9 * 0.1 - (0.1 * 0.01) * 1.0 - 0.1 * 0.2,      # 0.069
               0.9 * 0.0 - (0.1 * 0.01) * -1.0 - 0.1 * -0.4,    # 0.041
               0.9 * 0.0 - (0.1 * 0.01) * 3.0 - 0.1 * 1.0]      # -0.103
    w_exp = [1.0 + mom_exp[0], -1.0 + mom_exp[1], 3.0 + mom_exp[2]]  # 1.069, -0.959, 2.897
    assert mom_exp == pytest.approx([0.069, 0.041, -0.103], rel=1e-12)
    assert w_exp == pytest.approx([1.069, -0.959, 2.897], rel=1e-12)
    r_w, r_mom = ref.sgd_mom_update(arr(w, dtype), arr(g, dtype), arr(mom, dtype), **params)
    check(r_mom, mom_exp, dtype, "reference mom")
    check(r_w, w_exp, dtype, "reference weight")
    weight, momentum_state = arr(w, dtype), arr(mom, dtype)
    generated.sgd_mom_update(weight, arr(g, dtype), momentum_state, **params, out=weight)
    check(momentum_state, mom_exp, dtype, "op mom")
    check(weight, w_exp, dtype, "op weight")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_sgd_mom_stores_negative_velocity(backend, dtype):
    """Reference doc 2.2: after the first step from mom=0, mom = -lr*g."""
    mom = np.zeros(3, dtype=dtype)
    weight = arr([1.0, 2.0, 3.0], dtype)
    generated.sgd_mom_update(weight, arr([1.0, -2.0, 0.5], dtype), mom, lr=0.5, momentum=0.9)
    check(mom, [-0.5, 1.0, -0.25], dtype, "mom")


# -- rmsprop: n = (1-g1)*(gr*gr) + g1*n ; out = w - lr*(gr/sqrt(n+eps)) -------------------------
def _rmsprop_cases():
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
    }


RMSPROP_IDS = ["plain", "clip_weights", "eps_inside_sqrt", "wd_rescale_clip"]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("case", RMSPROP_IDS)
def test_rmsprop_hand_values(backend, case, dtype):
    (w, g, n), params, (w_exp, n_exp) = _rmsprop_cases()[case]
    r_w, r_n = ref.rmsprop_update(arr(w, dtype), arr(g, dtype), arr(n, dtype), **params)
    check(r_n, n_exp, dtype, "reference n")
    check(r_w, w_exp, dtype, "reference weight")
    weight, state = arr(w, dtype), arr(n, dtype)
    out = generated.rmsprop_update(weight, arr(g, dtype), state, **params)
    check(state, n_exp, dtype, "op n")
    check(out, w_exp, dtype, "op weight")


# -- dtype rules (deviations 7.2, 7.3 and the float32 parameter rounding) ----------------------
def test_float64_uses_double_parameters(backend):
    """Deviation 7.3: lr=0.1 acts as the double 0.1, not float32(0.1) = 0.100000001490116."""
    out = generated.sgd_update(arr([1.0], np.float64), arr([1.0], np.float64), lr=0.1)
    assert out[0] == 1.0 - 0.1  # 0.9
    assert out[0] != 1.0 - float(np.float32(0.1))
    assert ref.sgd_update(arr([1.0], np.float64), arr([1.0], np.float64), lr=0.1)[0] == 1.0 - 0.1


def test_float32_rounds_parameters_first(backend):
    """In float32, ``1 - beta1`` is float32(1) - float32(beta1) = 0.100000024, not float32(0.1)."""
    one = np.float32(1)
    m_exp = one - np.float32(0.9)      # 0.10000002384185791
    v_exp = one - np.float32(0.999)    # 0.0010000467300415039
    assert m_exp != np.float32(0.1)
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
    weight = arr([1.0, -0.5, 0.25], np.float16)
    grad = np.zeros(3, np.float16)
    states = [np.zeros(3, np.float16) for _ in ref.OPS[op][0]]
    out = getattr(generated, op)(weight, grad, *states, lr=0.01)
    assert out.dtype == np.float16
    assert out.tobytes() == weight.tobytes()
    assert all(not np.isnan(s).any() for s in states)
    r = ref.as_tuple(ref.OPS[op][1](weight, grad, *[np.zeros(3, np.float16) for _ in states], lr=0.01))
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
    assert float(ref.sgd_update(w, g, lr=0.01, wd=0.1)[0]) == 0.6484375
