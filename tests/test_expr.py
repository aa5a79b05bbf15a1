"""The expression tree: parsing, parentheses in every printer, hoisting of uniform parts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opgen.errors import Location
from opgen.expr.hoist import hoist
from opgen.expr.parser import Statement, parse_program
from opgen.expr.printers.c import CPrinter
from opgen.expr.printers.numpy import NumpyPrinter
from opgen.expr.printers.pseudo import PseudoPrinter
from opgen.expr.tree import RefKind, VType


def program(*lines: str, params=("p", "q")):
    at = lambda line, col: Location("t.yaml", line, col + 1)  # noqa: E731
    return parse_program([Statement(text, at) for text in lines], frozenset({"g"}), frozenset({"w", "m"}),
                         {name: VType.REAL for name in params})


# Expressions whose grouping a printer could get wrong; the expected values are Python's own.
EXPRESSIONS = [
    ("w - (g - p)", lambda w, g, p, q: w - (g - p)),
    ("w - g - p", lambda w, g, p, q: w - g - p),
    ("w / (g * p)", lambda w, g, p, q: w / (g * p)),
    ("w / g * p", lambda w, g, p, q: w / g * p),
    ("-w ** 2", lambda w, g, p, q: -w ** 2),
    ("(-w) ** 2", lambda w, g, p, q: (-w) ** 2),
    ("2 ** -p", lambda w, g, p, q: 2 ** -p),
    ("(w ** g) ** p", lambda w, g, p, q: (w ** g) ** p),
    ("w ** g ** p", lambda w, g, p, q: w ** g ** p),
    ("-(-w)", lambda w, g, p, q: -(-w)),
    ("(w if g > p else q) * 2", lambda w, g, p, q: (w if g > p else q) * 2),
    ("w if g > p and not q < 0 else -w", lambda w, g, p, q: w if g > p and not q < 0 else -w),
    ("max(w, g) - min(p, q) + abs(-q)", lambda w, g, p, q: max(w, g) - min(p, q) + abs(-q)),
    ("sqrt(w) / (sqrt(g) + p) - exp(log(q))", lambda w, g, p, q: math.sqrt(w) / (math.sqrt(g) + p) - q),
]


@pytest.mark.parametrize("text, expected", EXPRESSIONS, ids=[e[0] for e in EXPRESSIONS])
def test_numpy_printer_keeps_grouping(text, expected):
    prog = program(f"w = {text}")
    source = NumpyPrinter().expr(prog.statements[0].expr)
    values = dict(w=1.7, g=1.3, p=0.6, q=0.4)
    namespace = {"np": np, "_np": np, "_m": __import__("opgen.runtime.npmath", fromlist=["x"]),
                 "_T": np.float64, **{k: np.float64(v) for k, v in values.items()}}
    got = eval(source, namespace)  # the printer's own output, on fixed numbers
    assert got == pytest.approx(expected(**values), rel=1e-12)


@pytest.mark.parametrize("text", [e[0] for e in EXPRESSIONS])
def test_pseudo_printer_round_trips(text):
    prog = program(f"w = {text}")
    printed = PseudoPrinter().expr(prog.statements[0].expr)
    assert program(f"w = {printed}").statements[0].expr == prog.statements[0].expr


def test_c_printer_float_literals_and_functions():
    prog = program("w = sqrt(w) * 0.5 + 1e-8 - clip(g, p) + 2 * w")
    assert CPrinter("float").expr(prog.statements[0].expr) == \
        "sqrtf(v_w) * 0.5f + 1e-08f - opgen_clipf(v_g, s_p) + 2.0f * v_w"
    assert CPrinter("double").expr(prog.statements[0].expr) == \
        "sqrt(v_w) * 0.5 + 1e-08 - opgen_clip(v_g, s_p) + 2.0 * v_w"


def test_uniform_subexpressions_are_hoisted_once():
    prog = program("t = (1 - p) * g + (1 - p) * w", "u = 1 - q", "w = w * u + t if p > 0 else w")
    k = hoist(prog)
    kinds = [(s.kind, s.target) for s in k.prologue]
    assert kinds == [(RefKind.HOISTED, "0"), (RefKind.TEMP, "u"), (RefKind.HOISTED, "1")]
    assert [s.target for s in k.body] == ["t", "w"]
    assert k.loads == ("g", "w") and k.stores == ("w",)


def test_a_reassigned_uniform_temporary_is_read_in_program_order():
    """s = lr; weight -= s*grad; s = 100*lr; mom -= s*grad: weight uses lr, mom uses 100*lr."""
    prog = program("s = lr", "w = w - s * g", "s = 100 * lr", "m = m - s * g", params=("lr",))
    kernel = hoist(prog)
    printer = NumpyPrinter()
    namespace = {"np": np, "_np": np, "_T": np.float64, "lr": 0.1, "w": 1.0, "g": 1.0, "m": 0.0}
    for statement in kernel.prologue + kernel.body:
        exec(printer.statement(statement), namespace)  # the printer's own output, on fixed numbers
    assert namespace["w"] == pytest.approx(1.0 - 0.1 * 1.0)
    assert namespace["m"] == pytest.approx(0.0 - 10.0 * 1.0)
