"""C printer: the math as C expressions over one accumulator type (float or double).

Also serves CUDA C++, whose arithmetic syntax is the same.
"""

from __future__ import annotations

from collections.abc import Callable

from opgen.dtypes import PARAM_KINDS, ParamType
from opgen.expr.printers.infix import ATOM, InfixPrinter, Part
from opgen.expr.tree import Assign, Binary, Call, Cond, Const, Expr, Ref, RefKind, VType

# Local names never collide with each other, with C keywords or with the kernel's own
# variables: each kind of name has its own prefix.
_PREFIX = {RefKind.TENSOR: "v_", RefKind.PARAM: "s_", RefKind.TEMP: "t_", RefKind.HOISTED: "h_",
           RefKind.REDUCED: "r_", RefKind.TOTAL: "q_", RefKind.ROWVAL: "rv_", RefKind.COLVAL: "cv_"}
_LIBM = {"sqrt": "sqrt", "abs": "fabs", "exp": "exp", "log": "log"}
_CLASSIFY = {"isnan": "isnan", "isinf": "isinf", "isfinite": "isfinite"}  # type-generic C99 macros
_HELPERS = {"sign": "opgen_sign", "min": "opgen_min", "max": "opgen_max", "clip": "opgen_clip",
            "square": "opgen_square", "pow": "opgen_pow"}


def c_name(kind: RefKind, name: str) -> str:
    return _PREFIX[kind] + name


class CPrinter(InfixPrinter):
    """``resolve`` spells a reference (default: its local, ``c_name``): the element functions
    read per-call values from their scalar struct, the prologue reads kernel arguments."""

    def __init__(self, acc_type: str, resolve: Callable[[Ref], str] | None = None) -> None:
        if acc_type not in ("float", "double"):
            raise ValueError(acc_type)
        self.acc = acc_type
        self.suffix = "f" if acc_type == "float" else ""
        self.resolve = resolve

    def c_type(self, vtype: VType) -> str:
        """Reals in the math type; ints and bools as the parameter table spells them."""
        if vtype is VType.REAL:
            return self.acc
        return PARAM_KINDS[ParamType.INT if vtype is VType.INT else ParamType.BOOL].c_value

    def const(self, e: Const) -> str:
        if e.vtype is VType.BOOL:
            return "1" if e.text == "True" else "0"
        if e.vtype is VType.INT:
            return e.text
        text = e.text if any(c in e.text for c in ".eE") else e.text + ".0"
        return text + self.suffix

    def const_zero(self) -> str:
        return self.const(Const(VType.REAL, True, "0"))

    def ref(self, e: Ref) -> str:
        return self.resolve(e) if self.resolve is not None else c_name(e.kind, e.name)

    def widen(self, part: Part, e: Expr) -> Part:
        """An int as a real: through double, as NumPy converts a Python int (an int64 beyond
        2**53 straight to float could round the other way); small literals as real literals."""
        if isinstance(e, Const) and abs(int(e.text)) <= 2 ** 53:
            return self.const(Const(VType.REAL, True, e.text)), ATOM
        text = part[0] if part[1] == ATOM else f"({part[0]})"
        return ("(double)" if self.acc == "double" else "(float)(double)") + text, ATOM

    def call(self, e: Call, args: list[str]) -> str:
        if e.func in _CLASSIFY:
            return f"{_CLASSIFY[e.func]}({args[0]})"
        if e.func in _LIBM:
            return f"{_LIBM[e.func]}{self.suffix}({', '.join(args)})"
        return f"{_HELPERS[e.func]}{self.suffix}({', '.join(args)})"

    def power(self, e: Binary, base: Part, exponent: Part) -> Part:
        return f"{_HELPERS['pow']}{self.suffix}({base[0]}, {exponent[0]})", ATOM

    def cond(self, e: Cond, test: Part, then: Part, orelse: Part) -> Part:
        prec = 1
        return (f"{self._paren(test, prec, strict=True)} ? {self._paren(then, prec, strict=True)} : "
                f"{self._paren(orelse, prec, strict=False)}"), prec

    def logical(self, e: Binary, left: Part, right: Part) -> Part:
        return self._infix(e, "&&" if e.op == "and" else "||", left, right)

    def logical_not(self, operand: Part) -> Part:
        return f"!{self._paren(operand, ATOM - 1, strict=False)}", 8

    def statement(self, s: Assign, declare: bool) -> str:
        """``type name = expr;`` on a name's first assignment, ``name = expr;`` after."""
        lhs = c_name(s.kind, s.target)
        part = self._print(s.expr)
        rhs = (self.widen(part, s.expr) if s.expr.vtype is VType.INT and s.kind is RefKind.TENSOR else part)[0]
        return f"{self.c_type(s.expr.vtype) + ' ' if declare else ''}{lhs} = {rhs};"
