"""NumPy printer: the math as NumPy expressions, the reference backend.

Arrays and parameters arrive already converted to the accumulator dtype; Python
literals stay weak (NEP 50), so float32 math stays float32.
"""

from __future__ import annotations

from opgen.expr.printers.infix import ATOM, InfixPrinter
from opgen.expr.tree import Assign, Binary, Call, Cond, Const, Expr, Ref, RefKind

_FUNCS = {
    "sqrt": "_np.sqrt", "abs": "_np.abs", "exp": "_np.exp", "log": "_np.log", "square": "_np.square",
    "isnan": "_np.isnan", "isinf": "_np.isinf", "isfinite": "_np.isfinite",
    "row_mean": "_m.row_mean", "min": "_np.minimum", "max": "_np.maximum", "sign": "_m.sign", "clip": "_m.clip",
}


def py_name(kind: RefKind, name: str) -> str:
    return f"_h{name}" if kind is RefKind.HOISTED else name


class NumpyPrinter(InfixPrinter):
    """``real`` names the real type integers widen to: the math type ``_T`` in the element
    math, float64 ``_D`` in the per-call prologue (computed in double, as the kernels)."""

    def __init__(self, real: str = "_T") -> None:
        self.real = real

    def const(self, e: Const) -> str:
        return e.text

    def ref(self, e: Ref) -> str:
        return py_name(e.kind, e.name)

    def widen(self, text: str, e: Expr) -> str:
        return f"{self.real}({text})"

    def call(self, e: Call, args: list[str]) -> str:
        return f"{_FUNCS[e.func]}({', '.join(args)})"

    def power(self, e: Binary, base, exponent):
        return f"_m.power({base[0]}, {exponent[0]})", ATOM

    def cond(self, e: Cond, test: str, then: str, orelse: str):
        if e.test.uniform:
            return f"{then} if {test} else {orelse}", 1
        return f"_np.where({self.expr(e.test)}, {self.expr(e.then)}, {self.expr(e.orelse)})", ATOM

    def logical(self, e: Binary, left, right):
        func = "_np.logical_and" if e.op == "and" else "_np.logical_or"
        return f"{func}({self.expr(e.left)}, {self.expr(e.right)})", ATOM

    def logical_not(self, operand):
        return f"_np.logical_not({operand[0]})", ATOM

    def statement(self, s: Assign) -> str:
        return f"{py_name(s.kind, s.target)} = {self.expr(s.expr)}"
