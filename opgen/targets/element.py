"""The per-element code shared by the C and CUDA kernels, printed once from the tree.

Only the memory accesses differ between the targets (pointer indexing, vector lanes);
the parameters, the hoisted prologue and the element body are the same lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opgen.expr.hoist import KernelProgram, hoist
from opgen.expr.printers.c import CPrinter, c_name
from opgen.expr.tree import RefKind
from opgen.spec.model import PARAM_VTYPES, OpSpec, TensorRole
from opgen.targets.dtypes import DTYPE_BY_NAME, DType

OUT = "out"  # the destination of an op's output, when it has one



@dataclass(frozen=True)
class ElementCode:
    op: OpSpec
    program: KernelProgram
    dtype: DType
    printer: CPrinter

    @classmethod
    def of(cls, op: OpSpec, dtype: DType) -> "ElementCode":
        return cls(op, hoist(op.math), dtype, CPrinter(math_type(op, dtype)))

    def storage(self, tensor: str) -> DType:
        """How a tensor is stored: its fixed dtype, or the call's."""
        fixed = next((t.dtype for t in self.op.tensors if t.name == tensor), None)
        return DTYPE_BY_NAME[fixed] if fixed else self.dtype

    @property
    def loads(self) -> list[str]:
        """Tensors the body reads, in declaration order."""
        order = {t.name: k for k, t in enumerate(self.op.tensors)}
        return sorted(self.program.loads, key=order.__getitem__)

    @property
    def stores(self) -> list[tuple[str, str]]:
        """(destination, local) for every value the body writes to memory."""
        stores = [(name, c_name(RefKind.TENSOR, name)) for name in self.program.stores]
        if self.op.output is not None:
            stores.append((OUT, c_name(RefKind.TEMP, self.op.output)))
        return stores

    def param_lines(self, arg: Callable[[str], str]) -> list[str]:
        """``const float s_lr = (float)arg_lr;``: scalars converted to the math type once."""
        lines = []
        for t in self.op.scalars:
            lines.append(f"const {self.printer.acc} {c_name(RefKind.PARAM, t.name)} = ({self.printer.acc}){arg(t.name)};")
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
        acc, grad = self.printer.acc, self.op.grad.name
        lines = []
        for name in self.loads:
            value = self.loaded(name, source(name))
            if name == grad:
                value = self.printer.const_zero() if zero_grad else value
                lines.append(f"const {acc} {c_name(RefKind.TENSOR, name)} = {value};")
            else:
                lines.append(f"{acc} {c_name(RefKind.TENSOR, name)} = {value};")
        return lines

    def loaded(self, name: str, memory: str) -> str:
        """A tensor's memory expression converted to the math type."""
        if self.storage(name).half:
            return f"OPGEN_HALF_TO_FLOAT({memory})"
        if self.storage(name).c_acc != self.printer.acc:
            return f"({self.printer.acc}){memory}"
        return memory

    def stored(self, name: str, value: str) -> str:
        """A math-type value converted to a tensor's storage type."""
        storage = self.storage(name)
        if storage.half:
            return f"OPGEN_FLOAT_TO_HALF({value})"
        if storage.c_acc != self.printer.acc:
            return f"({storage.c_storage}){value}"
        return value

    def store_lines(self, destination: Callable[[str], str]) -> list[str]:
        return [f"{destination(name)} = {self.stored(name, value)};" for name, value in self.stores]

    def is_const(self, tensor: str) -> bool:
        """Read-only in the kernel: the gradient, and the weight of an op with an output."""
        if tensor == OUT:
            return False
        role = next(t for t in self.op.tensors if t.name == tensor).role
        return role is TensorRole.GRAD or (role is TensorRole.WEIGHT and self.op.output is not None)

    def pointer_names(self) -> list[str]:
        """The kernel's array arguments in order: the element-wise tensors, then ``out``."""
        return [t.name for t in self.op.arrays] + ([OUT] if self.op.output is not None else [])


def math_type(op: OpSpec, dtype: DType) -> str:
    """The math's type: an op that fixes some tensors' dtypes (mixed precision) computes in
    the widest of those; any other op in the call's dtype (float for float16)."""
    fixed = [DTYPE_BY_NAME[t.dtype] for t in op.tensors if t.dtype]
    return "double" if any(d.c_acc == "double" for d in (fixed or [dtype])) else "float"


@dataclass(frozen=True)
class RowCode:
    """The lines of a two-pass row kernel (see opgen.expr.rows)."""

    pass1_loads: list[str]
    pre: list[str]
    reductions: list[tuple[str, str, str]]  # (accumulator, initial line, accumulate line)
    finals: list[str]  # the reductions' means, once the row is summed
    row_loads: list[str]
    row_body: list[str]
    row_stores: list[str]
    pass2_loads: list[str]
    pass2_body: list[str]
    pass2_stores: list[str]
    pass1_indices: list[str]  # the element indices pass 1 reads through (i, gi), declared only if used
    pass2_indices: list[str]


def row_code(code: ElementCode, element: Callable[[str], str], per_row: Callable[[str], str]) -> RowCode | None:
    """``element(name)``/``per_row(name)``: memory expressions of element and per-row tensors."""
    from opgen.expr.rows import has_reductions, split_rows
    from opgen.expr.tree import refs

    rows = code.op.row_tensors
    if not rows and not has_reductions(code.program):
        return None
    split = split_rows(code.program, rows)
    printer, acc = code.printer, code.printer.acc
    order = [t.name for t in code.op.tensors]

    def tensors_read(statements, extra=()) -> list[str]:
        names = {r.name for s in statements for r in refs(s.expr) if r.kind is RefKind.TENSOR}
        names |= {r.name for e in extra for r in refs(e) if r.kind is RefKind.TENSOR}
        return [n for n in order if n in names and n not in rows]

    def loads(names: list[str]) -> list[str]:
        return [f"{'const ' if name == code.op.grad.name else ''}{acc} {c_name(RefKind.TENSOR, name)} = "
                f"{code.loaded(name, element(name))};" for name in names]

    def statements(items, declared: set[str]) -> list[str]:
        lines = []
        for s in items:
            lines.append(printer.statement(s, declare=s.target not in declared))
            declared.add(s.target)
        return lines

    def store(name: str, destination: str) -> str:
        return f"{destination} = {code.stored(name, c_name(RefKind.TENSOR, name))};"

    pass1 = tensors_read(split.pre, split.reductions)
    reductions = [(f"sum_{k}", f"{acc} sum_{k} = 0;", f"sum_{k} += {printer.expr(arg)};")
                  for k, arg in enumerate(split.reductions)]
    finals = [f"const {acc} {c_name(RefKind.REDUCED, str(k))} = sum_{k} / ({acc})row_len;"
              for k in range(len(split.reductions))]
    row_names = [n for n in order if n in rows]
    row_loads = [f"{acc} {c_name(RefKind.TENSOR, name)} = {code.loaded(name, per_row(name))};"
                 for name in row_names]
    written_rows = [n for n in row_names if any(s.target == n for s in split.row)]
    pass2 = tensors_read(split.pre + split.post)
    element_stores = [n for n in code.program.stores if n not in rows]
    grad = code.op.grad.name

    def indices(names: list[str]) -> list[str]:
        out = []
        if any(n != grad for n in names):
            out.append("const int64_t i = base + j;")
        if grad in names:
            out.append("const int64_t gi = gbase + j;")
        return out

    return RowCode(
        pass1_loads=loads(pass1),
        pre=statements(split.pre, set(pass1)),
        reductions=reductions,
        finals=finals,
        row_loads=row_loads,
        row_body=statements(split.row, set(row_names)),
        row_stores=[store(n, per_row(n)) for n in written_rows],
        pass2_loads=loads(pass2),
        pass2_body=statements(split.pre + split.post, set(pass2) | set(row_names)),
        pass2_stores=[store(n, element(n)) for n in element_stores],
        pass1_indices=indices(pass1),
        pass2_indices=indices(pass2 + element_stores),
    )
