"""The optimizer sections of the specs -> context of ``generated/optim.py`` (optim.py.j2).

Each class becomes a subclass of the runtime's SpecOptimizer (optim.py) that carries data only:
its hyperparameters (names, kinds, defaults, bounds), the ops it may feed, and three small
functions printed from the expression trees (NumPy printer, float64 host values): which op
a group uses, the op's parameter values for a step, and the host state's initial values and
update. Every text of the spec reaches the file as an escaped string or docstring.
"""

from __future__ import annotations

import textwrap

from opgen.dtypes import BOOL_LITERALS
from opgen.escape import py_docstring, py_string
from opgen.expr.printers.numpy import NumpyPrinter
from opgen.spec.model import OpSpec
from opgen.spec.optimizer import CLASS_KEYWORDS, DTYPE_EPS, INITIAL, SHAPE_NAME, STEP_COUNT, OptimArg, OptimizerSpec
from opgen.targets.python_api import python_default

_PRINT = NumpyPrinter("_D")  # host values in double, as the kernels' per-call prologue
_PY_TYPES = {"float": "float", "int": "int", "bool": "bool", "floats": "tuple of float"}


def _literal(kind: str, text: str) -> str:
    if kind == "bool":
        return BOOL_LITERALS[text]
    if kind == "int":
        return str(int(text))
    return repr(float(text))


def default_source(arg: OptimArg) -> str:
    """The default as Python source: 0.001, (0.9, 0.999), False, (None, 0.001)."""
    kinds = ("float",) * len(arg.default) if arg.kind == "floats" else (arg.kind,)
    texts = ["None" if null else _literal(kind, text) for kind, text, null in zip(kinds, arg.default, arg.nullable or
                                                                                   (False,) * len(arg.default))]
    if arg.kind == "floats":
        return "(" + ", ".join(texts) + ("," if len(texts) == 1 else "") + ")"
    return texts[0]


def _reads(cls: OptimizerSpec, step: bool = False) -> list[str]:
    """The prologue of every generated function: each hyperparameter of the group, as the
    expressions name it (validated by the runtime before any function runs). A None (an
    argument with a null default) stays None, except in a step's values (``step``), where it
    reads as its none_is expression, after every other hyperparameter is read."""
    lines, nones = [], []
    for arg in cls.args:
        key = py_string(arg.name)
        if arg.kind == "floats":
            read = "(None if v is None else _D(v) for v in" if any(arg.nullable) else "(_D(v) for v in"
            lines.append(f"{', '.join(arg.element_names)}{',' if len(arg.element_names) == 1 else ''} = "
                         f"{read} group[{key}])")
        elif arg.kind == "float":
            lines.append(f"{arg.name} = None if group[{key}] is None else _D(group[{key}])" if any(arg.nullable) else
                         f"{arg.name} = _D(group[{key}])")
        else:
            lines.append(f"{arg.name} = {arg.kind}(group[{key}])")
        if step and arg.none_is is not None:
            nones += [f"{name} = _D({_PRINT.expr(arg.none_is)}) if {name} is None else {name}"
                      for name in arg.nullable_names]
    return lines + nones


def _class_context(cls: OptimizerSpec, by_name: dict[str, OpSpec]) -> dict:
    choices = []
    for k, choice in enumerate(cls.choices):
        op = by_name[choice.op]
        values = []
        for p in op.params:
            expr = cls.step_value(p.name)
            if expr is not None:
                source = _PRINT.expr(expr)
                values.append(f"bool({source})" if p.type.value == "bool" else
                              f"int({source})" if p.type.value == "int" else f"float({source})")
            else:
                values.append(python_default(p) if p.default is not None else "None")
        choices.append({"index": k, "op": op.name, "when": None if choice.when is None else _PRINT.expr(choice.when),
                        "params": values, "multi": op.has_multi})
    args = [{"name": a.name, "key": py_string(a.name), "kind": a.kind, "default": default_source(a), "count": len(a.default),
             "nullable": tuple(a.nullable) if any(a.nullable) else (),
             "low": a.low, "high": a.high, "below": a.below,
             "doc": arg_doc(a)} for a in cls.args]
    signature = ", ".join(["params"] + [f"{a.name}={default_source(a)}" for a in cls.args] +
                          ["*", "state_dtype=None", 'rounding="nearest"', "seed=0", "max_grad_norm=None",
                           "foreach=None", "fused=None",
                           "capturable=False", "differentiable=False"])
    assert all(k in signature for k in CLASS_KEYWORDS)
    return {
        "name": cls.class_name,
        "doc": py_docstring(_docstring(cls, by_name)),
        "args": args,
        "signature": signature,
        "choices": choices,
        "reads": _reads(cls),
        "step_reads": _reads(cls, step=True),
        "per_parameter": cls.per_parameter,
        "host": [{"name": h.name, "key": py_string(h.name), "init": _PRINT.expr(h.init), "next": _PRINT.expr(h.update)}
                 for h in cls.host_state],
        "init": [{"state": py_string(i.state), "value": None if i.value is None else _PRINT.expr(i.value)}
                 for i in cls.init],
        "checks": [{"condition": _PRINT.expr(c), "message": py_string(f"{cls.class_name}: {m}")}
                   for c, m, _ in cls.checks],
        "state_dtype": py_string(cls.state_dtype),
        "step_count": STEP_COUNT,
        "shape": SHAPE_NAME,
        "dtype_eps": DTYPE_EPS,
        "initial": INITIAL,
    }


def arg_doc(a: OptimArg) -> str:
    bounds = []
    if a.low is not None:
        bounds.append(f">= {a.low:g}")
    if a.high is not None:
        bounds.append(f"<= {a.high:g}")
    if a.below is not None:
        bounds.append(f"< {a.below:g}")
    text = a.doc.rstrip()
    if bounds:
        text = text.rstrip(".") + f" ({'each ' if a.kind == 'floats' else ''}{' and '.join(bounds)})."
    return text


def _docstring(cls: OptimizerSpec, by_name: dict[str, OpSpec]) -> list[str]:
    ops = ", ".join(f"`{o}`" for o in cls.ops)
    pages = "its page" if len(cls.ops) == 1 else "their pages"
    grid = [f"`{o}`" for o in cls.ops if by_name[o].grid is not None]
    how = ["per device and dtype of each parameter group" + (";" if grid else ".")] + \
        ([f"{' and '.join(grid)} one call per parameter (each (rows, cols) slice's rows and columns)."] if grid else [])
    lines = cls.doc.splitlines() + ["", f"A step calls {ops} (see {pages}): one multi-tensor kernel call",
                                    *how, "",
                                    "Parameters", "----------",
                                    "params : iterable of torch.Tensor or of dicts",
                                    "    The parameters, or parameter groups with their own hyperparameters."]
    for a in cls.args:
        lines.append(f"{a.name} : {_PY_TYPES[a.kind]}, optional")
        lines += ["    " + w for w in textwrap.wrap(f"{arg_doc(a)} Default: {default_source(a)}.", 88)]
    lines += ["state_dtype : torch.dtype, optional",
              f"    The dtype of new states: by default {'float32 beside 16-bit parameters' if cls.state_dtype == 'float32' else 'the parameter' + chr(39) + 's'}.",
              "    torch.float32 keeps float32 states beside bfloat16 or float16 parameters.",
              "rounding : {'nearest', 'stochastic'}, optional",
              "    How 16-bit parameters and states are stored; stochastic rounding draws its bits",
              "    from ``seed``, the group's index, and each tensor's step count.",
              "seed : int, optional",
              "    The seed of stochastic rounding. Default: 0.",
              "max_grad_norm : float, optional",
              "    Clip by the global gradient norm, fused into the step: the L2 norm of every dense",
              "    gradient of every group (``last_grad_norm`` after the step), and each gradient",
              "    element times min(1, max_grad_norm / (norm + 1e-6)) as the kernels load it, as",
              "    torch.nn.utils.clip_grad_norm_ before the step would (the gradients stay as they",
              "    are). The norm is this optimizer's parameters': refused for sharded (FSDP2)",
              "    parameters; under ZeroRedundancyOptimizer, clip with torch before the step.",
              "foreach, fused : optional",
              "    Accepted for compatibility with torch.optim: every step makes the fused calls above.",
              "capturable, differentiable : bool, optional",
              "    Must be False: CUDA-graph capture of the step and autograd through it are not supported."]
    return lines


def context(ops: list[OpSpec]) -> dict:
    by_name = {op.name: op for op in ops}
    classes = [_class_context(cls, by_name) for op in ops for cls in op.optimizers]
    used = sorted({c for op in ops for cls in op.optimizers for c in cls.ops})
    modules = [{"name": name, "multi": by_name[name].has_multi} for name in used]
    return {"classes": classes, "modules": modules, "class_names": [c["name"] for c in classes]}
