"""Frozen, typed models of an optimizer spec. Nothing past the loader touches YAML."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from opgen.errors import Location
from opgen.expr.tree import Expr, Program, VType


class TensorRole(enum.Enum):
    WEIGHT = "weight"  # the weight being updated; its new value goes to `out`
    GRAD = "grad"  # the gradient: read-only, dense or row-sparse
    STATE = "state"  # optimizer state, updated in place
    SCALAR = "scalar"  # a one-element input (array or number), read once per call


class ParamType(enum.Enum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


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


@dataclass(frozen=True)
class MultiSpec:
    """MXNet's multi-tensor calling convention: ``OP(*data, <per-tensor lists>, ..., count=1)``.

    ``data`` is one flat list of groups (weight, grad, states... per tensor, in tensor
    order); ``count`` names the int parameter that says how many groups there are;
    ``per_tensor`` maps a parameter to the public name of its one-value-per-tensor list.
    """

    count: str
    per_tensor: tuple[tuple[str, str], ...]  # (parameter, public list name)


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
    skip_if: Expr | None = None  # a condition on the parameters: when true the call changes nothing
    skip_if_text: str = ""
    output: str | None = None  # a temporary written to `out` instead of a new weight (weight read-only)
    multi: MultiSpec | None = None  # the public function takes MXNet's multi-tensor convention

    @property
    def weight(self) -> TensorSpec:
        return next(t for t in self.tensors if t.role is TensorRole.WEIGHT)

    @property
    def grad(self) -> TensorSpec:
        return next(t for t in self.tensors if t.role is TensorRole.GRAD)

    @property
    def states(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.tensors if t.role is TensorRole.STATE)

    @property
    def row_tensors(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tensors if t.per_row)

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
        from opgen.expr.tree import refs

        return frozenset(r.name for r in refs(self.skip_if)) if self.skip_if is not None else frozenset()

    @property
    def kernel_scalars(self) -> tuple[str, ...]:
        """The kernels' scalar arguments, in order: scalar inputs, then the math's parameters."""
        return tuple(t.name for t in self.scalars) + tuple(p.name for p in self.math_params)
