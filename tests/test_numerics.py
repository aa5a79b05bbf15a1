"""Every op against the independent reference (tests/reference.py), and the contracts all ops
share: clipping bounds <= 0 meaning "off", the out= contract, NaN propagation.

Reference doc: /work/shared/reference/mxnet-optimizers.md, sections 1, 2, 4 and 7. The ops,
their tensors and parameters come from the generated metadata (tests/cases.py); only the
parameter values (cases.PARAMS) are written by hand. A row-sparse-only op (adagrad,
group_adagrad) gets a row-sparse gradient wherever the others get a dense one.
"""

from __future__ import annotations

import inspect
import sys

import numpy as np
import pytest

import cases
import generated
from cases import DTYPE_IDS, DTYPES, OPS, PARAMS, RowSparseArray

SHAPES = [(0,), (1,), (7,), (1000,), (3, 4, 5), (65, 33), (257, 33)]


# -- the tables cover every op ------------------------------------------------------------------
def test_the_ops_are_the_specs_and_the_generated_functions():
    functions = sorted(n for n in generated.__all__ if hasattr(sys.modules.get(f"generated.{n}"), "_OP"))
    # (the ops that only reduce: test_reduction_ops.py; the grid ops: test_grid_ops.py)
    assert sorted(OPS + cases.REDUCTION_OPS + cases.GRID_OPS) == functions
    assert sorted(PARAMS) == OPS


@pytest.mark.parametrize("op", OPS)
def test_parameter_values_fit_the_metadata(op):
    """Every parameter set names only the op's parameters (or scalar inputs) and gives every
    required one but the step counter, which the tests set per step."""
    info = cases.op(op)
    allowed = set(info.params) | set(info.scalars)
    for pset, params in PARAMS[op].items():
        assert set(params) <= allowed, (pset, set(params) - allowed)
        missing = set(info.required) - set(params) - {info.step_param}
        assert not missing, (pset, missing)
        for name in info.scalars:
            assert name in params or name in cases.SCALAR_VALUES, (pset, name)
    for state in info.states:
        assert state in cases.STATE_VALUES, state
    assert {"defaults", "mixed"} <= set(PARAMS[op])


@pytest.mark.parametrize("op", OPS)
def test_reference_signature_fits_the_metadata(op):
    """The reference takes the op's tensors in signature order, then every parameter but the
    ones that only choose a kernel or count groups (lazy_update, num_weights)."""
    info = cases.op(op)
    signature = list(inspect.signature(info.ref).parameters)
    assert signature[:len(info.tensor_names)] == list(info.tensor_names)
    count = info.multi["count"] if info.multi else None
    wanted = {p.name for p in info.meta_params if (p.in_kernel or p.type != "bool") and p.name != count}
    assert set(signature[len(info.tensor_names):]) - {"rows"} == wanted
    if "lazy" in info.sparse_modes:
        assert "rows" in signature


# -- three steps against the reference ----------------------------------------------------------
GRID = [(op, pset) for op in OPS for pset in PARAMS[op]]
GRID_IDS = [f"{op}-{pset}" for op, pset in GRID]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,pset", GRID, ids=GRID_IDS)
def test_three_steps_match_reference(backend, op, pset, dtype):
    """Three consecutive steps, the states carried, out=weight (an output op: out=None), for
    every shape of SHAPES.

    After every step each output and state is compared with the reference fed (a) the arrays
    as they were before the step, so that a 1-ulp difference cannot snowball through the
    carried state, and (b) its own arrays carried from the start, so that differences do not
    accumulate either.
    """
    for shape in SHAPES:
        _three_steps(op, pset, dtype, shape)


def _three_steps(op, pset, dtype, shape):
    info = cases.op(op)
    seed = cases.seed(op, pset, np.dtype(dtype).name, shape)
    # the mixed sets take a per-row state in its (rows, 1) form
    case = cases.make_case(op, seed, shape, dtype, cases.step_params(op, PARAMS[op][pset]),
                           per_row_column=pset == "mixed")
    carried = case.copy()
    rng = np.random.default_rng(seed + 1)
    for step in range(3):
        where = f"[{pset}] {cases.shape_id(shape)} step {step}"
        case.params = carried.params = cases.step_params(op, PARAMS[op][pset], step)
        case.new_grad(rng)
        carried.grad = case.grad
        for name in info.scalars:
            if name in case.arrays:  # generated per step (lamb's r1, r2), not a parameter
                carried.arrays[name] = case.arrays[name]
        expected = case.expected()  # the reference is pure: these are still the inputs
        own = carried.expected()
        read_only = [case.grad] + [case.arrays[n] for n in info.scalars if n in case.arrays]
        read_only_before = cases.snapshot(read_only)
        state_objects = case.states

        if info.output:
            w0 = case.weight.copy()
            result = case()
            assert isinstance(result, np.ndarray) and result is not case.weight, where
            assert case.weight.tobytes() == w0.tobytes(), f"{where}: an output op must not write the weight"
        else:
            result = case(out=case.weight)
            assert result is case.weight, where
        for exp, label in ((expected, "from the step's inputs"), (own, "carried")):
            case.check(result, exp[0], f"{where} out ({label})")
            case.check_states(exp[1:], f"{where} ({label})")
        assert all(a is b for a, b in zip(case.states, state_objects, strict=True)), where
        cases.assert_unchanged(read_only, read_only_before, f"{op} {where}: the grad and scalar inputs")

        if not info.output:
            carried.weight = own[0]
        carried.states = list(own[1:])


# -- the parameter sets and the reference themselves ------------------------------------------
CLIP_CASES = [(op, pset, key) for op in OPS for pset in PARAMS[op]
              for key in cases.op(op).clip_params if key in PARAMS[op][pset]]


@pytest.mark.parametrize("op,pset,key", CLIP_CASES, ids=[f"{o}-{p}-{k}" for o, p, k in CLIP_CASES])
def test_parameter_sets_that_clip_really_clip(op, pset, key):
    """Reference-only sanity: a bound > 0 in a set clips some N(0,1) gradients (or weights:
    turning that one bound off changes the result); a bound <= 0 ('_off' sets) is no bound."""
    params = cases.step_params(op, PARAMS[op][pset])
    case = cases.make_case(op, 11, (1000,), np.float64, params)
    got = case.expected()
    case.params = dict(params, **{key: -1.0})
    plain = case.expected()
    same = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, plain, strict=True))
    assert same == (params[key] <= 0), (op, pset, key)


@pytest.mark.parametrize("op", OPS)
def test_reference_float32_tracks_float64(op):
    """Reference-only sanity: the float32 path agrees with the float64 path loosely."""
    info = cases.op(op)
    for pset in PARAMS[op]:
        params = cases.step_params(op, PARAMS[op][pset])
        case64 = cases.make_case(op, 3, (50,), np.float64, params)
        case32 = case64.copy()
        case32.dtype = np.dtype(np.float32)
        for name, a in case64.arrays.items():
            if name in info.fixed:
                continue
            if isinstance(a, RowSparseArray):
                case32.arrays[name] = cases.rsp(a.data.astype(np.float32), a.indices, a.shape)
            else:
                case32.arrays[name] = a.astype(np.float32)
        for a, b in zip(case32.expected(), case64.expected(), strict=True):
            np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64),
                                       rtol=1e-4, atol=1e-5, err_msg=f"{op}[{pset}]")


# -- clipping bounds <= 0 are off (deviation 7.1) ---------------------------------------------
CLIP_KEYS = [(op, key) for op in OPS for key in cases.op(op).clip_params]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,key", CLIP_KEYS, ids=[f"{o}-{k}" for o, k in CLIP_KEYS])
def test_clip_zero_and_negative_mean_off(backend, op, key, dtype):
    """Deviation 7.1: a clip bound <= 0 turns clipping off (MXNet clips to 0 at exactly 0):
    no bound, -1, 0 and -0.5 give the same bits."""
    outs = []
    for clip in (None, -1.0, 0.0, -0.5):
        params = cases.step_params(op, PARAMS[op]["defaults"], 1)
        if clip is not None:
            params[key] = clip
        case = cases.make_case(op, 5, (4, 6), dtype, params)
        case.scale_grad(3)
        w0 = case.weight.copy()
        r = case()
        outs.append([r.tobytes()] + [s.tobytes() for s in case.states])
        if clip == 0.0:
            # clipping at 0 would have left adam's or rmsprop's weight unchanged: it moved
            assert not np.array_equal(r, w0)
    for other in outs[1:]:
        assert other == outs[0]


# -- the out= contract -------------------------------------------------------------------------
def _out_case(op, seed, dtype, shape=(3, 4, 5)):
    return cases.make_case(op, seed, shape, dtype, cases.step_params(op, PARAMS[op]["mixed"]))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS)
def test_out_none_returns_new_array(backend, op, dtype):
    case = _out_case(op, 21, dtype)
    w0 = case.weight.copy()
    expected = case.expected()
    result = case(out=None)
    assert isinstance(result, np.ndarray)
    assert result is not case.weight
    assert not np.shares_memory(result, case.weight)
    assert case.weight.tobytes() == w0.tobytes(), "out=None must leave weight unchanged"
    case.check(result, expected[0], "out")
    case.check_states(expected[1:], "out=None")  # states are still updated in place


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", cases.ops(lambda o: not o.output))
def test_out_is_weight_updates_in_place(backend, op, dtype):
    case = _out_case(op, 22, dtype)
    expected = case.expected()
    result = case(out=case.weight)
    assert result is case.weight
    case.check(case.weight, expected[0], "weight")
    case.check_states(expected[1:], "out=weight")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS)
def test_out_separate_array(backend, op, dtype):
    case = _out_case(op, 23, dtype)
    w0 = case.weight.copy()
    out = np.full_like(case.weight, 123.0, dtype=cases.op(op).out_dtype(dtype))
    expected = case.expected()
    result = case(out=out)
    assert result is out
    assert case.weight.tobytes() == w0.tobytes(), "a separate out must leave weight unchanged"
    case.check(out, expected[0], "out")
    case.check_states(expected[1:], "separate out")


@pytest.mark.parametrize("op", OPS)
def test_out_modes_agree_bitwise(backend, op):
    """out=None (weight untouched), out=weight and a separate out give the same bits (an
    output op, which only reads the weight: out=None and a separate out)."""
    info = cases.op(op)
    modes = ("none", "separate") if info.output else ("none", "weight", "separate")
    results = []
    for mode in modes:
        case = _out_case(op, 24, np.float32, (5, 7))
        w0 = case.weight.copy()
        out = {"none": None, "weight": case.weight,
               "separate": np.full_like(case.weight, 5.0, dtype=info.out_dtype(np.float32))}[mode]
        r = case(out=out)
        if mode == "none":
            assert isinstance(r, np.ndarray) and r is not case.weight
            assert not np.shares_memory(r, case.weight)
        else:
            assert r is out
        if mode != "weight":
            assert case.weight.tobytes() == w0.tobytes(), f"out={mode} must leave weight unchanged"
        results.append([r.tobytes()] + [s.tobytes() for s in case.states])
    assert all(x == results[0] for x in results)


LAZY_FLAGS = [(op, p.name) for op in cases.SINGLE for p in cases.op(op).meta_params
              if p.type == "bool" and not p.in_kernel]


@pytest.mark.parametrize("op,flag", LAZY_FLAGS, ids=[f"{o}-{f}" for o, f in LAZY_FLAGS])
def test_lazy_update_flag_irrelevant_for_dense_grad(backend, op, flag):
    got = []
    for lazy in (True, False):
        case = _out_case(op, 25, np.float32, (6, 5))
        r = case(**{flag: lazy})
        got.append([r.tobytes()] + [s.tobytes() for s in case.states])
    assert got[0] == got[1]


# -- NaN propagation (section 4) -----------------------------------------------------------------
#: the ops whose new weight stays finite where the gradient is NaN (section 4): signsgd
#: (sign(NaN) = 0, so w*(1 - lr*wd)) and signum (its mom becomes NaN, w = (1 - lr*wd_lh)*w)
FINITE_WEIGHT_ON_NAN = ("signsgd_update", "signum_update")


def _grad_clip_key(info):
    return next((k for k in info.clip_params if k != "clip_weights"), None)


NAN_CASES = [(op, clip) for op in OPS for clip in (-1.0, 0.5)
             if clip < 0 or _grad_clip_key(cases.op(op)) is not None]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op,clip", NAN_CASES,
                         ids=[f"{o}-{'clip' if c > 0 else 'noclip'}" for o, c in NAN_CASES])
def test_nan_in_grad_propagates(backend, op, dtype, clip):
    """A NaN gradient element makes that element's weight and states NaN (clip keeps NaN),
    and nothing else; everything matches the reference."""
    info = cases.op(op)
    params = dict(PARAMS[op]["defaults"])
    if "wd" in info.params and "wd" not in info.bounds:
        params["wd"] = 0.01
    key = _grad_clip_key(info)
    if key is not None:
        params[key] = clip
    if "momentum" in info.params:
        params["momentum"] = 0.9
    params = cases.step_params(op, params)
    rows = np.arange(9)
    case = cases.make_case(op, 31, (9,), dtype, params, grad_rows=rows)  # every row, if row-sparse
    g = case.grad.data if isinstance(case.grad, RowSparseArray) else case.grad
    g[[2, 7]] = np.nan
    expected = case.expected()
    result = case()
    nan = np.zeros(9, dtype=bool)
    nan[[2, 7]] = True
    if op in FINITE_WEIGHT_ON_NAN:
        assert np.isfinite(result).all()
    elif info.reduces:  # a NaN reaches the whole-tensor reductions: how far, the reference says
        assert np.isnan(result[nan]).all()  # (LAMB: every element; LARS falls back to the plain lr)
        assert (np.isnan(result) == np.isnan(np.asarray(expected[0], np.float64))).all()
    else:
        assert np.isnan(result[nan]).all()
        assert np.isfinite(result[~nan]).all()
    case.check(result, expected[0], "weight")
    for name, s, e in zip(info.states, case.states, expected[1:], strict=True):
        if name in info.per_tensor:  # one value per tensor: NaN where the reference's is
            assert np.isnan(s).all() == np.isnan(np.asarray(e, np.float64)).all(), name
            case.check(s, e, name)
            continue
        assert np.isnan(s[nan]).all(), name
        if info.reduces:  # a state after a reduction (a master weight) NaN where the reference's is
            assert (np.isnan(s) == np.isnan(np.asarray(e, np.float64))).all(), name
        else:
            assert np.isfinite(s[~nan]).all(), name
        case.check(s, e, name)
