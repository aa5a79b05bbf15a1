"""OpSpec -> context of the C kernel templates (op.c.j2, op.cdef.j2, kernel_common.h.j2).

Three kernels per op and dtype, all in place on the weight buffer:
- ``dense``: one fused pass over ``n`` elements;
- ``lazy``: only the rows listed in a row-sparse gradient's indices;
- ``standard``: every row, rows absent from the gradient with a zero gradient.
"""

from __future__ import annotations

from opgen.expr.hoist import KernelProgram, hoist
from opgen.expr.printers.c import CPrinter, c_name
from opgen.expr.tree import RefKind
from opgen.spec.model import OpSpec, ParamType, TensorRole
from opgen.targets.dtypes import DTYPES, DType

# Below this many elements per thread, a parallel region costs more than it saves.
MIN_ELEMENTS_PER_THREAD = 1 << 15
# Thread ranges start on multiples of this many elements (64-byte cache lines of float32).
CHUNK_ALIGN = 16

# Kernel arguments are prefixed so no spec name can collide with n, row_len, indices...
ARG = "arg_"
_ARG_TYPES = {ParamType.FLOAT: "double", ParamType.INT: "int64_t", ParamType.BOOL: "int"}


def function_name(op: OpSpec, kernel: str, dtype: DType) -> str:
    return f"opgen_{op.name}_{kernel}_{dtype.name}"


def kernels(op: OpSpec) -> tuple[str, ...]:
    """Which kernels the op needs, from its row-sparse behaviour."""
    rs = op.row_sparse
    lazy = rs.always_lazy or rs.lazy_param is not None
    standard = not rs.always_lazy
    return ("dense",) + (("lazy",) if lazy else ()) + (("standard",) if standard else ())


def kernel_args(op: OpSpec) -> list[str]:
    """The C arguments after the size arguments: tensor pointers, then math parameters."""
    tensors = [f"{'const ' if t.role is TensorRole.GRAD else ''}void *{ARG}{t.name}" for t in op.tensors]
    params = [f"{_ARG_TYPES[p.type]} {ARG}{p.name}" for p in op.math_params]
    return tensors + params


def _variant(op: OpSpec, program: KernelProgram, dtype: DType) -> dict:
    printer = CPrinter(dtype.c_acc)
    grad = op.grad.name
    order = {t.name: k for k, t in enumerate(op.tensors)}
    loads = sorted(program.loads, key=order.__getitem__)

    def load(name: str, index: str) -> str:
        value = f"p_{name}[{index}]"
        return f"OPGEN_HALF_TO_FLOAT({value})" if dtype.half else value

    def load_line(name: str, zero_grad: bool) -> str:
        if name == grad:
            value = printer.const_zero() if zero_grad else load(name, "gi")
            return f"const {dtype.c_acc} {c_name(RefKind.TENSOR, name)} = {value};"
        return f"{dtype.c_acc} {c_name(RefKind.TENSOR, name)} = {load(name, 'i')};"

    declared = set(loads)
    body = []
    for s in program.body:
        first = s.target not in declared
        declared.add(s.target)
        body.append(printer.statement(s, declare=first))
    prologue_declared: set[str] = set()
    prologue = []
    for s in program.prologue:
        first = (s.kind, s.target) not in prologue_declared
        prologue_declared.add((s.kind, s.target))
        line = printer.statement(s, declare=first)
        prologue.append(f"const {line}" if s.kind is RefKind.HOISTED else line)

    def store(name: str) -> str:
        value = c_name(RefKind.TENSOR, name)
        return f"p_{name}[i] = OPGEN_FLOAT_TO_HALF({value});" if dtype.half else f"p_{name}[i] = {value};"

    return {
        "dtype": dtype.name,
        "acc": dtype.c_acc,
        "functions": {k: function_name(op, k, dtype) for k in kernels(op)},
        "pointers": [
            f"{'const ' if t.role is TensorRole.GRAD else ''}{dtype.c_storage} *restrict p_{t.name} = "
            f"({'const ' if t.role is TensorRole.GRAD else ''}{dtype.c_storage} *){ARG}{t.name};"
            for t in op.tensors
        ],
        "params": [
            f"const {printer.c_type(_vtype(p.type))} {c_name(RefKind.PARAM, p.name)} = "
            f"({printer.c_type(_vtype(p.type))}){ARG}{p.name};"
            for p in op.math_params
        ],
        "prologue": prologue,
        "loads": [load_line(n, zero_grad=False) for n in loads],
        "loads_zero_grad": [load_line(n, zero_grad=True) for n in loads],
        "body": body,
        "stores": [store(n) for n in program.stores],
    }


def _vtype(ptype: ParamType):
    from opgen.expr.tree import VType

    return {ParamType.FLOAT: VType.REAL, ParamType.INT: VType.INT, ParamType.BOOL: VType.BOOL}[ptype]


def context(op: OpSpec) -> dict:
    program = hoist(op.math)
    return {
        "op": op.name,
        "args": ", ".join(kernel_args(op)),
        "kernels": kernels(op),
        "variants": [_variant(op, program, d) for d in DTYPES],
        **common_context(),
    }


def common_context() -> dict:
    return {"min_elements_per_thread": MIN_ELEMENTS_PER_THREAD, "chunk_align": CHUNK_ALIGN}
