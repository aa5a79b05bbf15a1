"""OpSpec -> context of the C kernel templates (op.c.j2, op.cdef.j2, kernel_common.h.j2).

Three kernels per op and dtype, all in place on the weight buffer:
- ``dense``: one fused pass over ``n`` elements;
- ``lazy``: only the rows listed in a row-sparse gradient's indices;
- ``standard``: every row, rows absent from the gradient with a zero gradient.
"""

from __future__ import annotations

from opgen.spec.model import OpSpec, ParamType
from opgen.targets.dtypes import DTYPES, DType
from opgen.targets.element import ElementCode, row_code

# Below this many elements per thread, a parallel region costs more than it saves.
MIN_ELEMENTS_PER_THREAD = 1 << 13
# Row kernels touch scattered rows: latency-bound, so they go parallel much sooner.
MIN_ROW_ELEMENTS_PER_THREAD = 1 << 12
# Rows prefetched ahead of the one being updated, by the row kernels.
PREFETCH_ROWS = 8
# Thread ranges start on multiples of this many elements (a 64-byte cache line of float32,
# whole lines of float16 and float64 too).
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
    return (("dense",) if rs.dense else ()) + (("lazy",) if lazy else ()) + (("standard",) if standard else ())


def has_multi(op: OpSpec) -> bool:
    """A multi-tensor entry point: dense updates of weights, without per-call scalar inputs
    or a skip condition (the multi kernel has no per-tensor skip)."""
    return op.row_sparse.dense and op.output is None and not op.scalars and op.skip_if is None


def _scalar_args(op: OpSpec, array: bool) -> list[str]:
    types = [("double", t.name) for t in op.scalars] + [(_ARG_TYPES[p.type], p.name) for p in op.math_params]
    return [f"const {c_type} *{ARG}{name}" if array else f"{c_type} {ARG}{name}" for c_type, name in types]


def multi_kernel_args(op: OpSpec) -> list[str]:
    """The multi-tensor kernel's arguments: a pointer per tensor and a value per tensor."""
    code = ElementCode.of(op, DTYPES[1])
    tensors = [f"{'const void *const' if code.is_const(n) else 'void *const'} *{ARG}{n}" for n in code.pointer_names()]
    return tensors + _scalar_args(op, array=True)


def kernel_args(op: OpSpec) -> list[str]:
    """The C arguments after the size arguments: array pointers, then scalars and parameters."""
    code = ElementCode.of(op, DTYPES[1])
    tensors = [f"{'const ' if code.is_const(n) else ''}void *{ARG}{n}" for n in code.pointer_names()]
    return tensors + _scalar_args(op, array=False)


def _variant(op: OpSpec, dtype: DType) -> dict:
    code = ElementCode.of(op, dtype)
    grad = op.grad.name

    def pointer(name: str, index: str = "") -> str:
        const = "const " if code.is_const(name) else ""
        c_type = code.storage(name).c_storage
        return f"{const}{c_type} *restrict p_{name} = ({const}{c_type} *){ARG}{name}{index};"

    def memory(name: str) -> str:
        return f"p_{name}[{'gi' if name == grad else 'i'}]"

    rows = row_code(code, memory, lambda name: f"p_{name}[row]")
    return {
        "rows": rows,
        "dtype": dtype.name,
        "acc": code.printer.acc,
        "functions": {k: function_name(op, k, dtype) for k in kernels(op)},
        "pointers": [pointer(n) for n in code.pointer_names()],
        "params": code.param_lines(lambda name: ARG + name),
        "multi_function": function_name(op, "multi", dtype),
        "multi_pointers": [pointer(n, "[t]") for n in code.pointer_names()],
        "multi_params": code.param_lines(lambda name: f"{ARG}{name}[t]"),
        "prologue": code.prologue_lines(),
        # per-row ops have only the two-pass row kernel: no flat element body
        "loads": code.load_lines(memory) if rows is None else [],
        "loads_zero_grad": code.load_lines(memory, zero_grad=True) if rows is None else [],
        "body": code.body_lines() if rows is None else [],
        "stores": code.store_lines(memory) if rows is None else [],
        "line_elements": 64 // dtype.itemsize,
        "prefetch": [f"__builtin_prefetch(p_{name} + ahead + j, 1);"
                     for name in dict.fromkeys(code.loads + [n for n, _ in code.stores]) if name != grad],
    }


def context(op: OpSpec) -> dict:
    return {
        "op": op.name,
        "args": ", ".join(kernel_args(op)),
        "multi_args": ", ".join(multi_kernel_args(op)) if has_multi(op) else "",
        "has_multi": has_multi(op),
        "kernels": kernels(op),
        "variants": [_variant(op, d) for d in DTYPES],
        **common_context(),
    }


def common_context() -> dict:
    return {"min_elements_per_thread": MIN_ELEMENTS_PER_THREAD, "chunk_align": CHUNK_ALIGN,
            "min_row_elements_per_thread": MIN_ROW_ELEMENTS_PER_THREAD, "prefetch_rows": PREFETCH_ROWS}
