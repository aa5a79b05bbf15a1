"""The per-element code shared by the C and CUDA kernels, printed once from the tree.

Only the memory accesses differ between the targets (pointer indexing, vector lanes);
the parameters, the hoisted prologue and the element body are the same lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opgen.expr.hoist import KernelProgram, hoist
from opgen.expr.printers.c import CPrinter, c_name
from opgen.expr.tree import RefKind, VType
from opgen.spec.model import OpSpec, ParamType, TensorRole
from opgen.targets.dtypes import DType

PARAM_VTYPES = {ParamType.FLOAT: VType.REAL, ParamType.INT: VType.INT, ParamType.BOOL: VType.BOOL}


@dataclass(frozen=True)
class ElementCode:
    op: OpSpec
    program: KernelProgram
    dtype: DType
    printer: CPrinter

    @classmethod
    def of(cls, op: OpSpec, dtype: DType) -> "ElementCode":
        return cls(op, hoist(op.math), dtype, CPrinter(dtype.c_acc))

    @property
    def loads(self) -> list[str]:
        """Tensors the body reads, in declaration order."""
        order = {t.name: k for k, t in enumerate(self.op.tensors)}
        return sorted(self.program.loads, key=order.__getitem__)

    @property
    def stores(self) -> list[str]:
        return list(self.program.stores)

    def param_lines(self, arg: Callable[[str], str]) -> list[str]:
        """``const float s_lr = (float)arg_lr;``: parameters converted to the math type once."""
        lines = []
        for p in self.op.math_params:
            c_type = self.printer.c_type(PARAM_VTYPES[p.type])
            lines.append(f"const {c_type} {c_name(RefKind.PARAM, p.name)} = ({c_type}){arg(p.name)};")
        return lines

    def prologue_lines(self) -> list[str]:
        declared: set[tuple[RefKind, str]] = set()
        lines = []
        for s in self.program.prologue:
            first = (s.kind, s.target) not in declared
            declared.add((s.kind, s.target))
            line = self.printer.statement(s, declare=first)
            lines.append(f"const {line}" if s.kind is RefKind.HOISTED else line)
        return lines

    def body_lines(self) -> list[str]:
        declared = set(self.loads)
        lines = []
        for s in self.program.body:
            lines.append(self.printer.statement(s, declare=s.target not in declared))
            declared.add(s.target)
        return lines

    def load_lines(self, source: Callable[[str], str], zero_grad: bool = False) -> list[str]:
        """Each loaded tensor into its local; ``source(name)`` is the memory expression."""
        acc, grad = self.dtype.c_acc, self.op.grad.name
        lines = []
        for name in self.loads:
            value = source(name)
            if self.dtype.half:
                value = f"OPGEN_HALF_TO_FLOAT({value})"
            if name == grad:
                value = self.printer.const_zero() if zero_grad else value
                lines.append(f"const {acc} {c_name(RefKind.TENSOR, name)} = {value};")
            else:
                lines.append(f"{acc} {c_name(RefKind.TENSOR, name)} = {value};")
        return lines

    def store_lines(self, destination: Callable[[str], str]) -> list[str]:
        lines = []
        for name in self.stores:
            value = c_name(RefKind.TENSOR, name)
            if self.dtype.half:
                value = f"OPGEN_FLOAT_TO_HALF({value})"
            lines.append(f"{destination(name)} = {value};")
        return lines

    def is_const(self, tensor: str) -> bool:
        return next(t for t in self.op.tensors if t.name == tensor).role is TensorRole.GRAD
