"""OpSpec -> context of the C kernel templates (op.c.j2, op.cdef.j2, kernel_common.h.j2).

Three kernels per op and dtype, all in place on the weight buffer:
- ``dense``: one fused pass over ``n`` elements;
- ``lazy``: only the rows listed in a row-sparse gradient's indices;
- ``standard``: every row, rows absent from the gradient with a zero gradient.
"""

from __future__ import annotations

from opgen.spec.model import OpSpec, ParamType, TensorRole
from opgen.targets.dtypes import DTYPES, DType
from opgen.targets.element import ElementCode

# Below this many elements per thread, a parallel region costs more than it saves.
MIN_ELEMENTS_PER_THREAD = 1 << 13
# Row kernels touch scattered rows: latency-bound, so they go parallel much sooner.
MIN_ROW_ELEMENTS_PER_THREAD = 1 << 12
# Rows prefetched ahead of the one being updated, by the row kernels.
PREFETCH_ROWS = 8
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


def multi_kernel_args(op: OpSpec) -> list[str]:
    """The multi-tensor kernel's arguments: a pointer per tensor and a value per tensor."""
    tensors = [f"{'const void *const' if t.role is TensorRole.GRAD else 'void *const'} *{ARG}{t.name}"
               for t in op.tensors]
    params = [f"const {_ARG_TYPES[p.type]} *{ARG}{p.name}" for p in op.math_params]
    return tensors + params


def kernel_args(op: OpSpec) -> list[str]:
    """The C arguments after the size arguments: tensor pointers, then math parameters."""
    tensors = [f"{'const ' if t.role is TensorRole.GRAD else ''}void *{ARG}{t.name}" for t in op.tensors]
    params = [f"{_ARG_TYPES[p.type]} {ARG}{p.name}" for p in op.math_params]
    return tensors + params


def _variant(op: OpSpec, dtype: DType) -> dict:
    code = ElementCode.of(op, dtype)
    grad = op.grad.name

    def pointer(t, index: str = "") -> str:
        const = "const " if t.role is TensorRole.GRAD else ""
        return f"{const}{dtype.c_storage} *restrict p_{t.name} = ({const}{dtype.c_storage} *){ARG}{t.name}{index};"

    def memory(name: str) -> str:
        return f"p_{name}[{'gi' if name == grad else 'i'}]"

    return {
        "dtype": dtype.name,
        "acc": dtype.c_acc,
        "functions": {k: function_name(op, k, dtype) for k in kernels(op)},
        "pointers": [pointer(t) for t in op.tensors],
        "params": code.param_lines(lambda name: ARG + name),
        "multi_function": function_name(op, "multi", dtype),
        "multi_pointers": [pointer(t, "[t]") for t in op.tensors],
        "multi_params": code.param_lines(lambda name: f"{ARG}{name}[t]"),
        "prologue": code.prologue_lines(),
        "loads": code.load_lines(memory),
        "loads_zero_grad": code.load_lines(memory, zero_grad=True),
        "body": code.body_lines(),
        "stores": code.store_lines(memory),
        "line_elements": 64 // (2 if dtype.half else 4 if dtype.c_acc == "float" else 8),
        "prefetch": [f"__builtin_prefetch(p_{name} + ahead + j, 1);"
                     for name in dict.fromkeys(code.loads + code.stores) if name != grad],
    }


def context(op: OpSpec) -> dict:
    return {
        "op": op.name,
        "args": ", ".join(kernel_args(op)),
        "multi_args": ", ".join(multi_kernel_args(op)),
        "kernels": kernels(op),
        "variants": [_variant(op, d) for d in DTYPES],
        **common_context(),
    }


def common_context() -> dict:
    return {"min_elements_per_thread": MIN_ELEMENTS_PER_THREAD, "chunk_align": CHUNK_ALIGN,
            "min_row_elements_per_thread": MIN_ROW_ELEMENTS_PER_THREAD, "prefetch_rows": PREFETCH_ROWS}
