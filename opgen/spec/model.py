"""Frozen, typed models of an optimizer spec. Nothing past the loader touches YAML.

The models own every derived fact (the schedules an op has, its math type per dtype,
its hoisted program and per-row split): the loader computes them once, and every target
and the runtime read the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from opgen.dtypes import (DTYPE_BY_NAME, PARAM_KINDS, SCALAR_INPUT_KIND, DType, MathType, ParamKind, ParamType,
                          Variant, variants, widest_math)
from opgen.errors import Location
from opgen.expr.hoist import KernelProgram
from opgen.expr.rows import RowProgram
from opgen.expr.grid import GridProgram
from opgen.expr.totals import Total, TotalsProgram
from opgen.expr.tree import Expr, Program, VType, refs
from opgen.kinds import OUT, Schedule, TensorRole
from opgen.spec.names import multi_name

__all__ = ["MultiSpec", "OpSpec", "PARAM_VTYPES", "ParamSpec", "ParamType", "RowSparseSpec", "TensorRole",
           "TensorSpec", "OUT"]

# How each parameter type enters the math.
PARAM_VTYPES = {ParamType.FLOAT: VType.REAL, ParamType.INT: VType.INT, ParamType.BOOL: VType.BOOL}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    role: TensorRole
    doc: str
    symbol: str  # LaTeX symbol
    location: Location
    dtype: str | None = None  # a fixed storage dtype (e.g. float32 master weights); None: the call's dtype
    per_row: bool = False  # one value per row of the weight (shape (rows,) or (rows, 1))
    per_tensor: bool = False  # one value per tensor (shape (1,) or ()), read and written once per call
    per_col: bool = False  # one value per column of a 2-D weight (shape (cols,) or (1, cols))


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: ParamType
    doc: str
    symbol: str  # LaTeX symbol
    default: str | None  # the default's literal text, exactly as written in the spec
    location: Location
    ignored: bool = False  # accepted and checked for compatibility, but the math never reads it
    bounds: tuple[float, float] | None = None  # inclusive range the value must lie in
    bounds_text: tuple[str, str] | None = None  # the bounds as written, for messages and docs

    @property
    def required(self) -> bool:
        return self.default is None


@dataclass(frozen=True)
class RowSparseSpec:
    """How a row-sparse gradient is applied.

    ``lazy_param`` names the bool parameter that chooses the lazy update (only rows in
    ``grad.indices`` change) over the standard one (every row, missing rows as a zero
    gradient); ``always_lazy`` fixes the choice to lazy. With neither, a row-sparse
    gradient always gets the standard update.
    """

    lazy_param: str | None = None
    always_lazy: bool = False
    dense: bool = True  # False: the gradient must be row-sparse
    sparse: bool = True  # False: the gradient must be dense (ops with whole-tensor reductions)


@dataclass(frozen=True)
class MultiSpec:
    """MXNet's multi-tensor calling convention: ``OP(*data, <per-tensor lists>, ..., count=1)``.

    ``data`` is one flat list of groups (weight, grad, states... per tensor, in tensor
    order); ``count`` names the int parameter that says how many groups there are;
    ``per_tensor`` maps a parameter to the public name of its one-value-per-tensor list.
    """

    count: str
    per_tensor: tuple[tuple[str, str], ...]  # (parameter, public list name)
    # parameters passed as the last arrays of ``data`` (MXNet's preloaded lrs/wds, a trailing
    # rescale_grad): a per-tensor one as an array of one value per tensor, another as one value
    trailing: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpSpec:
    name: str
    path: str  # the spec as generated files name it: FOLDER/NAME.yaml
    summary: str
    description: str
    tensors: tuple[TensorSpec, ...]
    params: tuple[ParamSpec, ...]
    math: Program
    row_sparse: RowSparseSpec
    deviations: tuple[str, ...]
    program: KernelProgram  # the math split into a per-call prologue and a per-element body
    rows: RowProgram | None = None  # the body split around its per-row statements (per-row ops)
    totals: TotalsProgram | None = None  # the read-only passes of its whole-tensor reductions
    grid: GridProgram | None = None  # a 2-D weight's per-row and per-column values (opgen.expr.grid)
    skip_if: Expr | None = None  # a condition on the parameters: when true the call changes nothing
    output: str | None = None  # a temporary written to `out` instead of a new weight (weight read-only)
    output_dtype: str | None = None  # the output's fixed dtype; None: the weight's
    # how a multi-tensor call of a reduction op combines its tensors' values into one (min,
    # max, sum; None: one value per tensor), and the bool parameter that, false, makes the
    # output's value before the call take part too
    across: str | None = None
    reset: str | None = None
    multi: MultiSpec | None = None  # the public function takes MXNet's multi-tensor convention
    location: Location | None = None  # where the spec names the op
    optimizers: tuple = ()  # the torch.optim classes its optimizer section declares (spec.optimizer)

    @property
    def reduction(self) -> bool:
        """An op with no weight (and no gradient): it reads its inputs and returns one value per
        call, its output (a per-call value of the math: a sum of squares). The first input
        then stands where the weight does: its dtype is the call's, its size the element count."""
        return not any(t.role is TensorRole.WEIGHT for t in self.tensors)

    @property
    def entry_points(self) -> tuple[str, ...]:
        """The functions the op's module exports: the op, and its multi-tensor form where the
        op has a multi kernel and keeps the one-tensor signature."""
        multi = self.has_multi and self.multi is None and not self.reduction  # (reductions: with `multi:` only)
        return (self.name,) + ((multi_name(self.name),) if multi else ())

    # -- derived facts ---------------------------------------------------------------
    @property
    def has_multi(self) -> bool:
        """A multi-tensor kernel: dense updates of weights, without per-call scalar inputs,
        read-only inputs or an output; a skip condition only on values of the whole call (the
        multi kernel has no per-tensor skip). Whole-tensor reductions and per-tensor states
        are each tensor's own."""
        if self.reduction:
            return not self.scalars
        if self.grid is not None:
            return False
        return self.row_sparse.dense and self.output is None and not self.scalars and not self.inputs \
            and (self.skip_if is None or not self.skip_if_names() & {p for p, _ in (self.multi.per_tensor
                                                                                    if self.multi else ())})

    @property
    def plain_call(self) -> bool:
        """Whether a call's tensors all have the call's storage (the weight's dtype, free
        states the call's state dtype) and its parameters go to the kernel as they are: no
        fixed dtypes, scalar inputs, per-tensor states, outputs, skip conditions or ranged
        parameters. Such ops get the per-call fast paths (the runtime's, and in C)."""
        return self.output is None and self.skip_if is None and self.grid is None and not any(t.dtype for t in self.tensors) \
            and not self.scalars and not self.per_tensor_states and not any(p.bounds for p in self.params)

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The kernels the op gets, from its row-sparse behaviour."""
        if self.grid is not None:
            return (Schedule.GRID,)
        rs = self.row_sparse
        lazy = rs.sparse and (rs.always_lazy or rs.lazy_param is not None)
        standard = rs.sparse and not rs.always_lazy
        return ((Schedule.DENSE,) if rs.dense else ()) + ((Schedule.MULTI,) if self.has_multi else ()) \
            + ((Schedule.LAZY,) if lazy else ()) + ((Schedule.STANDARD,) if standard else ())

    @property
    def row_sparse_schedules(self) -> tuple[Schedule, ...]:
        return tuple(s for s in self.schedules if s in (Schedule.LAZY, Schedule.STANDARD))

    @property
    def free_states(self) -> tuple[TensorSpec, ...]:
        """The states whose dtype the spec does not fix: they share the call's state dtype."""
        return tuple(t for t in self.states if t.dtype is None)

    @property
    def variants(self) -> tuple[Variant, ...]:
        """The storage combinations the op is generated for (opgen.dtypes.variants): every
        weight dtype with states of its own dtype, and, where some states are free, with
        the other state dtypes that weight dtype allows."""
        return variants(bool(self.free_states))

    def storage(self, tensor: str, variant: Variant) -> DType:
        """How a tensor is stored in a call of this variant: its fixed dtype, the call's
        state dtype (a free state), or the weight's (the gradient, ``out``)."""
        spec = next((t for t in self.tensors if t.name == tensor), None)
        if spec is not None and spec.dtype:
            return DTYPE_BY_NAME[spec.dtype]
        if tensor == OUT and self.output_dtype:
            return DTYPE_BY_NAME[self.output_dtype]
        return variant.states if spec is not None and spec.role is TensorRole.STATE else variant.dtype

    def math_type(self, variant: Variant) -> MathType:
        """An op that fixes some tensors' dtypes (mixed precision) computes in the widest of
        those; any other op in the widest math type of the variant's dtypes (float for
        float16, and for bfloat16 with float32 states). A per-tensor state's fixed dtype
        (one wide value) does not count, nor a reduction op's output (one value per call)."""
        fixed = [DTYPE_BY_NAME[t.dtype] for t in self.tensors if t.dtype and not t.per_tensor] \
            + ([DTYPE_BY_NAME[self.output_dtype]] if self.output_dtype and not self.reduction else [])
        return widest_math(fixed or [variant.dtype, variant.states])

    @property
    def math_types(self) -> tuple[MathType, ...]:
        """Every math type some variant uses, narrowest first: one element function each."""
        found = {self.math_type(v).name: self.math_type(v) for v in self.variants}
        return tuple(sorted(found.values(), key=lambda m: m.itemsize))

    @property
    def kernel_arrays(self) -> tuple[str, ...]:
        """The kernels' array arguments in order: the element-wise tensors, then ``out``."""
        return tuple(t.name for t in self.arrays) + ((OUT,) if self.output is not None else ())

    @property
    def updates(self) -> bool:
        """Whether the kernels have an update pass: the element math stores something (an op
        that only reduces stores its per-call output once, after its reduction passes)."""
        return bool(self.stores)

    @property
    def output_per_call(self) -> bool:
        """The output is one value per call (a reduction op's), stored once, not per element."""
        return self.output is not None and self.output in dict(self.program.finals)

    def is_const(self, name: str) -> bool:
        """Read-only in the kernels: the gradient, the inputs, and the weight of an op with an output."""
        if name == OUT:
            return False
        role = self.tensor(name).role
        return role in (TensorRole.GRAD, TensorRole.INPUT) or (role is TensorRole.WEIGHT and self.output is not None)

    def tensor(self, name: str) -> TensorSpec:
        return next(t for t in self.tensors if t.name == name)

    @property
    def stores(self) -> tuple[tuple[str, str | None], ...]:
        """(destination, temporary) for each value the element math writes to memory: the
        tensors it assigns (temporary None), then ``out`` with the output temporary."""
        out = ((OUT, self.output),) if self.output is not None and not self.output_per_call else ()
        return tuple((name, None) for name in self.program.stores) + out

    def store_slot(self, name: str) -> int:
        """A stored tensor's number among the stores (``out`` for the output): its own
        stream of stochastic-rounding bits in every backend."""
        return [stored for stored, _ in self.stores].index(name)

    @property
    def weight(self) -> TensorSpec:
        """The weight; in a reduction op, the first input, which stands in its place."""
        return next(t for t in self.tensors if t.role is TensorRole.WEIGHT or (self.reduction and
                                                                             t.role is TensorRole.INPUT))

    @property
    def grad(self) -> TensorSpec | None:
        """The gradient (None in a reduction op)."""
        return next((t for t in self.tensors if t.role is TensorRole.GRAD), None)

    @property
    def states(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.role is TensorRole.STATE)

    @property
    def per_tensor_states(self) -> tuple[TensorSpec, ...]:
        """The states of one value per tensor, read and written once per call."""
        return tuple(t for t in self.tensors if t.per_tensor)

    def final_value(self, state: str) -> str:
        """The prologue temporary holding a per-tensor state's new value."""
        return dict(self.program.finals)[state]

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The read-only arrays beside the gradient (of the weight's shape)."""
        return tuple(t for t in self.tensors if t.role is TensorRole.INPUT)

    @property
    def row_tensors(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tensors if t.per_row)

    @property
    def whole_totals(self) -> tuple[Total, ...]:
        """Every whole-tensor reduction (one value per call), of a flat op or a grid op."""
        source = self.totals if self.totals is not None else self.grid
        return source.totals if source is not None else ()

    @property
    def stages(self) -> tuple[int, ...]:
        """Per prologue statement, the pass (level) whose reductions it reads last (0: none)."""
        source = self.totals if self.totals is not None else self.grid
        return source.stages if source is not None else (0,) * len(self.program.prologue)

    @property
    def reduces_whole(self) -> bool:
        """Whether a call reads whole tensors before it writes (reductions, row and column means)."""
        return self.totals is not None or self.grid is not None

    @property
    def arrays(self) -> tuple[TensorSpec, ...]:
        """The element-wise tensors (everything but one-element scalar inputs)."""
        return tuple(t for t in self.tensors if t.role is not TensorRole.SCALAR)

    @property
    def scalars(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.role is TensorRole.SCALAR)

    @property
    def math_params(self) -> tuple[ParamSpec, ...]:
        """The parameters the math reads, in declaration order."""
        used = self.math.names_read() | (self.skip_if_names())
        return tuple(p for p in self.params if p.name in used)

    def skip_if_names(self) -> frozenset[str]:
        return frozenset(r.name for r in refs(self.skip_if)) if self.skip_if is not None else frozenset()

    @property
    def kernel_scalars(self) -> tuple[str, ...]:
        """The per-call init's scalars, in order: scalar inputs, per-tensor states' values
        before the call (the kernels load them from their one-element arrays), then the
        math's parameters."""
        return tuple(t.name for t in self.scalars) + tuple(t.name for t in self.per_tensor_states) \
            + tuple(p.name for p in self.math_params)

    @property
    def kernel_scalar_kinds(self) -> tuple[ParamKind, ...]:
        """How each kernel scalar crosses the ABI (scalar inputs as floats), in order."""
        return (SCALAR_INPUT_KIND,) * (len(self.scalars) + len(self.per_tensor_states)) \
            + tuple(PARAM_KINDS[p.type] for p in self.math_params)
