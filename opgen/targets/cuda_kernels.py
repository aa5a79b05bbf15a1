"""OpSpec -> context of the CUDA templates (op.cu.j2, kernel_common.cuh.j2).

The same element and step functions as the C target (the very same lines), the same
kernel ABI (opgen.targets.abi: names, argument order, launch shapes), and one schedule
macro of the shared header per kernel:
- ``dense``: a grid-stride loop over 16-byte vectors when every pointer is aligned,
  then a scalar tail;
- ``lazy`` and ``standard``: a warp per row, lanes striding along the row with vector
  accesses when the row length and pointers allow, no per-element division;
- per-row ops: the two passes of a row by one warp, sums combined with warp shuffles;
- whole-tensor reductions: each pass a kernel of its own on a fixed grid (TOTAL_BLOCKS
  blocks, each reducing a fixed chunk in a fixed tree into its partial totals), then the
  update, whose blocks each combine the partials in a fixed tree (the same bits on any GPU,
  no host synchronisation), then, with per-tensor states, a one-block kernel storing them.
Scalar arguments arrive in double (ints as long long, bools as int), as in C: the per-call
values are computed in double once per thread and rounded once to the math type.
"""

from __future__ import annotations

from opgen.kinds import ArgRole, Schedule
from opgen.spec.model import OpSpec
from opgen.targets import abi
from opgen.targets.grid_code import GridCode
from opgen.targets.element import (LOOP, TOTAL_LANES, OpCode, RowCode, StepCode, TotalsCode, Version, math_header,
                                   versions)


def _parameters(op: OpSpec, kernel: abi.KernelABI, step: StepCode) -> str:
    """The ABI's CUDA arguments, with tensors typed by their storage and restrict."""
    parts = []
    for a in kernel.cuda_args:
        if a.role is ArgRole.PARTIALS:
            parts.append(f"double *__restrict__ {a.name}")
        elif a.role is ArgRole.TENSOR:
            parts.append(f"{'const ' if a.const else ''}{step.storage(a.source).cuda_storage} *__restrict__ {a.name}")
        elif a.role is ArgRole.INDICES:
            parts.append(f"const int64_t *__restrict__ {a.name}")
        else:
            parts.append(a.declaration())
    return ", ".join(parts)


def _combined_totals(op: OpSpec, kernel: abi.KernelABI, before_level: int | None = None) -> list[str]:
    """Every total of the passes before ``before_level`` (all of them: None), combined by the
    block's threads from the passes' partials in a fixed tree and finished, into each
    thread's ``opgen_totals``, as the C kernels' per-call code reads them."""
    n = {a.role: a.name for a in kernel.cuda_args if not a.source}
    lines = [f"__shared__ double opgen_red[{abi.TOTAL_BLOCKS}];",
             f"double {LOOP.totals}[{len(op.totals.totals)}] = {{0}};"]
    for t in op.totals.totals:
        if before_level is None or t.level < before_level:
            partials = f"{n[ArgRole.PARTIALS]} + {t.index * abi.TOTAL_BLOCKS}"
            lines.append(f"{LOOP.totals}[{t.index}] = OPGEN_FINISH_{t.finish}(opgen_cuda_combine({partials}, "
                         f"opgen_red, {int(t.accumulates == 'max')}), {n[ArgRole.SIZE]});")
    return lines


def pass_kernel_body(op: OpSpec, kernel: abi.KernelABI, step: StepCode, p) -> list[str]:
    """One read-only pass on TOTAL_BLOCKS blocks: the totals so far, the per-call values,
    each thread's summands of its elements (the C passes' step functions, one lane), each
    block's in a fixed tree into the partials."""
    code, totals = step.code, TotalsCode(step.math)
    n = {a.role: a.name for a in kernel.cuda_args if not a.source}
    init = f"{code.init(step.math.math)}({code.init_call(loads=step.per_tensor_loads())})"
    switches = "".join(f", {LOOP.s}.{name}" for name in code.switches)
    call = (f"{totals.name(p, step.variant.name)}({LOOP.s}, {LOOP.i}, {LOOP.gi}, {LOOP.lanes}, {LOOP.lane}{switches}"
            f"{', ' if totals.arrays(p) else ''}{code.pointer_args(totals.arrays(p))})")
    lines = [*_combined_totals(op, kernel, p.level), f"const {code.struct(step.math.math)} {LOOP.s} = {init};",
             f"double {LOOP.lanes}[{len(p.ordered)}][{TOTAL_LANES}];",
             *(f"{LOOP.lanes}[{k}][0] = {'OPGEN_NEG_INF' if t.accumulates == 'max' else '0.0'};"
               for k, t in enumerate(p.ordered)),
             f"OPGEN_CUDA_TOTALS({n[ArgRole.SIZE]}, {call});"]
    for k, t in enumerate(p.ordered):
        lines += [f"{{ const double opgen_r = opgen_cuda_block_total({LOOP.lanes}[{k}][0], opgen_red, "
                  f"{int(t.accumulates == 'max')});",
                  f"  if (threadIdx.x == 0) {n[ArgRole.PARTIALS]}[{t.index * abi.TOTAL_BLOCKS} + blockIdx.x] = opgen_r; }}"]
    return lines


def store_kernel_body(op: OpSpec, kernel: abi.KernelABI, step: StepCode) -> list[str]:
    """After the update, one block: the per-call values again, each per-tensor state's new
    value stored by one thread (the update's threads all read the old one)."""
    code = step.code
    init = f"{code.init(step.math.math)}({code.init_call(loads=step.per_tensor_loads())})"
    totals = _combined_totals(op, kernel) if op.totals is not None else []
    return [*totals, f"const {code.struct(step.math.math)} {LOOP.scalars} = {init};",
            "if (threadIdx.x == 0) {", *(f"    {line}" for line in step.per_tensor_stores()), "}"]


# a CUDA multi kernel's typed pointers to the tensors of its chunk's tensor
MULTI_POINTER = "p_{name}"


def multi_kernel_body(op: OpSpec, kernel: abi.KernelABI, step: StepCode) -> list[str]:
    """Every tensor of the call in one launch: each block takes chunks of the chunk table
    (grid-stride), casts its tensor's table entries to typed pointers, computes that tensor's
    per-call values from the value tables, and steps its threads along the chunk."""
    code = step.code
    n = {a.role: a.name for a in kernel.cuda_args if not a.source}
    chunk, t = "opgen_c", LOOP.t
    pointers = []
    for name in code.element_arrays:
        const = "const " if op.is_const(name) else ""
        storage = step.storage(name).cuda_storage
        pointers.append(f"{const}{storage} *__restrict__ {MULTI_POINTER.format(name=name)} = "
                        f"({const}{storage} *){abi.ARG}{name}[{t}];")
    init = f"{code.init(step.math.math)}({code.init_call(f'[{t}]', t)})"

    def body(v: Version) -> list[str]:
        return [f"for (long long {LOOP.i} = opgen_lo + threadIdx.x; {LOOP.i} < opgen_hi; {LOOP.i} += blockDim.x) {{",
                f"    const long long {LOOP.gi} = {LOOP.i};",
                f"    {step.step_call('step', 0, v, pointers=MULTI_POINTER)};", "}"]

    loop = [f"const long long {t} = {n[ArgRole.CHUNKS]}[2 * {chunk}], opgen_lo = {n[ArgRole.CHUNKS]}[2 * {chunk} + 1];",
            f"const long long opgen_hi = opgen_lo + {abi.MULTI_CHUNK} < {n[ArgRole.SIZES]}[{t}] ? "
            f"opgen_lo + {abi.MULTI_CHUNK} : {n[ArgRole.SIZES]}[{t}];",
            *pointers, f"const {code.struct(step.math.math)} {LOOP.s} = {init};",
            *versions(step, body, unswitch=False)]
    return [f"for (long long {chunk} = blockIdx.x; {chunk} < {n[ArgRole.NCHUNKS]}; {chunk} += gridDim.x) {{",
            *(f"    {line}" for line in loop), "}"]


def schedule_call(op: OpSpec, kernel: abi.KernelABI, step: StepCode) -> list[str]:
    code = step.code
    n = {a.role: a.name for a in kernel.cuda_args if not a.source}
    if kernel.schedule is Schedule.MULTI:
        return multi_kernel_body(op, kernel, step)
    loads = step.per_tensor_loads()  # (the old values: the store kernel after the update writes the new)
    totals = _combined_totals(op, kernel) if kernel.passes else []
    head = f"const {code.struct(step.math.math)} {LOOP.s} = {code.init(step.math.math)}({code.init_call(loads=loads)});"
    rows = f"{n.get(ArgRole.NNZ)}, {n.get(ArgRole.ROW_LEN)}, {n.get(ArgRole.INDICES)}"
    vector = f"{step.lanes}, {step.aligned()}"

    def body(v: Version) -> list[str]:
        if op.rows is not None:
            args = RowCode(step.math).schedule_args(step, n[ArgRole.ROW_LEN], v.sr)
            return [f"OPGEN_CUDA_LAZY_ROWS({args[0]}, {args[1]}, {args[2]}, {rows}, {', '.join(args[3:])});"]
        steps = f"{step.step_call('vstep', 0, v)}, {step.step_call('step', 0, v)}"
        if kernel.schedule is Schedule.DENSE:
            return [f"OPGEN_CUDA_DENSE({n[ArgRole.SIZE]}, {vector}, {steps});"]
        if kernel.schedule is Schedule.LAZY:
            return [f"OPGEN_CUDA_LAZY({rows}, {vector}, {steps});"]
        zero = f"{step.step_call('vstep', 1, v)}, {step.step_call('step', 1, v)}"
        return [f"OPGEN_CUDA_STANDARD({n[ArgRole.NROWS]}, {rows}, {vector}, {steps}, {zero});"]

    # a warp-uniform branch costs a GPU next to nothing: the switches are read at run time
    return [*totals, head, *versions(step, body, unswitch=False)]


def context(op: OpSpec) -> dict:
    code = OpCode(op)
    steps = [StepCode(code, v) for v in op.variants]
    kernels = []
    for step in steps:
        for schedule in op.schedules:
            kernel = abi.kernel(op, schedule, step.variant)
            if kernel.launch is None:
                continue
            parameters = _parameters(op, kernel, step)
            if kernel.schedule is Schedule.GRID:
                kernels += GridCode(step.math).cuda_kernels(step, kernel, parameters)
                continue
            for name, p in zip(kernel.passes, op.totals.passes if kernel.passes else ()):
                kernels.append({"name": name, "parameters": parameters, "threads": abi.TOTAL_THREADS,
                                "body": pass_kernel_body(op, kernel, step, p)})
            kernels.append({"name": kernel.name, "parameters": parameters,
                            "threads": kernel.launch.block[0] * kernel.launch.block[1],
                            "body": schedule_call(op, kernel, step)})
            if kernel.store:
                kernels.append({"name": kernel.store, "parameters": parameters, "threads": abi.TOTAL_THREADS,
                                "body": store_kernel_body(op, kernel, step)})
    vector_steps = [line for step in steps for line in step.vector_step_lines()]
    return {"op": op.name, "math_header": math_header(op, "cuda"), "vector_steps": vector_steps,
            "kernels": kernels}


def common_context() -> dict:
    return {"warp": abi.WARP, "loop": LOOP, "total_blocks": abi.TOTAL_BLOCKS, "total_threads": abi.TOTAL_THREADS,
            "total_lanes": TOTAL_LANES, "grid_max_blocks": abi.GRID_MAX_BLOCKS}
