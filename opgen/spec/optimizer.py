"""A spec's ``optimizer:`` section -> frozen models of the torch.optim classes it declares.

Each class feeds the spec's op (or, where a hyperparameter says so, another spec's op: a flag that
needs one more state takes an op that has it) from host values computed once per step:

- ``args``: the constructor's hyperparameters with their defaults (a float, an int, a bool,
  or a tuple of floats whose elements the expressions read by name: ``betas`` as ``beta1,
  beta2``), each optionally bounded (``min``, ``max``, ``below``);
- ``host_state``: per-parameter numbers carried across steps (a running product of
  momentum factors), each
  with an initial value and an update, evaluated in order every step;
- ``step``: the op's parameters as expressions of the hyperparameters, the step count ``t``
  (1 on the first step) and the host state, e.g. ``lr / (1 - beta1 ** t)``;
- ``init``: each state's initial value: a number or an expression of the hyperparameters
  (``initial_accumulator_value``), or ``weight`` (a copy of the parameter);
- ``state_dtype``: ``weight`` (states in the parameter's dtype, as torch.optim) or ``float32``
  (float32 states beside 16-bit parameters; float64 parameters keep float64 states);
- ``alternatives``: ``{when: CONDITION, op: OTHER_OP}``, the first whose condition holds; a
  condition may read ``ndim``, the parameter's number of dimensions (an op for vectors beside
  one for matrices), which makes the choice per parameter;
- an argument whose default (or a tuple element's) is ``null`` takes None, which reads as its
  ``none_is`` expression: of the other hyperparameters and ``machine_eps``, the machine
  epsilon of the parameter's dtype (torch's ``eps=(None, 1e-3)``). Such a value depends on
  the parameter, so only ``step`` expressions read it.

Every expression is parsed once into the expression tree (never evaluated here); the cross
checks against the ops used (every required parameter given, every name a parameter, every
state initialised) run once all specs are loaded (:func:`check_optimizers`).
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass, replace

from opgen.dtypes import BOOL_LITERALS
from opgen.errors import Location, SpecError, did_you_mean
from opgen.expr.parser import Statement, parse_condition, parse_expression
from opgen.expr.tree import Call, Expr, Ref, VType, walk
from opgen.spec import names as n
from opgen.spec import yaml_nodes as y

STEP_COUNT = "t"  # the step count the expressions read: 1 on the first step
INITIAL = "initial"  # true on a parameter's step that created the op's states (a buffer that starts as the gradient)
COPY_WEIGHT = "weight"  # a state initialised as a copy of the parameter
SHAPE_NAME = "ndim"  # the parameter's number of dimensions: alternatives' conditions read it
DTYPE_EPS = "machine_eps"  # the machine epsilon of the parameter's dtype: step and none_is read it
NULL_LITERALS = ("null", "Null", "NULL", "~")  # YAML's plain nulls: a default of None
STATE_DTYPES = ("weight", "float32")
_ARTICLES = {"float": "a", "int": "an", "bool": "a"}
ARG_KINDS = ("float", "int", "bool", "floats")
_VTYPES = {"float": VType.REAL, "int": VType.INT, "bool": VType.BOOL}
# Keyword arguments every generated class takes besides its hyperparameters (runtime/optim.py).
CLASS_KEYWORDS = ("params", "state_dtype", "rounding", "seed", "max_grad_norm", "foreach", "fused", "capturable",
                  "differentiable")
# The generated functions' own names (their arguments, and Python's builtins they call).
_GENERATED_NAMES = frozenset({"group", "host", "choice", "self", INITIAL, COPY_WEIGHT}) | frozenset(dir(builtins))


@dataclass(frozen=True)
class OptimArg:
    name: str
    kind: str  # one of ARG_KINDS
    default: tuple[str, ...]  # the literal(s) as written (one, or one per element of a tuple)
    doc: str
    location: Location
    element_names: tuple[str, ...] = ()  # a tuple's elements, as the expressions read them
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive
    below: float | None = None  # exclusive
    nullable: tuple[bool, ...] = ()  # per element (one for a float): None allowed (a null default)
    none_is: Expr | None = None  # what a None reads as in step expressions

    @property
    def expression_names(self) -> tuple[str, ...]:
        return self.element_names if self.kind == "floats" else (self.name,)

    @property
    def nullable_names(self) -> tuple[str, ...]:
        return tuple(name for name, null in zip(self.expression_names, self.nullable) if null)


@dataclass(frozen=True)
class HostState:
    name: str
    init: Expr  # of the hyperparameters
    update: Expr  # of the hyperparameters, t and the host state (its own value before the update)
    location: Location


@dataclass(frozen=True)
class StateInit:
    state: str
    value: Expr | None  # None: a copy of the weight
    location: Location


@dataclass(frozen=True)
class OpChoice:
    op: str
    when: Expr | None  # None: the class's own op, the fallback
    location: Location

    @property
    def per_parameter(self) -> bool:
        """The condition reads the parameter's shape: the choice is made per parameter."""
        return self.when is not None and any(isinstance(e, Ref) and e.name == SHAPE_NAME for e in walk(self.when))


@dataclass(frozen=True)
class OptimizerSpec:
    class_name: str
    doc: str
    args: tuple[OptimArg, ...]
    host_state: tuple[HostState, ...]
    step: tuple[tuple[str, Expr, Location], ...]  # (op parameter, its value, where)
    init: tuple[StateInit, ...]
    choices: tuple[OpChoice, ...]  # the alternatives in order, then the spec's own op
    state_dtype: str
    location: Location
    checks: tuple[tuple[Expr, str, Location], ...] = ()  # (condition on the hyperparameters, message)

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(c.op for c in self.choices)

    def step_value(self, param: str) -> Expr | None:
        return next((e for name, e, _ in self.step if name == param), None)

    @property
    def per_parameter(self) -> bool:
        """Whether the op a step feeds is chosen per parameter (by its shape), not per group."""
        return any(c.per_parameter for c in self.choices)


def parse_optimizers(root: y.Mapping, op_name: str) -> tuple[OptimizerSpec, ...]:
    node = root.node("optimizer")
    items = y.sequence(root.path, node, "'optimizer'")
    if not items:
        raise SpecError(root.location("optimizer"), "'optimizer' lists no class")
    return tuple(_optimizer(root.path, item, op_name) for item in items)


def _optimizer(path: str, node, op_name: str) -> OptimizerSpec:
    m = y.Mapping(path, node, "an optimizer class", required=("class", "doc", "args", "step"),
                  optional=("host_state", "init", "state_dtype", "alternatives", "checks"))
    class_name = m.string("class")
    n.check_identifier(class_name, "the class name", m.location("class"))
    if not m.string("doc").strip():
        raise SpecError(m.location("doc"), f"the doc of class '{class_name}' is empty")
    if not class_name[0].isupper():
        raise SpecError(m.location("class"), f"the class name '{class_name}' must start with a capital letter "
                                             "(Python's convention for classes, which torch.optim follows)")
    parsed = tuple(_arg(path, a) for a in m.sequence("args"))
    args = tuple(arg for arg, _ in parsed)
    seen: dict[str, Location] = {}
    for arg in args:
        for name in (arg.name, *arg.element_names):
            if name in seen:
                raise SpecError(arg.location, f"'{name}' is declared twice (first at line {seen[name].line})")
            seen[name] = arg.location
    names = {STEP_COUNT: VType.INT}
    for arg in args:
        for name in arg.expression_names:
            names[name] = VType.REAL if arg.kind == "floats" else _VTYPES[arg.kind]
    hyper = {k: v for k, v in names.items() if k != STEP_COUNT}
    # what each place may not read, and why: a None hyperparameter (and machine_eps) depends
    # on the parameter, so only step reads it; ndim, only the alternatives
    refusals = {name: f"'{name}' may be None, which reads as its none_is value: only 'step' expressions "
                           f"read it" for arg in args for name in arg.nullable_names}
    refusals[DTYPE_EPS] = f"'{DTYPE_EPS}' is the parameter dtype's machine epsilon: only 'step' and " \
                               "'none_is' expressions read it"
    refusals[SHAPE_NAME] = f"'{SHAPE_NAME}' is the parameter's number of dimensions: only the conditions " \
                                "of 'alternatives' read it"
    everything = {**hyper, DTYPE_EPS: VType.REAL, SHAPE_NAME: VType.INT}
    args = tuple(_none_is(path, p, everything, refusals) for p in parsed)
    host = []
    for item in (m.sequence("host_state") if "host_state" in m else ()):
        h = y.Mapping(path, item, "a host state", required=("name", "init", "update"), optional=())
        name = h.string("name")
        _check_name(name, "host state name", h.location("name"), seen)
        seen[name] = y.where(path, item)
        init = _expression(path, h, "init", everything, number=True, refused=refusals)
        names[name] = VType.REAL
        update = _expression(path, h, "update", {**everything, **names}, number=True, refused=refusals)
        host.append(HostState(name, init, update, y.where(path, item)))
    step_node = y.Mapping(path, m.node("step"), "'step'", required=(), optional=_keys(m.node("step")))
    step_names = {**everything, **names, INITIAL: VType.BOOL}
    in_step = {SHAPE_NAME: refusals[SHAPE_NAME]}
    step = tuple((key, _expression(path, step_node, key, step_names, refused=in_step), step_node.key_location(key))
                 for key in _keys(m.node("step")))
    init = ()
    if "init" in m:
        init_node = y.Mapping(path, m.node("init"), "'init'", required=(), optional=_keys(m.node("init")))
        init = tuple(StateInit(key, None if init_node.string(key).strip() == COPY_WEIGHT else
                               _expression(path, init_node, key, everything, number=True, refused=refusals),
                               init_node.key_location(key))
                     for key in _keys(m.node("init")))
    state_dtype = m.string("state_dtype") if "state_dtype" in m else "weight"
    if state_dtype not in STATE_DTYPES:
        raise SpecError(m.location("state_dtype"), f"state_dtype must be one of {', '.join(STATE_DTYPES)}, "
                                                   f"got '{state_dtype}'")
    choices = []
    for item in (m.sequence("alternatives") if "alternatives" in m else ()):
        a = y.Mapping(path, item, "an alternative", required=("when", "op"), optional=())
        other = a.string("op")
        n.check_identifier(other, "the op", a.location("op"))
        when = parse_condition(Statement(a.string("when"), _locator(path, a.node("when"))), everything, frozenset())
        _no_tensor_functions(when, a.location("when"))
        _refuse_reads(when, a.location("when"), {k: v for k, v in refusals.items() if k != SHAPE_NAME})
        choices.append(OpChoice(other, when, y.where(path, item)))
    choices.append(OpChoice(op_name, None, m.location("class")))
    checks = []
    for item in (m.sequence("checks") if "checks" in m else ()):
        c = y.Mapping(path, item, "a check", required=("require", "message"), optional=())
        condition = parse_condition(Statement(c.string("require"), _locator(path, c.node("require"))), everything,
                                    frozenset())
        _no_tensor_functions(condition, c.location("require"))
        _refuse_reads(condition, c.location("require"), refusals)
        checks.append((condition, c.string("message").strip(), y.where(path, item)))
    return OptimizerSpec(class_name, m.string("doc").strip(), args, tuple(host), step, init, tuple(choices),
                         state_dtype, m.location("class"), tuple(checks))


def _none_is(path: str, parsed: tuple, names: dict, refused: dict) -> OptimArg:
    """The argument with its ``none_is`` expression parsed: of the hyperparameters that are
    never None, and machine_eps."""
    arg, node = parsed
    if node is None:
        return arg
    text = y.scalar_text(path, node, "'none_is'")
    expr = parse_expression(Statement(text, _locator(path, node)), names)
    where = y.where(path, node)
    _no_tensor_functions(expr, where)
    if expr.vtype is VType.BOOL:
        raise SpecError(where, f"'none_is' of argument '{arg.name}' must be a number, got a condition")
    _refuse_reads(expr, where, {k: v for k, v in refused.items() if k != DTYPE_EPS})
    return replace(arg, none_is=expr)


def _keys(node) -> tuple[str, ...]:
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return ()
    return tuple(k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode))


def _check_name(name: str, what: str, where: Location, seen: dict) -> None:
    n.check_identifier(name, what, where)
    if name in (STEP_COUNT, SHAPE_NAME, DTYPE_EPS) or name in CLASS_KEYWORDS:
        raise SpecError(where, f"{what} '{name}' is reserved (the step count '{STEP_COUNT}', the parameter's "
                               f"'{SHAPE_NAME}' and '{DTYPE_EPS}', and the keyword arguments "
                               f"{', '.join(CLASS_KEYWORDS)} of every class)")
    if name in _GENERATED_NAMES:
        raise SpecError(where, f"{what} '{name}' is a name the generated class uses itself (a Python builtin, or "
                               f"one of group, host, choice, self, {INITIAL}, {COPY_WEIGHT})")
    if name in seen:
        raise SpecError(where, f"'{name}' is declared twice (first at line {seen[name].line})")


def _arg(path: str, node) -> tuple[OptimArg, object]:
    """The argument, and its ``none_is`` node (parsed once every argument's name is known)."""
    m = y.Mapping(path, node, "an optimizer argument", required=("name", "default", "doc"),
                  optional=("type", "names", "min", "max", "below", "none_is"))
    name = m.string("name")
    _check_name(name, "argument name", m.location("name"), {})
    default_node = m.node("default")
    import yaml

    if isinstance(default_node, yaml.SequenceNode):
        kind = "floats"
        texts = tuple(y.scalar_text(path, e, "each element of the default") for e in default_node.value)
        elements = default_node.value
    else:
        text = y.scalar_text(path, default_node, "the default")
        kind = "bool" if y.is_plain(default_node) and text in BOOL_LITERALS else "float"
        texts, elements = (text,), (default_node,)
    if "type" in m:
        declared = m.string("type")
        if declared not in ARG_KINDS:
            raise SpecError(m.location("type"), f"unknown type '{declared}' for argument '{name}' "
                                                f"(types: {', '.join(ARG_KINDS)})")
        if (declared == "floats") != (kind == "floats") or (declared == "bool") != (kind == "bool"):
            raise SpecError(m.location("default"), f"the default of {declared} argument '{name}' is not one")
        kind = declared
    nullable = tuple(y.is_plain(e) and t in NULL_LITERALS for t, e in zip(texts, elements))
    if any(nullable) and kind not in ("float", "floats"):
        raise SpecError(m.location("default"), f"only a float argument may default to null, not '{name}'")
    if any(nullable) != ("none_is" in m):
        raise SpecError(m.key_location("none_is" if "none_is" in m else "default"),
                        f"argument '{name}' has 'none_is' but no null default" if "none_is" in m else
                        f"argument '{name}' defaults to null: 'none_is' must say what None reads as "
                        f"(an expression of the other arguments and {DTYPE_EPS})")
    for text, element, null in zip(texts, elements, nullable):
        if null:
            continue
        if not y.is_plain(element) or not _literal_ok(kind, text):
            raise SpecError(y.where(path, element), f"the default of argument '{name}' must be "
                                                    f"{'a list of float literals' if kind == 'floats' else f'a {kind} literal'}, "
                                                    f"got {text!r}")
    element_names: tuple[str, ...] = ()
    if kind == "floats":
        if "names" not in m:
            raise SpecError(m.key_location("default"), f"the tuple argument '{name}' needs 'names': one per element, "
                                                       "as the expressions read them")
        element_names = tuple(y.scalar_text(path, e, "each name") for e in m.sequence("names"))
        if len(element_names) != len(texts) or not texts:
            raise SpecError(m.location("names"), f"argument '{name}' has {len(texts)} elements but "
                                                 f"{len(element_names)} names")
        for e in element_names:
            _check_name(e, "element name", m.location("names"), {})
    elif "names" in m:
        raise SpecError(m.key_location("names"), f"only a tuple argument has element names, not '{name}'")
    bounds = {}
    for key in ("min", "max", "below"):
        if key in m:
            if kind == "bool":
                raise SpecError(m.key_location(key), f"the bool argument '{name}' cannot have a bound")
            text = m.string(key)
            if not _literal_ok("float", text) or not y.is_plain(m.node(key)):
                raise SpecError(m.location(key), f"'{key}' of argument '{name}' must be a number, got {text!r}")
            bounds[key] = float(text)
    arg = OptimArg(name, kind, texts, m.string("doc").strip(), m.location("name"), element_names,
                   bounds.get("min"), bounds.get("max"), bounds.get("below"), nullable)
    for text, null in zip(texts, nullable):
        problem = None if null else bound_problem(arg, float(text) if kind != "bool" else 0.0)
        if problem is not None:
            raise SpecError(m.location("default"), f"the default of argument '{name}' {problem}")
    return arg, (m.node("none_is") if "none_is" in m else None)


def bound_problem(arg: OptimArg, value: float) -> str | None:
    """Why ``value`` is outside ``arg``'s bounds, or None (the runtime says the same)."""
    if arg.low is not None and not value >= arg.low:
        return f"is {value}, below its minimum {arg.low:g}"
    if arg.high is not None and not value <= arg.high:
        return f"is {value}, above its maximum {arg.high:g}"
    if arg.below is not None and not value < arg.below:
        return f"is {value}; it must be below {arg.below:g}"
    return None


def _literal_ok(kind: str, text: str) -> bool:
    """The loader's literal rules (yaml_nodes), finite floats only."""
    if kind == "bool":
        return text in BOOL_LITERALS
    if kind == "int":
        return y.INT_LITERAL.match(text) is not None
    return y.FLOAT_LITERAL.match(text) is not None and math.isfinite(float(text))


_locator = y.locator


def _expression(path: str, m: y.Mapping, key: str, names: dict, number: bool = False,
                refused: dict | None = None) -> Expr:
    node = m.node(key)
    text = y.scalar_text(path, node, f"'{key}'")
    expr = parse_expression(Statement(text, _locator(path, node)), names)
    _no_tensor_functions(expr, m.location(key))
    _refuse_reads(expr, m.location(key), refused or {})
    if number and expr.vtype is VType.BOOL:
        raise SpecError(m.location(key), f"'{key}' must be a number, got a condition")
    return expr


def _refuse_reads(expr: Expr, where: Location, refused: dict) -> None:
    """Names this place may not read (``refused``: name -> why)."""
    for e in walk(expr):
        if isinstance(e, Ref) and e.name in refused:
            raise SpecError(where, refused[e.name])


def _no_tensor_functions(expr: Expr, where: Location) -> None:
    for e in walk(expr):
        if isinstance(e, Call) and e.func in ("row_mean", "col_mean", "row_sum", "col_sum"):
            raise SpecError(where, f"{e.func}() reads a tensor's rows or columns; host expressions read numbers only")


def check_optimizers(ops) -> None:
    """Every class against the ops it feeds, once all specs are loaded: the ops exist and
    take dense gradients with a multi-tensor kernel or a row-sparse one; every parameter
    the step gives is one of each op's, every required one is given with the right type;
    every state of each op has an initial value; class names are unique."""
    by_name = {op.name: op for op in ops}
    classes: dict[str, Location] = {}
    for op in ops:
        for cls in op.optimizers:
            if cls.class_name in classes:
                first = classes[cls.class_name]
                raise SpecError(cls.location, f"class '{cls.class_name}' is declared twice (first in "
                                              f"{first.path.rsplit('/', 1)[-1]} at line {first.line})")
            classes[cls.class_name] = cls.location
            for choice in cls.choices:
                other = by_name.get(choice.op)
                if other is None:
                    raise SpecError(choice.location, f"class '{cls.class_name}' uses op '{choice.op}', which no spec "
                                                     f"defines{did_you_mean(choice.op, list(by_name))}")
                _check_choice(cls, other, choice.location)
            states = {s.name for choice in cls.choices for s in by_name[choice.op].states}
            for h in cls.host_state:
                if h.name in states or h.name == "step":
                    raise SpecError(h.location, f"host state '{h.name}' would share its name with "
                                                f"{'the step count' if h.name == 'step' else 'a state'} in each "
                                                "parameter's state dict")
            params = {p.name for choice in cls.choices for p in by_name[choice.op].params}
            for name, _, at in cls.step:
                if name not in params:
                    raise SpecError(at, f"'{name}' is not a parameter of the ops class '{cls.class_name}' uses"
                                        f"{did_you_mean(name, sorted(params))}")
            for i in cls.init:
                if i.state not in states:
                    raise SpecError(i.location, f"'{i.state}' is not a state of the ops class '{cls.class_name}' "
                                                f"uses{did_you_mean(i.state, sorted(states))}")


def _check_choice(cls: OptimizerSpec, op, where: Location) -> None:
    from opgen.spec.model import ParamType

    if op.multi is not None or op.output is not None or op.scalars or op.skip_if is not None:
        raise SpecError(where, f"class '{cls.class_name}' cannot drive op '{op.name}': an optimizer class feeds "
                               "ops with the usual call (no scalar inputs, output, skip_if or MXNet's flat lists)")
    if not op.row_sparse.dense:
        raise SpecError(where, f"class '{cls.class_name}' cannot drive op '{op.name}', which takes row-sparse "
                               "gradients only")
    if not op.has_multi and op.grid is None:  # (the model's one answer: read-only inputs, for one)
        raise SpecError(where, f"class '{cls.class_name}' cannot drive op '{op.name}', which has no multi-tensor "
                               "kernel (a step calls one per group of tensors; a grid op, one per tensor)")
    params = {p.name: p for p in op.params}
    for name, expr, at in cls.step:
        p = params.get(name)
        if p is None:
            continue  # a parameter of another op of the class (checked to be one of some op's)
        want = {ParamType.FLOAT: (VType.REAL, VType.INT), ParamType.INT: (VType.INT,), ParamType.BOOL: (VType.BOOL,)}
        if expr.vtype not in want[p.type]:
            raise SpecError(at, f"'{name}' is {_ARTICLES[p.type.value]} {p.type.value} parameter of op '{op.name}' but "
                                f"its expression gives {'a condition' if expr.vtype is VType.BOOL else 'a number'}")
    for p in op.params:
        if p.required and cls.step_value(p.name) is None:
            raise SpecError(cls.location, f"class '{cls.class_name}' gives no value for the required parameter "
                                          f"'{p.name}' of op '{op.name}' in 'step'")
    inits = {i.state for i in cls.init}
    for state in op.states:
        if state.name not in inits:
            raise SpecError(cls.location, f"class '{cls.class_name}' gives no initial value for the state "
                                          f"'{state.name}' of op '{op.name}' in 'init'")
        copied = next(i for i in cls.init if i.state == state.name).value is None
        if (state.per_row or state.per_col) and copied:
            raise SpecError(cls.location, f"class '{cls.class_name}' cannot start the state '{state.name}' of op "
                                          f"'{op.name}' as a copy of the weight: it holds one value per "
                                          f"{'row' if state.per_row else 'column'}")
        if state.per_row and op.grid is None:
            raise SpecError(cls.location, f"class '{cls.class_name}' cannot drive op '{op.name}': its per-row "
                                          "states need row-sparse-only updates")
