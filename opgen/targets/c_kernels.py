"""OpSpec -> context of the C kernel templates (op.c.j2, op.cdef.j2, kernel_common.h.j2).

Every kernel is one call of a schedule macro of the shared header (kernel_common.h.j2)
with the op's step function; the signatures come from the kernel ABI (opgen.targets.abi).
All kernels work in place on the weight buffer:
- ``dense``: one fused pass over ``n`` elements;
- ``multi``: many tensors' elements in one parallel region;
- ``lazy``: only the rows listed in a row-sparse gradient's indices;
- ``standard``: every row, rows absent from the gradient with a zero gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

from opgen.dtypes import DTYPE_NAMES, PARAM_KINDS, ParamType
from opgen.kinds import ArgRole, Schedule, TensorRole
from opgen.spec.model import OpSpec
from opgen.targets import abi
from opgen.targets.grid_code import GridCode
from opgen.targets.element import (LOOP, TOTAL_LANES, OpCode, RowCode, StepCode, TotalsCode, Version, math_header,
                                   shared_lines, versions)

# Below this many elements per thread, a parallel region costs more than it saves.
MIN_ELEMENTS_PER_THREAD = 1 << 13
# A small tensor's fixed cost in a reducing multi-tensor kernel (its passes' set-up, its
# per-call values twice), as elements of work: it weighs the small tensors' loop's threads.
TENSOR_COST_ELEMENTS = 1 << 10
# Row kernels touch scattered rows: latency-bound, so they go parallel much sooner.
MIN_ROW_ELEMENTS_PER_THREAD = 1 << 12
# Rows prefetched ahead of the one being updated, by the lazy row kernels.
PREFETCH_ROWS = 8
# Thread ranges start on multiples of this many elements (a 64-byte cache line of float32,
# whole lines of float16 and float64 too).
CHUNK_ALIGN = 16
# Elements per block of the block-narrowed loops: each narrowed tensor's float buffer of
# this many (2 KiB) stays in L1 between the step loop and the narrowing.
NARROW_BLOCK = 512


def _names(kernel: abi.KernelABI) -> dict[ArgRole, str]:
    return {a.role: a.name for a in kernel.args if not a.source}


def _with_block_narrowing(step: StepCode, version: Version, plain: str, blocked: str) -> list[str]:
    """A loop, and where its results go to 16-bit types with rounding to nearest, also its
    block-narrowed form (results buffered, a block narrowed at a time), which the
    preprocessor takes where the machine has the conversion in hardware."""
    if version.sr or not step.narrowed:
        return [plain]
    return [f"#if {step.narrowing_condition()}", blocked, "#else", plain, "#endif"]


def dense_call(step: StepCode, size: str, flush: str, version: Version, table: str = "") -> list[str]:
    """One dense loop (and its block-narrowed form)."""
    return _with_block_narrowing(
        step, version, f"OPGEN_DENSE({size}, {flush}, {step.step_call('step', 0, version, table)});",
        f"OPGEN_DENSE_BLOCKS({size}, {flush}, {len(step.narrowed)}, {step.step_call('bstep', 0, version, table)}, "
        f"{step.narrow_lines(table)});")


def multi_call(step: StepCode, count: str, sizes: str, flush: str, setup: str, version: Version) -> list[str]:
    """The multi-tensor loop (and its block-narrowed form)."""
    table = f"[{LOOP.t}]"
    return _with_block_narrowing(
        step, version, f"OPGEN_MULTI({count}, {sizes}, {flush}, {setup}, {step.step_call('step', 0, version, table)});",
        f"OPGEN_MULTI_BLOCKS({count}, {sizes}, {flush}, {len(step.narrowed)}, {setup}, "
        f"{step.step_call('bstep', 0, version, table)}, {step.narrow_lines(table)});")


def schedule_call(op: OpSpec, kernel: abi.KernelABI, step: StepCode) -> list[str]:
    """The kernel's body: its scalar struct, then one schedule macro of the shared header
    (once per version: rounding, and the switches of the element math; see versions)."""
    code, n = step.code, _names(kernel)
    struct, init = code.struct(step.math.math), code.init(step.math.math)
    flush = n[ArgRole.FLUSH]
    if kernel.schedule is Schedule.NORMS:
        grad = step.storage(op.grad.name)
        return [f"OPGEN_NORMS({n[ArgRole.COUNT]}, {n[ArgRole.SIZES]}, {abi.ARG}{op.grad.name}, {grad.c_storage}, "
                f"{grad.load}, {n[ArgRole.SUMS]}, {flush});"]
    if kernel.schedule is Schedule.GRID:
        return GridCode(step.math).schedule_lines(step, n)
    if kernel.schedule is Schedule.MULTI and (op.totals is not None or op.per_tensor_states):
        # whole-tensor reductions and per-tensor states are each tensor's own: each tensor in
        # turn, its passes, its per-tensor values, then its update (each a parallel region),
        # in one C call
        size, index = f"{n[ArgRole.SIZES]}[{LOOP.t}]", f"[{LOOP.t}]"
        passes = TotalsCode(step.math).schedule_lines(step, size, flush, index, LOOP.t)
        body = [*passes, f"const {struct} {LOOP.scalars} = {init}({code.init_call(index, LOOP.t, step.per_tensor_loads(index))});",
                *step.per_tensor_stores(index),
                *(versions(step, lambda v: dense_call(step, size, flush, v, index)) if op.updates else [])]
        count, sizes = n[ArgRole.COUNT], n[ArgRole.SIZES]
        small = f"{sizes}[{LOOP.t}] < 2 * OPGEN_MIN_ELEMENTS_PER_THREAD"
        # a tensor too small for two threads runs on one: such tensors go to the threads one
        # tensor each (their nested regions inactive), the bigger ones in turn with every
        # thread; a tensor's results do not depend on which thread or how many compute them.
        # The body is written out twice on purpose: one loop under an (inactive) parallel
        # region for both kinds makes libgomp build a new team for every nested region of a
        # big tensor (a trust-ratio update over GPT-2's 148 tensors at 7M: 3.6 -> 13.5 ms a call)
        return [f"int64_t opgen_small = 0;",
                f"for (int64_t {LOOP.t} = 0; {LOOP.t} < {count}; ++{LOOP.t}) {{",
                f"    if ({small}) {{ opgen_small += {sizes}[{LOOP.t}] + OPGEN_TENSOR_COST_ELEMENTS; continue; }}",
                *(f"    {line}" for line in body), "}",
                "const int opgen_nt = opgen_threads_for(opgen_small, OPGEN_MIN_ELEMENTS_PER_THREAD);",
                '_Pragma("omp parallel for schedule(dynamic, 4) num_threads(opgen_nt) if (opgen_nt > 1)")',
                f"for (int64_t {LOOP.t} = 0; {LOOP.t} < {count}; ++{LOOP.t}) {{",
                f"    if (!({small})) continue;",
                *(f"    {line}" for line in body), "}"]
    if kernel.schedule is Schedule.MULTI:  # the struct is per tensor: switches read at run time
        setup = f"const {struct} {LOOP.s} = {init}({code.init_call(f'[{LOOP.t}]', LOOP.t)})"
        return versions(step, lambda v: multi_call(step, n[ArgRole.COUNT], n[ArgRole.SIZES], flush, setup, v),
                        unswitch=False)
    head = f"const {struct} {LOOP.scalars} = {init}({code.init_call(loads=step.per_tensor_loads())});"
    rows = f"{n.get(ArgRole.NNZ)}, {n.get(ArgRole.ROW_LEN)}, {n.get(ArgRole.INDICES)}"
    if kernel.schedule is Schedule.DENSE:
        passes = TotalsCode(step.math).schedule_lines(step, n[ArgRole.SIZE], flush)
        return [*passes, head, *step.per_tensor_stores(),
                *(versions(step, lambda v: dense_call(step, n[ArgRole.SIZE], flush, v)) if op.updates else [])]
    if op.rows is not None:
        def row_schedule(v: Version) -> list[str]:
            args = RowCode(step.math).schedule_args(step, n[ArgRole.ROW_LEN], v.sr)
            return [f"OPGEN_LAZY_ROWS({args[0]}, {args[1]}, {args[2]}, {rows}, {flush}, {', '.join(args[3:])});"]
        return [head, *versions(step, row_schedule)]
    if kernel.schedule is Schedule.LAZY:
        fetched = [name for name in code.element_arrays if name != op.grad.name]
        prefetch = " ".join(f"opgen_prefetch_line({abi.ARG}{name}, {LOOP.ahead}, {LOOP.line}, {n[ArgRole.ROW_LEN]}, "
                            f"{step.storage(name).itemsize});" for name in fetched)
        widest = max((step.storage(name).itemsize for name in fetched), default=0)
        return [head, *versions(step, lambda v: [
            f"OPGEN_LAZY({rows}, {flush}, {widest}, {prefetch or '(void)0'}, {step.step_call('step', 0, v)});"])]
    return [head, *versions(step, lambda v: [
        f"OPGEN_STANDARD({n[ArgRole.NROWS]}, {rows}, {flush}, {step.step_call('step', 0, v)}, "
        f"{step.step_call('step', 1, v)});"])]


# How the fast path reads a parameter of each type (opgen_fast_<reader> in kernel_common.h.j2).
FAST_READERS = {ParamType.FLOAT: "float", ParamType.INT: "int", ParamType.BOOL: "bool"}


@dataclass(frozen=True)
class FastNames:
    """The C names the fast path's header code, the generated fast functions and their
    kernel calls share (kernel_common.h.j2, op.c.j2 and fast_context render them from here)."""

    config: str = "opgen_fast_config"  # the module's array type and dtype objects
    data: str = "data"  # each tensor's data pointer
    dtypes: str = "dtypes"  # each tensor's dtype object
    size: str = "size"  # the elements of every tensor
    flush: str = "flush"  # the flush-to-zero flag


FAST = FastNames()


def _plain_layout(op: OpSpec, kernel: abi.KernelABI) -> bool:
    """The dense kernel takes the call as it comes: the size, the tensors in order, the
    math's parameters in order, then the gradient factor, rounding, seed and flag."""
    roles = tuple((a.role, a.source) for a in kernel.args)
    return roles == ((ArgRole.SIZE, ""), *((ArgRole.TENSOR, t.name) for t in op.tensors),
                     *((ArgRole.SCALAR, p.name) for p in op.math_params),
                     (ArgRole.GRAD_SCALE, ""), (ArgRole.ROUNDING, ""), (ArgRole.SEED, ""), (ArgRole.FLUSH, ""))


def fast_context(op: OpSpec) -> dict | None:
    """The per-call fast path in C of a plain op with its own public call (kernel_common.h.j2,
    opgen_fast_*): its arguments are the call's tensors, every parameter in order, then the
    flush flag; each dense variant is one dtype test and one kernel call."""
    dense = [(v, abi.kernel(op, Schedule.DENSE, v)) for v in op.variants if Schedule.DENSE in abi.schedules(op, v)]
    if not op.plain_call or op.multi is not None or not dense or not all(_plain_layout(op, k) for _, k in dense):
        return None
    prefix = f"opgen_{op.name}_fast"
    tensors = len(op.tensors)
    params = [{"reader": FAST_READERS[p.type], "c_type": PARAM_KINDS[p.type].c_arg, "var": f"{abi.ARG}{p.name}",
               "position": tensors + k} for k, p in enumerate(op.params)]
    variants = []
    for variant, kernel in dense:
        tests = [f"{FAST.dtypes}[{k}] == {FAST.config}.dtype[OPGEN_DT_{op.storage(t.name, variant).name}]"
                 for k, t in enumerate(op.tensors)]
        values = [f"{abi.ARG}{p.name}" for p in op.math_params]
        data = [f"{FAST.data}[{k}]" for k in range(tensors)]
        variants.append({"test": " && ".join(tests),
                         "call": f"{kernel.name}({FAST.size}, {', '.join(data + values)}, 1.0, 0, 0, "
                                 f"(int)({FAST.flush} != 0))"})
    weight = next(k for k, t in enumerate(op.tensors) if t.role is TensorRole.WEIGHT)
    return {"function": prefix, "definition": f"{prefix}_definition", "tensors": tensors, "params": params,
            "arguments": tensors + len(op.params) + 1, "flush_position": tensors + len(op.params), "weight": weight,
            "variants": variants, "names": FAST}


def context(op: OpSpec) -> dict:
    code = OpCode(op)
    kernels = []
    for variant in op.variants:
        step = StepCode(code, variant)
        for schedule in abi.schedules(op, variant):
            kernel = abi.kernel(op, schedule, variant)
            kernels.append({"name": kernel.name, "parameters": kernel.c_parameters, "math": kernel.math,
                            "body": schedule_call(op, kernel, step)})
    return {"op": op.name, "math_header": math_header(op), "kernels": kernels, "fast": fast_context(op),
            "register": fast_register(op)}


def fast_register(op: OpSpec) -> str:
    """The C function that hands the op's fast paths to the runtime's registry (runtime/fast.py)."""
    return f"opgen_{op.name}_fast_register"


def math_context(op: OpSpec) -> dict:
    """The shared header: element functions per math type, step functions per variant."""
    return {"op": op.name, "guard": f"OPGEN_{op.name.upper()}_MATH_H", "shared": shared_lines(op)}


def common_context() -> dict:
    return {"loop": LOOP, "min_elements_per_thread": MIN_ELEMENTS_PER_THREAD, "chunk_align": CHUNK_ALIGN,
            "narrow_block": NARROW_BLOCK, "dtype_names": DTYPE_NAMES, "fast": FAST,
            "total_lanes": TOTAL_LANES, "tensor_cost_elements": TENSOR_COST_ELEMENTS,
            "min_row_elements_per_thread": MIN_ROW_ELEMENTS_PER_THREAD, "prefetch_rows": PREFETCH_ROWS,
            "grid_max_blocks": abi.GRID_MAX_BLOCKS,
            "grid_slice_scratch": abi.GRID_SLICE_SCRATCH}
