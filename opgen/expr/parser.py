"""Spec math text -> typed expression tree, with Python's ``ast`` as the parser.

The text is only ever parsed, never evaluated. Each statement is ``name = expr`` or
``name op= expr``; names resolve to tensors, parameters or earlier temporaries.
"""

from __future__ import annotations

import ast
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


@dataclass
class _Scope:
    readonly_tensors: frozenset[str]
    writable_tensors: frozenset[str]
    params: Mapping[str, VType]
    scalar_inputs: frozenset[str] = frozenset()  # the uniform names that are one-element inputs
    temps: dict[str, tuple[VType, bool]] = field(default_factory=dict)  # name -> (type, uniform)

    def known_names(self) -> list[str]:
        return [*self.readonly_tensors, *self.writable_tensors, *self.params, *self.temps]


def parse_program(
    statements: Sequence[Statement],
    readonly_tensors: frozenset[str],
    writable_tensors: frozenset[str],
    params: Mapping[str, VType],
    scalar_inputs: frozenset[str] = frozenset(),
) -> Program:
    scope = _Scope(readonly_tensors, writable_tensors, params, scalar_inputs)
    return Program(tuple(_parse_statement(s, scope) for s in statements))


def _parse_statement(stmt: Statement, scope: _Scope) -> Assign:
    try:
        module = ast.parse(stmt.text, mode="exec")
    except SyntaxError as exc:
        line, col = exc.lineno or 1, max((exc.offset or 1) - 1, 0)
        raise SpecError(stmt.locate(line, col), f"invalid math syntax: {exc.msg}") from None
    if len(module.body) != 1:
        raise SpecError(stmt.locate(1, 0), "each math entry must hold exactly one assignment")
    node = module.body[0]
    at = lambda n: stmt.locate(n.lineno, n.col_offset)  # noqa: E731

    if isinstance(node, ast.Assign):
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise SpecError(at(node), "the left side of an assignment must be a single name")
        target = node.targets[0]
        value = _expr(node.value, scope, at)
    elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
        target = node.target
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise SpecError(at(node), f"unsupported operator '{_PY_OP_NAMES.get(type(node.op), '?')}='")
        current = _name(ast.Name(id=target.id, ctx=ast.Load(), lineno=target.lineno,
                                 col_offset=target.col_offset), scope, at)
        value = _arith(op, current, _expr(node.value, scope, at), at(node))
    else:
        raise SpecError(at(node), "each math entry must be an assignment 'name = expression'")

    name = target.id
    where = at(target)
    if name in scope.readonly_tensors:
        raise SpecError(where, f"cannot assign to '{name}': it is a read-only input")
    if name in scope.params:
        what = "a scalar input" if name in scope.scalar_inputs else "a parameter"
        raise SpecError(where, f"cannot assign to '{name}': it is {what}")
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


def _expr(node: ast.expr, scope: _Scope, at: Callable[[ast.AST], Location]) -> Expr:
    if isinstance(node, ast.Constant):
        return _const(node, at)
    if isinstance(node, ast.Name):
        return _name(node, scope, at)
    if isinstance(node, ast.UnaryOp):
        operand = _expr(node.operand, scope, at)
        if isinstance(node.op, ast.UAdd):
            _need_number(operand, "unary '+'", at(node))
            return operand
        if isinstance(node.op, ast.USub):
            _need_number(operand, "unary '-'", at(node))
            return Unary(operand.vtype, operand.uniform, "-", operand)
        if isinstance(node.op, ast.Not):
            _need_bool(operand, "'not'", at(node))
            return Unary(VType.BOOL, operand.uniform, "not", operand)
        raise SpecError(at(node), f"unsupported operator '{_PY_OP_NAMES.get(type(node.op), '?')}'")
    if isinstance(node, ast.BinOp):
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise SpecError(at(node), f"unsupported operator '{_PY_OP_NAMES.get(type(node.op), '?')}'")
        return _arith(op, _expr(node.left, scope, at), _expr(node.right, scope, at), at(node))
    if isinstance(node, ast.Compare):
        if len(node.ops) != 1:
            raise SpecError(at(node), "chained comparisons are not supported; combine them with 'and'")
        op = _CMPOPS.get(type(node.ops[0]))
        if op is None:
            raise SpecError(at(node), "unsupported comparison; use one of < <= > >= == !=")
        left, right = _expr(node.left, scope, at), _expr(node.comparators[0], scope, at)
        _need_number(left, f"'{op}'", at(node))
        _need_number(right, f"'{op}'", at(node))
        return Binary(VType.BOOL, left.uniform and right.uniform, op, left, right)
    if isinstance(node, ast.BoolOp):
        op = "and" if isinstance(node.op, ast.And) else "or"
        values = [_expr(v, scope, at) for v in node.values]
        for v, raw in zip(values, node.values):
            _need_bool(v, f"'{op}'", at(raw))
        result = values[0]
        for v in values[1:]:
            result = Binary(VType.BOOL, result.uniform and v.uniform, op, result, v)
        return result
    if isinstance(node, ast.IfExp):
        test = _expr(node.test, scope, at)
        _need_bool(test, "a condition ('x if condition else y')", at(node.test))
        then, orelse = _expr(node.body, scope, at), _expr(node.orelse, scope, at)
        if then.vtype is VType.BOOL or orelse.vtype is VType.BOOL:
            if then.vtype is not orelse.vtype:
                raise SpecError(at(node), "both branches of a conditional must be numbers or both conditions")
            vtype = VType.BOOL
        else:
            vtype = VType.INT if then.vtype is orelse.vtype is VType.INT else VType.REAL
        return Cond(vtype, test.uniform and then.uniform and orelse.uniform, test, then, orelse)
    if isinstance(node, ast.Call):
        return _call(node, scope, at)
    raise SpecError(at(node), f"unsupported syntax in math: {type(node).__name__}")


def _const(node: ast.Constant, at: Callable[[ast.AST], Location]) -> Const:
    value = node.value
    if isinstance(value, bool):
        return Const(VType.BOOL, True, "True" if value else "False")
    if isinstance(value, int):
        return Const(VType.INT, True, str(value))
    if isinstance(value, float):
        return Const(VType.REAL, True, _float_text(value))
    raise SpecError(at(node), f"unsupported constant {value!r}: only numbers and True/False")


def _float_text(value: float) -> str:
    text = repr(value)
    return text if any(c in text for c in ".en") else text + ".0"


def _name(node: ast.Name, scope: _Scope, at: Callable[[ast.AST], Location]) -> Ref:
    name = node.id
    if name in scope.readonly_tensors or name in scope.writable_tensors:
        return Ref(VType.REAL, False, name, RefKind.TENSOR)
    if name in scope.params:
        return Ref(scope.params[name], True, name, RefKind.PARAM)
    if name in scope.temps:
        vtype, uniform = scope.temps[name]
        return Ref(vtype, uniform, name, RefKind.TEMP)
    if name in FUNCTIONS:
        raise SpecError(at(node), f"'{name}' is a function: call it as {name}(...)")
    raise SpecError(at(node), f"undefined name '{name}'{did_you_mean(name, scope.known_names())}")


def _call(node: ast.Call, scope: _Scope, at: Callable[[ast.AST], Location]) -> Call:
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
    args = tuple(_expr(a, scope, at) for a in node.args)
    for a, raw in zip(args, node.args):
        _need_number(a, f"{name}()", at(raw))
    vtype = VType.BOOL if func.returns == "bool" else VType.REAL
    return Call(vtype, all(a.uniform for a in args), name, args)


def _arith(op: str, left: Expr, right: Expr, where: Location) -> Binary:
    _need_number(left, f"'{op}'", where)
    _need_number(right, f"'{op}'", where)
    both_int = left.vtype is VType.INT and right.vtype is VType.INT
    vtype = VType.INT if both_int and op in ("+", "-", "*") else VType.REAL
    return Binary(vtype, left.uniform and right.uniform, op, left, right)


def _need_number(e: Expr, what: str, where: Location) -> None:
    if e.vtype is VType.BOOL:
        raise SpecError(where, f"{what} needs a number, got a condition")


def _need_bool(e: Expr, what: str, where: Location) -> None:
    if e.vtype is not VType.BOOL:
        raise SpecError(where, f"{what} needs a condition (a comparison or a bool parameter), got a number")


def parse_condition(stmt: Statement, params: Mapping[str, VType], tensors: frozenset[str]) -> Expr:
    """A condition on parameters alone (e.g. a spec's ``skip_if``)."""
    try:
        node = ast.parse(stmt.text.strip(), mode="eval").body
    except SyntaxError as exc:
        line, col = exc.lineno or 1, max((exc.offset or 1) - 1, 0)
        raise SpecError(stmt.locate(line, col), f"invalid condition syntax: {exc.msg}") from None
    at = lambda n: stmt.locate(n.lineno, n.col_offset)  # noqa: E731
    expr = _expr(node, _Scope(frozenset(), tensors, params), at)
    if expr.vtype is not VType.BOOL:
        raise SpecError(at(node), "this must be a condition (a comparison), got a number")
    if not expr.uniform:
        raise SpecError(at(node), "this condition may read parameters and scalar inputs only, not tensors")
    return expr
