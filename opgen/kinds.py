"""The enumerations shared by the compiler and the runtime (it imports nothing of opgen).

Each is a ``str`` enum: a member equals its spec spelling (``TensorRole.STATE == "state"``),
so generated modules, messages and docs use the plain words.
"""

from __future__ import annotations

import enum


OUT = "out"  # the name of the array that receives an op's result (`out=`), and its kernel argument


class TensorRole(str, enum.Enum):
    WEIGHT = "weight"  # the weight being updated; its new value goes to `out`
    GRAD = "grad"  # the gradient: read-only, dense or row-sparse
    STATE = "state"  # optimizer state, updated in place
    SCALAR = "scalar"  # a one-element input (array or number), read once per call
    INPUT = "input"  # another read-only array of the weight's shape (a master copy the op only reads)

    def __str__(self) -> str:
        return self.value


class Schedule(str, enum.Enum):
    """How a kernel walks memory; each schedule is one loop in the shared headers."""

    DENSE = "dense"  # every element of one tensor
    MULTI = "multi"  # every element of many tensors, one parallel region (C only)
    LAZY = "lazy"  # only the rows a row-sparse gradient lists
    STANDARD = "standard"  # every row; rows the gradient lacks with a zero gradient
    # each gradient's sum of squares, before a multi-tensor update clipped by the global
    # gradient norm (C only; ops with a multi kernel); not an update: no spec names it
    NORMS = "norms"
    # every element of one 2-D weight, rows by columns, with its per-row and per-column
    # values (factored second moments) in a workspace; C only
    GRID = "grid"

    def __str__(self) -> str:
        return self.value


class ArgRole(str, enum.Enum):
    """What a kernel argument carries: the runtime fills each from the call."""

    SIZE = "size"  # elements of the tensor
    NSLICES = "nslices"  # grid: the weight's (rows, cols) slices, the product of its leading dimensions
    NROWS = "nrows"  # rows of the weight (a grid op's: of each slice)
    ROW_LEN = "row_len"  # elements per row
    NNZ = "nnz"  # rows of the row-sparse gradient
    INDICES = "indices"  # its row indices (int64)
    COUNT = "count"  # tensors of a multi-tensor call
    SUMS = "sums"  # the norms kernel's results: one double per tensor
    SIZES = "sizes"  # their element counts (int64[count])
    TENSOR = "tensor"  # a tensor's data (`source` names it; `out` is the output)
    TENSOR_TABLE = "tensor_table"  # one data pointer per tensor of a multi-tensor call
    SCALAR = "scalar"  # a scalar input or a parameter the math reads (`source` names it)
    SCALAR_TABLE = "scalar_table"  # one value per tensor of a multi-tensor call
    GRAD_SCALE = "grad_scale"  # every gradient element is multiplied by it (clipping by a global norm)
    ROUNDING = "rounding"  # 0: to nearest even; 1: stochastic (16-bit stores)
    SEED = "seed"  # the stochastic rounding's seed (uint64)
    FLUSH = "flush_denormal"  # the C kernels' flush-to-zero flag
    BLOCK_ROWS = "block_rows"  # grid: rows per block of the reduction passes (fixed by the shape alone)
    WORKSPACE = "workspace"  # grid: the per-row and per-column values and partial sums (double[])
    PARTIALS = "partials"  # CUDA: the reduction passes' per-block partial totals (double[totals][blocks])
    CHUNKS = "chunks"  # CUDA multi: per chunk of MULTI_CHUNK elements, its tensor and first element (int64 pairs)
    NCHUNKS = "nchunks"  # CUDA multi: how many chunks

    def __str__(self) -> str:
        return self.value
