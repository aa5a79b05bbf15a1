"""A typed expression tree for the element-wise math of an optimizer.

Every node knows its value type and whether it is *uniform*: computed from scalar
parameters and constants alone, hence the same for every element (and hoistable).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from opgen.errors import Location


class VType(enum.Enum):
    REAL = "real"
    INT = "int"
    BOOL = "bool"


class RefKind(enum.Enum):
    TENSOR = "tensor"  # the current value of an input tensor (weight, grad, a state)
    PARAM = "param"  # a scalar parameter
    TEMP = "temp"  # a temporary assigned earlier in the math
    HOISTED = "hoisted"  # a uniform subexpression computed once per call
    REDUCED = "reduced"  # a row_mean(...) of the current row, computed once per row
    TOTAL = "total"  # a whole-tensor reduction (sum, mean, norm, amax): one value per call
    ROWVAL = "rowval"  # grid ops: a per-row value of the call's workspace (its slot number)
    COLVAL = "colval"  # grid ops: a per-column value of the call's workspace (its slot number)


@dataclass(frozen=True)
class Function:
    """A math function of the spec language, with its arity."""

    name: str
    arity: int
    doc: str
    returns: "VType | None" = None  # None: a real number
    reduces: str | None = None  # a whole-tensor reduction: how it accumulates ("sum" or "max")


FUNCTIONS: dict[str, Function] = {
    f.name: f
    for f in (
        Function("sqrt", 1, "square root"),
        Function("abs", 1, "absolute value"),
        Function("sign", 1, "-1, 0 or 1; sign(NaN) is 0"),
        Function("exp", 1, "e to the power x"),
        Function("log", 1, "natural logarithm"),
        Function("square", 1, "x * x"),
        Function("min", 2, "the smaller of two values; NaN if either is NaN"),
        Function("max", 2, "the larger of two values; NaN if either is NaN"),
        Function("clip", 2, "clip(x, b): x limited to [-b, b]; NaN passes through"),
        Function("row_mean", 1, "the mean of x over the current row (one value per row of the weight)"),
        Function("col_mean", 1, "the mean of x over the current column (one value per column of a weight (..., rows, cols))"),
        Function("row_sum", 1, "the sum of x over the current row (one value per row of the weight)"),
        Function("col_sum", 1, "the sum of x over the current column (one value per column of a weight (..., rows, cols))"),
        Function("sum", 1, "the sum of x over every element of the tensor (one value per call)", reduces="sum"),
        Function("avg", 1, "the mean of x over every element of the tensor (NaN for an empty one)", reduces="sum"),
        Function("norm", 1, "the L2 norm of x over every element of the tensor: sqrt(sum(x * x))", reduces="sum"),
        Function("rms", 1, "the root mean square of x over every element of the tensor: sqrt(avg(x * x))",
                 reduces="sum"),
        Function("amax", 1, "the largest x over every element of the tensor (-inf for an empty one; NaN if any "
                            "is NaN)", reduces="max"),
        Function("isnan", 1, "true for NaN", returns="bool"),
        Function("isinf", 1, "true for +inf and -inf", returns="bool"),
        Function("isfinite", 1, "true for anything but NaN and +-inf", returns="bool"),
    )
}

ARITHMETIC_OPS = ("+", "-", "*", "/", "**")
COMPARISON_OPS = ("<", "<=", ">", ">=", "==", "!=")
LOGICAL_OPS = ("and", "or")


@dataclass(frozen=True)
class Expr:
    vtype: VType
    uniform: bool


@dataclass(frozen=True)
class Const(Expr):
    text: str  # the literal as written: printers keep it (1e-8 stays 1e-8)


@dataclass(frozen=True)
class Ref(Expr):
    name: str
    kind: RefKind


@dataclass(frozen=True)
class Unary(Expr):
    op: str  # "-" or "not"
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str  # one of ARITHMETIC_OPS, COMPARISON_OPS or LOGICAL_OPS
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Call(Expr):
    func: str  # a key of FUNCTIONS
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Cond(Expr):
    """``then if test else orelse``."""

    test: Expr
    then: Expr
    orelse: Expr


@dataclass(frozen=True)
class Assign:
    target: str
    kind: RefKind  # TENSOR (a writable tensor) or TEMP
    expr: Expr
    source: str  # the statement as written in the spec
    location: Location


def children(expr: Expr) -> tuple[Expr, ...]:
    if isinstance(expr, Unary):
        return (expr.operand,)
    if isinstance(expr, Binary):
        return (expr.left, expr.right)
    if isinstance(expr, Call):
        return expr.args
    if isinstance(expr, Cond):
        return (expr.test, expr.then, expr.orelse)
    return ()


def map_children(expr: Expr, f) -> Expr:
    """``expr`` with every direct child replaced by ``f(child)``; leaves unchanged."""
    if isinstance(expr, Unary):
        return replace(expr, operand=f(expr.operand))
    if isinstance(expr, Binary):
        return replace(expr, left=f(expr.left), right=f(expr.right))
    if isinstance(expr, Call):
        return replace(expr, args=tuple(f(a) for a in expr.args))
    if isinstance(expr, Cond):
        return replace(expr, test=f(expr.test), then=f(expr.then), orelse=f(expr.orelse))
    return expr


def walk(expr: Expr) -> list[Expr]:
    """Every node of ``expr``, depth first (without recursion: depth is checked by the parser)."""
    out, todo = [], [expr]
    while todo:
        e = todo.pop()
        out.append(e)
        todo.extend(reversed(children(e)))
    return out


def refs(expr: Expr) -> list[Ref]:
    """Every reference in ``expr``, depth first, left to right."""
    if isinstance(expr, Ref):
        return [expr]
    out: list[Ref] = []
    for child in children(expr):
        out.extend(refs(child))
    return out


@dataclass(frozen=True)
class Program:
    """The math: assignments executed in order, per element."""

    statements: tuple[Assign, ...]

    def names_read(self) -> frozenset[str]:
        return frozenset(r.name for s in self.statements for r in refs(s.expr))

    def tensors_written(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for s in self.statements:
            if s.kind is RefKind.TENSOR:
                seen[s.target] = None
        return tuple(seen)
