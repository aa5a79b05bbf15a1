"""The rules particular to some ops, each for every op it applies to (reference doc sections
2.3-2.14, 4, 5 and 7): the skip condition (adamw), bounded parameters (adagrad's wd, ftml's
betas), the mixed-precision dtype rules and never-read weight, scalar inputs (adamw's
rescale_grad, lamb's r1 and r2), lamb's bounds and output, nag's aliasing independence,
ignored parameters (signsgd), per-row states (group_adagrad).

Which op a rule applies to is derived from its metadata or spec where they say it (skip_if,
bounds, fixed dtypes, scalar roles, ignored, per_row).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import cases
from cases import DTYPE_IDS, DTYPES, MIXED_PRECISION, PARAMS, RowSparseArray


def _case(op, seed, shape, dtype, pset="mixed", **overrides):
    params = cases.step_params(op, dict(PARAMS[op][pset], **overrides))
    return cases.make_case(op, seed, shape, dtype, params)


# =============================================================================================
# skip_if (adamw, mp_adamw: 2.12 / 7.6)
# =============================================================================================
SKIP_OPS = cases.ops(lambda o: o.skip_if is not None and not o.multi)
MULTI_SKIP_OPS = cases.ops(lambda o: o.skip_if is not None and bool(o.multi))


@pytest.mark.parametrize("op", SKIP_OPS)
def test_skip_condition_is_the_rescale_rule(op):
    """The skip tests below are for this condition; another one needs its own tests."""
    assert cases.op(op).skip_if == "rescale_grad == 0 or not isfinite(rescale_grad)"
    assert "rescale_grad" in cases.op(op).scalars


@pytest.mark.parametrize("value", [0.0, np.nan, np.inf, -np.inf], ids=["0", "nan", "inf", "-inf"])
@pytest.mark.parametrize("op", MULTI_SKIP_OPS)
def test_multi_adamw_skips_the_whole_call(backend, op, value):
    """multi_adamw_update's rescale_grad (the last array of data) 0, NaN or +-Inf skips every
    tensor: out keeps its content, nothing else changes; 1 updates them all."""
    info = cases.op(op)
    assert info.skip_if == "rescale_grad == 0 or not isfinite(rescale_grad)"
    made = [_case(op, 50 + k, (3 + k,), np.float16 if info.mixed_precision else np.float32) for k in range(3)]
    groups = [a for c in made for a in c.inputs()]
    data, kwargs = cases.multi_call_args(op, groups, dict(lr=0.1, eta=1.0, wd=0.01, rescale_grad=value), count=3)
    before = cases.snapshot(groups)
    out = [np.full_like(c.weight, 3.0) for c in made]
    assert info.fn(*data, **kwargs, out=out) is not None
    assert all((o == 3.0).all() for o in out), "a skipped call leaves out as it was"
    cases.assert_unchanged(groups, before, "a skipped multi call")
    data[-1] = np.array([1.0], np.float32)
    result = info.fn(*data, **kwargs)
    assert all(not np.array_equal(r, c.weight) for r, c in zip(result, made))


@pytest.mark.parametrize("form", ["float", "array"])
@pytest.mark.parametrize("value", [0.0, np.nan, np.inf, -np.inf], ids=["0", "nan", "inf", "-inf"])
@pytest.mark.parametrize("op", SKIP_OPS)
def test_adamw_skips_on_zero_nan_inf_rescale(backend, op, value, form):
    """2.12 / 7.6: rescale_grad 0, NaN or +-Inf skips the whole update."""
    info = cases.op(op)
    dtype = np.float16 if info.mixed_precision else np.float32
    rescale = value if form == "float" else np.array([value], dtype=np.float32)
    case = _case(op, 41, (4, 5), dtype, rescale_grad=rescale)
    before = case.snapshot()

    out = np.full_like(case.weight, 3.0)
    assert case(out=out) is out
    assert (out == 3.0).all(), "a separate out keeps its content"
    case.assert_unchanged(before, "skip (separate out)")

    assert case(out=case.weight) is case.weight
    case.assert_unchanged(before, "skip (out=weight)")

    result = case()
    assert result is not case.weight
    case.assert_unchanged(before, "skip (out=None)")
    # out=None: the result equals the weight (an mp op never reads the weight; equal when
    # the weight is weight32 cast, as here)
    assert result.dtype == case.weight.dtype
    assert result.tobytes() == case.weight.tobytes(), "out=None: the result equals the weight"


@pytest.mark.parametrize("op", SKIP_OPS)
def test_adamw_negative_rescale_is_not_skipped(backend, op):
    case = _case(op, 42, (10,), np.float32, rescale_grad=-0.5)
    expected = case.expected()
    out = case()
    case.check(out, expected[0], "out")
    case.check_states(expected[1:], "negative rescale")


@pytest.mark.parametrize("op", SKIP_OPS)
def test_adamw_rescale_array_equals_float(backend, op):
    res = []
    for rg in (0.5, np.array([0.5], dtype=np.float32)):
        case = _case(op, 43, (3, 7), np.float32, rescale_grad=rg)
        out = case()
        res.append([out.tobytes()] + [s.tobytes() for s in case.states])
    assert res[0] == res[1]


# =============================================================================================
# Bounded parameters (adagrad's wd must be 0: 2.11; ftml's betas in [0, 1]: 1.9, 2.9)
# =============================================================================================
#: values outside each bounded parameter's range
OUT_OF_RANGE = {
    ("adagrad_update", "wd"): (0.1, -0.01),
    ("ftml_update", "beta1"): (1.5, -0.1),
    ("ftml_update", "beta2"): (1.01, -1.0),
}
BOUNDED = [(op, name) for op in cases.SINGLE for name in cases.op(op).bounds]


def test_every_bounded_parameter_has_values_out_of_range():
    assert sorted(OUT_OF_RANGE) == sorted(BOUNDED)
    for (op, name), values in OUT_OF_RANGE.items():
        lo, hi = cases.op(op).bounds[name]
        assert all(v < lo or v > hi for v in values), (op, name)


BAD_BOUNDS = [(op, name, v) for (op, name), values in OUT_OF_RANGE.items() for v in values]


@pytest.mark.parametrize("op,name,value", BAD_BOUNDS, ids=[f"{o}-{n}-{v}" for o, n, v in BAD_BOUNDS])
def test_out_of_range_parameter_is_value_error(backend, op, name, value):
    case = _case(op, 52, (4, 3), np.float32, "defaults", **{name: value})
    before = case.snapshot()
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        case(out=case.weight)
    case.assert_unchanged(before)


@pytest.mark.parametrize("op,name", BOUNDED, ids=[f"{o}-{n}" for o, n in BOUNDED])
def test_range_end_points_are_accepted(backend, op, name):
    """The range is closed: its end points are accepted (adagrad: wd=0 is fine)."""
    for value in cases.op(op).bounds[name]:
        case = _case(op, 53, (4, 3), np.float64, "defaults", **{name: value})
        expected = case.expected()
        with np.errstate(all="ignore"):
            out = case()
        case.check(out, expected[0], f"{name}={value}")


@pytest.mark.parametrize("b1,b2", [(0.0, 0.0), (0.0, 0.5), (1.0, 0.999), (0.6, 1.0)])
def test_ftml_beta_bounds_accepted(backend, b1, b2):
    """[0, 1] is closed: the end points are accepted (1.0 may give NaN/Inf, as in MXNet)."""
    case = cases.make_case("ftml_update", 62, (6,), np.float64, dict(lr=0.1, beta1=b1, beta2=b2, t=2))
    expected = case.expected()
    with np.errstate(all="ignore"):
        out = case()
    case.check(out, expected[0], "out")


# =============================================================================================
# Mixed precision (2.4, 2.12): fixed float32 tensors, the weight never read
# =============================================================================================
MP_STATE_CASES = [(op, name, bad) for op in MIXED_PRECISION for name in cases.op(op).fixed
                  for bad in (np.float16, np.float64)]


def test_mixed_precision_ops_fix_float32_states():
    for op in MIXED_PRECISION:
        info = cases.op(op)
        # float32 master weights (a state, or an input an op only reads), states, and the
        # gradient of mp lamb phase 2 (phase 1's float32 output)
        assert set(info.fixed) <= {*info.states, *info.inputs, info.grad} and "weight32" in info.fixed
        assert all(dt == np.float32 for dt in info.fixed.values())


@pytest.mark.parametrize("op,name,bad", MP_STATE_CASES,
                         ids=[f"{op}-{name}-{np.dtype(b).name}" for op, name, b in MP_STATE_CASES])
def test_mp_state_dtype_must_be_float32(backend, op, name, bad):
    case = _case(op, 71, (4, 2), np.float16)
    case.arrays[name] = case.arrays[name].astype(bad)
    before = case.snapshot()
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        case(out=case.weight)
    case.assert_unchanged(before)


@pytest.mark.parametrize("op", MIXED_PRECISION)
def test_mp_weight_grad_dtype_mismatch(backend, op):
    case = _case(op, 72, (4, 2), np.float16)
    # a gradient of the weight's dtype, or of the dtype the spec fixes for it: the other one
    wrong = np.float16 if cases.op(op).dtype_of(cases.op(op).grad, np.float16) == np.float32 else np.float32
    case.grad = np.ones((4, 2), dtype=wrong)
    before = case.snapshot()
    with pytest.raises(TypeError, match=f"argument '({cases.op(op).grad}|{cases.op(op).weight})'"):
        case(out=case.weight)
    case.assert_unchanged(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", MIXED_PRECISION)
def test_mp_weight_input_is_never_read(backend, op, dtype):
    """2.4 / 5.11: only weight32 is read; a NaN weight changes nothing (an output op, which
    only reads the weight: out=None and a separate out)."""
    info = cases.op(op)
    made = _case(op, 73, (5, 3), dtype)
    expected = made.expected()

    results = []
    for fill in (None, np.nan, 1e4):  # None: the weight equals weight32 cast
        for mode in ("none", "separate") if info.output else ("none", "weight", "separate"):
            case = made.copy()
            if fill is not None:
                case.weight = np.full_like(made.weight, fill)
            out = {"none": None, "weight": case.weight,
                   "separate": np.full_like(case.weight, -9.0, dtype=info.out_dtype(dtype))}[mode]
            r = case(out=out)
            if mode == "none":
                assert r is not case.weight and r.dtype == info.out_dtype(dtype)
            else:
                assert r is out
            case.check(r, expected[0], f"out (weight={fill}, out={mode})")
            case.check_states(expected[1:], f"(weight={fill}, out={mode})")
            results.append([r.tobytes()] + [a.tobytes() for a in case.states])
            # out is weight32's new value cast to the weight's dtype. For a float64 weight the
            # math may run in float64, so out may be the unrounded double: weight32 is then
            # out rounded to float32.
            w32 = case.arrays["weight32"]
            if info.output:
                assert w32.tobytes() == made.arrays["weight32"].tobytes(), "weight32 is only read"
            elif np.dtype(dtype) == np.float64:
                assert w32.tobytes() == r.astype(np.float32).tobytes(), "weight32 != out rounded"
            else:
                assert r.tobytes() == w32.astype(dtype).tobytes(), "out != weight32 cast"
    assert all(x == results[0] for x in results), "result depends on the weight input"


# =============================================================================================
# Scalar inputs: a number or a one-element float array (adamw's rescale_grad, lamb's r1, r2)
# =============================================================================================
SCALARS = [(op, name) for op in cases.SINGLE for name in cases.op(op).scalars]
SCALAR_IDS = [f"{op}-{name}" for op, name in SCALARS]


def _scalar_case(op, name, value):
    case = _case(op, 81, (3,), np.float64)
    case.params.pop(name, None)
    case.arrays[name] = value
    return case


@pytest.mark.parametrize("bad", [np.array([1.0, 2.0]), np.zeros(0)], ids=["len2", "empty"])
@pytest.mark.parametrize("op,name", SCALARS, ids=SCALAR_IDS)
def test_scalar_input_must_hold_one_element(backend, op, name, bad):
    case = _scalar_case(op, name, bad)
    before = case.snapshot()
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        case(out=case.weight)
    case.assert_unchanged(before)


@pytest.mark.parametrize("form", ["np-scalar", "0d", "1x1", "float16", "float32-array"])
@pytest.mark.parametrize("op,name", SCALARS, ids=SCALAR_IDS)
def test_scalar_input_may_be_a_number_or_any_one_element_array(backend, op, name, form):
    """Documented deviation: a number or a one-element float array of any shape and dtype."""
    value = 0.5
    plain = _scalar_case(op, name, value)
    want = plain()
    given = {"np-scalar": np.float32(value), "0d": np.array(value), "1x1": np.array([[value]]),
             "float16": np.array([value], np.float16), "float32-array": np.array([value], np.float32)}[form]
    case = _scalar_case(op, name, given)
    got = case()
    assert got.tobytes() == want.tobytes()
    for a, b in zip(case.states, plain.states, strict=True):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("op,name", SCALARS, ids=SCALAR_IDS)
def test_scalar_input_rejects_integers_and_text(backend, op, name):
    for bad in (np.array([4], np.int64), "2"):
        case = _scalar_case(op, name, bad)
        before = case.snapshot()
        with pytest.raises(TypeError, match=rf"\b{name}\b"):
            case()
        case.assert_unchanged(before)


@pytest.mark.parametrize("r1", [2.0, np.float32(2.0), np.array(2.0), np.array([[2.0]]), np.array([2.0], np.float16)],
                         ids=["float", "np-scalar", "0d", "1x1", "float16"])
def test_lamb_phase2_r_may_be_a_number_or_any_one_element_array(backend, r1):
    """Documented deviation: r1/r2 are numbers or one-element float arrays of any shape."""
    from generated import lamb_update_phase2
    weight = np.array([1.0, -2.0], dtype=np.float32)
    g = np.array([0.5, 0.25], dtype=np.float32)
    out = lamb_update_phase2(weight, g, r1, np.array([4.0], np.float64), lr=0.1)
    np.testing.assert_allclose(out, [1.0 - 0.05 * 0.5, -2.0 - 0.05 * 0.25], rtol=1e-6)


# =============================================================================================
# lamb (2.13): phase 1 returns g; phase 2's bounds
# =============================================================================================
def test_lamb_phase1_out_modes(backend):
    """Phase 1 returns g; the weight is read only; a separate out receives g."""
    case = _case("lamb_update_phase1", 82, (4, 4), np.float32, bias_correction=True, t=3)
    assert cases.op("lamb_update_phase1").output
    expected = case.expected()
    w0 = case.weight.copy()
    out = np.empty_like(case.weight)
    assert case(out=out) is out
    assert case.weight.tobytes() == w0.tobytes()
    case.check(out, expected[0], "g")
    case.check_states(expected[1:], "phase 1")


# lamb phase 2 by hand: w = [1, -2], g = [0.5, 0.25], lr = 0.1 ; out = w - lr'*g
# lr' = lr*r1'/r2 with r1' = r1 clamped by the bounds that are >= 0 (2.13), or lr if r1' or r2 is 0
LAMB2_CASES = {
    "plain": (2.0, 4.0, {}, 0.05),                           # 0.1*2/4
    "lower_raises": (2.0, 4.0, dict(lower_bound=3.0), 0.075),  # max(2, 3) = 3
    "lower_inactive": (2.0, 4.0, dict(lower_bound=1.0), 0.05),
    "upper_lowers": (2.0, 4.0, dict(upper_bound=1.0), 0.025),  # min(2, 1) = 1 (min, 5.12)
    "upper_inactive": (2.0, 4.0, dict(upper_bound=5.0), 0.05),
    "both": (10.0, 4.0, dict(lower_bound=1.0, upper_bound=3.0), 0.075),
    "upper0_applies": (2.0, 4.0, dict(upper_bound=0.0), 0.1),  # r1' = min(2, 0) = 0 -> lr unscaled
    "lower0_applies": (0.0, 4.0, dict(lower_bound=0.0), 0.1),  # r1' = max(0, 0) = 0 -> lr unscaled
    "negative_bounds_off": (2.0, 4.0, dict(lower_bound=-5.0, upper_bound=-0.5), 0.05),
    "r1_zero": (0.0, 4.0, {}, 0.1),
    "r2_zero": (2.0, 0.0, {}, 0.1),
    "both_zero": (0.0, 0.0, {}, 0.1),
    "r1_negative": (-2.0, 4.0, {}, -0.05),                   # used as is
    "lower_lifts_zero_r1": (0.0, 4.0, dict(lower_bound=2.0), 0.05),
}
HAND_TOL = {np.float64: dict(rtol=1e-12, atol=1e-15), np.float32: dict(rtol=1e-4, atol=1e-7)}
HALF_TOL = {np.float16: dict(rtol=1e-3, atol=1e-6), ml_dtypes.bfloat16: dict(rtol=8e-3, atol=1e-6)}


def _lamb2_case(fn, name, dtype, is_ref):
    r1v, r2v, bounds, lr_eff = LAMB2_CASES[name]
    weight = np.array([1.0, -2.0], dtype=dtype)
    g = np.array([0.5, 0.25], dtype=dtype)
    r1 = np.array([r1v], dtype=dtype)
    r2 = np.array([r2v], dtype=dtype)
    expected = [1.0 - lr_eff * 0.5, -2.0 - lr_eff * 0.25]
    if is_ref:
        (out,) = fn(weight, g, r1, r2, lr=0.1, **bounds)
    else:
        out = fn(weight, g, r1, r2, lr=0.1, **bounds)
        assert weight.tolist() == [1.0, -2.0], "out=None leaves the weight unchanged"
    tol = HALF_TOL[dtype] if dtype in HALF_TOL else HAND_TOL[dtype]
    np.testing.assert_allclose(np.asarray(out, dtype=np.float64), expected, err_msg=name, **tol)
    assert out.dtype == np.dtype(dtype)


@pytest.mark.parametrize("name", list(LAMB2_CASES))
def test_lamb_phase2_bounds_reference(name):
    for dtype in DTYPES:
        _lamb2_case(cases.op("lamb_update_phase2").ref, name, dtype, True)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("name", list(LAMB2_CASES))
def test_lamb_phase2_bounds(backend, name, dtype):
    _lamb2_case(cases.op("lamb_update_phase2").fn, name, dtype, False)


# =============================================================================================
# nag_mom_update does not depend on aliasing (7.5)
# =============================================================================================
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_nag_out_weight_equals_out_none(backend, dtype):
    """7.5: the new momentum uses the old weight whatever out is (wd != 0 here)."""
    params = dict(lr=0.1, momentum=0.9, wd=0.1, rescale_grad=1.5, clip_gradient=1.0)
    made = cases.make_case("nag_mom_update", 91, (6, 5), dtype, params)
    expected = made.expected()
    res = []
    for mode in ("none", "weight", "separate"):
        case = made.copy()
        out = {"none": None, "weight": case.weight, "separate": np.empty_like(case.weight)}[mode]
        r = case(out=out)
        case.check(r, expected[0], f"weight ({mode})")
        case.check_states(expected[1:], f"({mode})")
        res.append((r.tobytes(), *[s.tobytes() for s in case.states]))
    assert res[0] == res[1] == res[2]


# =============================================================================================
# Ignored parameters (signsgd's rescale_grad and clip_gradient: 2.10)
# =============================================================================================
#: values of the ignored parameters that would change the result if they were used
IGNORED_VALUES = {
    "signsgd_update": [dict(rescale_grad=-3.0), dict(rescale_grad=0.0), dict(clip_gradient=1e-3),
                       dict(rescale_grad=100.0, clip_gradient=0.5)],
}
IGNORED_OPS = cases.ops(lambda o: not o.multi and any(
    n not in o.bounds and o.param[n].type != "bool" for n in o.ignored))


def test_every_op_with_ignored_parameters_has_values():
    assert sorted(IGNORED_VALUES) == IGNORED_OPS
    for op, values in IGNORED_VALUES.items():
        assert all(set(v) <= cases.op(op).ignored for v in values)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", IGNORED_OPS)
def test_ignored_parameters_change_nothing(backend, op, dtype):
    case = cases.make_case(op, 101, (5, 4), dtype, dict(lr=0.1, wd=0.05))
    base = case.copy()()
    for extra in IGNORED_VALUES[op]:
        assert case.copy()(**extra).tobytes() == base.tobytes(), extra


def test_signsgd_nan_grad_sign_is_zero(backend):
    """Section 4: sign(NaN) = 0, so the element gets w*(1 - lr*wd)."""
    from generated import signsgd_update
    weight = np.array([1.0, 2.0])
    grad = np.array([np.nan, -1.0])
    out = signsgd_update(weight, grad, lr=0.1, wd=0.5)
    np.testing.assert_allclose(out, [0.95, 2 * 0.95 + 0.1], rtol=1e-12)


# =============================================================================================
# Per-row states (group_adagrad's history: 2.14): shape (rows,) or (rows, 1)
# =============================================================================================
PER_ROW = [(op, name) for op in cases.SINGLE for name in sorted(cases.op(op).per_row)]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,name", PER_ROW, ids=[f"{o}-{n}" for o, n in PER_ROW])
def test_per_row_state_shapes_agree(backend, op, name, dtype):
    shape = (6, 4)
    made = cases.make_case(op, 13, shape, dtype, dict(lr=0.1, clip_gradient=0.5), grad_rows=np.array([0, 3, 5]))
    assert isinstance(made.grad, RowSparseArray) or made.op.dense
    outs = []
    for hshape in [(6,), (6, 1)]:
        case = made.copy()
        case.arrays[name] = made.arrays[name].reshape(hshape).copy()
        out = case()
        assert case.arrays[name].shape == hshape
        outs.append((out.tobytes(), case.arrays[name].reshape(6).tobytes()))
    assert outs[0] == outs[1]
