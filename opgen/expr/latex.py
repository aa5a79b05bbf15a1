"""LaTeX printer for docs, and the default LaTeX symbol of a name."""

from __future__ import annotations

import re

from opgen.expr.printers.infix import ATOM, InfixPrinter, Part
from opgen.expr.tree import Assign, Binary, Call, Cond, Const, Ref, RefKind

_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda",
    "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega",
}
_OPS = {"<": "<", "<=": r"\le", ">": ">", ">=": r"\ge", "==": "=", "!=": r"\ne", "+": "+", "-": "-",
        "*": r"\cdot", "and": r"\land", "or": r"\lor"}


def default_symbol(name: str) -> str:
    """beta1 -> \\beta_{1}, epsilon -> \\epsilon, rescale_grad -> \\mathrm{rescale\\_grad}."""
    m = re.fullmatch(r"([a-z]+?)_?(\d+)", name)
    stem, sub = (m.group(1), m.group(2)) if m else (name, "")
    stem_tex = f"\\{stem}" if stem in _GREEK else None
    if stem_tex is None:
        if len(name) == 1:
            return name
        return r"\mathrm{" + name.replace("_", r"\_") + "}"
    return stem_tex + (f"_{{{sub}}}" if sub else "")


class LatexPrinter(InfixPrinter):
    def __init__(self, symbols: dict[str, str]) -> None:
        self.symbols = symbols

    def const(self, e: Const) -> str:
        text = e.text
        m = re.fullmatch(r"([-+]?[\d.]+)[eE]([-+]?\d+)", text)
        if m:
            return rf"{m.group(1)} \times 10^{{{int(m.group(2))}}}"
        return {"True": r"\mathrm{true}", "False": r"\mathrm{false}"}.get(text, text)

    def ref(self, e: Ref) -> str:
        if e.kind is RefKind.TEMP:
            return default_symbol(e.name)
        return self.symbols[e.name]

    def call(self, e: Call, args: list[str]) -> str:
        if e.func == "sqrt":
            return rf"\sqrt{{{args[0]}}}"
        if e.func == "abs":
            return rf"\left|{args[0]}\right|"
        if e.func == "square":
            return rf"\left({args[0]}\right)^{{2}}"
        if e.func == "row_mean":
            return rf"\operatorname{{mean}}_{{\text{{row}}}}\left({args[0]}\right)"
        if e.func == "col_mean":
            return rf"\operatorname{{mean}}_{{\text{{col}}}}\left({args[0]}\right)"
        if e.func in ("row_sum", "col_sum"):
            return rf"\sum_{{\text{{{e.func[:3]}}}}}\left({args[0]}\right)"
        name = {"min": r"\min", "max": r"\max", "exp": r"\exp", "log": r"\log"}.get(
            e.func, rf"\operatorname{{{e.func}}}")
        return rf"{name}\left({', '.join(args)}\right)"

    def _infix(self, e: Binary, symbol: str, left: Part, right: Part) -> Part:
        if e.op == "/":
            return rf"\frac{{{left[0]}}}{{{right[0]}}}", ATOM
        return super()._infix(e, _OPS.get(e.op, symbol), left, right)

    def power(self, e: Binary, base: Part, exponent: Part) -> Part:
        b = base[0] if base[1] == ATOM else rf"\left({base[0]}\right)"
        return f"{{{b}}}^{{{exponent[0]}}}", ATOM

    def cond(self, e: Cond, test: Part, then: Part, orelse: Part) -> Part:
        body = rf"\begin{{cases}} {then[0]} & \text{{if }} {test[0]} \\ " \
               rf"{orelse[0]} & \text{{otherwise}} \end{{cases}}"
        return body, ATOM

    def logical_not(self, operand: Part) -> Part:
        return rf"\lnot {operand[0]}", 8

    def statement(self, s: Assign) -> str:
        target = default_symbol(s.target) if s.kind is RefKind.TEMP else self.symbols[s.target]
        return rf"{target} &\leftarrow {self.expr(s.expr)}"
