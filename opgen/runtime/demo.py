"""``python -m generated OP``: one step of an op on a few numbers, C against the NumPy reference."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from opgen.dtypes import ParamType
from opgen.kinds import TensorRole
from opgen.runtime.backends import available_backends, use_backend
from opgen.runtime.rowsparse import RowSparseArray

# Demo inputs: the weight, the gradient, then each state's starting value.
_WEIGHT = [1.0, -0.5, 2.0, 0.25]
_GRAD = [1.0, -1.0, 0.5, 0.0]
_STATE = [0.0, 0.0, 0.0, 0.0]
_REQUIRED = {ParamType.FLOAT: 0.1, ParamType.INT: 1, ParamType.BOOL: True}


def _inputs(operator) -> tuple[list, dict, list[str]]:
    """Arrays and required parameters for one step, built from the tensors' roles."""
    arrays, shown = [], []
    grid = "grid" in operator.schedules  # a 2-D weight, with per-row and per-column values
    shape = (2, 2) if grid else (4,)
    for t in operator.tensors:
        dtype = np.dtype(t.dtype) if t.dtype else np.float32
        if t.role is TensorRole.SCALAR:
            arrays.append(1.0)
        elif t.role in (TensorRole.WEIGHT, TensorRole.INPUT):  # an input: a master copy, say
            arrays.append(np.array(_WEIGHT, dtype).reshape(shape))
        elif t.role is TensorRole.GRAD:
            grad = np.array(_GRAD, dtype).reshape(shape)
            # an op without a dense update gets every row as a row-sparse gradient
            arrays.append(grad if operator.schedules & {"dense", "grid"} else RowSparseArray(grad, np.arange(4), (4,)))
        elif t.per_tensor:  # one value per tensor
            arrays.append(np.zeros(1, dtype))
        elif grid and (t.per_row or t.per_col):
            arrays.append(np.zeros(2, dtype))
        else:
            arrays.append(np.array(_STATE, dtype).reshape(shape))
        shown.append(t.name)
    params = {p.name: _REQUIRED[p.type] for p in operator.params if p.required}
    return arrays, params, shown


def _run(op: Callable, operator, interleaved, arrays: list, params: dict, trailing: tuple = ()):
    if interleaved is None:
        return op(*arrays, **params)
    per_tensor = {public: [params.pop(name)] for name, public in interleaved}
    tail = []
    for _, public, _, default in trailing:  # arrays after the groups: their values, or defaults
        value = per_tensor.pop(public, None) or [params.pop(public, default)]
        tail.append(np.array(value, np.float32))
    return op(*arrays, *tail, **params, **per_tensor)[0]


def main(ops: dict[str, tuple[Callable, object, object]], argv: list[str] | None = None,
         package: str = "generated") -> int:
    """``ops``: name -> (function, its Operator, its per-tensor list names or None, its
    trailing arrays: (position, name, one per tensor, default))."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ops:
        print(f"usage: python -m {package} OP   (OP: {', '.join(ops)})", file=sys.stderr)
        return 2
    op, operator, interleaved, trailing = ops[args[0]]
    results = {}
    for backend in available_backends():
        arrays, params, names = _inputs(operator)
        with use_backend(backend):
            result = _run(op, operator, interleaved, arrays, dict(params), trailing)
        results[backend] = (result, arrays)
    arrays, params, names = _inputs(operator)
    shown = ", ".join(names + [f"{k}={v}" for k, v in params.items()])
    print(f"{args[0]}({shown}), one step, other parameters at their defaults")
    result, after = results[available_backends()[0]]
    if operator.output:
        print(f"  {'result':>10} {_fmt(result)}")
    else:
        weight = names[operator.weight_index]
        print(f"  {weight:>10} {_fmt(arrays[operator.weight_index])}  ->  {_fmt(result)}")
    for t, before, now in zip(operator.tensors, arrays, after):
        if t.role is TensorRole.STATE:
            print(f"  {t.name:>10} {_fmt(before)}  ->  {_fmt(now)}")
    if "c" in results:
        same = all(np.array_equal(_dense(a), _dense(b)) for a, b in
                   zip([results["c"][0], *results["c"][1]], [results["numpy"][0], *results["numpy"][1]]))
        print(f"C kernel and NumPy reference agree bit for bit: {'yes' if same else 'NO'}")
    else:
        print("no C compiler: ran the NumPy reference backend")
    return 0


def _dense(value):
    return value.todense() if isinstance(value, RowSparseArray) else np.asarray(value)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v): .6f}" for v in np.asarray(values).reshape(-1)) + "]"
