"""Frozen, typed models of an optimizer spec. Nothing past the loader touches YAML."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from opgen.errors import Location
from opgen.expr.tree import Program


class TensorRole(enum.Enum):
    WEIGHT = "weight"  # the weight being updated; its new value goes to `out`
    GRAD = "grad"  # the gradient: read-only, dense or row-sparse
    STATE = "state"  # optimizer state, updated in place


class ParamType(enum.Enum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    role: TensorRole
    doc: str
    symbol: str  # LaTeX symbol
    location: Location


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: ParamType
    doc: str
    symbol: str  # LaTeX symbol
    default: str | None  # the default's literal text, exactly as written in the spec
    location: Location

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
    def math_params(self) -> tuple[ParamSpec, ...]:
        """The parameters the math reads, in declaration order: the kernels' arguments."""
        used = self.math.names_read()
        return tuple(p for p in self.params if p.name in used)
