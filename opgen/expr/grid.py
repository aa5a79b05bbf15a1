"""Factored math over a weight's (rows, cols) slices: per-row and per-column values beside the elements.

An op with per-row or per-column states (``per_row``, ``per_col``: one value per row or
column of a (rows, cols) weight, a factored second moment) or with ``row_mean``
/ ``col_mean`` in a dense op is a *grid* op. Its weight is (rows, cols), or (..., rows,
cols): slices of rows x cols, each factored on its own (as torch factors a parameter's last
two dimensions). Every value of its math has a shape:

- *element*: one per element (the weight, the gradient, element states, what reads them);
- *row* / *col*: one per row or column of a slice (per-row and per-column states,
  ``row_mean(x)`` and ``col_mean(x)`` of an element expression, and what reads only those
  and per-call values);
- *call*: one per call (parameters, whole-tensor reductions such as ``rms(u)`` of an
  element value, and what reads only those), or per slice where it reads a reduction of
  per-row or per-column values such as ``avg(r)`` of a per-row ``r``: over its slice's rows.

A value's *level* counts the reductions it waits for. The kernel runs level by level:
level L's reductions (an element pass reading every input, then the reductions of row and
column values), then the per-call values of stage L, then the row and column statements of
level L, each once per row or column into a slot of the call's workspace. The update pass
comes last; the per-row and per-column states are stored after it (so every pass reads
their values before the call where the math does). Each row or column statement writes a
slot of its own, so a name assigned twice keeps both values, each read where the math reads it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from opgen.errors import SpecError
from opgen.expr.hoist import KernelProgram
from opgen.expr.rows import live
from opgen.expr.totals import MAX_TOTALS, Total, _live, accumulator_order
from opgen.expr.tree import FUNCTIONS, Assign, Call, Expr, Program, Ref, RefKind, VType, map_children, refs, walk

MAX_SLOTS = 32  # per-row (and per-column) values of an op: its workspace holds each once per row


class Shape(enum.IntFlag):
    CALL = 0
    ROW = 1
    COL = 2
    ELEMENT = 3

    @property
    def word(self) -> str:
        return {Shape.CALL: "per-call", Shape.ROW: "per-row", Shape.COL: "per-column", Shape.ELEMENT: "element"}[self]


# the means and sums along the rows or the columns: each one's result's shape
ALONG = {"row_mean": Shape.ROW, "col_mean": Shape.COL, "row_sum": Shape.ROW, "col_sum": Shape.COL}


@dataclass(frozen=True)
class AxisMean:
    """``row_mean(arg)``, ``col_mean(arg)``, ``row_sum(arg)`` or ``col_sum(arg)`` of an
    element expression, into a slot."""

    func: str
    arg: Expr
    level: int
    slot: int  # among its shape's slots
    source: str
    location: object

    @property
    def shape(self) -> Shape:
        return ALONG[self.func]

    @property
    def divides(self) -> bool:
        """A mean (its sum divided by the row's or column's length), not a sum."""
        return self.func.endswith("_mean")


@dataclass(frozen=True)
class VectorStatement:
    """A per-row or per-column statement: its value, once per row or column, into ``slot``."""

    shape: Shape
    slot: int
    level: int
    statement: Assign  # its target is the name as the spec writes it


@dataclass(frozen=True)
class GridPass:
    """One read-only element pass: the element statements its reductions need and, in their
    places, the markers (kind TOTAL; target: a whole total's number, or "a<k>" for axis mean k)."""

    level: int
    steps: tuple[Assign, ...]
    totals: tuple[Total, ...]  # its whole-tensor reductions of element values
    means: tuple[AxisMean, ...]  # its row and column means

    @property
    def row_means(self) -> tuple[AxisMean, ...]:
        return tuple(m for m in self.means if m.shape is Shape.ROW)

    @property
    def col_means(self) -> tuple[AxisMean, ...]:
        return tuple(m for m in self.means if m.shape is Shape.COL)

    @property
    def ordered(self) -> tuple:
        """Its summands in accumulator order: whole totals (accumulator_order), then row means
        and sums, then column ones."""
        return accumulator_order(self.totals) + self.row_means + self.col_means

    @property
    def sums(self) -> int:
        """How many of its whole totals are summed (the rest are maxima)."""
        return sum(t.accumulates == "sum" for t in self.totals)

    def marked(self, marker: Assign) -> "Total | AxisMean":
        return next(x for x in self.totals + self.means if _marker_name(x) == marker.target)


@dataclass(frozen=True)
class VectorTotal:
    """A whole reduction of a per-row or per-column value (``avg(r)``): over ``over``."""

    total: Total
    over: Shape


@dataclass(frozen=True)
class GridProgram:
    totals: tuple[Total, ...]  # every whole reduction, by index (TOTAL references)
    levels: int
    passes: tuple[GridPass, ...]  # the element passes, by level (levels with none are absent)
    vector_totals: tuple[VectorTotal, ...]
    vectors: tuple[VectorStatement, ...]  # in program order
    means: tuple[AxisMean, ...]
    stages: tuple[int, ...]  # per prologue statement: the level whose reductions it reads last (0: none)
    update: tuple[Assign, ...]  # the element statements of the update pass
    row_slots: int
    col_slots: int
    stores: tuple[tuple[str, Shape, int], ...]  # (per-row or per-column state, shape, slot of its new value)

    def prologue_of(self, prologue: tuple[Assign, ...], stage: int) -> tuple[Assign, ...]:
        return tuple(s for s, k in zip(prologue, self.stages) if k == stage)

    def pass_at(self, level: int) -> GridPass | None:
        return next((p for p in self.passes if p.level == level), None)

    def vector_totals_at(self, level: int) -> tuple[VectorTotal, ...]:
        return tuple(v for v in self.vector_totals if v.total.level == level)

    def vectors_at(self, level: int, shape: Shape) -> tuple[VectorStatement, ...]:
        return tuple(v for v in self.vectors if v.level == level and v.shape is shape)



def _marker_name(x) -> str:
    return f"a{x.slot}{'r' if x.shape is Shape.ROW else 'c'}" if isinstance(x, AxisMean) else str(x.index)


def is_grid(program: Program, row_tensors: frozenset[str], col_tensors: frozenset[str], dense: bool) -> bool:
    """Whether the math is a grid op's: per-column values, sums along an axis, or per-row
    values in a dense op (row_mean in a row-sparse op is the lazy row kernels')."""
    funcs = {n.func for s in program.statements for n in walk(s.expr) if isinstance(n, Call)}
    axis = bool(funcs & set(ALONG))
    cols = bool(col_tensors) or bool(funcs & (set(ALONG) - {"row_mean"}))
    return cols or (dense and (bool(row_tensors) or axis))


def extract(program: Program) -> tuple[Program, dict[str, str]]:
    """The math with each reduction taken out before the statement that reads it (as
    opgen.expr.totals.extract, innermost first): a whole reduction becomes a TOTAL reference
    and a marker named by its number; an axis mean, a REDUCED reference "m<k>" and a marker
    of that name. Returns the marked math and each marker's function."""
    out: list[Assign] = []
    funcs: dict[str, str] = {}
    seen: dict[tuple[str, Expr], Ref] = {}
    counts = {"total": 0, "mean": 0}

    def rewrite(e: Expr, s: Assign) -> Expr:
        e = map_children(e, lambda child: rewrite(child, s))
        if not isinstance(e, Call):
            return e
        whole = FUNCTIONS[e.func].reduces is not None
        if not whole and e.func not in ALONG:
            return e
        if (e.func, e.args[0]) in seen:
            return seen[(e.func, e.args[0])]
        if whole:
            if counts["total"] == MAX_TOTALS:
                raise SpecError(s.location, f"an op may have at most {MAX_TOTALS} reductions")
            name = str(counts["total"])
            counts["total"] += 1
            ref = Ref(VType.REAL, True, name, RefKind.TOTAL)
        else:
            name = f"m{counts['mean']}"
            counts["mean"] += 1
            ref = Ref(VType.REAL, False, name, RefKind.REDUCED)
        out.append(Assign(name, RefKind.TOTAL, e.args[0], s.source, s.location))
        funcs[name] = e.func
        seen[(e.func, e.args[0])] = ref
        return ref

    for s in program.statements:
        out.append(replace(s, expr=rewrite(s.expr, s)))
        for key in [key for key in seen if any(r.name == s.target for r in refs(key[1]))]:
            del seen[key]
    return Program(tuple(out)), funcs


def split(program: KernelProgram, func_of: dict[str, str], row_tensors: frozenset[str],
          col_tensors: frozenset[str]) -> tuple[KernelProgram, GridProgram]:
    """The update's program (element statements only) and the grid program around it."""
    prologue_at = {(s.kind if s.kind is RefKind.HOISTED else RefKind.TEMP, s.target): k
                   for k, s in enumerate(program.prologue)}
    stages: dict[int, int] = {}
    total_level: dict[str, int] = {}
    # (whether a mean's REDUCED name, the name) -> the slot of its current value
    slot_ref: dict[tuple[bool, str], Ref] = {}
    slot_level: dict[tuple[Shape, int], int] = {}
    shape_of: dict[str, Shape] = {}  # body temporaries
    level_of: dict[str, int] = {}  # names assigned in the body: their current value's level
    slots = {Shape.ROW: 0, Shape.COL: 0}
    totals: list[Total] = []
    vector_totals: list[VectorTotal] = []
    means: list[AxisMean] = []
    vectors: list[VectorStatement] = []
    steps: list[Assign] = []  # element statements and markers, in order

    def declared(name: str) -> Shape:
        return Shape.ROW if name in row_tensors else Shape.COL if name in col_tensors else Shape.ELEMENT

    def rename(e: Expr) -> Expr:
        if isinstance(e, Ref) and e.kind in (RefKind.TENSOR, RefKind.TEMP, RefKind.REDUCED) and not e.uniform \
                and (e.kind is RefKind.REDUCED, e.name) in slot_ref:
            return slot_ref[(e.kind is RefKind.REDUCED, e.name)]
        return map_children(e, rename)

    def shape(e: Expr) -> Shape:
        found = Shape.CALL
        for r in refs(e):
            if r.kind is RefKind.ROWVAL:
                found |= Shape.ROW
            elif r.kind is RefKind.COLVAL:
                found |= Shape.COL
            elif r.kind is RefKind.TENSOR:
                found |= declared(r.name)
            elif r.kind is RefKind.TEMP and not r.uniform:
                found |= shape_of.get(r.name, Shape.ELEMENT)
        return Shape(found)

    def stage_of(k: int) -> int:
        if k not in stages:
            stages[k] = level(program.prologue[k].expr)
        return stages[k]

    def level(e: Expr) -> int:
        found = 0
        for r in refs(e):
            if r.kind in (RefKind.ROWVAL, RefKind.COLVAL):
                found = max(found, slot_level[(Shape.ROW if r.kind is RefKind.ROWVAL else Shape.COL, int(r.name))])
            elif r.kind is RefKind.TOTAL:
                found = max(found, total_level[r.name])
            elif (r.kind, r.name) in prologue_at and r.uniform:
                found = max(found, stage_of(prologue_at[(r.kind, r.name)]))
            elif r.kind in (RefKind.TEMP, RefKind.TENSOR):
                found = max(found, level_of.get(r.name, 0))
        return found

    def new_slot(shape_: Shape, lvl: int, location) -> Ref:
        k = slots[shape_]
        if k == MAX_SLOTS:
            raise SpecError(location, f"an op may have at most {MAX_SLOTS} {shape_.word} values")
        slots[shape_] += 1
        slot_level[(shape_, k)] = lvl
        return Ref(VType.REAL, False, str(k), RefKind.ROWVAL if shape_ is Shape.ROW else RefKind.COLVAL)

    for s in program.body:
        expr = rename(s.expr)
        if s.kind is RefKind.TOTAL:  # a reduction's marker: its argument at its place in the math
            func, arg_shape = func_of[s.target], shape(expr)
            lvl = 1 + level(expr)
            if func in ALONG:
                if arg_shape is not Shape.ELEMENT:
                    raise SpecError(s.location, f"{func}() {'averages' if func.endswith('_mean') else 'adds'} an element expression over each "
                                                f"{'row' if func.startswith('row') else 'column'}; its argument is "
                                                f"a {arg_shape.word} value")
                ref = new_slot(ALONG[func], lvl, s.location)
                slot_ref[(True, s.target)] = ref
                means.append(AxisMean(func, expr, lvl, int(ref.name), s.source, s.location))
                steps.append(replace(s, target=_marker_name(means[-1]), expr=expr))
            else:
                total_level[s.target] = lvl
                totals.append(Total(int(s.target), func, expr, lvl, s.source, s.location))
                if arg_shape is Shape.ELEMENT:
                    steps.append(replace(s, expr=expr))
                else:  # a per-row or per-column value reduced over the rows or the columns
                    if not (isinstance(expr, Ref) and expr.kind in (RefKind.ROWVAL, RefKind.COLVAL)):
                        # its argument into a slot of its own first (a kernel reduces slots)
                        arg_level = level(expr)
                        ref = new_slot(arg_shape, arg_level, s.location)
                        vectors.append(VectorStatement(arg_shape, int(ref.name), arg_level,
                                                       Assign(f"{func}()", RefKind.TEMP, expr, s.source, s.location)))
                        expr = ref
                        totals[-1] = replace(totals[-1], arg=expr)
                    vector_totals.append(VectorTotal(totals[-1], arg_shape))
            continue
        sh, lvl = shape(expr), level(expr)
        target_shape = declared(s.target) if s.kind is RefKind.TENSOR else sh
        if s.kind is RefKind.TENSOR and target_shape is not Shape.ELEMENT and sh | target_shape != target_shape:
            # what it reads that it may not: element values, or the other axis's values
            wrong = Shape.ELEMENT if any(shape(r) is Shape.ELEMENT for r in refs(expr)) else sh & ~target_shape
            raise SpecError(s.location, f"'{s.target}' holds one value per {'row' if target_shape is Shape.ROW else 'column'}"
                                        f": its expression may read parameters, {target_shape.word} values and "
                                        f"{'row_mean' if target_shape is Shape.ROW else 'col_mean'}(...) only, "
                                        f"not {Shape(wrong).word} values")
        if target_shape in (Shape.ROW, Shape.COL):
            ref = new_slot(target_shape, lvl, s.location)
            vectors.append(VectorStatement(target_shape, int(ref.name), lvl, replace(s, expr=expr)))
            slot_ref[(False, s.target)] = ref
            if s.kind is RefKind.TEMP:
                shape_of[s.target] = target_shape
            continue
        slot_ref.pop((False, s.target), None)
        if s.kind is RefKind.TEMP:
            shape_of[s.target] = Shape.ELEMENT
        level_of[s.target] = lvl
        steps.append(replace(s, expr=expr))

    levels = max([t.level for t in totals] + [m.level for m in means] + [0])
    passes = []
    for lvl in range(1, levels + 1):
        chosen = {str(t.index) for t in totals if t.level == lvl and not any(v.total is t for v in vector_totals)}
        chosen |= {_marker_name(m) for m in means if m.level == lvl}
        if not chosen:
            continue
        needed = _live(tuple(steps), chosen)
        passes.append(GridPass(lvl, needed, tuple(t for t in totals if str(t.index) in chosen),
                               tuple(m for m in means if _marker_name(m) in chosen)))
    # the update computes what the stores need (an element value only a reduction read is not recomputed)
    update = live(tuple(s for s in steps if s.kind is not RefKind.TOTAL), set(), keep_tensors=True)
    loads: dict[str, None] = {}
    for s in update:
        for r in refs(s.expr):
            if r.kind is RefKind.TENSOR:
                loads[r.name] = None
    stores = tuple((name, declared(name), int(slot_ref[(False, name)].name)) for name in program.stores
                   if declared(name) is not Shape.ELEMENT)
    element_stores = tuple(name for name in program.stores if declared(name) is Shape.ELEMENT)
    kernel_program = replace(program, body=update, loads=tuple(loads), stores=element_stores + tuple(n for n, _, _ in stores))
    grid = GridProgram(tuple(sorted(totals, key=lambda t: t.index)), levels, tuple(passes), tuple(vector_totals),
                       tuple(vectors), tuple(means), tuple(stage_of(k) for k in range(len(program.prologue))), update,
                       slots[Shape.ROW], slots[Shape.COL], stores)
    return kernel_program, grid


__all__ = ["ALONG", "AxisMean", "GridPass", "GridProgram", "Shape", "VectorStatement", "VectorTotal", "extract",
           "is_grid", "split"]
