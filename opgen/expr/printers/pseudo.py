"""Pseudo-code printer for docs: the math as a reader writes it, optionally per row."""

from __future__ import annotations

from opgen.expr.printers.infix import InfixPrinter
from opgen.expr.tree import Assign, Call, Const, Ref, RefKind


class PseudoPrinter(InfixPrinter):
    def __init__(self, index: str = "") -> None:
        self.index = index  # e.g. "[row]": appended to every tensor

    def const(self, e: Const) -> str:
        return e.text

    def ref(self, e: Ref) -> str:
        return e.name + (self.index if e.kind is RefKind.TENSOR else "")

    def call(self, e: Call, args: list[str]) -> str:
        return f"{e.func}({', '.join(args)})"

    def statement(self, s: Assign) -> str:
        target = s.target + (self.index if s.kind is RefKind.TENSOR else "")
        return f"{target} = {self.expr(s.expr)}"
