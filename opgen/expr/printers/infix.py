"""The shared part of the infix printers: precedence and parentheses.

Parentheses follow the tree exactly, so every target evaluates the same operations in
the same order (left-associative, no re-association): bit-for-bit equal results where
the target's arithmetic is IEEE (C, CUDA without FMA contraction, NumPy).
"""

from __future__ import annotations

from opgen.expr.tree import Binary, Call, Cond, Const, Expr, Ref, Unary, VType

ATOM = 100
_PREC = {
    "cond": 1, "or": 2, "and": 3, "not": 4,
    "<": 5, "<=": 5, ">": 5, ">=": 5, "==": 5, "!=": 5,
    "+": 6, "-": 6, "*": 7, "/": 7, "neg": 8, "**": 9,
}


class InfixPrinter:
    """Prints an Expr. Subclasses say how leaves, calls, and non-infix forms look."""

    def expr(self, e: Expr) -> str:
        return self._print(e)[0]

    # -- hooks --------------------------------------------------------------------
    def const(self, e: Const) -> str:
        raise NotImplementedError

    def ref(self, e: Ref) -> str:
        raise NotImplementedError

    def call(self, e: Call, args: list[str]) -> str:
        raise NotImplementedError

    def widen(self, text: str, e: Expr) -> str:
        """An INT operand used where a real is computed."""
        return text

    def power(self, e: Binary, base: tuple[str, int], exponent: tuple[str, int]) -> tuple[str, int]:
        return self._infix(e, "**", base, exponent)

    def cond(self, e: Cond, test: str, then: str, orelse: str) -> tuple[str, int]:
        return f"{then} if {test} else {orelse}", _PREC["cond"]

    def logical(self, e: Binary, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
        return self._infix(e, e.op, left, right)

    def negate(self, operand: tuple[str, int]) -> tuple[str, int]:
        return f"-{self._paren(operand, _PREC['neg'], strict=False)}", _PREC["neg"]

    def logical_not(self, operand: tuple[str, int]) -> tuple[str, int]:
        return f"not {self._paren(operand, _PREC['not'], strict=False)}", _PREC["not"]

    # -- machinery ------------------------------------------------------------------
    def _print(self, e: Expr) -> tuple[str, int]:
        if isinstance(e, Const):
            return self.const(e), ATOM
        if isinstance(e, Ref):
            return self.ref(e), ATOM
        if isinstance(e, Unary):
            operand = self._print(e.operand)
            if e.op == "-":
                # -(-x) must not print as --x
                if isinstance(e.operand, Unary):
                    operand = (f"({operand[0]})", ATOM)
                return self.negate(operand)
            return self.logical_not(operand)
        if isinstance(e, Binary):
            left, right = self._operand(e, e.left), self._operand(e, e.right)
            if e.op == "**":
                return self.power(e, left, right)
            if e.op in ("and", "or"):
                return self.logical(e, left, right)
            return self._infix(e, e.op, left, right)
        if isinstance(e, Call):
            return self.call(e, [self.expr(a) if a.vtype is not VType.INT else self.widen(self.expr(a), a)
                                 for a in e.args]), ATOM
        if isinstance(e, Cond):
            prec = _PREC["cond"]
            test = self._paren(self._print(e.test), prec, strict=True)
            then = self._paren(self._print(e.then), prec, strict=True)
            orelse = self._paren(self._print(e.orelse), prec, strict=False)
            return self.cond(e, test, then, orelse)
        raise TypeError(f"unknown expression node {type(e).__name__}")

    def _operand(self, parent: Binary, child: Expr) -> tuple[str, int]:
        text, prec = self._print(child)
        if parent.vtype is VType.REAL and child.vtype is VType.INT:
            return self.widen(text if prec == ATOM else f"({text})", child), ATOM
        return text, prec

    def _infix(self, e: Binary, symbol: str, left: tuple[str, int], right: tuple[str, int]) -> tuple[str, int]:
        prec = _PREC[e.op]
        right_assoc = e.op == "**"
        comparison = prec == _PREC["<"]
        lhs = self._paren(left, prec, strict=right_assoc or comparison)
        rhs = self._paren(right, prec, strict=not right_assoc)
        return f"{lhs} {symbol} {rhs}", prec

    @staticmethod
    def _paren(part: tuple[str, int], prec: int, strict: bool) -> str:
        text, inner = part
        needs = inner <= prec if strict else inner < prec
        return f"({text})" if needs else text
