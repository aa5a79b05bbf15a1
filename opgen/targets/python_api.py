"""OpSpec -> context of the Python module template (op.py.j2) and the package's __init__."""

from __future__ import annotations

import dataclasses
import enum
import textwrap

from opgen.dtypes import BOOL_LITERALS, DTYPES, PARAM_KINDS
from opgen.escape import one_line, py_docstring, py_docstring_line, py_string
from opgen.expr.printers.numpy import NumpyPrinter
from opgen.expr.printers.pseudo import PseudoPrinter
from opgen.kinds import ArgRole, Schedule
from opgen.expr.tree import RefKind, VType
from opgen.spec.model import OUT, OpSpec, ParamSpec, ParamType, TensorRole
from opgen.spec.names import CLIP_ARGUMENT, OUT_ARGUMENT, PACKAGE_EXPORTS, ROUNDING_ARGUMENTS, group_name
from opgen.targets import abi, c_kernels

_PY_TYPES = {t: k.python for t, k in PARAM_KINDS.items()}
# How the generated module spells the ABI's classes and enums (its imports say the same).
_ALIASES = {abi.Arg: "_Arg", abi.Launch: "_Launch", abi.KernelABI: "_Kernel", abi.GridLayout: "_GridLayout",
            ArgRole: "_R", Schedule: "_S"}


def python_default(p: ParamSpec) -> str:
    """The default as Python source, from the spec's literal: 0 -> 0.0 for a float, 1e-8 stays."""
    assert p.default is not None
    if p.type is ParamType.BOOL:
        return BOOL_LITERALS[p.default]
    text = p.default.lstrip("+")
    if p.type is ParamType.FLOAT and not any(c in text for c in ".eE"):
        text += ".0"
    return text


def _param_list(params) -> list[str]:
    """Parameters in spec order. Python forbids a required positional parameter after one
    with a default: from the first default before a required parameter on, they become
    keyword-only (an optimizer may declare a required step count after ``epsilon=1e-8``)."""
    parts = [p.name if p.required else f"{p.name}={python_default(p)}" for p in params]
    last_required = max((k for k, p in enumerate(params) if p.required), default=-1)
    first_default = next((k for k, p in enumerate(params) if not p.required), len(params))
    if first_default < last_required:
        parts.insert(first_default, "*")
    return parts


# The rounding arguments every function takes after ``out``, keyword-only: their defaults and
# what they do, for the signatures, the docstrings and the docs pages alike.
ROUNDING_DEFAULTS = dict(zip(ROUNDING_ARGUMENTS, ('"nearest"', "None")))
ROUNDING_HELP = dict(zip(ROUNDING_ARGUMENTS, (
    "How values are stored into float16 and bfloat16 tensors (weight, states, out): to nearest even (the "
    "default), or stochastically, rounding up with probability equal to the distance from the value below, in "
    "units of the gap (unbiased: updates smaller than half an ulp are not lost). float32 and float64 stores are "
    "always exact roundings.",
    "The random bits of stochastic rounding, a pure function of (seed, tensor, stored tensor, element): the same "
    "on every backend and thread count. Required with rounding='stochastic'; vary it every step.")))
ROUNDING_TYPES = dict(zip(ROUNDING_ARGUMENTS, ("{'nearest', 'stochastic'}", "int")))


CLIP_HELP = (
    "Clip by the global gradient norm, fused into the update: with the L2 norm of every gradient of the call "
    "(in double, the same bits on any thread count), each gradient element is multiplied by "
    "min(1, max_grad_norm / (norm + 1e-6)) in the math type as it is loaded (torch.nn.utils.clip_grad_norm_'s "
    "factor; a non-finite norm gives a non-finite factor, as there). The gradients themselves are not changed. "
    "None (the default): no clipping.")


def _keyword_tail(parts: list[str], multi: bool = False) -> list[str]:
    """``out=None``, then the rounding arguments (and a multi-tensor call's clipping), keyword-only."""
    return parts + ["out=None"] + ([] if any(p.startswith("*") for p in parts) else ["*"]) + \
        [f"{name}={default}" for name, default in ROUNDING_DEFAULTS.items()] + ([f"{CLIP_ARGUMENT}=None"] * multi)


def clip_doc() -> list[str]:
    """The numpydoc entry of the clipping argument."""
    return [f"{CLIP_ARGUMENT} : float, optional", *("    " + w for w in _wrap(CLIP_HELP))]


def signature(op: OpSpec) -> str:
    if op.multi is not None:
        return interleaved_signature(op)
    return ", ".join(_keyword_tail([t.name for t in op.tensors] + _param_list(op.params)))


def multi_signature(op: OpSpec) -> str:
    return ", ".join(_keyword_tail([group_name(t.name) for t in op.tensors] + _param_list(op.math_params), multi=True))


def rounding_doc() -> list[str]:
    """The numpydoc entries of the rounding arguments."""
    return [line for name in ROUNDING_ARGUMENTS
            for line in [f"{name} : {ROUNDING_TYPES[name]}, optional", *("    " + w for w in _wrap(ROUNDING_HELP[name]))]]


def multi_docstring(op: OpSpec) -> list[str]:
    weights = group_name(op.weight.name)
    lines = [f"{op.name} on many tensors in one call: one C kernel, one parallel region.", "",
             f"Tensor ``i`` is ({', '.join(f'{group_name(t.name)}[i]' for t in op.tensors)}); each list",
             "holds one array per tensor, and shapes may differ between tensors. Every parameter",
             "is one value for all tensors or a sequence with one value per tensor. Semantics",
             f"and defaults are those of `{op.name}`, applied to each tensor.", "",
             "Parameters", "----------"]
    for t in op.tensors:
        lines += [f"{group_name(t.name)} : sequence of numpy.ndarray",
                  f"    {t.doc.rstrip('.')}, one per tensor. {tensor_doc(op, t, dense_only=True)}"]
    for p in op.math_params:
        lines += _param_doc(p, f"{_PY_TYPES[p.type]} or sequence of {_PY_TYPES[p.type]}")
    if op.reduction:
        lines += [f"{OUT_ARGUMENT} : numpy.ndarray, optional", *("    " + w for w in _wrap(multi_out_doc(op))),
                  *rounding_doc(), "", "Returns", "-------", "numpy.ndarray", f"    `out`, holding {result_doc(op)}."]
        return _docstring_body(lines)
    lines += [f"{OUT_ARGUMENT} : sequence of numpy.ndarray, optional",
              f"    Arrays that receive the new {op.weight.name}s; `out={weights}` updates in place.",
              *rounding_doc(), *clip_doc(), "", "Returns", "-------", "list of numpy.ndarray",
              f"    The new {op.weight.name}s."]
    return _docstring_body(lines)


def multi_out_doc(op: OpSpec) -> str:
    """A reduction op's multi-tensor ``out``: one value per tensor, or one for the call."""
    dtype = op.output_dtype or f"the dtype of `{op.weight.name}`"
    if op.across is None:
        return (f"The array ({dtype}, one element per tensor: shape (count,)) that receives each tensor's "
                f"`{op.output}`. By default a new array.")
    reset = (f" With `{op.reset}` false, the value `out` holds before the call is combined too (`out` is then "
             "required)." if op.reset else "")
    return (f"The one-element array ({dtype}) that receives the {op.across} of the tensors' `{op.output}`. By "
            f"default a new array.{reset}")


def result_doc(op: OpSpec) -> str:
    if op.reduction:
        return f"`{op.output}`"
    return f"the new `{op.output}`" if op.output else f"the new {op.weight.name}"


def out_doc(op: OpSpec) -> str:
    if op.reduction:
        if op.multi is not None:
            return multi_out_doc(op)
        return (f"The one-element array ({op.output_dtype or f'the dtype of `{op.weight.name}`'}, shape (1,) or ()) "
                f"that receives `{op.output}`. By default a new array of shape (1,).")
    if op.output:
        dtype = f"{op.output_dtype}, " if op.output_dtype else ""
        return (f"The array ({dtype}the {op.weight.name}'s shape) that receives `{op.output}`. By default a new "
                f"array; the {op.weight.name} is never modified.")
    return (f"The array that receives the new {op.weight.name}; pass `out={op.weight.name}` to update in place. "
            f"By default a new array, leaving `{op.weight.name}` as it was.")


def state_dtype_rule() -> str:
    """Which dtypes free states may have, from the dtype table: for messages and docs."""
    others = {}
    for d in DTYPES:
        for s in d.other_states:
            others.setdefault(s, []).append(d.name)
    return "the weight's, or " + ", or ".join(f"{s} beside a {' or '.join(ws)} weight" for s, ws in others.items())


def tensor_doc(op: OpSpec, t, dense_only: bool = False) -> str:
    """What the API does with a tensor, for docstrings and docs pages (``dense_only``: in a
    multi-tensor call, which takes dense gradients only)."""
    fixed = f" Always {t.dtype}." if t.dtype else ""
    if t.role is TensorRole.WEIGHT:
        return "Read only." if op.output else "Its new value is written into `out`."
    if t.role is TensorRole.GRAD:
        if not op.row_sparse.dense:
            return "A RowSparseArray (this op has no dense update)." + fixed
        sparse = bool(op.row_sparse_schedules) and not dense_only
        return ("Dense, or a RowSparseArray." if sparse else "Dense.") + fixed
    if t.role is TensorRole.SCALAR:
        return "A number, or an array holding one element."
    if t.role is TensorRole.INPUT and op.reduction:
        first = t.name == op.weight.name
        return "Read only." if first else f"Read only; the shape and dtype of `{op.weight.name}`."
    if t.role is TensorRole.INPUT:
        return "Read only; the weight's shape" + (f", always {t.dtype}." if t.dtype else " and dtype.")
    per_row = (" One value per row of each (rows, cols) slice (shape (..., rows) or (..., rows, 1))." if op.grid
               else " One value per row (shape (rows,) or (rows, 1)).") if t.per_row else \
        " One value per column of each (rows, cols) slice (shape (..., cols) or (..., 1, cols))." if t.per_col else \
        " One value per tensor (shape (1,) or ()), updated once per call." if t.per_tensor else ""
    free = f" Its dtype: {state_dtype_rule()}; the states share one." if t.role is TensorRole.STATE and not t.dtype \
        else ""
    return "Updated in place." + per_row + fixed + free


def param_note(p) -> str:
    """Range and compatibility notes of a parameter."""
    notes = []
    if p.bounds_text:
        notes.append(f"Must lie in [{p.bounds_text[0]}, {p.bounds_text[1]}].")
    if p.ignored:
        notes.append("Accepted for compatibility and ignored.")
    return (" " + " ".join(notes)) if notes else ""


def _param_doc(p, type_text: str, note: str = "") -> list[str]:
    """A numpydoc entry for a parameter: name, type, optional, wrapped description."""
    optional = "" if p.required else ", optional"
    default = "" if p.required else f" Default: {python_default(p)}."
    return [f"{p.name} : {type_text}{optional}"] + \
        ["    " + line for line in _wrap(f"{p.doc}{note}{param_note(p)}{default}")]


def _docstring_body(lines: list[str]) -> list[str]:
    """The docstring literal, indented for a function body. Every docstring builder ends
    here, so spec text is escaped the same way in all of them: it cannot end the string."""
    return py_docstring(lines)


def skip_if_text(op: OpSpec) -> str:
    """The skip condition as docs show it: printed from the tree, not the spec's text."""
    return PseudoPrinter().expr(op.skip_if) if op.skip_if is not None else ""


def _head(op: OpSpec) -> list[str]:
    """The summary, then the description as written."""
    return _wrap(op.summary, "") + ([""] + op.description.splitlines() if op.description else [])


def _wrap(text: str, indent: str = "    ") -> list[str]:
    return textwrap.wrap(" ".join(text.split()), width=88 - len(indent)) or [""]


def docstring(op: OpSpec) -> list[str]:
    """The numpydoc docstring, as lines indented for a function body."""
    lines = _head(op) + ["", "Parameters", "----------"]
    for t in op.tensors:
        kind = "numpy.ndarray or RowSparseArray" if t.role is TensorRole.GRAD and op.row_sparse_schedules \
            else "numpy.ndarray"
        lines.append(f"{t.name} : {kind}")
        lines += ["    " + line for line in _wrap(f"{t.doc.rstrip('.')}. {tensor_doc(op, t)}")]
    for p in op.params:
        lines += _param_doc(p, _PY_TYPES[p.type])
    lines += ["out : numpy.ndarray, optional"]
    lines += ["    " + line for line in _wrap(out_doc(op))]
    lines += rounding_doc()
    lines += ["", "Returns", "-------", "numpy.ndarray", f"    `out`, holding {result_doc(op)}.", "",
              "Notes", "-----", "The update, per element::", ""]
    printer = PseudoPrinter()
    lines += ["    " + printer.statement(s) for s in op.math.statements]
    if op.skip_if is not None:
        lines += ["", f"When ``{skip_if_text(op)}``, the call changes nothing: no state is updated and `out`"
                      " is not written."]
    lines += ["", f"Generated by opgen from {op.path}."]
    return _docstring_body(lines)


def numpy_lines(op: OpSpec) -> list[str]:
    """The NumPy kernel's body. As in the C and CUDA kernels, the per-call values are
    computed in double, then each (and each float parameter the body reads) is rounded once
    to the math type ``_T``; the element math follows."""
    from opgen.expr.tree import VType

    if op.grid is not None:
        return _numpy_grid_lines(op)
    if op.totals is not None:
        return _numpy_total_lines(op)
    program = op.program
    lines = [NumpyPrinter("_D").statement(s) for s in program.prologue]
    real = [name for name, kind in zip(op.kernel_scalars, [ParamType.FLOAT] * (len(op.scalars) + len(op.per_tensor_states))
                                       + [p.type for p in op.math_params]) if kind is ParamType.FLOAT]
    real += [NumpyPrinter().statement(s).split(" = ")[0] for s in program.prologue if s.expr.vtype is VType.REAL]
    real = list(dict.fromkeys(real))
    if real:
        lines.append(f"{', '.join(real)}{',' if len(real) == 1 else ''} = {', '.join(f'_T({n})' for n in real)}"
                     f"{',' if len(real) == 1 else ''}")
    printer = NumpyPrinter()
    return lines + [printer.statement(s) for s in program.body]


class _MultiPassLines:
    """The lines of a NumPy kernel that runs in passes (whole-tensor reductions, grid ops),
    as its C kernel does: per stage, the per-call values in double and their rounded copies
    (``_t_`` names, which the element math reads, so later stages still read the double
    values); per pass, a function of its own (its assignments must not rebind the update's
    inputs) returning each reduction's summands, computed where its marker stands."""

    def __init__(self, op: OpSpec) -> None:
        self.op, self.lines = op, []
        arrays = op.grid is not None  # (per-slice values: arrays)
        self.double = NumpyPrinter("_D", arrays=arrays)
        kinds = [ParamType.FLOAT] * (len(op.scalars) + len(op.per_tensor_states)) + [p.type for p in op.math_params]
        self.reals = [name for name, kind in zip(op.kernel_scalars, kinds) if kind is ParamType.FLOAT]
        self.rounded = set(self.reals)
        self.element = NumpyPrinter(rounded=self.rounded, arrays=arrays)  # (reads the rounded set as it grows)
        self.arrays = ", ".join(t.name for t in op.arrays)

    def round(self, names: list[str]) -> None:
        names = list(dict.fromkeys(names))
        self.rounded.update(names)
        if names:
            self.lines.append(f"{', '.join('_t_' + n for n in names)}{',' if len(names) == 1 else ''} = "
                              f"{', '.join(f'_T({n})' for n in names)}{',' if len(names) == 1 else ''}")

    def stage(self, k: int, statements) -> None:
        self.lines.extend(self.double.statement(s) for s in statements)
        self.round((self.reals if k == 0 else []) + [self.double.statement(s).split(" = ")[0] for s in statements
                                                     if s.expr.vtype.value == "real"])

    def pass_function(self, level: int, steps, marked, order, summand) -> None:
        """``_s``: the pass's summands, by their place in ``order``."""
        self.lines.append(f"def _pass{level}({self.arrays}):")
        for s in steps:
            if s.kind is RefKind.TOTAL:
                self.lines.append(f"    _s{order.index(marked(s))} = {self.element.expr(summand(marked(s)))}")
            else:
                self.lines.append(f"    {self.element.statement(s)}")
        self.lines += [f"    return ({''.join(f'_s{k}, ' for k in range(len(order)))})",
                       f"_s = _pass{level}({self.arrays})"]

    def total(self, t, summand: str, size: str, reduce: str = "total") -> str:
        """A total finished (npmath.<reduce>_<how>, finish_<how>: in double), its name."""
        name = self.element.ref_name(RefKind.TOTAL, str(t.index))
        self.lines.append(f"{name} = _m.finish_{t.finish}(_m.{reduce}_{t.how}({summand}), {size})")
        return name


def _numpy_grid_lines(op: OpSpec) -> list[str]:
    """The NumPy kernel of a grid op (opgen.expr.grid), level by level as its C kernel runs,
    over the weight's elements ``(..., rows, cols)``, per-row values ``(..., rows, 1)``,
    per-column ones ``(..., 1, cols)`` (slots ``_r<k>``, ``_c<k>``) and per-slice totals of
    them ``(..., 1, 1)``, broadcasting as the math reads them. Each level: its element pass, its row and column means and sums
    (npmath.grid_row_mean...: in double, rounded to the math type), its reductions of
    per-row and per-column values, its per-call values, then its row and column statements."""
    from opgen.expr.grid import Shape
    from opgen.expr.tree import Assign as _Assign

    g, out = op.grid, _MultiPassLines(op)
    element, slot = out.element, {Shape.ROW: RefKind.ROWVAL, Shape.COL: RefKind.COLVAL}
    for level in range(g.levels + 1):
        p = g.pass_at(level)
        totals = []
        if p is not None:
            order = list(p.totals) + list(p.means)
            out.pass_function(level, p.steps, p.marked, order, lambda x: x.arg)
            for k, x in enumerate(order):
                if k < len(p.totals):
                    totals.append(out.total(x, f"_s[{k}]", f"_np.size({op.weight.name})"))
                else:
                    out.lines.append(f"{element.ref_name(slot[x.shape], str(x.slot))} = _T(_m.grid_{x.func}(_s[{k}]))")
        for v in g.vector_totals_at(level):  # (one per slice)
            arg = element.expr(v.total.arg)
            totals.append(out.total(v.total, arg, f"_m.grid_count({arg})", reduce="grid_total"))
        out.round(totals)
        out.stage(level, g.prologue_of(op.program.prologue, level))
        for shape in (Shape.ROW, Shape.COL):
            for v in g.vectors_at(level, shape):
                out.lines.append(element.statement(_Assign(str(v.slot), slot[shape], v.statement.expr,
                                                           v.statement.source, v.statement.location)))
    return out.lines + [element.statement(s) for s in g.update]


def _numpy_total_lines(op: OpSpec) -> list[str]:
    """The NumPy kernel of an op with whole-tensor reductions, as its C kernel runs: per
    pass, its element statements over the whole arrays and its totals, accumulated in double
    (npmath.total_sum, total_max) and finished (npmath.finish_<how>); per stage, the per-call
    values (_MultiPassLines)."""
    totals, out = op.totals, _MultiPassLines(op)
    out.stage(0, totals.prologue_of(op.program.prologue, 0))
    for p in totals.passes:
        out.pass_function(p.level, p.steps, p.total_at, list(p.totals), lambda t: t.summand)
        out.round([out.total(t, f"_s[{k}]", f"_np.size({op.weight.name})") for k, t in enumerate(p.totals)])
        out.stage(p.level, totals.prologue_of(op.program.prologue, p.level))
    return out.lines + [out.element.statement(s) for s in op.program.body]


def py_literal(value, shared: dict | None = None) -> str:
    """Python source for the ABI's frozen records: constructor calls of the aliases the
    generated module imports, fields that differ from their defaults as keywords; a value
    in ``shared`` is spelt by its name there."""
    if shared and isinstance(value, tuple) and value in shared:
        return shared[value]
    if dataclasses.is_dataclass(value):
        parts = []
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.default is not dataclasses.MISSING:
                if v == f.default:
                    continue
                parts.append(f"{f.name}={py_literal(v, shared)}")
            else:
                parts.append(py_literal(v, shared))
        return f"{_ALIASES[type(value)]}({', '.join(parts)})"
    if isinstance(value, enum.Enum):
        return f"{_ALIASES[type(value)]}.{value.name}"
    if isinstance(value, tuple):
        return "(" + ", ".join(py_literal(v, shared) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, (str, int, bool)) or value is None:
        return repr(value)
    raise TypeError(f"no literal for {type(value).__name__}")


def kernel_table(op: OpSpec) -> tuple[list[tuple[str, str]], list[str]]:
    """The kernel ABIs as module data: each schedule's argument tuple once, then one
    record per kernel that refers to it."""
    kernels = abi.kernels(op)
    arg_sets: dict[tuple, str] = {}
    for k in kernels:
        arg_sets.setdefault(k.args, f"_ARGS_{k.schedule.name}")
    records = [py_literal(k, arg_sets) for k in kernels]
    return [(name, py_literal(a)) for a, name in arg_sets.items()], records


def context(op: OpSpec) -> dict:
    printer = NumpyPrinter()
    # a per-tensor state's new value: its last per-call value, rounded to the math type as
    # the C kernels store it (_t_ names in the multi-pass kernels, rebound in place otherwise)
    rounded = "_t_" if op.totals is not None else ""
    if op.output_per_call:  # (an int or bool per-call value is not rounded: it has no _t_ name)
        final = op.final_value(op.output)
        real = next(st for st in op.program.prologue if st.target == final).expr.vtype is VType.REAL
        output = f"{rounded if real else ''}{final}"
    else:
        output = op.output
    results = [output if op.output else op.weight.name] + [
        f"{rounded}{op.final_value(t.name)}" if t.per_tensor else _grid_result(op, t.name) for t in op.states]
    rs = op.row_sparse
    arg_sets, records = kernel_table(op)
    fast = c_kernels.fast_context(op)
    return {
        "op": op.name,
        "spec": py_string(op.path),
        "module_doc": py_docstring_line(one_line(f"{op.name}: {op.summary}")),
        "kernel_args": ", ".join([t.name for t in op.tensors] + [p.name for p in op.math_params]),
        "numpy_lines": numpy_lines(op),
        "numpy_return": ", ".join(results),
        # (-1: a per-tensor state, stored rounded to nearest by every backend)
        "store_slots": _tuple(["-1" if op.output_per_call else str(op.store_slot(OUT if op.output else op.weight.name))]
                              + ["-1" if s.per_tensor else str(op.store_slot(s.name)) for s in op.states]),
        "tensors": [{"name": t.name, "role": t.role.value, "dtype": repr(t.dtype), "per_row": t.per_row,
                     "per_col": t.per_col, "per_tensor": t.per_tensor}
                    for t in op.tensors],
        "params": [{"name": p.name, "type": p.type.value, "in_kernel": p in op.math_params,
                    "bounds": repr(p.bounds), "required": p.required} for p in op.params],
        "output": repr(op.output is not None),
        "output_dtype": repr(op.output_dtype),
        "reduction": op.reduction,
        "operator_class": "_ReduceOperator" if op.reduction else "_Operator",
        "across": py_string(op.across) if op.across else "None",
        "reset": py_string(op.reset) if op.reset else "None",
        "reduces": repr(op.reduces_whole),
        "plain_call": repr(op.plain_call),
        "fast_register": repr(c_kernels.fast_register(op)),
        "weight_name": op.weight.name,
        "fast_args": ", ".join([*(t.name for t in op.tensors), *(p.name for p in op.params)]) if fast else "",
        "skip_if": printer.expr(op.skip_if) if op.skip_if is not None else None,
        "skip_args": ", ".join(op.kernel_scalars),
        "has_multi": len(op.entry_points) > 1,
        "multi_entry": op.entry_points[-1],
        "exports": f"[{', '.join(py_string(name) for name in op.entry_points)}]",
        "interleaved": op.multi is not None,
        "interleaved_docstring": interleaved_docstring(op) if op.multi else [],
        "interleaved_args": _tuple("None" if op.multi and p.name in op.multi.trailing else _public(op, p)
                                   for p in op.math_params),
        "trailing": trailing_table(op) if op.multi else "()",
        "count": op.multi.count if op.multi else "",
        "labels": repr(op.multi.per_tensor) if op.multi else "()",
        "per_tensor": repr(op.multi.per_tensor) if op.multi else "None",
        "lazy_param": repr(rs.lazy_param),
        "always_lazy": repr(rs.always_lazy),
        "arg_sets": arg_sets,
        "kernel_records": records,
        "signature": signature(op),
        "docstring": docstring(op),
        "tensor_names": _tuple(t.name for t in op.tensors),
        "param_names": _tuple(p.name for p in op.params),
        "multi_signature": multi_signature(op),
        "multi_docstring": multi_docstring(op),
        "group_names": _tuple(group_name(t.name) for t in op.tensors),
        "group_name_strings": repr(tuple(group_name(t.name) for t in op.tensors)),
        "multi_param_names": _tuple(p.name for p in op.math_params),
    }


def _grid_result(op: OpSpec, name: str) -> str:
    """A state's new value in the NumPy kernel: its name, or a grid op's slot of it."""
    from opgen.expr.grid import Shape

    if op.grid is not None:
        for state, shape, slot in op.grid.stores:
            if state == name:
                return NumpyPrinter().ref_name(RefKind.ROWVAL if shape is Shape.ROW else RefKind.COLVAL, str(slot))
    return name


def _tuple(names) -> str:
    """Python source of a tuple of the given names: (), (a,) or (a, b)."""
    names = list(names)
    return f"({names[0]},)" if len(names) == 1 else f"({', '.join(names)})"


def package_context(ops: list[OpSpec]) -> dict:
    return {"ops": [op.name for op in ops], "entry_points": [op.entry_points for op in ops],
            "exports": PACKAGE_EXPORTS, "doc": py_docstring_line(
                "Optimizer update operators generated by opgen, one module per spec.")}


def _public(op: OpSpec, p) -> str:
    """A parameter's name in the signature: its per-tensor list's name under ``multi``."""
    return dict(op.multi.per_tensor).get(p.name, p.name) if op.multi else p.name


def interleaved_signature(op: OpSpec) -> str:
    """MXNet's multi-tensor convention: the arrays first (the trailing parameters' among
    them), every other parameter keyword-only."""
    return ", ".join(_keyword_tail(["*data"] + [_public(op, p) if p.required else f"{p.name}={python_default(p)}"
                                                for p in op.params if p.name not in op.multi.trailing],
                                               multi=not op.reduction))


def trailing_table(op: OpSpec) -> str:
    """Each trailing parameter: (its position among the call's parameters, its public name,
    whether it has one value per tensor, its default or None)."""
    params = list(op.math_params)
    per_tensor = dict(op.multi.per_tensor)
    rows = []
    for name in op.multi.trailing:
        p = next(q for q in params if q.name == name)
        default = "None" if p.required else python_default(p)
        rows.append(f"({params.index(p)}, {py_string(per_tensor.get(name, name))}, {name in per_tensor}, {default})")
    return "(" + "".join(f"{r}, " for r in rows) + ")"


def interleaved_docstring(op: OpSpec) -> list[str]:
    group = ", ".join(f"{t.name}_i" for t in op.tensors)
    lines = _head(op) + ["", "Parameters", "----------", "*data : numpy.ndarray"]
    lines += ["    " + line for line in _wrap(
        f"One flat sequence of groups ({group}) for i = 0 .. {op.multi.count} - 1; each tensor is "
        + ("reduced as in the math below. " if op.reduction else "updated as in the per-element math below. ")
        + " ".join(
            f"`{t.name}_i`: {t.doc.rstrip('.')}. {tensor_doc(op, t, dense_only=True)}" for t in op.tensors))]
    for name in op.multi.trailing:
        p = next(q for q in op.params if q.name == name)
        public = _public(op, p)
        what = f"an array of one `{p.name}` per tensor" if public != p.name else f"a one-element array: `{p.name}`"
        lines += ["    " + line for line in _wrap(f"After the groups, `{public}`: {what}. {p.doc}")]
    for p in op.params:
        if p.name in op.multi.trailing:
            continue
        public = _public(op, p)
        if public != p.name:
            lines += [f"{public} : sequence of float", f"    One `{p.name}` per tensor: {p.doc}"]
            continue
        note = " The number of tensors in `data`." if p.name == op.multi.count else ""
        lines += _param_doc(p, _PY_TYPES[p.type], note)
    if op.reduction:
        lines += ["out : numpy.ndarray, optional", *("    " + w for w in _wrap(multi_out_doc(op))), *rounding_doc(),
                  "", "Returns", "-------", "numpy.ndarray", f"    `out`, holding {result_doc(op)}.", "", "Notes",
                  "-----", "The math of each tensor::", ""]
    else:
        lines += ["out : list of numpy.ndarray, optional",
                  f"    Arrays that receive the new {op.weight.name}s; pass the weights to update in place.",
                  *rounding_doc(), *clip_doc(), "", "Returns", "-------", "list of numpy.ndarray",
                  f"    The new {op.weight.name}s.", "", "Notes", "-----", "The update of each tensor, per element::",
                  ""]
    printer = PseudoPrinter()
    lines += ["    " + printer.statement(s) for s in op.math.statements]
    lines += ["", f"Generated by opgen from {op.path}."]
    return _docstring_body(lines)
