"""OpSpec -> context of the documentation templates (op.md.j2, index.md.j2)."""

from __future__ import annotations

from opgen.dtypes import PARAM_KINDS, dtype_list
from opgen.escape import md_block, md_cell, md_code, md_inline
from opgen.expr.latex import LatexPrinter
from opgen.expr.printers.pseudo import PseudoPrinter
from opgen.expr.tree import RefKind
from opgen.spec.model import OpSpec, TensorRole
from opgen.spec.names import CLIP_ARGUMENT, ROUNDING_ARGUMENTS
from opgen.targets.python_api import (CLIP_HELP, ROUNDING_DEFAULTS, ROUNDING_HELP, ROUNDING_TYPES, out_doc, param_note,
                                      result_doc, signature, skip_if_text, state_dtype_rule, tensor_doc)

_DOC_TYPES = {t: k.doc for t, k in PARAM_KINDS.items()}


def _dtypes_text(op: OpSpec) -> str:
    """The storage combinations the op accepts (one set of kernels each), as a table."""
    columns = [[t for t in (op.weight, op.grad) if t is not None], list(op.free_states)] + \
        [[t] for t in op.arrays if t.dtype]
    columns = [c for c in columns if c]
    head = " | ".join(", ".join(f"`{t.name}`" for t in c) for c in columns)
    rows = [f"| {' | '.join(op.storage(c[0].name, v).name for c in columns)} | {op.math_type(v).name} |"
            for v in op.variants]
    if op.free_states:
        rule = (f"The states {', '.join(f'`{t.name}`' for t in op.free_states)} share one dtype: "
                f"{state_dtype_rule()}.")
    else:
        fixed: dict[str, list[str]] = {}
        for t in op.arrays:
            if t.dtype:
                fixed.setdefault(t.dtype, []).append(f"`{t.name}`")
        rule = " ".join(f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} always {d}."
                        for d, names in fixed.items())
    return "\n".join([
        "Each row is one set of kernels; a call with any other combination raises TypeError naming the "
        f"tensor. {_same_dtype_text(op)} {rule}",
        "", f"| {head} | math |", "|" + "---|" * (len(columns) + 1), *rows, "",
        "The math runs in the math type; each result is rounded once into its tensor's dtype, to nearest "
        "even, or stochastically with `rounding=\"stochastic\"` where that dtype is 16-bit."])


def _same_dtype_text(op: OpSpec) -> str:
    if op.reduction:
        return (f"Every input has the dtype of `{op.weight.name}`; `out` is "
                f"{op.output_dtype or 'of that dtype too'}.")
    return "The gradient and `out` have the weight's dtype."


def _per_call_text(op: OpSpec) -> str:
    """The deviation of computing per-call values in double, naming this op's."""
    printer = PseudoPrinter()
    # (the values that read a reduction's total are computed from the tensors, not from parameters alone)
    stages = op.stages
    alone = [s for s, stage in zip(op.program.prologue, stages) if stage == 0 and s.expr.vtype.value == "real"]
    values = [f"`{printer.expr(s.expr)}`" for s in alone if s.kind is RefKind.HOISTED] + \
        [f"`{s.target}`" for s in alone if s.kind is RefKind.TEMP]
    if not values:
        return ""
    return (f"Values computed from parameters alone ({', '.join(values)}) are computed once per call in "
            "double and rounded once to the math type; MXNet rounds each parameter to float32 and computes "
            "them in float32, so float32 results can differ from MXNet's in the last bit or two.")


def _row_sparse_text(op: OpSpec) -> list[str]:
    if op.grad is None:
        return ["The inputs must be dense: a RowSparseArray raises TypeError."]
    grad, rs = op.grad.name, op.row_sparse
    if rs.dense and (not op.row_sparse_schedules or op.multi is not None):
        return [f"`{grad}` must be dense: a RowSparseArray raises TypeError."]
    if not rs.dense:
        return [f"`{grad}` must be row-sparse: only the rows whose indices appear in `{grad}.indices` are "
                "updated, weight and states alike; all other rows are left bit-identical. A dense "
                f"`{grad}` raises TypeError."]
    standard = (f"every row is updated as in the dense update, rows absent from `{grad}.indices` "
                "with a zero gradient (MXNet's standard update)")
    if rs.always_lazy:
        return [f"With a row-sparse `{grad}`, only the rows whose indices appear in `{grad}.indices` are "
                "updated, weight and states alike; all other rows are left bit-identical."]
    if rs.lazy_param:
        return [
            f"With a row-sparse `{grad}` and `{rs.lazy_param}` true, only the rows whose indices appear in "
            f"`{grad}.indices` are updated, weight and states alike; all other rows are left bit-identical.",
            f"With `{rs.lazy_param}` false, {standard}.",
        ]
    return [f"A row-sparse `{grad}` is accepted: {standard}."]


def context(op: OpSpec) -> dict:
    symbols = {t.name: t.symbol for t in op.tensors} | {p.name: p.symbol for p in op.params}
    latex = LatexPrinter(symbols)
    dense = PseudoPrinter()
    rows = PseudoPrinter("[row]")
    kinds = {TensorRole.GRAD: "ndarray or RowSparseArray", TensorRole.SCALAR: "float or one-element ndarray"}
    arguments = [
        f"**{t.name}** ({kinds.get(t.role, 'ndarray')}) – {md_inline(t.doc.rstrip('.'))}. {tensor_doc(op, t)}"
        for t in op.tensors
    ]
    per_tensor = dict(op.multi.per_tensor) if op.multi else {}
    trailing = op.multi.trailing if op.multi else ()
    for p in op.params:
        kind = "required" if p.required else f"optional, default={p.default}"
        public = per_tensor.get(p.name, p.name)
        if p.name in trailing:  # an array after the groups of data (MXNet's convention)
            what = "one value per tensor" if p.name in per_tensor else "one element"
            arguments.append(f"**{public}** (ndarray of {what}, the {'last' if p.name == trailing[-1] else 'next'} "
                             f"array of `data`) – {md_inline(p.doc)}{param_note(p)}")
        elif p.name in per_tensor:
            arguments.append(f"**{public}** (sequence of {_DOC_TYPES[p.type]}, one `{p.name}` per tensor, {kind}) – "
                             f"{md_inline(p.doc)}{param_note(p)}")
        else:
            arguments.append(f"**{p.name}** ({_DOC_TYPES[p.type]}, {kind}) – {md_inline(p.doc)}{param_note(p)}")
    arguments.append(f"**out** (ndarray, optional) – {out_doc(op)}")
    arguments += [f"**{name}** ({ROUNDING_TYPES[name]}, keyword-only, default={ROUNDING_DEFAULTS[name]}) – "
                  f"{ROUNDING_HELP[name]}" for name in ROUNDING_ARGUMENTS]
    if op.multi is not None and not op.reduction:  # a multi-tensor entry point: it clips by the global norm too
        arguments.append(f"**{CLIP_ARGUMENT}** (float, keyword-only, default=None) – {CLIP_HELP}")
    lazy = op.row_sparse.always_lazy or op.row_sparse.lazy_param is not None
    return {
        "op": op.name,
        "spec": md_code(op.path),
        "signature": f"{op.name}({signature(op)})",
        "summary": md_inline(op.summary),
        "description": md_block(op.description),
        "latex": [latex.statement(s) + (r" \\" if k + 1 < len(op.math.statements) else "")
                  for k, s in enumerate(op.math.statements)],
        "dense_code": [dense.statement(s) for s in op.math.statements],
        "lazy_code": [rows.statement(s) for s in op.math.statements] if lazy else [],
        "grad": op.grad.name if op.grad is not None else "",
        "rule": ("It computes, for each call:" if op.reduction else "It updates the weights using:"),
        "row_sparse": _row_sparse_text(op),
        "arguments": arguments,
        "returns": f"ndarray – `out`, holding {result_doc(op)}. "
                   + " ".join(f"`{s.name}` is updated in place." for s in op.states),
        "skip_if": md_code(skip_if_text(op)) if op.skip_if is not None else "",
        "deviations": [md_inline(d) for d in op.deviations] + ([_per_call_text(op)] if _per_call_text(op) else []),
        "dtypes": _dtypes_text(op),
        "classes": [_class_doc(cls) for cls in op.optimizers],
    }


def _class_doc(cls) -> dict:
    """A torch.optim class of the op's optimizer section, as its page shows it."""
    from opgen.spec.optimizer import DTYPE_EPS, SHAPE_NAME
    from opgen.targets.optim_api import arg_doc, default_source

    host = PseudoPrinter()
    return {
        "name": cls.class_name,
        "doc": md_block(cls.doc),
        # identifiers and number literals only: safe in a code block
        "signature": f"{cls.class_name}(params, " + ", ".join(f"{a.name}={default_source(a)}" for a in cls.args) + ")",
        "args": [f"**{a.name}** (default {md_code(default_source(a))}) – {md_inline(arg_doc(a))}" for a in cls.args],
        "ops": [md_code(c.op) + ("" if c.when is None else f" when {md_code(host.expr(c.when))}") for c in cls.choices],
        "host": [md_code(f"{h.name} = {host.expr(h.update)}") + f" (initially {md_code(host.expr(h.init))})"
                 for h in cls.host_state],
        "step": [md_code(f"{name} = {host.expr(e)}") for name, e, _ in cls.step],
        "init": [md_code(f"{i.state} = " + ("a copy of the parameter" if i.value is None else host.expr(i.value)))
                 for i in cls.init],
        # the per-parameter names the expressions read besides t
        "where": ([f"{md_code(SHAPE_NAME)} its number of dimensions"] if cls.per_parameter else [])
        + [f"{md_code(name)} is {md_code(host.expr(a.none_is))} when None" for a in cls.args if a.none_is is not None
           for name in a.nullable_names]
        + ([f"{md_code(DTYPE_EPS)} the machine epsilon of its dtype"] if any(a.none_is is not None for a in cls.args)
           else []),
    }



def index_context(ops: list[OpSpec]) -> dict:
    return {"dtypes": dtype_list(), "ops": [{"name": op.name, "summary": md_cell(op.summary),
                                             "signature": md_code(f"{op.name}({signature(op)})")} for op in ops],
            "classes": [{"name": cls.class_name, "op": op.name, "summary": md_cell(cls.doc.splitlines()[0])}
                        for op in ops for cls in op.optimizers]}
