"""YAML spec -> frozen OpSpec. Every check of a spec happens here, with its location."""

from __future__ import annotations

import math
import re
from pathlib import Path

import yaml

from opgen.dtypes import BOOL_LITERALS, DTYPE_NAMES
from opgen.errors import Location, SpecError, did_you_mean
from opgen.expr.latex import default_symbol
from opgen.expr.hoist import hoist
from opgen.expr.parser import Statement, parse_condition, parse_program
from opgen.expr import grid, totals
from opgen.expr.rows import RowProgram, has_reductions, split_rows
from opgen.expr.tree import FUNCTIONS, RefKind, VType, refs
from opgen.spec import names as n
from opgen.spec import yaml_nodes as y
from opgen.spec.optimizer import check_optimizers, parse_optimizers
from opgen.spec.model import PARAM_VTYPES, MultiSpec, OpSpec, ParamSpec, ParamType, RowSparseSpec, TensorRole, TensorSpec

_FLOAT, _INT = y.FLOAT_LITERAL, y.INT_LITERAL
_RESERVED = {n.OUT_ARGUMENT}
_ARTICLE = {ParamType.FLOAT: "a", ParamType.INT: "an", ParamType.BOOL: "a"}
MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; a bigger file is a mistake (or an attack)
_INT64 = (-2**63, 2**63 - 1)  # int parameters cross the kernel ABI as int64_t
# A LaTeX symbol is data in a $$ block of the docs: letters, digits, commands, sub- and
# superscripts, primes and spacing; no '$', markup characters or environments.
_SYMBOL = re.compile(r"[A-Za-z0-9\\{}_^'., ]+\Z")


def load_specs(spec_dir: Path) -> list[OpSpec]:
    """Every ``*.yaml`` in ``spec_dir``, sorted by name so builds are deterministic; the
    names the ops export must not collide in the package."""
    ops = [load_spec(p) for p in sorted(spec_dir.glob("*.yaml"))]
    n.check_package(ops)
    check_optimizers(ops)
    return ops


def load_spec(path: Path) -> OpSpec:
    """Errors name ``path`` as given; generated files name the spec as ``FOLDER/NAME.yaml``,
    the same from any working directory."""
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(Location(str(path), 1, 1), f"the spec is {path.stat().st_size} bytes, more than the "
                                                    f"{MAX_SPEC_BYTES} a spec may hold")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(Location(str(path), 1, 1), f"the spec is not UTF-8 text ({exc.reason})") from None
    source = f"{path.resolve().parent.name}/{path.name}"
    return parse_spec(text, str(path), expected_name=path.stem, source=source)


def parse_spec(text: str, path: str, expected_name: str | None = None, source: str | None = None) -> OpSpec:
    root = y.Mapping(path, y.compose(path, text), "the spec",
                     required=("name", "summary", "tensors", "math"),
                     optional=("description", "params", "row_sparse", "skip_if", "output", "multi", "deviations",
                               "optimizer"))
    name = _identifier(root, "name", "the op's name")
    if expected_name is not None and name != expected_name:
        raise SpecError(root.location("name"),
                        f"the op is named '{name}' but its file is '{expected_name}.yaml'; they must match")

    tensors = _tensors(root)
    params = _params(root) if "params" in root else ()
    _check_unique([(t.name, t.location) for t in tensors] + [(p.name, p.location) for p in params])
    row_sparse = _row_sparse(root, params)
    math = _math(root, tensors, params)
    skip_if = _skip_if(root, tensors, params) if "skip_if" in root else None
    output, output_dtype, across, reset = _output(root, math, params) if "output" in root else (None,) * 4
    reduction = all(t.role is TensorRole.INPUT for t in tensors)
    if reduction and output is None:
        raise SpecError(root.location("tensors"), "an op whose tensors are all inputs needs an output: the "
                                                  "per-call value it returns (output: NAME)")
    if not reduction and (across or reset):
        raise SpecError(root.key_location("output"), "output.across and output.reset belong to ops that only "
                                                     "reduce (their tensors all inputs)")
    if across and "multi" not in root:
        raise SpecError(root.key_location("output"), "output.across combines the tensors of a multi-tensor call: "
                                                     "it needs multi: (or leave it out)")
    fixed = next((t for t in tensors if t.dtype), None) if reduction else None
    if fixed is not None:
        raise SpecError(fixed.location, f"the input '{fixed.name}' of an op that only reduces takes the call's dtype "
                                        "(every input of a call has one dtype): remove its dtype")
    if output is not None and skip_if is not None:
        raise SpecError(root.key_location("skip_if"), "an op with an output cannot have skip_if: a skipped call "
                                                      "would have no output to return")
    if output is not None and (row_sparse.always_lazy or row_sparse.lazy_param is not None):
        raise SpecError(root.key_location("output"), "an op with an output cannot have lazy row-sparse updates: "
                                                     "the rows a gradient lacks would have no output (use the "
                                                     "standard update: omit row_sparse.lazy)")
    multi = _multi(root, tensors, params) if "multi" in root else None
    if reduction and multi is not None and (multi.per_tensor or multi.trailing):
        raise SpecError(root.key_location("multi"), "an op that only reduces takes each parameter as one value "
                                                    "for every tensor: no multi.per_tensor or multi.trailing")
    _check_usage(root, tensors, params, math, row_sparse, skip_if, output, multi, reset)
    row_names = frozenset(t.name for t in tensors if t.per_row)
    col_names = frozenset(t.name for t in tensors if t.per_col)
    grid_program = None
    if grid.is_grid(math, row_names, col_names, "row_sparse" not in root):
        _check_grid(root, tensors, output, multi)
        marked, funcs = grid.extract(math)
        program, grid_program = grid.split(hoist(marked), funcs, row_names, col_names)
        row_sparse, totals_program, reductions = RowSparseSpec(sparse=False), None, ()
    else:
        marked, reductions = totals.extract(math)
    if reductions:
        row_sparse = _dense_only(root, tensors, "an op with whole-tensor reductions (sum, avg, norm, rms, amax)")
    elif grid_program is None and any(t.role is TensorRole.INPUT for t in tensors):
        row_sparse = _dense_only(root, tensors, "an op with read-only inputs")
    elif grid_program is None and any(t.per_tensor for t in tensors):
        row_sparse = _dense_only(root, tensors, "an op with per-tensor states")
    if grid_program is None:
        program, totals_program = totals.split(hoist(marked, frozenset(t.name for t in tensors if t.per_tensor)),
                                               reductions)
    output_where = None if output is None else root.location("output") \
        if isinstance(root.node("output"), yaml.ScalarNode) else root.key_location("output")
    if output is not None and not reduction and output in dict(program.finals):
        raise SpecError(output_where, f"output '{output}' is the same for every element (it reads no tensor); an "
                                      "output is one value per element: keep a per-call value in a per-tensor "
                                      "state instead")
    if reduction and output not in dict(program.finals):
        raise SpecError(output_where, f"output '{output}' reads the inputs element by element; an op that only "
                                      "reduces returns one value per call: reduce them (sum, avg, norm, rms, amax)")
    rows = _rows(root, tensors, program, row_sparse) if grid_program is None else None
    deviations = tuple(y.scalar_text(path, n, "each deviation") for n in root.sequence("deviations")) \
        if "deviations" in root else ()
    op = OpSpec(
        name=name,
        path=source or path,
        summary=root.string("summary").strip(),
        description=root.string("description", "").strip(),
        tensors=tensors,
        params=params,
        math=math,
        program=program,
        rows=rows,
        totals=totals_program,
        grid=grid_program,
        row_sparse=row_sparse,
        deviations=deviations,
        skip_if=skip_if,
        output=output,
        output_dtype=output_dtype,
        across=across,
        reset=reset,
        multi=multi,
        location=root.location("name"),
        optimizers=parse_optimizers(root, name) if "optimizer" in root else (),
    )
    if multi is not None and not op.has_multi:  # the model's one answer to "has a multi kernel"
        raise SpecError(root.key_location("multi"), "the multi-tensor convention needs dense updates of weights, "
                                                    "without outputs, scalar or read-only inputs, or a skip_if "
                                                    "that reads a per-tensor parameter")
    _check_entry_points(op)
    return op


def _check_entry_points(op: OpSpec) -> None:
    """Every generated function's arguments, derived ones included, are valid and distinct."""
    where = op.location
    out = (n.OUT_ARGUMENT, "the output argument", where)
    rounding = [(name, f"the rounding argument '{name}'", where) for name in n.ROUNDING_ARGUMENTS]
    params = [(p.name, f"parameter '{p.name}'", p.location) for p in op.params]
    clip = [(n.CLIP_ARGUMENT, f"the clipping argument '{n.CLIP_ARGUMENT}'", where)] \
        if op.has_multi and not op.reduction else []
    if op.multi is not None:
        public = dict(op.multi.per_tensor)
        n.check_arguments(op.name, [(n.DATA_ARGUMENT, "the array list", where)] + [
            (public.get(p.name, p.name), f"parameter '{p.name}'", p.location) for p in op.params] + [out] + rounding
            + clip)
        return
    n.check_arguments(op.name, [(t.name, f"tensor '{t.name}'", t.location) for t in op.tensors] + params + [out]
                      + rounding)
    if len(op.entry_points) > 1:
        n.check_arguments(op.entry_points[1], [(n.group_name(t.name), f"tensor '{t.name}'", t.location)
                                               for t in op.tensors] + [
            (p.name, f"parameter '{p.name}'", p.location) for p in op.math_params] + [out] + rounding + clip)


def _identifier(m: y.Mapping, key: str, what: str) -> str:
    value = m.string(key)
    n.check_identifier(value, what, m.location(key))
    if value in FUNCTIONS or value in _RESERVED:
        raise SpecError(m.location(key), f"{what} '{value}' is reserved")
    return value


def _symbol(m: y.Mapping, name: str) -> str:
    """A LaTeX symbol, checked to be data in the docs' math blocks."""
    if "symbol" not in m:
        return default_symbol(name)
    text = m.string("symbol")
    depth = 0
    for ch in text:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            break
    if not _SYMBOL.match(text) or depth != 0 or re.search(r"\\(begin|end)\b|\\\\", text):
        raise SpecError(m.location("symbol"), f"symbol {text!r} of '{name}' is not a plain LaTeX symbol "
                                              "(letters, digits, commands, _ ^ { } ' . , and spaces, braces "
                                              "balanced, no environments or line breaks)")
    return text


def _tensors(root: y.Mapping) -> tuple[TensorSpec, ...]:
    items = root.sequence("tensors")
    out = []
    for node in items:
        m = y.Mapping(root.path, node, "a tensor", required=("name", "role", "doc"),
                      optional=("symbol", "dtype", "per_row", "per_col", "per_tensor"))
        name = _identifier(m, "name", "tensor name")
        role_text = m.string("role")
        try:
            role = TensorRole(role_text)
        except ValueError:
            roles = ", ".join(r.value for r in TensorRole)
            raise SpecError(m.location("role"), f"unknown role '{role_text}' for tensor '{name}' (roles: {roles})") from None
        symbol = _symbol(m, name)
        dtype = m.string("dtype") if "dtype" in m else None
        if dtype is not None and dtype not in DTYPE_NAMES:
            raise SpecError(m.location("dtype"), f"unknown dtype '{dtype}' for tensor '{name}' "
                                                 f"(dtypes: {', '.join(DTYPE_NAMES)})")
        if dtype is not None and role in (TensorRole.WEIGHT, TensorRole.SCALAR):
            raise SpecError(m.location("dtype"), f"the {role.value} '{name}' takes the call's dtype; "
                                                 "only gradients, states and inputs can fix theirs")
        per_row = _bool(m, "per_row") if "per_row" in m else False
        if per_row and role is not TensorRole.STATE:
            raise SpecError(m.location("per_row"), f"only states can hold one value per row, not the {role.value} '{name}'")
        per_col = _bool(m, "per_col") if "per_col" in m else False
        if per_col and (role is not TensorRole.STATE or per_row):
            raise SpecError(m.location("per_col"), f"only states can hold one value per column, not the "
                                                   f"{'per-row state' if per_row else role.value} '{name}'")
        per_tensor = _bool(m, "per_tensor") if "per_tensor" in m else False
        if per_tensor and (role is not TensorRole.STATE or per_row or per_col):
            raise SpecError(m.location("per_tensor"), f"only states can hold one value per tensor, not the "
                                                      f"{'per-row state' if per_row else 'per-column state' if per_col else role.value} '{name}'")
        if per_tensor and dtype not in ("float32", "float64"):
            raise SpecError(m.location("per_tensor"), f"the per-tensor state '{name}' needs 'dtype: float32' or "
                                                      "'dtype: float64': one value, kept wide (a 16-bit one "
                                                      "overflows at 65504 or rounds away small updates)")
        out.append(TensorSpec(name, role, m.string("doc").strip(), symbol, y.where(root.path, node), dtype, per_row,
                              per_tensor, per_col))
    if out and all(t.role is TensorRole.INPUT for t in out):
        return tuple(out)  # a reduction op: it reads its inputs and returns a per-call output
    for role in (TensorRole.WEIGHT, TensorRole.GRAD):
        count = sum(t.role is role for t in out)
        if count != 1:
            raise SpecError(root.location("tensors"),
                            f"an op needs exactly one tensor with role '{role.value}', found {count} (or, an "
                            "op that only reduces, inputs alone and an output)")
    return tuple(out)


def _params(root: y.Mapping) -> tuple[ParamSpec, ...]:
    out = []
    for node in root.sequence("params"):
        m = y.Mapping(root.path, node, "a parameter", required=("name", "type", "doc"),
                      optional=("default", "required", "symbol", "ignored", "range"))
        name = _identifier(m, "name", "parameter name")
        type_text = m.string("type")
        try:
            ptype = ParamType(type_text)
        except ValueError:
            types = ", ".join(t.value for t in ParamType)
            raise SpecError(m.location("type"), f"unknown type '{type_text}' for parameter '{name}' (types: {types})") from None
        required = _bool(m, "required") if "required" in m else False
        if required and "default" in m:
            raise SpecError(m.key_location("default"), f"parameter '{name}' is required and so cannot have a default")
        if not required and "default" not in m:
            raise SpecError(y.where(root.path, node), f"parameter '{name}' needs a default or 'required: true'")
        default = _default(m, ptype, name) if "default" in m else None
        symbol = _symbol(m, name)
        ignored = _bool(m, "ignored") if "ignored" in m else False
        bounds, bounds_text = _range(m, ptype, name) if "range" in m else (None, None)
        if bounds is not None and default is not None and ptype is not ParamType.BOOL \
                and not bounds[0] <= float(default) <= bounds[1]:
            raise SpecError(m.location("default"), f"default {default} of parameter '{name}' lies outside its "
                                                   f"range [{bounds_text[0]}, {bounds_text[1]}]")
        out.append(ParamSpec(name, ptype, m.string("doc").strip(), symbol, default, y.where(root.path, node),
                             ignored, bounds, bounds_text))
    return tuple(out)


def _bool(m: y.Mapping, key: str) -> bool:
    node = m.node(key)
    if not y.is_plain(node) or node.value not in BOOL_LITERALS:
        raise SpecError(m.location(key), f"'{key}' must be true or false, got {y.describe(node)}")
    return BOOL_LITERALS[node.value] == "True"


def _default(m: y.Mapping, ptype: ParamType, name: str) -> str:
    node = m.node("default")
    text = node.value if isinstance(node, yaml.ScalarNode) else ""
    ok = y.is_plain(node) and {
        ParamType.FLOAT: _FLOAT.match(text) is not None,
        ParamType.INT: _INT.match(text) is not None,
        ParamType.BOOL: text in BOOL_LITERALS,
    }[ptype]
    if not ok and isinstance(node, yaml.ScalarNode) and not y.is_plain(node):
        raise SpecError(m.location("default"), f"default of {ptype.value} parameter '{name}' is the quoted "
                                               f"string {node.value!r}; write it without quotes")
    if not ok:
        raise SpecError(m.location("default"),
                        f"default of {ptype.value} parameter '{name}' must be {_ARTICLE[ptype]} {ptype.value} literal, "
                        f"got {y.describe(node)}")
    if ptype is ParamType.FLOAT:
        _finite(text, m.location("default"), f"default of parameter '{name}'")
    if ptype is ParamType.INT and not _INT64[0] <= int(text) <= _INT64[1]:
        raise SpecError(m.location("default"), f"default of int parameter '{name}' is {text}, outside the "
                                               "64-bit range the kernels take")
    return text


def _finite(text: str, where, what: str) -> float:
    """A float literal's value; one that overflows float64 (1e400) is refused, one that
    underflows to zero (1e-400) is refused too: either would not mean what it says."""
    value = float(text)
    if math.isinf(value):
        raise SpecError(where, f"{what} {text} overflows a float64")
    if value == 0.0 and any(c in "123456789" for c in text.lower().split("e")[0]):
        raise SpecError(where, f"{what} {text} underflows to 0 in a float64")
    return value


def _range(m: y.Mapping, ptype: ParamType, name: str):
    items = m.sequence("range")
    texts = [y.scalar_text(m.path, n, "a bound") for n in items]
    if ptype is ParamType.BOOL or len(items) != 2 or not all(y.is_plain(n) and _FLOAT.match(t)
                                                             for n, t in zip(items, texts)):
        raise SpecError(m.location("range"), f"range of parameter '{name}' must be [low, high], two numbers")
    low, high = (_finite(text, y.where(m.path, node), f"range bound of parameter '{name}'")
                 for text, node in zip(texts, items))
    if ptype is ParamType.INT and not all(_INT.match(text) for text in texts):
        raise SpecError(m.location("range"), f"range of int parameter '{name}' must be [low, high], two ints")
    if low > high:
        raise SpecError(m.location("range"), f"range of parameter '{name}' is empty: {texts[0]} > {texts[1]}")
    return (low, high), (texts[0], texts[1])


def _row_sparse(root: y.Mapping, params: tuple[ParamSpec, ...]) -> RowSparseSpec:
    if "row_sparse" not in root:
        return RowSparseSpec()
    m = y.Mapping(root.path, root.node("row_sparse"), "row_sparse", required=("lazy",), optional=("dense",))
    dense = _bool(m, "dense") if "dense" in m else True
    node = m.node("lazy")
    if y.is_plain(node) and node.value in BOOL_LITERALS:
        always_lazy = BOOL_LITERALS[node.value] == "True"
        if not dense and not always_lazy:
            raise SpecError(m.location("dense"), "an op without a dense update needs 'lazy: true' "
                                                 "(or a lazy switch parameter)")
        return RowSparseSpec(always_lazy=always_lazy, dense=dense)
    name = m.string("lazy")
    param = next((p for p in params if p.name == name), None)
    if param is None or param.type is not ParamType.BOOL:
        raise SpecError(m.location("lazy"),
                        f"row_sparse.lazy must be true, false or the name of a bool parameter, got '{name}'")
    return RowSparseSpec(lazy_param=name, dense=dense)


def _math(root: y.Mapping, tensors: tuple[TensorSpec, ...], params: tuple[ParamSpec, ...]):
    statements = []
    for node in root.sequence("math"):
        text = y.scalar_text(root.path, node, "each math entry")
        statements.append(Statement(text, _locator(root.path, node)))
    if not statements:
        raise SpecError(root.location("math"), "the math is empty")
    readonly = frozenset(t.name for t in tensors if t.role in (TensorRole.GRAD, TensorRole.INPUT))
    writable = frozenset(t.name for t in tensors if t.role in (TensorRole.WEIGHT, TensorRole.STATE)
                         and not t.per_tensor)
    scalar_inputs = frozenset(t.name for t in tensors if t.role is TensorRole.SCALAR)
    per_tensor = frozenset(t.name for t in tensors if t.per_tensor)
    return parse_program(statements, readonly, writable, _uniform_names(tensors, params), scalar_inputs, per_tensor)


def _uniform_names(tensors, params) -> dict:
    """Names whose value is the same for every element: parameters and scalar inputs."""
    names = {p.name: PARAM_VTYPES[p.type] for p in params}
    names.update({t.name: VType.REAL for t in tensors if t.role is TensorRole.SCALAR or t.per_tensor})
    return names


def _skip_if(root: y.Mapping, tensors, params):
    node = root.node("skip_if")
    text = y.scalar_text(root.path, node, "skip_if")
    arrays = frozenset(t.name for t in tensors if t.role is not TensorRole.SCALAR)
    condition = parse_condition(Statement(text, _locator(root.path, node)), _uniform_names(tensors, params), arrays)
    if not refs(condition):  # True: an op that never acts; False: dead text
        raise SpecError(root.location("skip_if"), "skip_if reads no parameter or scalar input: it would always "
                                                  "hold, or never")
    return condition


ACROSS = ("min", "max", "sum")  # how a reduction op's multi-tensor call may combine its tensors' values


def _output(root: y.Mapping, math, params) -> tuple[str, str | None, str | None, str | None]:
    """``output: TEMP`` (in the weight's dtype) or ``output: {name: TEMP, dtype: DTYPE}``; an
    op that only reduces may add ``across: min|max|sum`` (its multi-tensor call returns one
    value, its tensors' combined) and ``reset: BOOL_PARAM`` (false: the output's value before
    the call is combined too)."""
    across = reset = None
    if not isinstance(root.node("output"), yaml.MappingNode):
        name, dtype, where = root.string("output"), None, root.location("output")
    else:
        m = y.Mapping(root.path, root.node("output"), "the output", required=("name",),
                      optional=("dtype", "across", "reset"))
        name, where = m.string("name"), m.location("name")
        dtype = m.string("dtype") if "dtype" in m else None
        if dtype is not None and dtype not in DTYPE_NAMES:
            raise SpecError(m.location("dtype"), f"unknown dtype '{dtype}' for the output '{name}' "
                                                 f"(dtypes: {', '.join(DTYPE_NAMES)})")
        if "across" in m:
            across = m.string("across")
            if across not in ACROSS:
                raise SpecError(m.location("across"), f"output.across must be one of {', '.join(ACROSS)}, got "
                                                      f"'{across}'")
        if "reset" in m:
            reset = m.string("reset")
            bools = [p.name for p in params if p.type is ParamType.BOOL and not p.ignored]
            if reset not in bools:
                raise SpecError(m.location("reset"), f"output.reset must name a bool parameter, got '{reset}'"
                                                     f"{did_you_mean(reset, bools)}")
            if across is None:
                raise SpecError(m.location("reset"), "output.reset needs output.across: how the value before "
                                                     "the call is combined with the call's")
    temps = [s.target for s in math.statements if s.kind is RefKind.TEMP]
    if name not in temps:
        raise SpecError(where, f"output '{name}' must be a temporary assigned by the math"
                               f"{did_you_mean(name, temps)}")
    return name, dtype, across, reset


_locator = y.locator


def _check_unique(names: list[tuple[str, Location]]) -> None:
    seen: dict[str, Location] = {}
    for name, loc in names:
        if name in seen:
            raise SpecError(loc, f"'{name}' is declared twice (first at line {seen[name].line})")
        seen[name] = loc


def _multi(root: y.Mapping, tensors, params) -> MultiSpec:
    m = y.Mapping(root.path, root.node("multi"), "multi", required=("count",), optional=("per_tensor", "trailing"))
    by_name = {p.name: p for p in params}
    count = m.string("count")
    if count not in by_name or by_name[count].type is not ParamType.INT or by_name[count].required:
        raise SpecError(m.location("count"), f"multi.count must name an int parameter with a default, got '{count}'")
    pairs = []
    per_nodes = y.Mapping(root.path, m.node("per_tensor"), "multi.per_tensor", required=(),
                          optional=tuple(p.name for p in params if p.type in (ParamType.FLOAT, ParamType.INT))
                          ).yaml_node.value if "per_tensor" in m else ()
    for key_node, value_node in per_nodes:
        public = y.scalar_text(root.path, value_node, f"the list name of '{key_node.value}'")
        n.check_identifier(public, "the per-tensor list name", y.where(root.path, value_node))
        if public in by_name or public in {t.name for t in tensors}:
            raise SpecError(y.where(root.path, value_node), f"'{public}' is not a free name for a per-tensor list")
        if not by_name[key_node.value].required:
            raise SpecError(y.where(root.path, key_node), f"per-tensor parameter '{key_node.value}' must be "
                                                          "required (each call gives one value per tensor)")
        pairs.append((key_node.value, public))
    trailing: list[str] = []
    publics = {public: param for param, public in pairs}
    for node in (m.sequence("trailing") if "trailing" in m else ()):
        name = y.scalar_text(root.path, node, "each trailing array")
        param = publics.get(name, name)
        if param not in by_name or by_name[param].type is not ParamType.FLOAT or param == count or param in trailing:
            raise SpecError(y.where(root.path, node), f"multi.trailing must list float parameters or per-tensor lists "
                                                      f"once each, got '{name}'")
        trailing.append(param)
    return MultiSpec(count, tuple(pairs), tuple(trailing))


def _check_grid(root: y.Mapping, tensors, output, multi) -> None:
    """A grid op (per-column values, or per-row ones in a dense op) updates one weight
    per call, densely: none of the conventions that walk memory otherwise."""
    what = "an op with per-row or per-column values of a dense weight"
    if "row_sparse" in root:  # (per-row math with row_sparse: the lazy row kernels)
        raise SpecError(root.key_location("row_sparse"), f"{what} takes dense gradients only: remove row_sparse")
    for key, why in (("multi", "its calls take one weight"), ("output", "it writes the weight"),
                     ("skip_if", "a skipped call would still have to keep its per-row values")):
        if key in root:
            raise SpecError(root.key_location(key), f"{what} cannot have {key}: {why}")
    for t in tensors:
        if t.per_tensor or t.role in (TensorRole.SCALAR, TensorRole.INPUT):
            kind_ = "per-tensor state" if t.per_tensor else t.role.value
            raise SpecError(t.location, f"{what} cannot have the {kind_} '{t.name}' (yet): its kernels read the "
                                        "weight, the gradient and states")


def _dense_only(root: y.Mapping, tensors, what: str) -> RowSparseSpec:
    """Whole-tensor reductions read every element, and the row kernels do not walk read-only
    inputs (yet): the gradient must be dense."""
    if "row_sparse" in root:
        raise SpecError(root.key_location("row_sparse"), f"{what} takes dense gradients only: remove row_sparse")
    per_row = next((t for t in tensors if t.per_row), None)
    if per_row is not None:
        raise SpecError(per_row.location, f"{what} cannot have per-row states ('{per_row.name}')")
    return RowSparseSpec(sparse=False)


def _rows(root: y.Mapping, tensors, program, row_sparse: RowSparseSpec) -> RowProgram | None:
    """Per-row states and row_mean(): the math split as the row kernels run it."""
    rows = frozenset(t.name for t in tensors if t.per_row)
    if not rows and not has_reductions(program):
        return None
    if row_sparse.dense or not row_sparse.always_lazy:
        raise SpecError(root.key_location("math"), "per-row math (per_row states, row_mean) is supported for "
                                                   "row-sparse-only ops: set row_sparse: {lazy: true, dense: false}")
    return split_rows(program, rows)


def _check_usage(root: y.Mapping, tensors, params, math, row_sparse: RowSparseSpec, skip_if, output,
                 multi=None, reset=None) -> None:
    written = set(math.tensors_written()) | {s.target for s in math.statements if s.kind is RefKind.TEMP
                                             and any(t.per_tensor and t.name == s.target for t in tensors)}
    read = math.names_read() | (frozenset(r.name for r in refs(skip_if)) if skip_if is not None else frozenset())
    for t in tensors:
        if t.role is TensorRole.WEIGHT and output is not None:
            if t.name in written:
                raise SpecError(t.location, f"weight '{t.name}' is read-only when the op has an output "
                                            f"('{output}'); it must not be assigned")
        elif t.role in (TensorRole.WEIGHT, TensorRole.STATE) and t.name not in written:
            raise SpecError(t.location, f"{t.role.value} '{t.name}' is never written by the math")
        if t.role in (TensorRole.GRAD, TensorRole.SCALAR, TensorRole.INPUT) and t.name not in read:
            raise SpecError(t.location, f"{t.role.value} '{t.name}' is never read by the math")
    for p in params:
        if p.ignored and p.name in read:
            raise SpecError(p.location, f"parameter '{p.name}' is marked ignored but the math uses it")
        if not p.ignored and p.name not in read and p.name not in (row_sparse.lazy_param, reset) \
                and (multi is None or p.name != multi.count):
            raise SpecError(p.location, f"parameter '{p.name}' is never used by the math "
                                        "(mark it 'ignored: true' if it is accepted only for compatibility)")
    for s in math.statements:
        if s.kind is RefKind.TEMP:
            n.check_identifier(s.target, "temporary", s.location)
            if s.target not in read and s.target != output and not any(t.per_tensor and t.name == s.target
                                                                         for t in tensors):
                raise SpecError(s.location, f"temporary '{s.target}' is assigned but never used")
