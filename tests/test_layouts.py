"""Non-contiguous arrays work for every op with a dense update: they are copied in and out,
the caller's views see the update and nothing outside them is written (README: "Non-contiguous
arrays work")."""

from __future__ import annotations

import numpy as np
import pytest

import cases
from cases import DTYPE_IDS, DTYPES, PARAMS

LAYOUTS = ["stride2", "transposed", "fortran", "negative_stride"]
OUT_MODES = ["none", "weight", "strided_out"]
OPS = cases.ops(lambda o: o.dense and not o.multi)
CASES = [(op, out_mode) for op in OPS for out_mode in OUT_MODES
         if not (out_mode == "weight" and cases.op(op).output)]  # an output op only reads the weight


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


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("op", OPS)
def test_non_contiguous(backend, op, dtype):
    """Every layout with every out mode (an output op, which only reads the weight: no
    out=weight)."""
    for layout in LAYOUTS:
        for out_mode in OUT_MODES:
            if (op, out_mode) in CASES:
                _non_contiguous(op, dtype, layout, out_mode)


def _non_contiguous(op, dtype, layout, out_mode):
    where = f"{op} {layout} out={out_mode}"
    info = cases.op(op)
    params = cases.step_params(op, PARAMS[op]["mixed"])
    made = cases.make_case(op, 41, (10, 9), dtype, params)
    # (a per-tensor state has one element: no layout to vary)
    elementwise = [s for s in info.states if s not in info.per_tensor]
    names = (info.weight, info.grad, *elementwise, *info.inputs)
    bases = {n: made.arrays[n] for n in names}
    bases0 = {n: a.copy() for n, a in bases.items()}
    views = {n: _view(bases[n], layout) for n in names}
    case = cases.Case(op, {**made.arrays, **views}, params, dtype)
    case.new_scalars()
    weight = case.weight
    if layout != "fortran":
        assert not weight.flags.c_contiguous, where
    contiguous = cases.Case(op, {n: np.ascontiguousarray(a) if isinstance(a, np.ndarray) else a
                                 for n, a in case.arrays.items()}, params, dtype)
    expected = contiguous.expected()
    w_before = weight.copy()
    out_base = None
    if out_mode == "none":
        out = None
    elif out_mode == "weight":
        out = weight
    else:
        out_base = np.zeros((weight.shape[0] * 2,) + weight.shape[1:], dtype=info.out_dtype(dtype))
        out = out_base[1::2]

    result = case(out=out)
    if out is not None:
        assert result is out, where
    case.check(result, expected[0], f"{where} weight")
    if out_mode != "weight":
        assert weight.tobytes() == w_before.tobytes(), where
    if out_base is not None:
        assert not out_base[0::2].any(), f"{where}: only the out view may be written"
    case.check_states(expected[1:], f"{where} in the caller's view")  # states updated in place

    if layout in ("stride2", "negative_stride"):
        # the elements outside the views are untouched
        sel = np.ones(bases[info.weight].shape, dtype=bool)
        sel[(slice(None, None, 2),) if layout == "stride2" else (slice(None, None, -1), slice(None, None, 3))] = False
        for n in (info.weight, *elementwise):
            assert bases[n][sel].tobytes() == bases0[n][sel].tobytes(), f"{where}: {n}"
    if layout != "fortran":  # a real view of the caller's base array: the base sees the update
        if out_mode == "weight":
            case.check(_view(bases[info.weight], layout), expected[0], f"{where} base weight view")
        for n, e in zip(info.states, expected[1:], strict=True):
            if n in elementwise:
                case.check(_view(bases[n], layout), e, f"{where} base {n} view")
