"""OpSpec -> context of the CUDA templates (op.cu.j2, kernel_common.cuh.j2).

The same element and step functions as the C target (the very same lines), the same
kernel ABI (opgen.targets.abi: names, argument order, launch shapes), and one schedule
macro of the shared header per kernel:
- ``dense``: a grid-stride loop over 16-byte vectors when every pointer is aligned,
  then a scalar tail;
- ``lazy`` and ``standard``: a warp per row, lanes striding along the row with vector
  accesses when the row length and pointers allow, no per-element division;
- per-row ops: the two passes of a row by one warp, sums combined with warp shuffles.
Scalar arguments arrive in double (ints as long long, bools as int), as in C: the per-call
values are computed in double once per thread and rounded once to the math type.
"""

from __future__ import annotations

from opgen.kinds import ArgRole, Schedule
from opgen.spec.model import OpSpec
from opgen.targets import abi
from opgen.targets.element import LOOP, OpCode, RowCode, StepCode, Version, math_header, versions


def _parameters(op: OpSpec, kernel: abi.KernelABI, step: StepCode) -> str:
    """The ABI's CUDA arguments, with tensors typed by their storage and restrict."""
    parts = []
    for a in kernel.cuda_args:
        if a.role is ArgRole.TENSOR:
            parts.append(f"{'const ' if a.const else ''}{step.storage(a.source).cuda_storage} *__restrict__ {a.name}")
        elif a.role is ArgRole.INDICES:
            parts.append(f"const int64_t *__restrict__ {a.name}")
        else:
            parts.append(a.declaration())
    return ", ".join(parts)


def schedule_call(op: OpSpec, kernel: abi.KernelABI, step: StepCode) -> list[str]:
    code = step.code
    n = {a.role: a.name for a in kernel.cuda_args if not a.source}
    head = f"const {code.struct(step.math.math)} {LOOP.s} = {code.init(step.math.math)}({code.init_call()});"
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
    return [head, *versions(step, body, unswitch=False)]


def context(op: OpSpec) -> dict:
    code = OpCode(op)
    steps = [StepCode(code, v) for v in op.variants]
    kernels = []
    for step in steps:
        for schedule in op.schedules:
            kernel = abi.kernel(op, schedule, step.variant)
            if kernel.launch is None:
                continue
            kernels.append({"name": kernel.name, "parameters": _parameters(op, kernel, step),
                            "threads": kernel.launch.block[0] * kernel.launch.block[1],
                            "body": schedule_call(op, kernel, step)})
    vector_steps = [line for step in steps for line in step.vector_step_lines()]
    return {"op": op.name, "math_header": math_header(op, "cuda"), "vector_steps": vector_steps,
            "kernels": kernels}


def common_context() -> dict:
    return {"warp": abi.WARP, "loop": LOOP}
