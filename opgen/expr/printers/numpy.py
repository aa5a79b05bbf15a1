"""NumPy printer: the math as NumPy expressions, the reference backend.

Arrays and parameters arrive already converted to the accumulator dtype; Python
literals stay weak (NEP 50), so float32 math stays float32.
"""

from __future__ import annotations

from opgen.expr.printers.infix import ATOM, InfixPrinter, Part
from opgen.expr.tree import Assign, Binary, Call, Cond, Const, Expr, Ref, RefKind, VType

_FUNCS = {
    "sqrt": "_np.sqrt", "abs": "_np.abs", "exp": "_np.exp", "log": "_np.log", "square": "_np.square",
    "isnan": "_np.isnan", "isinf": "_np.isinf", "isfinite": "_np.isfinite",
    "row_mean": "_m.row_mean", "col_mean": "_m.col_mean", "min": "_np.minimum", "max": "_np.maximum", "sign": "_m.sign", "clip": "_m.clip",
}


_PY_PREFIX = {RefKind.HOISTED: "_h", RefKind.TOTAL: "_q", RefKind.ROWVAL: "_r", RefKind.COLVAL: "_c"}


def py_name(kind: RefKind, name: str) -> str:
    return _PY_PREFIX.get(kind, "") + name


class NumpyPrinter(InfixPrinter):
    """``real`` names the real type integers widen to: the math type ``_T`` in the element
    math, float64 ``_D`` in the per-call prologue (computed in double, as the kernels).
    ``arrays``: even a per-call value may be an array (a grid op's per-slice values: one
    per slice of a weight (..., rows, cols)), so a per-call choice is npmath.choose."""

    def __init__(self, real: str = "_T", rounded: set[str] | None = None, arrays: bool = False) -> None:
        self.real, self.arrays = real, arrays
        self.rounded = rounded if rounded is not None else set()  # read through their rounded copies, _t_NAME

    def ref_name(self, kind: RefKind, name: str) -> str:
        return py_name(kind, name)

    def const(self, e: Const) -> str:
        """Literals stay weak Python numbers in the element math; the per-call values compute
        in double throughout (``_D(1.0) / _D(0.0)`` is inf, as in C, where Python's floats raise)."""
        if e.vtype is VType.REAL and self.real == "_D":
            return f"_D({e.text})"
        return e.text

    def ref(self, e: Ref) -> str:
        name = py_name(e.kind, e.name)
        return f"_t_{name}" if name in self.rounded and e.uniform else name

    def widen(self, part: Part, e: Expr) -> Part:
        return f"{self.real}({part[0]})", ATOM

    def call(self, e: Call, args: list[str]) -> str:
        return f"{_FUNCS[e.func]}({', '.join(args)})"

    def power(self, e: Binary, base: Part, exponent: Part) -> Part:
        return f"_m.power({base[0]}, {exponent[0]})", ATOM

    def cond(self, e: Cond, test: Part, then: Part, orelse: Part) -> Part:
        if e.test.uniform and self.arrays:  # (a Python choice for one value, where for a slice's each)
            return f"_m.choose({test[0]}, {then[0]}, {orelse[0]})", ATOM
        if e.test.uniform:
            return super().cond(e, test, then, orelse)
        return f"_np.where({test[0]}, {then[0]}, {orelse[0]})", ATOM

    def logical(self, e: Binary, left: Part, right: Part) -> Part:
        func = "_np.logical_and" if e.op == "and" else "_np.logical_or"
        return f"{func}({left[0]}, {right[0]})", ATOM

    def logical_not(self, operand: Part) -> Part:
        return f"_np.logical_not({operand[0]})", ATOM

    def statement(self, s: Assign) -> str:
        part = self._print(s.expr)
        if s.expr.vtype is VType.INT and s.kind is RefKind.TENSOR:
            part = self.widen(part, s.expr)
        return f"{py_name(s.kind, s.target)} = {part[0]}"
