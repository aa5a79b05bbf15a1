"""Per-row math: split an element program around its per-row statements.

An op with a per-row state (one value per row of the weight, an accumulator say) reads
``row_mean(x)``: the mean over the row of an element expression. A row kernel then runs in
three steps per row: the element statements before the first per-row one, accumulating
every ``row_mean`` argument (pass 1); the per-row statements, once; and the element
statements again with the per-row values known (pass 2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from opgen.errors import SpecError
from opgen.expr.hoist import KernelProgram
from opgen.expr.tree import Assign, Call, Const, Expr, Ref, RefKind, children, map_children, refs


@dataclass(frozen=True)
class RowProgram:
    pre: tuple[Assign, ...]  # element statements before the per-row ones (temporaries only)
    reductions: tuple[Expr, ...]  # the row_mean arguments; reduction k is Ref(name=str(k), REDUCED)
    row: tuple[Assign, ...]  # per-row statements, with row_mean(...) replaced by its reduction
    post: tuple[Assign, ...]  # the remaining element statements

    @property
    def pass1(self) -> tuple[Assign, ...]:
        """The pre statements the reductions need: nothing else runs in the first pass."""
        return live(self.pre, {r.name for e in self.reductions for r in refs(e)})

    def pass2(self, keep: frozenset[str] = frozenset()) -> tuple[Assign, ...]:
        """The element statements of the second pass: those that write tensors or ``keep``
        (the output), and whatever they read."""
        return live(self.pre + self.post, set(keep), keep_tensors=True)


def live(statements: tuple[Assign, ...], needed: set[str], keep_tensors: bool = False) -> tuple[Assign, ...]:
    """The statements whose results are read by ``needed`` (or that write a tensor, with
    ``keep_tensors``), found walking backwards."""
    kept: list[Assign] = []
    needed = set(needed)
    for s in reversed(statements):
        if s.target in needed or (keep_tensors and s.kind is RefKind.TENSOR):
            kept.append(s)
            needed.discard(s.target)
            needed |= {r.name for r in refs(s.expr)}
    return tuple(reversed(kept))


def has_reductions(program: KernelProgram) -> bool:
    return any(_calls_row_mean(s.expr) for s in program.body)


def _calls_row_mean(e: Expr) -> bool:
    if isinstance(e, Call) and e.func == "row_mean":
        return True
    return any(_calls_row_mean(c) for c in children(e))


def split_rows(program: KernelProgram, row_tensors: frozenset[str]) -> RowProgram:
    uniform = {s.target for s in program.prologue}  # computed once per call: constant along a row
    pre: list[Assign] = []
    row: list[Assign] = []
    post: list[Assign] = []
    reductions: list[Expr] = []
    row_temps: set[str] = set()
    pre_temps: set[str] = set()

    def rowwise(e: Expr) -> bool:
        """Constant along a row: parameters, per-row tensors and temporaries, reductions."""
        if isinstance(e, Call) and e.func == "row_mean":
            return True
        if isinstance(e, Ref):
            return e.kind in (RefKind.PARAM, RefKind.HOISTED) or e.name in row_tensors or e.name in row_temps \
                or e.name in uniform
        return isinstance(e, Const) or all(rowwise(c) for c in children(e))

    def reduce(e: Expr, s: Assign) -> Expr:
        if isinstance(e, Call) and e.func == "row_mean":
            arg = e.args[0]
            for r in refs(arg):
                if r.name in row_tensors or r.name in row_temps or (r.kind is RefKind.TEMP and r.name not in pre_temps
                                                                  and r.name not in uniform):
                    raise SpecError(s.location, f"row_mean() may read element values computed before the first "
                                                f"per-row statement only, not '{r.name}'")
            reductions.append(arg)
            return Ref(e.vtype, False, str(len(reductions) - 1), RefKind.REDUCED)
        return map_children(e, lambda child: reduce(child, s))

    for s in program.body:
        per_row = s.target in row_tensors or (_calls_row_mean(s.expr) and s.kind is RefKind.TEMP)
        if per_row:
            if post:
                raise SpecError(s.location, "per-row statements must come before the element statements that "
                                            "follow them: pre-row element math, per-row math, then element math")
            if not rowwise(s.expr):
                raise SpecError(s.location, f"'{s.target}' holds one value per row: its expression may read "
                                            "parameters, per-row values and row_mean(...) only")
            if s.kind is RefKind.TEMP:
                row_temps.add(s.target)
            row.append(replace(s, expr=reduce(s.expr, s)))
        elif _calls_row_mean(s.expr):
            raise SpecError(s.location, "row_mean() may appear only in per-row statements")
        elif not row:
            if any(r.name in row_tensors for r in refs(s.expr)):
                raise SpecError(s.location, "element statements before the per-row ones may not read per-row "
                                            "values: move this statement after them")
            if s.kind is not RefKind.TEMP:
                raise SpecError(s.location, f"'{s.target}' is written before the per-row statements; "
                                            "only temporaries may be computed there (they run twice)")
            pre_temps.add(s.target)
            pre.append(s)
        else:
            if s.target in row_temps:
                raise SpecError(s.location, f"'{s.target}' holds one value per row: an element statement cannot "
                                            "assign it (use a new temporary)")
            post.append(s)
    return RowProgram(tuple(pre), tuple(reductions), tuple(row), tuple(post))
