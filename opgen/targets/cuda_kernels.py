"""OpSpec -> context of the CUDA templates (op.cu.j2, kernel_common.cuh.j2).

The same three kernels as the C target, with the same element code (printed from the
same tree by the same printer); only the schedule differs:
- ``dense``: a grid-stride loop over 16-byte vectors when every pointer is aligned,
  then a scalar tail;
- ``lazy`` and ``standard``: a warp per row, lanes striding along the row with vector
  loads when the row length and pointers allow, no per-element division.
Scalar arguments have the math type (float for float16/float32): no double in float math.
"""

from __future__ import annotations

from opgen.runtime.cuda import DENSE_BLOCK as BLOCK
from opgen.runtime.cuda import ROWS_PER_BLOCK
from opgen.spec.model import OpSpec, ParamType
from opgen.targets.c_kernels import ARG, function_name, kernels
from opgen.targets.dtypes import DTYPES, DType
from opgen.targets.element import ElementCode, row_code



def _arg_type(ptype: ParamType, acc: str) -> str:
    return {ParamType.FLOAT: acc, ParamType.INT: "long long", ParamType.BOOL: "int"}[ptype]


def _variant(op: OpSpec, dtype: DType) -> dict:
    code = ElementCode.of(op, dtype)
    acc = code.printer.acc
    grad = op.grad.name
    names = code.pointer_names()
    stored = {n for n, _ in code.stores}
    used = [n for n in names if n in set(code.loads) | stored]
    storage = {n: code.storage(n).cuda_storage for n in names}
    itemsize = {n: code.storage(n).itemsize for n in names}
    # Lanes per vector: 16 bytes of the widest element type among the tensors.
    lanes = 16 // max(itemsize[n] for n in used)

    def vec(name: str) -> str:
        return f"opgen_vec<{storage[name]}, {lanes}>"

    def const(name: str) -> str:
        return "const " if code.is_const(name) else ""

    def scalar(name: str) -> str:
        return f"p_{name}[{'gi' if name == grad else 'i'}]"

    def lane(name: str) -> str:
        return f"x_{name}.v[k]"

    def vector_in(name: str) -> str:
        index = "gvi" if name == grad else "vi"
        if name in code.loads:
            return f"{vec(name)} x_{name} = reinterpret_cast<const {vec(name)} *>(p_{name})[{index}];"
        return f"{vec(name)} x_{name};"

    rows = row_code(code, scalar, lambda name: f"p_{name}[row]")
    flat = rows is None  # per-row ops have only the two-pass row kernel
    args = [f"{const(n)}{storage[n]} *{ARG}{n}" for n in names]
    args += [f"{acc} {ARG}{t.name}" for t in op.scalars]
    args += [f"{_arg_type(p.type, acc)} {ARG}{p.name}" for p in op.math_params]
    return {
        "rows": rows,
        "dtype": dtype.name,
        "lanes": lanes,
        "functions": {k: function_name(op, k, dtype) for k in kernels(op)},
        "args": ", ".join(args),
        "pointers": [f"{const(n)}{storage[n]} *__restrict__ p_{n} = {ARG}{n};" for n in names],
        "aligned": " && ".join(f"opgen_aligned(p_{n}, {lanes * itemsize[n]})" for n in used),
        "params": code.param_lines(lambda name: ARG + name),
        "prologue": code.prologue_lines(),
        "body": code.body_lines() if flat else [],
        "scalar_loads": code.load_lines(scalar) if flat else [],
        "scalar_loads_zero_grad": code.load_lines(scalar, zero_grad=True) if flat else [],
        "scalar_stores": code.store_lines(scalar) if flat else [],
        "vector_in": [vector_in(n) for n in used if n != grad],
        "vector_in_grad": [vector_in(grad)] if grad in used else [],
        "lane_loads": code.load_lines(lane) if flat else [],
        "lane_loads_zero_grad": code.load_lines(lane, zero_grad=True) if flat else [],
        "lane_stores": code.store_lines(lane) if flat else [],
        "vector_out": [f"reinterpret_cast<{vec(n)} *>(p_{n})[vi] = x_{n};" for n, _ in code.stores],
    }


def context(op: OpSpec) -> dict:
    return {
        "op": op.name,
        "kernels": kernels(op),
        "variants": [_variant(op, d) for d in DTYPES],
        "block": BLOCK,
        "rows_per_block": ROWS_PER_BLOCK,
        "row_block_threads": 32 * ROWS_PER_BLOCK,
    }


def common_context() -> dict:
    return {}
