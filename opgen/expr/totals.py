"""Whole-tensor reductions: ``sum``, ``avg``, ``norm``, ``rms`` and ``amax`` of an element expression.

A reduction's value is one number per call that later statements read (a layer-wise trust ratio such as
``norm(weight) / norm(r)``). The math keeps its sequential meaning: a reduction is over the
values its argument has at its place in the math. Kernels run it in passes:

- each *level* is one read-only pass over the tensor: it recomputes, per element, the
  statements the level's reductions need (nothing is stored, so every pass reads the call's
  inputs) and accumulates them; a reduction whose argument reads another reduction's
  value is a level later;
- between passes, the per-call values that read the new totals are computed (in double);
- the last pass is the op's ordinary update, with every total known.

Before hoisting, :func:`extract` replaces each reduction by a ``TOTAL`` reference and puts
its argument in the math as a marker statement (kind ``TOTAL``) just before the statement
that reads it; after hoisting, :func:`split` takes the markers out again and derives the
passes and the stage of each per-call value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from opgen.errors import SpecError
from opgen.expr.hoist import KernelProgram
from opgen.expr.tree import FUNCTIONS, Assign, Call, Expr, Program, Ref, RefKind, VType, map_children, refs, walk

# How a reduction's accumulated value becomes its result, by function: the C header and the
# NumPy reference's math module each define one finisher per name (OPGEN_FINISH_<name>, finish_<name>).
FINISH = {"sum": "none", "avg": "mean", "norm": "sqrt", "rms": "sqrt_mean", "amax": "none"}
SQUARED = frozenset({"norm", "rms"})  # these accumulate the square of their argument, squared in double
MAX_TOTALS = 16  # reductions per op (their partial sums live on the kernel's stack)


@dataclass(frozen=True)
class Total:
    """One reduction: ``func(arg)`` over every element."""

    index: int
    func: str
    arg: Expr  # as the pass computes it (hoisted)
    level: int  # the pass that computes it, from 1
    source: str
    location: object

    @property
    def accumulates(self) -> str:
        """"sum" or "max": how the pass combines the elements' summands."""
        return FUNCTIONS[self.func].reduces

    @property
    def finish(self) -> str:
        return FINISH[self.func]

    @property
    def squared(self) -> bool:
        """Whether the pass adds the square of each element's summand (taken in double)."""
        return self.func in SQUARED

    @property
    def how(self) -> str:
        """How the NumPy kernel accumulates it (the reference's math module's total_<how>)."""
        return "sum_squares" if self.squared else self.accumulates

    @property
    def summand(self) -> Expr:
        """What each element offers: the argument, in the math type (a square is taken in
        double, when it is added: float32 elements of 1e20 do not overflow)."""
        return self.arg


@dataclass(frozen=True)
class Pass:
    """One read-only pass: its element statements (markers excluded), then the totals it
    accumulates, sums first, then maxima (the order of the kernels' accumulators)."""

    level: int
    statements: tuple[Assign, ...]
    totals: tuple[Total, ...]
    # the statements with this pass's markers in place: a summand is taken where its marker
    # stands (a name reassigned after it must not change it)
    steps: tuple[Assign, ...] = ()

    def total_at(self, marker: Assign) -> Total:
        return next(t for t in self.totals if str(t.index) == marker.target)

    @property
    def sums(self) -> tuple[Total, ...]:
        """The summed totals: plain sums first, then sums of squares."""
        return accumulator_order(self.totals)[:sum(t.accumulates == "sum" for t in self.totals)]

    @property
    def squares(self) -> tuple[Total, ...]:
        return tuple(t for t in self.totals if t.accumulates == "sum" and t.squared)

    @property
    def maxima(self) -> tuple[Total, ...]:
        return tuple(t for t in self.totals if t.accumulates == "max")

    @property
    def ordered(self) -> tuple[Total, ...]:
        return accumulator_order(self.totals)


def accumulator_order(totals) -> tuple[Total, ...]:
    """The order of a pass's accumulators in every kernel: plain sums, sums of squares, maxima."""
    summed = [t for t in totals if t.accumulates == "sum"]
    return tuple(t for t in summed if not t.squared) + tuple(t for t in summed if t.squared) \
        + tuple(t for t in totals if t.accumulates == "max")


@dataclass(frozen=True)
class TotalsProgram:
    totals: tuple[Total, ...]  # by index
    passes: tuple[Pass, ...]  # by level
    stages: tuple[int, ...]  # per prologue statement: the last pass whose totals it reads (0: none)

    def prologue_of(self, prologue: tuple[Assign, ...], stage: int) -> tuple[Assign, ...]:
        return tuple(s for s, k in zip(prologue, self.stages) if k == stage)


def calls_total(e: Expr) -> bool:
    return any(isinstance(n, Call) and FUNCTIONS[n.func].reduces is not None for n in walk(e))


def extract(program: Program) -> tuple[Program, tuple[str, ...]]:
    """The math with each reduction a TOTAL reference, its argument in a marker statement
    (kind TOTAL, target the reduction's number) before the statement that reads it,
    innermost reductions first; and each reduction's function, by number."""
    out: list[Assign] = []
    funcs: list[str] = []
    seen: dict[tuple[str, Expr], Ref] = {}  # the same reduction of unchanged values is reduced once

    def rewrite(e: Expr, s: Assign) -> Expr:
        e = map_children(e, lambda child: rewrite(child, s))
        if isinstance(e, Call) and FUNCTIONS[e.func].reduces is not None:
            if (e.func, e.args[0]) in seen:
                return seen[(e.func, e.args[0])]
            if len(funcs) == MAX_TOTALS:
                raise SpecError(s.location, f"an op may have at most {MAX_TOTALS} reductions")
            out.append(Assign(str(len(funcs)), RefKind.TOTAL, e.args[0], s.source, s.location))
            funcs.append(e.func)
            seen[(e.func, e.args[0])] = Ref(VType.REAL, True, str(len(funcs) - 1), RefKind.TOTAL)
            return seen[(e.func, e.args[0])]
        return e

    for s in program.statements:
        out.append(replace(s, expr=rewrite(s.expr, s)))
        for key in [key for key in seen if any(r.name == s.target for r in refs(key[1]))]:
            del seen[key]
    return Program(tuple(out)), tuple(funcs)


def split(program: KernelProgram, funcs: tuple[str, ...]) -> tuple[KernelProgram, TotalsProgram | None]:
    """The update's program (markers removed) and the passes before it; None without reductions."""
    markers = [k for k, s in enumerate(program.body) if s.kind is RefKind.TOTAL]
    if not markers:
        return program, None
    body = program.body
    prologue_at = {(s.kind if s.kind is RefKind.HOISTED else RefKind.TEMP, s.target): k
                   for k, s in enumerate(program.prologue)}
    stages: dict[int, int] = {}
    levels: dict[str, int] = {}

    def stage_of_expr(e: Expr) -> int:
        found = 0
        for r in refs(e):
            if r.kind is RefKind.TOTAL:
                found = max(found, level_of(r.name))
            elif (r.kind, r.name) in prologue_at:
                found = max(found, stage_of(prologue_at[(r.kind, r.name)]))
        return found

    def stage_of(k: int) -> int:
        if k not in stages:
            stages[k] = stage_of_expr(program.prologue[k].expr)
        return stages[k]

    def level_of(name: str) -> int:
        if name not in levels:
            at = next(k for k in markers if body[k].target == name)
            needed = _live(body[:at + 1], {name})
            levels[name] = 1 + max(stage_of_expr(s.expr) for s in needed)
        return levels[name]

    totals = tuple(Total(int(body[k].target), funcs[int(body[k].target)], body[k].expr, level_of(body[k].target),
                         body[k].source, body[k].location) for k in markers)
    passes = []
    for level in range(1, max(t.level for t in totals) + 1):
        chosen = {str(t.index) for t in totals if t.level == level}
        live = _live(body, chosen)
        statements = tuple(s for s in live if s.kind is not RefKind.TOTAL)
        passes.append(Pass(level, statements, tuple(t for t in totals if t.level == level), live))
    final = tuple(s for s in body if s.kind is not RefKind.TOTAL)
    loads: dict[str, None] = {}
    for s in final:
        for r in refs(s.expr):
            if r.kind is RefKind.TENSOR:
                loads[r.name] = None
    update = replace(program, body=final, loads=tuple(loads))
    stage_list = tuple(stage_of(k) for k in range(len(program.prologue)))
    return update, TotalsProgram(totals, tuple(passes), stage_list)


def _live(statements: tuple[Assign, ...], markers: set[str]) -> tuple[Assign, ...]:
    """The statements the named markers need, the markers included, in order; a marker's
    argument reads the values current at its place, so liveness runs backwards."""
    kept: list[Assign] = []
    needed: set[str] = set()
    for s in reversed(statements):
        if s.kind is RefKind.TOTAL:
            if s.target in markers:
                kept.append(s)
                needed |= {r.name for r in refs(s.expr) if r.kind is not RefKind.TOTAL}
            continue
        if s.target in needed:
            kept.append(s)
            needed.discard(s.target)
            needed |= {r.name for r in refs(s.expr) if r.kind is not RefKind.TOTAL}
    return tuple(reversed(kept))
