"""Spec math text -> typed expression tree, with Python's ``ast`` as the parser.

The text is only ever parsed, never evaluated. Each statement is ``name = expr`` or
``name op= expr``; names resolve to tensors, parameters or earlier temporaries.

Limits, each a SpecError at its place: an expression nests at most ``MAX_DEPTH`` levels
(one per operator, call or conditional, so ``a + b + c`` is two: a chain of n terms is n - 1
levels), checked without recursion before anything walks the tree; float literals must be
finite and nonzero where written nonzero in float64, int literals at most ``2**63 - 1``.
Arithmetic on ints gives a real (see ``_arith``). Columns are characters, not UTF-8 bytes.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opgen.errors import Location, SpecError, did_you_mean
from opgen.expr.tree import (
    FUNCTIONS,
    Assign,
    Binary,
    Call,
    Cond,
    Const,
    Expr,
    Program,
    Ref,
    RefKind,
    Unary,
    VType,
)

Locator = Callable[[int, int], Location]  # (1-based line in the text, 0-based column) -> file location

# Deep enough for any optimizer (the specs of specs/ nest at most 8), shallow enough that every
# recursive walk (parser, hoisting, rows, printers, the generated Python's own parser with its
# 200 nested parentheses) stays far inside its limits.
MAX_DEPTH = 100
INT_MAX = 2 ** 63 - 1
_LINES = re.compile(r"\r\n|\r|\n")  # how ast splits lines

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_CMPOPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_PY_OP_NAMES = {
    ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|",
    ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.Invert: "~",
}


@dataclass(frozen=True)
class Statement:
    """One line of math as it stands in the spec, with a way to place its columns."""

    text: str
    locate: Locator


class _Source:
    """One statement's text as ast parses it, placing its nodes in the spec file.

    ``strip``: parse the text without its surrounding whitespace (a condition: ast's eval
    mode refuses an indent), placing columns as they stand in the unstripped text.
    """

    def __init__(self, stmt: Statement, strip: bool = False) -> None:
        text, skipped = stmt.text, ""
        if strip:
            body = text.lstrip()
            text, skipped = body.rstrip(), text[:len(text) - len(body)]
        self.stmt, self.text = stmt, text
        self.lines = _LINES.split(text)
        self.skipped_lines = len(_LINES.findall(skipped))
        self.skipped_cols = len(_LINES.split(skipped)[-1])

    def locate(self, line: int, col: int) -> Location:
        """A 1-based line and 0-based character column of ``text``, in the spec file."""
        return self.stmt.locate(line + self.skipped_lines, col + (self.skipped_cols if line == 1 else 0))

    def at(self, node: ast.AST) -> Location:
        """ast's col_offset counts UTF-8 bytes; a Location counts characters."""
        line = self.lines[node.lineno - 1].encode()
        return self.locate(node.lineno, len(line[:node.col_offset].decode(errors="replace")))

    def segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.text, node) or ""

    def parse(self, mode: str, what: str) -> ast.AST:
        try:
            return ast.parse(self.text, mode=mode)
        except SyntaxError as exc:  # its offset counts characters already (Python >= 3.10)
            line, col = exc.lineno or 1, max((exc.offset or 1) - 1, 0)
            raise SpecError(self.locate(line, col), f"invalid {what} syntax: {exc.msg}") from None
        except (RecursionError, MemoryError):  # how Python's own parser gives up on deep nesting
            raise SpecError(self.locate(1, 0), f"the {what} nests too deeply to parse "
                                               f"(the limit is {MAX_DEPTH} levels)") from None


def _depth(node: ast.expr) -> int:
    """How deep ``node``'s tree will nest, found without recursion: a level for each operator,
    call or conditional; ``a and b and c`` counts as ``(a and b) and c``."""
    depth: dict[int, int] = {}
    stack: list[tuple[ast.expr, list[ast.expr] | None]] = [(node, None)]
    while stack:
        n, children = stack.pop()
        if children is None:  # first visit: the children go first
            children = [c for c in ast.iter_child_nodes(n) if isinstance(c, ast.expr)]
            stack.append((n, children))
            stack.extend((c, None) for c in children)
            continue
        levels = [depth.pop(id(c)) for c in children]
        if isinstance(n, ast.BoolOp):
            d = levels[0]
            for level in levels[1:]:
                d = 1 + max(d, level)
        else:
            d = 1 + max(levels) if levels else 0
        depth[id(n)] = d
    return depth[id(node)]


def _check_depth(node: ast.expr, src: _Source, extra: int = 0) -> None:
    """``extra``: levels the statement adds around ``node`` (``x += node`` is ``x + node``)."""
    d = _depth(node) + extra
    if d > MAX_DEPTH:
        raise SpecError(src.at(node), f"this expression nests {d} levels deep, more than the limit of {MAX_DEPTH} "
                                      "(a level for each operator, call or conditional: a + b + c is 2); "
                                      "split it with temporaries")


@dataclass
class _Scope:
    readonly_tensors: frozenset[str]
    writable_tensors: frozenset[str]
    params: Mapping[str, VType]
    scalar_inputs: frozenset[str] = frozenset()  # the uniform names that are one-element inputs
    # uniform names that are per-tensor states: read as their value before the call, until
    # assigned (a per-call statement), then as a temporary; the last value is stored
    per_tensor: frozenset[str] = frozenset()
    temps: dict[str, tuple[VType, bool]] = field(default_factory=dict)  # name -> (type, uniform)
    reductions: bool = True  # False outside the math (skip_if): no pass computes them there

    def known_names(self) -> list[str]:
        return [*self.readonly_tensors, *self.writable_tensors, *self.params, *self.temps]


def parse_program(
    statements: Sequence[Statement],
    readonly_tensors: frozenset[str],
    writable_tensors: frozenset[str],
    params: Mapping[str, VType],
    scalar_inputs: frozenset[str] = frozenset(),
    per_tensor: frozenset[str] = frozenset(),
) -> Program:
    scope = _Scope(readonly_tensors, writable_tensors, params, scalar_inputs, per_tensor)
    return Program(tuple(_parse_statement(s, scope) for s in statements))


def _parse_statement(stmt: Statement, scope: _Scope) -> Assign:
    src = _Source(stmt)
    module = src.parse("exec", "math")
    if len(module.body) != 1:
        raise SpecError(src.locate(1, 0), "each math entry must hold exactly one assignment")
    node = module.body[0]
    at = src.at
    if isinstance(node, (ast.Assign, ast.AugAssign)):
        _check_depth(node.value, src, extra=1 if isinstance(node, ast.AugAssign) else 0)

    if isinstance(node, ast.Assign):
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise SpecError(at(node), "the left side of an assignment must be a single name")
        target = node.targets[0]
        value = _expr(node.value, scope, src)
    elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        target = node.target
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise SpecError(at(node), f"unsupported operator '{_PY_OP_NAMES.get(type(node.op), '?')}='")
        current = _name(ast.Name(id=target.id, ctx=ast.Load(), lineno=target.lineno,
                                 col_offset=target.col_offset), scope, src)
        value = _arith(op, current, _expr(node.value, scope, src), at(node))
    else:
        raise SpecError(at(node), "each math entry must be an assignment 'name = expression'")

    name = target.id
    where = at(target)
    if name in scope.readonly_tensors:
        raise SpecError(where, f"cannot assign to '{name}': it is a read-only input")
    if name in scope.per_tensor and not value.uniform:
        raise SpecError(where, f"'{name}' holds one value per tensor: its new value must be the same for every "
                               "element (parameters, reductions and other per-call values)")
    if name in scope.params and name not in scope.per_tensor:
        what = "a scalar input" if name in scope.scalar_inputs else "a parameter"
        raise SpecError(where, f"cannot assign to '{name}': it is {what}")
    if value.vtype is not VType.REAL and name in scope.per_tensor:
        raise SpecError(where, f"cannot store a {value.vtype.value} in the per-tensor state '{name}'")
    if name.startswith("_"):
        raise SpecError(where, f"names may not start with '_': '{name}'")
    if name in FUNCTIONS:
        raise SpecError(where, f"cannot assign to '{name}': it is a function")
    if value.vtype is VType.BOOL and name in scope.writable_tensors:
        raise SpecError(where, f"cannot store a condition in tensor '{name}'")
    if name in scope.writable_tensors:
        kind = RefKind.TENSOR
    else:
        kind = RefKind.TEMP
        previous = scope.temps.get(name)
        if previous is not None and previous[0] is not value.vtype:
            raise SpecError(where, f"'{name}' was {previous[0].value} and is now assigned a {value.vtype.value}")
        uniform = value.uniform and (previous is None or previous[1])
        scope.temps[name] = (value.vtype, uniform)
    return Assign(name, kind, value, stmt.text.strip(), where)


def _expr(node: ast.expr, scope: _Scope, src: _Source) -> Expr:
    at = src.at
    if isinstance(node, ast.Constant):
        return _const(node, src)
    if isinstance(node, ast.Name):
        return _name(node, scope, src)
    if isinstance(node, ast.UnaryOp):
        operand = _expr(node.operand, scope, src)
        if isinstance(node.op, ast.UAdd):
            _need_number(operand, "unary '+'", at(node))
            return operand
        if isinstance(node.op, ast.USub):
            _need_number(operand, "unary '-'", at(node))
            return Unary(VType.REAL, operand.uniform, "-", operand)  # arithmetic: a real (see _arith)
        if isinstance(node.op, ast.Not):
            _need_bool(operand, "'not'", at(node))
            return Unary(VType.BOOL, operand.uniform, "not", operand)
        raise SpecError(at(node), f"unsupported operator '{_PY_OP_NAMES.get(type(node.op), '?')}'")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise SpecError(at(node), f"unsupported operator '{_PY_OP_NAMES.get(type(node.op), '?')}'")
        return _arith(op, _expr(node.left, scope, src), _expr(node.right, scope, src), at(node))
    if isinstance(node, ast.Compare):
        if len(node.ops) != 1:
            raise SpecError(at(node), "chained comparisons are not supported; combine them with 'and'")
        op = _CMPOPS.get(type(node.ops[0]))
        if op is None:
            raise SpecError(at(node), "unsupported comparison; use one of < <= > >= == !=")
        left, right = _expr(node.left, scope, src), _expr(node.comparators[0], scope, src)
        _need_number(left, f"'{op}'", at(node))
        _need_number(right, f"'{op}'", at(node))
        return Binary(VType.BOOL, left.uniform and right.uniform, op, left, right)
    if isinstance(node, ast.BoolOp):
        op = "and" if isinstance(node.op, ast.And) else "or"
        values = [_expr(v, scope, src) for v in node.values]
        for v, raw in zip(values, node.values):
            _need_bool(v, f"'{op}'", at(raw))
        result = values[0]
        for v in values[1:]:
            result = Binary(VType.BOOL, result.uniform and v.uniform, op, result, v)
        return result
    if isinstance(node, ast.IfExp):
        test = _expr(node.test, scope, src)
        _need_bool(test, "a condition ('x if condition else y')", at(node.test))
        then, orelse = _expr(node.body, scope, src), _expr(node.orelse, scope, src)
        if then.vtype is VType.BOOL or orelse.vtype is VType.BOOL:
            if then.vtype is not orelse.vtype:
                raise SpecError(at(node), "both branches of a conditional must be numbers or both conditions")
            vtype = VType.BOOL
        else:
            vtype = VType.INT if then.vtype is orelse.vtype is VType.INT else VType.REAL
        return Cond(vtype, test.uniform and then.uniform and orelse.uniform, test, then, orelse)
    if isinstance(node, ast.Call):
        return _call(node, scope, src)
    raise SpecError(at(node), f"unsupported syntax in math: {type(node).__name__}")


def _const(node: ast.Constant, src: _Source) -> Const:
    value = node.value
    if isinstance(value, bool):
        return Const(VType.BOOL, True, "True" if value else "False")
    if isinstance(value, int):
        if value > INT_MAX:
            raise SpecError(src.at(node), f"integer literal {src.segment(node)} is outside the 64-bit integer "
                                          f"range (at most {INT_MAX}); write a float literal")
        return Const(VType.INT, True, str(value))
    if isinstance(value, float):
        written = src.segment(node)
        if value == float("inf"):
            raise SpecError(src.at(node), f"float literal {written} is too large for a float64 "
                                          "(at most about 1.8e308)")
        if value == 0.0 and any(c in "123456789" for c in written.lower().split("e")[0]):
            raise SpecError(src.at(node), f"float literal {written} is too small for a float64: it would be 0 "
                                          "(the smallest is about 4.9e-324); write 0.0 if 0 is meant")
        return Const(VType.REAL, True, _float_text(value))
    raise SpecError(src.at(node), f"unsupported constant {value!r}: only numbers and True/False")


def _float_text(value: float) -> str:
    text = repr(value)
    return text if any(c in text for c in ".en") else text + ".0"


def _name(node: ast.Name, scope: _Scope, src: _Source) -> Ref:
    name = node.id
    if name in scope.readonly_tensors or name in scope.writable_tensors:
        return Ref(VType.REAL, False, name, RefKind.TENSOR)
    if name in scope.per_tensor and name in scope.temps:  # assigned: its new value
        vtype, uniform = scope.temps[name]
        return Ref(vtype, uniform, name, RefKind.TEMP)
    if name in scope.params:
        return Ref(scope.params[name], True, name, RefKind.PARAM)
    if name in scope.temps:
        vtype, uniform = scope.temps[name]
        return Ref(vtype, uniform, name, RefKind.TEMP)
    if name in FUNCTIONS:
        raise SpecError(src.at(node), f"'{name}' is a function: call it as {name}(...)")
    raise SpecError(src.at(node), f"undefined name '{name}'{did_you_mean(name, scope.known_names())}")


def _call(node: ast.Call, scope: _Scope, src: _Source) -> Call:
    at = src.at
    if not isinstance(node.func, ast.Name):
        raise SpecError(at(node), "only the spec language's functions can be called")
    name = node.func.id
    func = FUNCTIONS.get(name)
    if func is None:
        hint = did_you_mean(name, list(FUNCTIONS))
        known = ", ".join(sorted(FUNCTIONS))
        raise SpecError(at(node.func), f"unknown function '{name}'{hint or f' (known: {known})'}")
    if node.keywords:
        raise SpecError(at(node), f"{name}() takes positional arguments only")
    if len(node.args) != func.arity:
        plural = "s" if func.arity != 1 else ""
        raise SpecError(at(node), f"{name}() takes {func.arity} argument{plural}, got {len(node.args)}")
    args = tuple(_expr(a, scope, src) for a in node.args)
    for a, raw in zip(args, node.args):
        _need_number(a, f"{name}()", at(raw))
    vtype = VType.BOOL if func.returns == "bool" else VType.REAL
    if func.reduces is not None:
        if not scope.reductions:
            raise SpecError(at(node), f"{name}() reduces a tensor, and only the math may do that; this "
                                      "condition is decided before any pass over the tensors")
        if args[0].uniform:
            raise SpecError(at(node.args[0]), f"{name}() reduces an element expression over the tensor; its "
                                              "argument reads no tensor (it is one value per call)")
        return Call(vtype, True, name, args)  # one value per call: uniform to what reads it
    return Call(vtype, all(a.uniform for a in args), name, args)


def _arith(op: str, left: Expr, right: Expr, where: Location) -> Binary:
    """Arithmetic gives a real, ints included: ints enter it as the math's float type (the
    per-call values' double), so C (whose int64 would wrap) and NumPy (whose ints would
    grow) compute the same. Ints come only from int parameters, literals and conditionals."""
    _need_number(left, f"'{op}'", where)
    _need_number(right, f"'{op}'", where)
    return Binary(VType.REAL, left.uniform and right.uniform, op, left, right)


def _need_number(e: Expr, what: str, where: Location) -> None:
    if e.vtype is VType.BOOL:
        raise SpecError(where, f"{what} needs a number, got a condition")


def _need_bool(e: Expr, what: str, where: Location) -> None:
    if e.vtype is not VType.BOOL:
        raise SpecError(where, f"{what} needs a condition (a comparison or a bool parameter), got a number")


def parse_condition(stmt: Statement, params: Mapping[str, VType], tensors: frozenset[str]) -> Expr:
    """A condition on parameters alone (e.g. a spec's ``skip_if``)."""
    src = _Source(stmt, strip=True)
    node = src.parse("eval", "condition").body
    _check_depth(node, src)
    expr = _expr(node, _Scope(frozenset(), tensors, params, reductions=False), src)
    if expr.vtype is not VType.BOOL:
        raise SpecError(src.at(node), "this must be a condition (a comparison), got a number")
    if not expr.uniform:
        raise SpecError(src.at(node), "this condition may read parameters and scalar inputs only, not tensors")
    return expr


def parse_expression(stmt: Statement, names: Mapping[str, VType]) -> Expr:
    """An expression of named host values alone (an optimizer section's per-step scalars:
    hyperparameters, the step count, host state); no tensors."""
    src = _Source(stmt, strip=True)
    node = src.parse("eval", "expression").body
    _check_depth(node, src)
    return _expr(node, _Scope(frozenset(), frozenset(), names), src)
