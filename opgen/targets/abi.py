"""One kernel-ABI description per (op, schedule, variant): the kernel's name, its ordered
arguments with their C types, and its CUDA launch shape.

The C definitions, the cffi cdef, the CUDA definitions and the runtime's calls all come
from these objects: the targets render the signatures from them, and the generated module
carries them as data that the runtime reads. The runtime never re-derives a kernel name,
an argument order or a launch shape. This module imports nothing but the neutral tables,
so the runtime can load it without the compiler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opgen.dtypes import C_INDEX, Variant
from opgen.kinds import ArgRole, Schedule

if TYPE_CHECKING:
    from opgen.spec.model import OpSpec

# Spec-derived argument names are prefixed, so no spec name can collide with n, row_len...
ARG = "arg_"
# CUDA launch shapes: threads per block of the dense kernels, warps (rows in flight) per
# block of the row kernels, and the grid caps (blocks per multiprocessor).
DENSE_BLOCK = 512
ROWS_PER_BLOCK = 8
WARP = 32
DENSE_BLOCKS_PER_SM = 8
ROW_BLOCKS_PER_SM = 32
VECTOR_BYTES = 16  # CUDA vector loads and stores
# The CUDA reduction passes: a fixed grid (the same partition of the elements, so the same
# bits, on any GPU), each block's threads reducing a contiguous chunk in a fixed tree.
TOTAL_BLOCKS = 512
TOTAL_THREADS = 256
# The CUDA multi-tensor kernels: every tensor cut into chunks of this many elements, one
# block a chunk (grid-stride over the chunk table), the tensors' pointers and values in
# device tables: one launch for the whole call
MULTI_CHUNK = 1 << 16
# Grid ops (a weight's (rows, cols) slices with per-row and per-column values): their reduction passes cut the
# rows into blocks fixed by the shape alone (so the same bits on any thread count), of at
# least GRID_BLOCK_ELEMENTS elements and at most GRID_MAX_BLOCKS blocks
GRID_BLOCK_ELEMENTS = 1 << 13
GRID_MAX_BLOCKS = 64
# ... and fewer where the weight is wide: each block keeps its own column sums, and the blocks
# together at most this many doubles per column mean (32 MiB), or one block's
GRID_PARTIALS = 1 << 22
# ... and a weight's small slices (..., rows, cols) run side by side, one per thread, each with
# its passes' row and column sums in a scratch of at most this many doubles (32 KiB, on the
# thread's stack)
GRID_SLICE_SCRATCH = 1 << 12


def grid_block_rows(rows: int, cols: int) -> int:
    """Rows per block of a grid op's reduction passes, from the weight's shape alone."""
    blocks = max(1, min(GRID_MAX_BLOCKS, GRID_PARTIALS // max(cols, 1)))
    return max(1, -(-GRID_BLOCK_ELEMENTS // max(cols, 1)), -(-rows // blocks))


@dataclass(frozen=True)
class GridLayout:
    """A grid kernel's workspace of doubles, one array per call, for ``slices`` slices of
    ``rows`` x ``cols`` (a weight of shape (..., rows, cols)): each slice's per-row values
    ``[slices][row_slots][rows]`` and per-column values ``[slices][col_slots][cols]``; one
    slice's pass at a time: its row sums ``[row_sums][rows]``, each row block's column sums
    ``[blocks][col_sums][cols]`` and their totals ``[col_sums][cols]``; per slice, its pass's
    whole totals ``[slices][totals]`` (then summed over the slices in order) and the totals
    over its rows and columns ``[slices][totals]``. The C kernel's pointers and the runtime's
    allocation both come from ``parts``."""

    row_slots: int
    col_slots: int
    row_sums: int
    col_sums: int
    whole: int = 0  # whole totals of one pass: CUDA keeps each row block's ([whole][GRID_MAX_BLOCKS])
    totals: int = 0  # every whole total of the op: CUDA's kernels hand them on in the workspace

    def parts(self, rows, cols, blocks, slices=1) -> tuple[tuple[str, object], ...]:
        """(part, its length in doubles), in order; ``rows``, ``cols``, ``blocks`` and
        ``slices`` are numbers (the runtime) or C expressions (the kernel), and so are the
        lengths."""
        def times(*factors):
            if all(isinstance(f, int) for f in factors):
                return math.prod(factors)
            return " * ".join(f"({f})" for f in factors)
        return (("row_values", times(slices, self.row_slots, rows)), ("col_values", times(slices, self.col_slots, cols)),
                ("row_sums", times(self.row_sums, rows)), ("col_partials", times(blocks, self.col_sums, cols)),
                ("col_sums", times(self.col_sums, cols)), ("block_totals", self.whole * GRID_MAX_BLOCKS),
                ("passed_totals", self.totals), ("slice_parts", times(slices, self.totals)),
                ("slice_totals", times(slices, self.totals)))

    def size(self, rows: int, cols: int, slices: int = 1) -> int:
        blocks = -(-rows // grid_block_rows(rows, cols))
        return max(1, sum(length for _, length in self.parts(rows, cols, blocks, slices)))


@dataclass(frozen=True)
class Arg:
    """One kernel argument: its role, C type, and the tensor or scalar it carries."""

    role: ArgRole
    c_type: str  # as written in the C signature and the cdef (CUDA spells tensors typed)
    source: str = ""  # the tensor ("out" for the output) or scalar it carries
    numpy: str = ""  # NumPy's name of a scalar's type, for device launches and packed lists
    const: bool = False  # the kernel only reads the data
    cuda: bool = True  # the CUDA kernel takes it too

    @property
    def name(self) -> str:
        return ARG + self.source if self.source else self.role.value

    @property
    def element_c_type(self) -> str:
        """What a pointer argument points to: ``double`` for ``const double *``."""
        return self.c_type.removeprefix("const ").removesuffix(" *").removesuffix("*").strip()

    def declaration(self, c_type: str | None = None) -> str:
        c_type = c_type or self.c_type
        return f"{c_type}{'' if c_type.endswith('*') else ' '}{self.name}"


@dataclass(frozen=True)
class Launch:
    """A CUDA launch: ``min(ceil(work / per_block), blocks_per_sm * SMs)`` blocks of ``block``
    threads, where ``work`` is the value of the argument with role ``work``."""

    block: tuple[int, int]
    work: ArgRole
    per_block: int  # work items one block covers in one pass
    blocks_per_sm: int

    def grid(self, work: int, sm_count: int) -> int:
        return max(1, min(math.ceil(work / self.per_block), self.blocks_per_sm * sm_count))


@dataclass(frozen=True)
class KernelABI:
    op: str
    schedule: Schedule
    dtype: str  # the call's dtype (the weight's)
    states: str  # the dtype of the states the spec does not fix (the weight's, or another)
    math: str  # NumPy's name of the math type
    name: str
    args: tuple[Arg, ...]
    launch: Launch | None  # None: the kernel has no CUDA version (multi)
    lanes: int = 1  # CUDA elements per vector access
    # CUDA, an op with whole-tensor reductions: the kernels of its read-only passes, launched
    # before this one on TOTAL_BLOCKS blocks of TOTAL_THREADS (a pass per level), and the one
    # that stores its per-tensor states after it (one block), all with this kernel's CUDA
    # arguments; ``totals``: the partial totals' rows (the op's reductions)
    passes: tuple[str, ...] = ()
    store: str | None = None
    totals: int = 0
    grid: GridLayout | None = None  # a grid kernel's workspace
    # CUDA, a grid kernel: the kernels launched before it, in order, each with this kernel's
    # CUDA arguments on TOTAL_THREADS threads: (name, one block per row block of the passes
    # (True) or one block (False)); ``store`` then stores its per-row and per-column states
    grid_stages: tuple[tuple[str, bool], ...] = ()

    @property
    def device_kernels(self) -> tuple[str, ...]:
        """Every CUDA kernel a call of this one launches, in order (none without a launch)."""
        if self.launch is None:
            return ()
        return (*self.passes, *(name for name, _ in self.grid_stages), self.name) + ((self.store,) if self.store else ())

    @property
    def c_parameters(self) -> str:
        return ", ".join(a.declaration() for a in self.args)

    @property
    def cuda_args(self) -> tuple[Arg, ...]:
        """The CUDA kernels' arguments: the C kernel's that CUDA takes, then, with passes,
        the partial totals' workspace, and in a multi-tensor kernel the chunk table."""
        extra: tuple[Arg, ...] = ()
        if self.passes or self.store:
            extra = (Arg(ArgRole.PARTIALS, "double *"),)
        elif self.schedule is Schedule.MULTI and self.launch is not None:
            extra = (Arg(ArgRole.NCHUNKS, C_INDEX), Arg(ArgRole.CHUNKS, f"const {C_INDEX} *"))
        return tuple(a for a in self.args if a.cuda) + extra


def _head(schedule: Schedule) -> tuple[Arg, ...]:
    index = C_INDEX
    if schedule is Schedule.DENSE:
        return (Arg(ArgRole.SIZE, index),)
    if schedule is Schedule.MULTI:
        return (Arg(ArgRole.COUNT, index), Arg(ArgRole.SIZES, f"const {index} *"))
    if schedule is Schedule.GRID:
        # (CUDA takes 2-D weights only: its stages keep one slice's values)
        return (Arg(ArgRole.NSLICES, index, cuda=False), Arg(ArgRole.NROWS, index), Arg(ArgRole.ROW_LEN, index),
                Arg(ArgRole.BLOCK_ROWS, index), Arg(ArgRole.WORKSPACE, "double *"))
    rows = (Arg(ArgRole.NNZ, index),) if schedule is Schedule.LAZY else (Arg(ArgRole.NROWS, index),)
    middle = () if schedule is Schedule.LAZY else (Arg(ArgRole.NNZ, index),)
    return rows + (Arg(ArgRole.ROW_LEN, index),) + middle + (Arg(ArgRole.INDICES, f"const {index} *"),)


def _arguments(op: "OpSpec", schedule: Schedule) -> tuple[Arg, ...]:
    if schedule is Schedule.NORMS:
        return (*_head(Schedule.MULTI), Arg(ArgRole.TENSOR_TABLE, "const void *const *", op.grad.name, const=True,
                                            cuda=False), Arg(ArgRole.SUMS, "double *", cuda=False),
                Arg(ArgRole.FLUSH, "int", cuda=False))
    table = schedule is Schedule.MULTI
    cuda_table = table and _multi_on_device(op)  # (device tables of the tensors' pointers and values)
    args = list(_head(schedule))
    for name in op.kernel_arrays:
        const = op.is_const(name)
        if table:
            c_type = f"{'const ' if const else ''}void *const *"
            args.append(Arg(ArgRole.TENSOR_TABLE, c_type, name, const=const, cuda=cuda_table))
        else:
            args.append(Arg(ArgRole.TENSOR, f"{'const ' if const else ''}void *", name, const=const))
    per_tensor = {t.name for t in op.per_tensor_states}  # passed as arrays: the kernel loads and stores them
    for name, kind in zip(op.kernel_scalars, op.kernel_scalar_kinds):
        if name in per_tensor:
            continue
        if table:
            args.append(Arg(ArgRole.SCALAR_TABLE, f"const {kind.c_arg} *", name, kind.numpy_arg, cuda=cuda_table))
        else:
            args.append(Arg(ArgRole.SCALAR, kind.c_arg, name, kind.numpy_arg))
    args.append(Arg(ArgRole.GRAD_SCALE, "double", numpy="float64"))
    args += [Arg(ArgRole.ROUNDING, "int", numpy="int32"), Arg(ArgRole.SEED, "uint64_t", numpy="uint64")]
    args.append(Arg(ArgRole.FLUSH, "int", cuda=False))
    return tuple(args)


def lanes(op: "OpSpec", variant: Variant) -> int:
    """CUDA elements per vector: 16 bytes of the widest element type the math touches."""
    touched = set(op.program.loads) | {name for name, _ in op.stores}
    widest = max((op.storage(name, variant).itemsize for name in op.kernel_arrays if name in touched),
                 default=op.storage(op.weight.name, variant).itemsize)  # (an op that only reduces stores none)
    return VECTOR_BYTES // widest


def _multi_on_device(op: "OpSpec") -> bool:
    """Whether the op's multi-tensor calls have one CUDA kernel: an update with no reductions
    or per-tensor states (those go tensor by tensor, each with its passes)."""
    return op.has_multi and not op.reduction and op.totals is None and not op.per_tensor_states


def _launch(op: "OpSpec", schedule: Schedule, variant: Variant) -> Launch | None:
    if schedule is Schedule.MULTI and _multi_on_device(op):  # a grid-stride loop over the chunks
        return Launch((DENSE_BLOCK, 1), ArgRole.NCHUNKS, 1, DENSE_BLOCKS_PER_SM)
    if schedule is Schedule.GRID:  # the update: a grid-stride loop over the elements, one each
        return Launch((DENSE_BLOCK, 1), ArgRole.SIZE, DENSE_BLOCK, DENSE_BLOCKS_PER_SM)
    if schedule in (Schedule.MULTI, Schedule.NORMS) or op.reduction:
        return None  # (an op that only reduces runs on the host; a reducing op's tensors go one by one)
    if schedule is Schedule.DENSE:
        return Launch((DENSE_BLOCK, 1), ArgRole.SIZE, DENSE_BLOCK * lanes(op, variant), DENSE_BLOCKS_PER_SM)
    work = ArgRole.NNZ if schedule is Schedule.LAZY else ArgRole.NROWS
    return Launch((WARP, ROWS_PER_BLOCK), work, ROWS_PER_BLOCK, ROW_BLOCKS_PER_SM)


def kernel_name(op: "OpSpec", schedule: Schedule, variant: Variant) -> str:
    return f"opgen_{op.name}_{schedule.value}_{variant.name}"


def kernel(op: "OpSpec", schedule: Schedule, variant: Variant) -> KernelABI:
    name, launch = kernel_name(op, schedule, variant), _launch(op, schedule, variant)
    cuda_passes = launch is not None and op.totals is not None
    passes = tuple(f"{name}_total{p.level}" for p in op.totals.passes) if cuda_passes else ()
    store = f"{name}_store" if launch is not None and (op.per_tensor_states or schedule is Schedule.GRID) else None
    grid = schedule is Schedule.GRID
    return KernelABI(op.name, schedule, variant.dtype.name, variant.states.name, op.math_type(variant).name, name,
                     _arguments(op, schedule), launch, lanes(op, variant), passes, store,
                     len(op.totals.totals) if op.totals is not None and launch is not None else 0,
                     grid_layout(op) if grid else None, grid_stages(op, name) if grid else ())


def grid_layout(op: "OpSpec") -> GridLayout:
    g = op.grid
    return GridLayout(g.row_slots, g.col_slots, max((len(p.row_means) for p in g.passes), default=0),
                      max((len(p.col_means) for p in g.passes), default=0),
                      max((len(p.totals) for p in g.passes), default=0), len(g.totals))


def grid_stages(op: "OpSpec", name: str) -> tuple[tuple[str, bool], ...]:
    """A grid op's CUDA kernels before its update: per level, its pass (a block per row
    block) if it has one, then its phase (one block: the pass's results finished, the
    reductions of per-row and per-column values, the row and column statements)."""
    stages: list[tuple[str, bool]] = []
    for level in range(op.grid.levels + 1):
        if op.grid.pass_at(level) is not None:
            stages.append((f"{name}_total{level}", True))
        stages.append((f"{name}_phase{level}", False))
    return tuple(stages)


def schedules(op: "OpSpec", variant: Variant) -> tuple[Schedule, ...]:
    """The kernels one variant gets: the op's schedules, and with a multi kernel, the norms
    of its gradients (which have the weight's dtype: one per weight dtype)."""
    norms = (Schedule.NORMS,) if op.has_multi and op.grad is not None and variant.states == variant.dtype else ()
    return op.schedules + norms


def kernels(op: "OpSpec") -> tuple[KernelABI, ...]:
    """Every kernel of the op: each variant, each schedule."""
    return tuple(kernel(op, s, v) for v in op.variants for s in schedules(op, v))
