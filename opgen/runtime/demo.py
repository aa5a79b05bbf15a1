"""``python -m generated OP``: one step of an op on a few numbers, C against the NumPy reference."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

import numpy as np

from opgen.runtime.backends import available_backends, use_backend

# Demo inputs: the weight, the gradient, then each state's starting value.
_WEIGHT = [1.0, -0.5, 2.0, 0.25]
_GRAD = [1.0, -1.0, 0.5, 0.0]
_STATE = [0.0, 0.0, 0.0, 0.0]
_REQUIRED = {"float": 0.1, "int": 1, "bool": True}


def main(ops: dict[str, Callable], argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ops:
        print(f"usage: python -m generated OP   (OP: {', '.join(ops)})", file=sys.stderr)
        return 2
    op = ops[args[0]]
    signature = inspect.signature(op)
    tensors, params = [], {}
    for name, p in signature.parameters.items():
        if name == "out":
            continue
        if p.default is inspect.Parameter.empty and not params and len(tensors) < _count_tensors(op):
            tensors.append(name)
        elif p.default is inspect.Parameter.empty:
            params[name] = _REQUIRED[_param_type(op, name)]
    values = [_WEIGHT, _GRAD] + [_STATE] * (len(tensors) - 2)
    results = {}
    for backend in available_backends():
        arrays = [np.array(v, np.float32) for v in values]
        with use_backend(backend):
            new_weight = op(*arrays, **params)
        results[backend] = (new_weight, arrays)
    shown = ", ".join(tensors + [f"{k}={v}" for k, v in params.items()])
    print(f"{args[0]}({shown}), float32, one step, other parameters at their defaults")
    new_weight, arrays = results[available_backends()[0]]
    print(f"  {tensors[0]:>10} {_fmt(values[0])}  ->  {_fmt(new_weight)}")
    print(f"  {tensors[1]:>10} {_fmt(values[1])}")
    for name, before, after in zip(tensors[2:], values[2:], arrays[2:]):
        print(f"  {name:>10} {_fmt(before)}  ->  {_fmt(after)}")
    if "c" in results:
        same = all(np.array_equal(a, b) for a, b in zip([results["c"][0], *results["c"][1]],
                                                        [results["numpy"][0], *results["numpy"][1]]))
        print(f"C kernel and NumPy reference agree bit for bit: {'yes' if same else 'NO'}")
    else:
        print("no C compiler: ran the NumPy reference backend")
    return 0


def _count_tensors(op: Callable) -> int:
    return len(op.__globals__["_OP"].tensors)


def _param_type(op: Callable, name: str) -> str:
    return next(p.type for p in op.__globals__["_OP"].params if p.name == name)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v): .6f}" for v in values) + "]"
