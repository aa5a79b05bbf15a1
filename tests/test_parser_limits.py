"""Parser limits (issue 9): nesting depth, huge inputs, literal ranges, ints in real math,
and character columns. Every broken input is a SpecError at its place, never a traceback."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import numpy as np
import pytest

from opgen.build import DEFAULT_TEMPLATES, render
from opgen.errors import Location, SpecError
from opgen.expr.latex import LatexPrinter
from opgen.expr.parser import MAX_DEPTH, Statement, parse_program
from opgen.expr.printers.c import CPrinter
from opgen.expr.printers.numpy import NumpyPrinter
from opgen.expr.printers.pseudo import PseudoPrinter
from opgen.expr.tree import VType
from opgen.runtime import use_backend
from opgen.spec.loader import parse_spec
from packages import build_package

P = "specs/toy_update.yaml"
MATH_LINE = 10  # the line of the first math entry in spec()


def spec(*math: str, skip_if: str | None = None) -> str:
    """A minimal spec: its first math entry is on MATH_LINE, starting in column 5."""
    skip = f"skip_if: {skip_if}\n" if skip_if is not None else ""
    return (
        "name: toy_update\n"
        "summary: A toy update.\n"
        "tensors:\n"
        "  - {name: weight, role: weight, doc: Weight}\n"
        "  - {name: grad, role: grad, doc: Gradient}\n"
        "params:\n"
        "  - {name: lr, type: float, required: true, doc: Learning rate}\n"
        "  - {name: t, type: int, default: 2, doc: A count}\n"
        "math:\n"
        + "".join(f"  - {m}\n" for m in math)
        + "  - weight = weight + 0 * lr * t\n"  # every parameter used
        + skip
    )


def error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, P)
    return info.value


# ---- nesting depth ----------------------------------------------------------------------

# Right-hand sides that nest exactly d levels, one of each way to nest.
SHAPES: dict[str, Callable[[int], str]] = {
    "sum": lambda d: "grad" + " + grad" * d,
    "minuses": lambda d: "-" * d + "grad",
    "calls": lambda d: "sqrt(" * d + "grad" + ")" * d,
    "powers": lambda d: "grad ** " * d + "grad",
    "divisions": lambda d: "grad" + " / 2" * d,
    "conditionals": lambda d: "grad if grad > 0 else " * (d - 1) + "grad",
    "uniform conditionals": lambda d: "grad if lr > 0 else " * (d - 1) + "grad",
    "and chain": lambda d: "grad if " + " and ".join(["grad > lr"] * (d - 1)) + " else weight",
    "nots": lambda d: "grad if " + "not " * (d - 2) + "grad > 0 else weight",
    "int conditionals": lambda d: "grad * " + "(t if grad > 0 else " * (d - 2) + "1" + ")" * (d - 2),
    "int products": lambda d: "grad * (" + " * ".join(["t"] * d) + ")",
}


@pytest.mark.parametrize("shape", SHAPES)
def test_depth_at_the_limit_parses_and_one_more_is_refused(shape):
    parse_spec(spec(f"x = {SHAPES[shape](MAX_DEPTH)}", "weight = x"), P)
    e = error(spec(f"x = {SHAPES[shape](MAX_DEPTH + 1)}", "weight = x"))
    assert (e.location.line, e.location.col) == (MATH_LINE, 9)  # where the expression starts
    assert e.message.startswith(f"this expression nests {MAX_DEPTH + 1} levels deep, more than the limit "
                                f"of {MAX_DEPTH}")


def test_an_augmented_assignment_counts_its_own_operator():
    parse_spec(spec("weight += " + " + ".join(["grad"] * MAX_DEPTH)), P)
    e = error(spec("weight += " + " + ".join(["grad"] * (MAX_DEPTH + 1))))
    assert str(e).startswith(f"{P}:{MATH_LINE}:15: this expression nests {MAX_DEPTH + 1} levels deep")


def test_skip_if_depth_at_the_limit_and_past_it():
    parse_spec(spec("weight = grad", skip_if=" or ".join(["lr < 0"] * MAX_DEPTH)), P)
    e = error(spec("weight = grad", skip_if=" or ".join(["lr < 0"] * (MAX_DEPTH + 1))))
    assert (e.location.line, e.location.col) == (MATH_LINE + 2, 10)
    assert f"nests {MAX_DEPTH + 1} levels deep" in e.message


# Inputs far past any limit, including those Python's own parser gives up on (RecursionError
# while building the ast, MemoryError for its stack, SyntaxError past 200 parentheses).
HUGE = {
    "2,000-term sum": "weight = grad" + " + grad" * 1999,
    "2,000 nested minuses": "weight = " + "-" * 2000 + "grad",
    "100,000-term sum": "weight = grad" + " + grad" * 99_999,
    "100,000 nested minuses": "weight = " + "-" * 100_000 + "grad",
    "100,000 nested nots": "weight = grad if " + "not " * 100_000 + "lr > 0 else grad",
    "300 nested parentheses": "weight = " + "(" * 300 + "grad" + ")" * 300,
    "300 nested calls": "weight = " + "sqrt(" * 300 + "grad" + ")" * 300,
}


@pytest.mark.parametrize("name", HUGE)
def test_huge_math_is_a_spec_error(name):
    e = error(spec(HUGE[name]))
    assert e.location.line == MATH_LINE and e.location.path == P
    assert "nest" in e.message


def test_huge_skip_if_is_a_spec_error():
    e = error(spec("weight = grad", skip_if=" or ".join(["lr < 0"] * 100_000)))
    assert e.location.line == MATH_LINE + 2 and "nest" in e.message


def test_a_2000_term_sum_names_its_depth():
    e = error(spec(HUGE["2,000-term sum"]))
    assert e.message.startswith("this expression nests 1999 levels deep")


@pytest.mark.parametrize("shape", SHAPES)
def test_everything_at_the_limit_prints_in_every_printer(shape):
    op = parse_spec(spec(f"x = {SHAPES[shape](MAX_DEPTH)}", "weight = x"), P)  # hoisted too
    symbols = {"weight": "W", "grad": "g", "lr": r"\eta", "t": "t"}
    printers = [CPrinter("float"), CPrinter("double"), NumpyPrinter(), PseudoPrinter(), LatexPrinter(symbols)]
    for statement in op.math.statements:
        for printer in printers:
            assert printer.expr(statement.expr)
    for statement in op.program.prologue + op.program.body:  # hoisted: the kernels' printers only
        for printer in printers[:3]:
            assert printer.expr(statement.expr)
        compile(NumpyPrinter().expr(statement.expr), "<numpy>", "eval")  # Python itself parses it
    files = render([op], DEFAULT_TEMPLATES).files  # every target's printing of it
    compile(files["toy_update.py"], "toy_update.py", "exec")


def test_per_row_math_at_the_limit_goes_through_the_row_split():
    deep = " + ".join(["gr"] * (MAX_DEPTH - 1))  # row_mean( ) and += add a level each
    text = textwrap.dedent(f"""\
        name: toy_update
        summary: A toy update.
        tensors:
          - {{name: weight, role: weight, doc: Weight}}
          - {{name: grad, role: grad, doc: Gradient}}
          - {{name: history, role: state, per_row: true, doc: History}}
        params:
          - {{name: lr, type: float, required: true, doc: Learning rate}}
        row_sparse: {{lazy: true, dense: false}}
        math:
          - gr = grad * lr
          - history += row_mean({deep})
          - weight = weight - {"-" * (MAX_DEPTH - 2)}gr / sqrt(history + 1)
        """)
    op = parse_spec(text, P)
    assert op.rows is not None and len(op.rows.reductions) == 1
    compile(render([op], DEFAULT_TEMPLATES).files["toy_update.py"], "toy_update.py", "exec")
    with pytest.raises(SpecError, match=f"nests {MAX_DEPTH + 1} levels deep"):
        parse_spec(text.replace(f"row_mean({deep})", f"row_mean({deep} + gr)"), P)


# ---- literals -----------------------------------------------------------------------------

@pytest.mark.parametrize("literal, message", [
    ("1e400", "float literal 1e400 is too large for a float64 (at most about 1.8e308)"),
    ("1.8e308", "float literal 1.8e308 is too large for a float64 (at most about 1.8e308)"),
    ("1e-400", "float literal 1e-400 is too small for a float64: it would be 0 (the smallest is about 4.9e-324); "
               "write 0.0 if 0 is meant"),
    ("2e-324", "float literal 2e-324 is too small for a float64: it would be 0 (the smallest is about 4.9e-324); "
               "write 0.0 if 0 is meant"),
    ("9223372036854775808", "integer literal 9223372036854775808 is outside the 64-bit integer range "
                            "(at most 9223372036854775807); write a float literal"),
    ("0x8000000000000000", "integer literal 0x8000000000000000 is outside the 64-bit integer range "
                           "(at most 9223372036854775807); write a float literal"),
])
def test_literals_outside_float64_or_int64_are_refused_where_they_stand(literal, message):
    assert str(error(spec(f"weight = weight + {literal} * grad"))) == f"{P}:{MATH_LINE}:23: {message}"
    e = error(spec("weight = grad", skip_if=f"lr > {literal}"))
    assert (e.location.line, e.location.col, e.message) == (MATH_LINE + 2, 15, message)


@pytest.mark.parametrize("literal", ["0.0", "0e10", "0.000", "5e-324", "1e-310", "1.7e308",
                                     "9223372036854775807", "0x7fffffffffffffff"])
def test_literals_inside_the_ranges_are_accepted(literal):
    parse_spec(spec(f"weight = weight + {literal} * grad"), P)


# ---- ints in real math ----------------------------------------------------------------------

def vtypes(*math: str) -> list[VType]:
    at = lambda line, col: Location(P, line, col + 1)  # noqa: E731
    program = parse_program([Statement(m, at) for m in math], frozenset({"grad"}), frozenset({"weight"}),
                            {"lr": VType.REAL, "t": VType.INT})
    return [s.expr.vtype for s in program.statements]


def test_arithmetic_on_ints_is_real_and_ints_come_from_parameters_literals_and_conditionals():
    assert vtypes("a = t * t", "b = t + 1", "c = -t", "d = t - t") == [VType.REAL] * 4
    assert vtypes("a = t", "b = 3", "c = t if lr > 0 else 2") == [VType.INT] * 3
    assert vtypes("a = t if lr > 0 else 2.0") == [VType.REAL]


def test_ints_widen_in_every_printer_of_the_per_call_math():
    op = parse_spec(spec("a = t * t * t", "weight = weight + a * grad"), P)
    (a,) = [s.expr for s in op.program.prologue if s.target == "a"]
    assert CPrinter("double").expr(a) == "(double)s_t * (double)s_t * (double)s_t"
    assert CPrinter("float").expr(a) == "(float)(double)s_t * (float)(double)s_t * (float)(double)s_t"
    assert NumpyPrinter("_D").expr(a) == "_D(t) * _D(t) * _D(t)"
    assert PseudoPrinter().expr(a) == "t * t * t"


INT_SPEC = """\
name: cube
summary: Adds t cubed, scaled, and t.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
params:
  - {name: t, type: int, required: true, doc: A count}
math:
  - weight = weight + t * t * t / 1e19 * grad + t
"""


@pytest.fixture(scope="module")
def cube_package(tmp_path_factory):
    return build_package(tmp_path_factory.mktemp("cube"), {"cube": INT_SPEC}, "cube_pkg")


@pytest.mark.parametrize("t", [3_000_000, 2 ** 60 + 2 ** 36 + 1, -(2 ** 63)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c_and_numpy_agree_where_int64_arithmetic_would_overflow(cube_package, t, dtype):
    """t * t * t overflows int64 (C would wrap, NumPy's Python ints would grow): both compute
    it in double. The lone t enters float32 math through double in both (2**60 + 2**36 + 1
    rounds to 2**60 that way, to 2**60 + 2**37 straight from int64)."""
    weight, grad = np.array([0.0, 1.0, -2.0], dtype), np.array([1.0, 0.5, -1.0], dtype)
    results = {}
    for backend in ("c", "numpy"):
        with use_backend(backend):
            results[backend] = cube_package.cube(weight, grad, t=t)
    cube = dtype(float(t) * float(t) * float(t) / 1e19)
    expected = (weight + cube * grad) + dtype(float(t))
    np.testing.assert_array_equal(results["c"], expected)
    np.testing.assert_array_equal(results["numpy"], expected)


def test_the_deepest_math_builds_compiles_and_agrees_in_c_and_numpy(tmp_path):
    names = [f"x{i}" for i in range(len(SHAPES))]
    math = [f"{n} = {make(MAX_DEPTH)}" for n, make in zip(names, SHAPES.values())]
    text = spec(*math, "weight = " + " + ".join(names), skip_if=" or ".join(["lr < 0"] * MAX_DEPTH))
    package = build_package(tmp_path, {"deep": text.replace("name: toy_update", "name: deep")}, "deep_pkg")
    for dtype in (np.float32, np.float64):
        weight, grad = np.linspace(0.5, 1.5, 9).astype(dtype), np.linspace(0.1, 0.9, 9).astype(dtype)
        with use_backend("c"):
            c = package.deep(weight, grad, lr=0.1, t=2)
        with use_backend("numpy"):
            reference = package.deep(weight, grad, lr=0.1, t=2)
        assert np.all(np.isfinite(c))
        np.testing.assert_array_equal(c, reference)


# ---- columns count characters -----------------------------------------------------------------

@pytest.mark.parametrize("math, col, message", [
    # the error after a non-ASCII name (ast's col_offset counts UTF-8 bytes: 2 more per β)
    ("ββ = lr * gard", 15, "undefined name 'gard'; did you mean 'grad'?"),
    ("weight = ββ if gard > 0 else grad", 20, "undefined name 'gard'; did you mean 'grad'?"),
    ("weight = ββ if 1e400 > lr else grad", 20, "float literal 1e400 is too large for a float64 (at most about "
                                                "1.8e308)"),
    # SyntaxError's offset counts characters already
    ("weight = ββ + $", 19, "invalid math syntax: invalid syntax"),
])
def test_columns_after_non_ascii_characters_count_characters(math, col, message):
    assert str(error(spec(math))) == f"{P}:{MATH_LINE}:{col}: {message}"


def test_skip_if_columns_count_characters_and_leading_spaces():
    e = error(spec("weight = grad", skip_if="ββ if gard else lr > 0"))
    assert (e.location.line, e.location.col, e.message) == (MATH_LINE + 2, 16, "undefined name 'gard'; did you "
                                                                                "mean 'grad'?")
    e = error(spec("weight = grad", skip_if='"  lr > gard"'))  # a quoted scalar, parsed stripped
    assert (e.location.line, e.location.col) == (MATH_LINE + 2, 18)


# ---- found in review: constants that divide by zero, powers -------------------------------------

POWER_SPEC = """\
name: powers
summary: Powers and constant quotients.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
params:
  - {name: k, type: float, default: 0.37, doc: An exponent}
math:
  - weight = weight ** k + grad ** 3 + grad ** -2 + (1.0 / 0.0) * 0.0 + 0.0 / 0.0 * 0.0
"""


@pytest.fixture(scope="module")
def power_package(tmp_path_factory):
    return build_package(tmp_path_factory.mktemp("powers"), {"powers": POWER_SPEC}, "powers_pkg")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_powers_and_constant_quotients_agree_bit_for_bit_in_float_math(power_package, dtype):
    """1.0 / 0.0 is inf in C and was a ZeroDivisionError in NumPy's per-call values; powers
    in float math are computed in double then rounded once in both (powf and NumPy's float32
    power differ by an ulp in about a fifth of cases). inf * 0 makes every result NaN, so
    the check is on the NaN-free twin below and on the NaN pattern here."""
    rng = np.random.default_rng(3)
    weight = np.abs(rng.normal(size=4096)).astype(dtype)
    grad = rng.normal(size=4096).astype(dtype)
    results = {}
    for backend in ("c", "numpy"):
        with use_backend(backend):
            results[backend] = power_package.powers(weight, grad)
    assert np.isnan(results["c"]).all() and np.isnan(results["numpy"]).all()


POWER_ONLY = POWER_SPEC.replace(" + (1.0 / 0.0) * 0.0 + 0.0 / 0.0 * 0.0", "").replace("name: powers", "name: powers2")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_powers_in_float_math_give_the_same_bits_in_c_and_numpy(tmp_path, dtype):
    package = build_package(tmp_path, {"powers2": POWER_ONLY}, "powers2_pkg")
    rng = np.random.default_rng(4)
    weight = np.abs(rng.normal(size=20000)).astype(dtype)
    grad = rng.normal(size=20000).astype(dtype)
    weight[:3] = [np.inf, 0.0, 1.0]
    results = {}
    for backend in ("c", "numpy"):
        with use_backend(backend):
            results[backend] = package.powers2(weight, grad, k=0.37)
    np.testing.assert_array_equal(results["c"], results["numpy"])
    w, g = weight.astype(np.float64), grad.astype(np.float64)
    with np.errstate(all="ignore"):
        terms = [w ** np.float64(np.float32(0.37)), g ** 3, g ** -2.0]  # the float64 reference
    expected, scale = sum(terms), sum(np.abs(term) for term in terms)  # (the sum may cancel)
    finite = np.isfinite(scale) & (scale < 1e4)
    error = np.abs(results["c"][finite] - expected[finite])
    assert (error <= (4e-3 if dtype == np.float16 else 1e-6) * scale[finite]).all()
