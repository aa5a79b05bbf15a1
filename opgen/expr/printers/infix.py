"""The shared part of the infix printers: precedence and parentheses.

Parentheses follow the tree exactly, so every target evaluates the same operations in
the same order (left-associative, no re-association): bit-for-bit equal results where
the target's arithmetic is IEEE (C, CUDA without FMA contraction, NumPy).
"""

from __future__ import annotations

from opgen.expr.tree import COMPARISON_OPS, Binary, Call, Cond, Const, Expr, Ref, Unary, VType

ATOM = 100
_PREC = {
    "cond": 1, "or": 2, "and": 3, "not": 4,
    "<": 5, "<=": 5, ">": 5, ">=": 5, "==": 5, "!=": 5,
    "+": 6, "-": 6, "*": 7, "/": 7, "neg": 8, "**": 9,
}


Part = tuple[str, int]  # printed text and its precedence


class InfixPrinter:
    """Prints an Expr. Subclasses say how leaves, calls, and non-infix forms look.

    Every node is printed once: the hooks get their children already printed, as parts.
    An INT child is widened (``widen``) where a real is computed from it: as an operand of
    arithmetic or of a real conditional's branch, as a call's argument, and in a comparison
    with a real."""

    def expr(self, e: Expr) -> str:
        return self._print(e)[0]

    # -- hooks --------------------------------------------------------------------
    def const(self, e: Const) -> str:
        raise NotImplementedError

    def ref(self, e: Ref) -> str:
        raise NotImplementedError

    def call(self, e: Call, args: list[str]) -> str:
        raise NotImplementedError

    def widen(self, part: Part, e: Expr) -> Part:
        """An INT value used as a real."""
        return part

    def power(self, e: Binary, base: Part, exponent: Part) -> Part:
        return self._infix(e, "**", base, exponent)

    def cond(self, e: Cond, test: Part, then: Part, orelse: Part) -> Part:
        prec = _PREC["cond"]
        return (f"{self._paren(then, prec, strict=True)} if {self._paren(test, prec, strict=True)} "
                f"else {self._paren(orelse, prec, strict=False)}"), prec

    def logical(self, e: Binary, left: Part, right: Part) -> Part:
        return self._infix(e, e.op, left, right)

    def negate(self, operand: Part) -> Part:
        return f"-{self._paren(operand, _PREC['neg'], strict=False)}", _PREC["neg"]

    def logical_not(self, operand: Part) -> Part:
        return f"not {self._paren(operand, _PREC['not'], strict=False)}", _PREC["not"]

    # -- machinery ------------------------------------------------------------------
    def _print(self, e: Expr) -> Part:
        if isinstance(e, Const):
            return self.const(e), ATOM
        if isinstance(e, Ref):
            return self.ref(e), ATOM
        if isinstance(e, Unary):
            operand = self._child(e, e.operand)
            if e.op == "-":
                # -(-x) must not print as --x
                if isinstance(e.operand, Unary):
                    operand = (f"({operand[0]})", ATOM)
                return self.negate(operand)
            return self.logical_not(operand)
        if isinstance(e, Binary):
            left, right = self._child(e, e.left, e.right), self._child(e, e.right, e.left)
            if e.op == "**":
                return self.power(e, left, right)
            if e.op in ("and", "or"):
                return self.logical(e, left, right)
            return self._infix(e, e.op, left, right)
        if isinstance(e, Call):
            return self.call(e, [self._child(e, a)[0] for a in e.args]), ATOM
        if isinstance(e, Cond):
            return self.cond(e, self._print(e.test), self._child(e, e.then), self._child(e, e.orelse))
        raise TypeError(f"unknown expression node {type(e).__name__}")

    def _child(self, parent: Expr, child: Expr, other: Expr | None = None) -> Part:
        """``child`` printed, widened if it is an INT where ``parent`` computes a real from it
        (``other``: a comparison's other operand)."""
        part = self._print(child)
        if child.vtype is not VType.INT:
            return part
        if isinstance(parent, Binary) and parent.op in COMPARISON_OPS:
            # compared with a real: as a real, unless a literal every real type holds exactly
            exact = isinstance(child, Const) and abs(int(child.text)) <= 2 ** 24
            real = other is not None and other.vtype is VType.REAL and not exact
        else:
            real = parent.vtype is VType.REAL or isinstance(parent, Call)
        return self.widen(part, child) if real else part

    def _infix(self, e: Binary, symbol: str, left: Part, right: Part) -> Part:
        prec = _PREC[e.op]
        right_assoc = e.op == "**"
        comparison = prec == _PREC["<"]
        lhs = self._paren(left, prec, strict=right_assoc or comparison)
        rhs = self._paren(right, prec, strict=not right_assoc)
        return f"{lhs} {symbol} {rhs}", prec

    @staticmethod
    def _paren(part: Part, prec: int, strict: bool) -> str:
        text, inner = part
        needs = inner <= prec if strict else inner < prec
        return f"({text})" if needs else text
