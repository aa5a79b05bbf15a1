"""The element math once per op and math type, and the per-variant glue around it.

Printed once and shared word for word by the C and the CUDA file (their shared headers
define ``OPGEN_INLINE``, ``OPGEN_RESTRICT`` and the ``OPGEN_LOAD_<dtype>``/``OPGEN_STORE_<dtype>``
conversions):

- per math type, a struct of the per-call scalars and its init function, which computes
  the hoisted per-call values in double and rounds each once to the math type;
- per math type, the element function: one element's update over locals, each statement
  followed by its spec line as a comment;
- per variant (the storage dtypes of a call), a step function: load one element of each tensor, call the element
  function, store the results. CUDA adds a vector step over 16-byte vectors.

Per-row ops (per-row states, ``row_mean``) get the two-pass row functions instead of the
element function. The schedule loops that call the steps live in the shared headers.
"""

from __future__ import annotations

from dataclasses import dataclass

from opgen.dtypes import DOUBLE, MathType, Variant
from opgen.escape import c_comment
from opgen.expr.printers.c import CPrinter, c_name
from opgen.expr.tree import Assign, Cond, Expr, Ref, RefKind, VType, children, refs
from opgen.spec.model import OUT, OpSpec
from opgen.kinds import ArgRole
from opgen.targets.abi import ARG, lanes

# The per-call struct's stochastic-rounding key (spec names reach C prefixed: no collision).
SR_KEY = "opgen_key"
# The per-call struct's gradient factor: every load of the gradient is multiplied by it (1
# but where a multi-tensor call clips by the global gradient norm; x * 1 is x, bit for bit)
GRAD_SCALE = "opgen_grad_scale"
# Per-call conditions a C kernel unswitches at most: 2**k copies of each schedule loop.
MAX_SWITCHES = 2


@dataclass(frozen=True)
class Version:
    """One copy of a kernel's schedule loop: its rounding (0: to nearest, 1: stochastic) and
    the value each switch of the element math has in it (see OpCode.switches): a constant,
    or, where the kernel does not unswitch, the member of the thread's scalar struct."""

    sr: int
    switches: tuple[str, ...]


def versions(step: "StepCode", body, unswitch: bool = True) -> list[str]:
    """A kernel's schedule lines ``body(version)``: one loop per rounding where it stores
    into 16-bit types, and with ``unswitch``, per value of each switch. The branches are
    taken once per call; inside each loop the values are constants, so the compiler drops
    the dead side of each condition instead of blending both (a fifth of a clipped update's work)."""
    switches = step.code.switches if unswitch else ()

    def nest(depth: int, chosen: tuple[str, ...]) -> list[str]:
        if depth == len(switches):
            runtime = tuple(f"{LOOP.s}.{name}" for name in step.code.switches[len(chosen):])
            if not step.stochastic:
                return body(Version(0, chosen + runtime))
            return _branch(ArgRole.ROUNDING.value, body(Version(1, chosen + runtime)),
                           body(Version(0, chosen + runtime)))
        return _branch(f"{LOOP.scalars}.{switches[depth]}", nest(depth + 1, chosen + ("1",)),
                       nest(depth + 1, chosen + ("0",)))

    return nest(0, ())


def _branch(test: str, then: list[str], orelse: list[str]) -> list[str]:
    return [f"if ({test}) {{", *(f"    {line}" for line in then), "} else {", *(f"    {line}" for line in orelse), "}"]


@dataclass(frozen=True)
class LoopNames:
    """The names the schedule macros of the shared headers declare and the kernels' step
    calls read: one home for both (the header templates are rendered with these)."""

    scalars: str = "scalars"  # the kernel's per-call struct
    s: str = "s"  # each thread's copy of it
    i: str = "i"  # the element
    gi: str = "gi"  # the gradient's element
    vi: str = "vi"  # CUDA: the vector
    gvi: str = "gvi"  # CUDA: the gradient's vector
    t: str = "t"  # multi: the tensor
    row: str = "row"  # row kernels: the weight's row
    col: str = "col"  # grid kernels: the element's column
    rv: str = "opgen_rv"  # grid kernels: the per-row values, [slot][row], in double
    cv: str = "opgen_cv"  # grid kernels: the per-column values, [slot][col], in double
    nrows: str = "opgen_nrows"  # grid kernels: the weight's rows (per slice)
    ncols: str = "opgen_ncols"  # grid kernels: its columns
    slice: str = "opgen_slice"  # grid kernels: the (rows, cols) slice of a weight (..., rows, cols)
    nslices: str = "opgen_nslices"  # grid kernels: how many
    first_element: str = "opgen_first_element"  # grid kernels: the slice's first element, row and column
    first_row: str = "opgen_first_row"  # (in the weight, the per-row states and the per-column ones)
    first_col: str = "opgen_first_col"
    row_lanes: str = "opgen_row_lanes"  # grid passes: the row's accumulators of its row means, [mean][lane]
    col_acc: str = "opgen_col_acc"  # grid passes: the row block's column sums, [mean][col]
    ahead: str = "ahead"  # lazy: the first element of the row prefetched
    line: str = "line"  # lazy: the cache line prefetched
    sums: str = "opgen_sums"  # two-pass rows: the row_mean sums
    values: str = "opgen_values"  # two-pass rows: the per-row values
    summands: str = "opgen_v"  # reduction passes: one element's summands (and maxima)
    lanes: str = "opgen_lanes"  # reduction passes: a block's accumulators, [total][lane], in double
    lane: str = "opgen_l"  # reduction passes: the element's lane
    totals: str = "opgen_totals"  # reduction passes: every total of the call so far, in double
    accumulated: str = "opgen_acc"  # reduction passes: one pass's accumulators, in double
    i0: str = "opgen_i0"  # reduction passes: the first element of the lanes' step
    j: str = "j"  # block-narrowed loops: the element's place in its block
    block: str = "opgen_block"  # block-narrowed loops: the block's first element
    count: str = "opgen_count"  # block-narrowed loops: the block's elements
    buffers: str = "opgen_buffers"  # block-narrowed loops: each narrowed tensor's results, [k][j]


LOOP = LoopNames()

# Lanes of a reduction pass: each block's elements are added in this many fixed lanes (in
# double), then the lanes pairwise (kernel_common.h.j2, OPGEN_TOTAL_LANES)
TOTAL_LANES = 8


def _value_type(vtype: VType, math: MathType) -> str:
    return CPrinter(math.c_type).c_type(vtype)


class OpCode:
    """Names and shared facts of one op's generated functions."""

    def __init__(self, op: OpSpec) -> None:
        self.op = op
        self.prefix = f"opgen_{op.name}"
        self.uniform = {s.target for s in op.program.prologue}  # values of the scalar struct
        self.written = [name for name, _ in op.stores]
        self.reads = set(op.program.loads)
        self.switches = self._switches()

    def _switches(self) -> tuple[str, ...]:
        """The per-call conditions the element math branches on (``clip_gradient > 0``, a bool
        parameter), as the scalar struct names them, first use first; at most MAX_SWITCHES. The
        element function reads each from a copy of the struct that the step sets from its
        argument: a constant inside an unswitched loop (gcc unswitches no vectorized loop)."""
        if self.op.rows is not None or self.op.grid is not None:
            return ()
        found: dict[str, None] = {}

        def walk(e: Expr) -> None:
            if isinstance(e, Cond) and isinstance(e.test, Ref) and e.test.vtype is VType.BOOL and (
                    e.test.kind in (RefKind.HOISTED, RefKind.PARAM)
                    or (e.test.kind is RefKind.TEMP and e.test.name in self.uniform)):
                found[c_name(e.test.kind, e.test.name)] = None
            for child in children(e):
                walk(child)

        for statement in self.op.program.body:
            walk(statement.expr)
        return tuple(found)[:MAX_SWITCHES]

    def struct(self, math: MathType) -> str:
        return f"{self.prefix}_scalars_{math.c_type}"

    def init(self, math: MathType) -> str:
        return f"{self.prefix}_scalars_{math.c_type}_init"

    def function(self, what: str, suffix: str) -> str:
        return f"{self.prefix}_{what}_{suffix}"

    def touched(self, names) -> list[str]:
        """``names`` in kernel-argument order."""
        names = set(names)
        return [n for n in self.op.kernel_arrays if n in names]

    @property
    def element_arrays(self) -> list[str]:
        return self.touched(self.reads | set(self.written))

    def init_call(self, index: str = "", tensor: str = "0", loads: dict[str, str] | None = None) -> str:
        """The init's arguments in a kernel: its scalars (``index`` into per-tensor tables;
        ``loads``: the per-tensor states' values, read from their arrays), the seed, and the
        tensor's number (with the seed, its stochastic-rounding key)."""
        totals = [LOOP.totals] if self.op.whole_totals else []
        loads = loads or {}
        return ", ".join([*(loads.get(name, f"{ARG}{name}{index}") for name in self.op.kernel_scalars),
                          ArgRole.SEED.value, tensor, ArgRole.GRAD_SCALE.value, *totals])


    def pointer_args(self, names: list[str], index: str = "") -> str:
        return ", ".join(f"{ARG}{name}{index}" for name in names)


class MathCode:
    """One op's functions in one math type: the scalar struct, its init, the element math."""

    def __init__(self, code: OpCode, math: MathType) -> None:
        self.code, self.op, self.math = code, code.op, math
        self.printer = CPrinter(math.c_type, self._body_ref)

    def _body_ref(self, e: Ref) -> str:
        """In element functions, per-call values come from the scalar struct ``s``, passed by
        value: once inlined, its members are loop-invariant locals (a pointer's loads under a
        condition would keep the loop from vectorizing)."""
        if e.kind in (RefKind.PARAM, RefKind.HOISTED, RefKind.TOTAL) or (
                e.kind is RefKind.TEMP and e.name in self.code.uniform):
            return f"s.{c_name(e.kind, e.name)}"
        return c_name(e.kind, e.name)

    # -- the scalar struct and its init --------------------------------------------------
    def fields(self) -> list[tuple[str, str, str]]:
        """(name, type, initialiser) of each per-call value."""
        out = []
        for name, kind in zip(self.op.kernel_scalars, self.op.kernel_scalar_kinds):
            c_type = kind.c_value or self.math.c_type
            out.append((c_name(RefKind.PARAM, name), c_type, f"OPGEN_PER_CALL(({c_type}){ARG}{name})"))
        for s in self.op.program.prologue:
            c_type = _value_type(s.expr.vtype, self.math)
            name = c_name(s.kind, s.target)
            value = name if s.expr.vtype is not VType.REAL else f"({c_type}){name}"
            out.append((name, c_type, f"OPGEN_PER_CALL({value})"))
        if self.op.whole_totals:  # each reduction's value, once its pass has run
            m = self.math.c_type
            out += [(c_name(RefKind.TOTAL, str(t.index)), m, f"OPGEN_PER_CALL(({m}){LOOP.totals}[{t.index}])")
                    for t in self.op.whole_totals]
        out.append((GRAD_SCALE, self.math.c_type, f"OPGEN_PER_CALL(({self.math.c_type}){ArgRole.GRAD_SCALE.value})"))
        # the key of the call's stochastic rounding (whether it rounds so is each kernel's `sr`)
        out.append((SR_KEY, "uint64_t", f"opgen_call_key({ArgRole.SEED.value}, tensor)"))
        return out

    def struct_lines(self) -> list[str]:
        runs: list[tuple[str, list[str]]] = []  # consecutive fields of one type: the initialiser's order
        for name, c_type, _ in self.fields():
            if runs and runs[-1][0] == c_type:
                runs[-1][1].append(name)
            else:
                runs.append((c_type, [name]))
        members = [f"    {c_type} {', '.join(names)};" for c_type, names in runs]
        return ["typedef struct {", *(members or ["    int unused;"]), f"}} {self.code.struct(self.math)};"]

    def init_lines(self) -> list[str]:
        """Per-call values in double (ints and bools as they are), each rounded once."""
        totals = [f"const double *{LOOP.totals}"] if self.op.whole_totals else []
        params = ", ".join([*(f"{k.c_arg} {ARG}{n}" for n, k in zip(self.op.kernel_scalars, self.op.kernel_scalar_kinds)),
                            f"uint64_t {ArgRole.SEED.value}", "int64_t tensor", f"double {ArgRole.GRAD_SCALE.value}",
                            *totals])
        struct = self.code.struct(self.math)
        prologue = CPrinter(DOUBLE.c_type, _prologue_ref)
        lines = [f"OPGEN_INLINE {struct} {self.code.init(self.math)}({params}) {{"]
        for s in self.op.program.prologue:
            lines.append(f"    const {prologue.statement(s, declare=True)} /* {c_comment(s.source)} */")
        values = ", ".join(value for _, _, value in self.fields()) or "0"
        lines += [f"    const {struct} s = {{{values}}};", "    return s;", "}"]
        return lines

    # -- the element function ------------------------------------------------------------
    def element_params(self, names: list[str], written: set[str]) -> list[str]:
        m = self.math.c_type
        return [f"{m} *io_{n}" if n in written else f"{m} {c_name(RefKind.TENSOR, n)}" for n in names]

    def statements(self, statements, declared: set[str]) -> list[str]:
        lines = []
        for s in statements:
            text = self.printer.statement(s, declare=s.target not in declared)
            lines.append(f"    {text} /* {c_comment(s.source)} */")
            declared.add(s.target)
        return lines

    def io_lines(self, names: list[str], written: set[str], reads: set[str]) -> tuple[list[str], list[str]]:
        """Locals of the written tensors read from and stored back through ``io_`` pointers."""
        m = self.math.c_type
        before = [f"    {m} {c_name(RefKind.TENSOR, n)} = *io_{n};" for n in names if n in written and n in reads]
        after = [f"    *io_{n} = {c_name(RefKind.TENSOR, n)};" for n in names if n in written and n != OUT]
        if OUT in names:
            after.append(f"    *io_{OUT} = {c_name(RefKind.TEMP, self.op.output)};")
        return before, after

    def element_lines(self) -> list[str]:
        names, written = self.code.element_arrays, set(self.code.written)
        params = ", ".join([f"const {self.code.struct(self.math)} s", *self.element_params(names, written)])
        before, after = self.io_lines(names, written, self.code.reads)
        body = self.statements(self.op.program.body, set(self.code.reads))
        return [f"OPGEN_INLINE void {self.code.function('element', self.math.c_type)}({params}) {{",
                *before, *body, *after, "}"]

    def lines(self) -> list[str]:
        shared = self.struct_lines() + self.init_lines()
        if self.op.grid is not None:
            from opgen.targets.grid_code import GridCode

            return shared + GridCode(self).math_lines()
        if self.op.rows is not None:
            return shared + RowCode(self).math_lines()
        return shared + TotalsCode(self).math_lines() + (self.element_lines() if self.op.updates else [])


def _prologue_ref(e: Ref) -> str:
    """The per-call values' init reads kernel arguments and the totals so far, in double."""
    if e.kind is RefKind.PARAM:
        return ARG + e.name
    if e.kind is RefKind.TOTAL:
        return f"{LOOP.totals}[{e.name}]"
    return c_name(e.kind, e.name)


@dataclass(frozen=True)
class Memory:
    """How a step addresses one element of each tensor."""

    element: str  # "p_{name}[{index}]" or "x_{name}.v[k]"
    index: dict  # tensor -> index expression ("i" or "gi")

    def of(self, name: str) -> str:
        return self.element.format(name=name, index=self.index.get(name, "i"))


class StepCode:
    """One op's per-variant glue: steps that load, call the element function and store."""

    def __init__(self, code: OpCode, variant: Variant) -> None:
        self.code, self.op, self.variant = code, code.op, variant
        self.math = MathCode(code, self.op.math_type(variant))
        self.grad = self.op.grad.name if self.op.grad is not None else None  # (none in an op that only reduces)

    def storage(self, name: str) -> DType:
        return self.op.storage(name, self.variant)

    def pointer_params(self, names: list[str]) -> list[str]:
        return [f"{'const ' if self.op.is_const(n) else ''}{self.storage(n).c_storage} *OPGEN_RESTRICT p_{n}"
                for n in names]

    def load(self, name: str, memory: Memory) -> str:
        """One element of a tensor in the math type (the gradient's times the call's factor)."""
        value = f"{self.storage(name).load}({memory.of(name)})"
        return f"({value} * s.{GRAD_SCALE})" if name == self.grad else value

    def per_tensor_loads(self, index: str = "") -> dict[str, str]:
        """Each per-tensor state's value before the call, from its one-element array, in double."""
        return {t.name: f"(double){self.storage(t.name).load}(((const {self.storage(t.name).c_storage} *)"
                        f"{ARG}{t.name}{index})[0])" for t in self.op.per_tensor_states}

    def per_tensor_stores(self, index: str = "") -> list[str]:
        """Each per-tensor state's new value (the per-call struct's), into its array, and a
        per-call output into ``out`` (rounded to nearest: one value, no stream of random bits)."""
        stored = [(t.name, self.op.final_value(t.name)) for t in self.op.per_tensor_states]
        if self.op.output_per_call:
            stored.append((OUT, self.op.final_value(self.op.output)))
        return [f"(({self.storage(name).c_storage} *){ARG}{name}{index})[0] = "
                f"{self.storage(name).store}({LOOP.scalars}.{c_name(RefKind.TEMP, final)});" for name, final in stored]

    def call_lines(self, memory: Memory, indent: str, element: str = "i",
                   buffered: tuple[str, ...] = ()) -> list[str]:
        """Load, call the element function, store: one element at ``memory`` (the
        ``buffered`` tensors' results into their block buffers instead, unrounded)."""
        head = "sv" if self.code.switches else "s"
        return self.load_call_store(self.code.function("element", self.math.math.c_type), head, self.code.element_arrays,
                                    set(self.code.written), self.code.reads, memory, indent, zero_grad=True,
                                    element=element, buffered=buffered)

    def store(self, name: str, value: str, element: str) -> str:
        """A tensor's store of ``value`` at element ``element``, with the call's rounding."""
        storage = self.storage(name)
        if not storage.stochastic:
            return f"{storage.store}({value})"
        return f"{storage.round}({value}, sr, opgen_slot_key(s.{SR_KEY}, {self.op.store_slot(name)}), {element})"

    @property
    def stochastic(self) -> bool:
        """Whether a store of this variant's kernels rounds into a 16-bit type: they then run
        their schedule twice over, with sr = 0 and 1 (constants once inlined)."""
        return any(self.storage(n).stochastic for n in self.code.written)

    @property
    def narrowed(self) -> list[str]:
        """The written tensors a block-narrowed loop stores through buffers: those of a type
        the header can narrow a block of float values into (``DType.block_narrowing``), in
        argument order; none where the math is not float."""
        if self.op.rows is not None or self.op.grid is not None or self.math.math.c_type != "float":
            return []
        return [n for n in self.code.element_arrays if n in self.code.written and self.storage(n).block_narrowing]

    def load_call_store(self, function: str, head: str, names: list[str], written: set[str], reads: set[str],
                        memory: Memory, indent: str, zero_grad: bool, element: str = "i",
                        buffered: tuple[str, ...] = ()) -> list[str]:
        """The tensors ``names`` at ``memory`` into locals, ``function(head, ...)`` on them
        (written ones by pointer; with ``zero_grad``, the gradient as the step's flag says),
        the written ones stored back."""
        m = self.math.math.c_type
        lines = [f"{indent}{m} v_{n} = {self.load(n, memory)};" for n in names if n in written and n in reads]
        lines += [f"{indent}{m} v_{n};" for n in names if n in written and n not in reads]
        args = []
        for n in names:
            if n in written:
                args.append(f"&v_{n}")
            elif n == self.grad and zero_grad:
                args.append(f"zero_grad ? {self.math.printer.const_zero()} : {self.load(n, memory)}")
            else:
                args.append(self.load(n, memory))
        lines.append(f"{indent}{function}({head}, {', '.join(args)});")
        lines += [f"{indent}b_{n}[{LOOP.j}] = v_{n};" if n in buffered else
                  f"{indent}{memory.of(n)} = {self.store(n, f'v_{n}', element)};" for n in names if n in written]
        return lines

    def head(self, what: str, index: str, extra: tuple[str, ...] = ()) -> str:
        params = [f"const {self.code.struct(self.math.math)} s", index, "int zero_grad", "int sr",
                  *(f"int sw{k}" for k in range(len(self.code.switches))), *self.pointer_params(self.code.element_arrays),
                  *extra]
        return f"OPGEN_INLINE void {self.code.function(what, self.variant.name)}({', '.join(params)}) {{"

    def switch_lines(self) -> list[str]:
        """The struct the element function reads, with each switch as the step's argument."""
        if not self.code.switches:
            return []
        return [f"    {self.code.struct(self.math.math)} sv = s;",
                *(f"    sv.{name} = sw{k};" for k, name in enumerate(self.code.switches))]

    def step_lines(self) -> list[str]:
        if self.op.grid is not None:
            from opgen.targets.grid_code import GridCode

            return GridCode(self.math).step_lines(self)
        if self.op.rows is not None:
            return RowCode(self.math).step_lines(self)
        if not self.op.updates:  # an op that only reduces: its passes' steps alone
            return TotalsCode(self.math).step_lines(self)
        memory = Memory("p_{name}[{index}]", {self.grad: "gi"})
        lines = [*TotalsCode(self.math).step_lines(self), self.head("step", "int64_t i, int64_t gi"),
                 *self.switch_lines(), *self.call_lines(memory, "    "), "}"]
        narrowed = tuple(self.narrowed)
        if narrowed:  # the same step, its 16-bit results into the block's buffers (C's block-narrowed loops)
            buffers = (f"int64_t {LOOP.j}", *(f"float *OPGEN_RESTRICT b_{n}" for n in narrowed))
            lines += [self.head("bstep", "int64_t i, int64_t gi", buffers), *self.switch_lines(),
                      *self.call_lines(memory, "    ", buffered=narrowed), "}"]
        return lines

    # -- CUDA: 16-byte vectors -------------------------------------------------------------
    @property
    def lanes(self) -> int:
        return lanes(self.op, self.variant)

    def vec(self, name: str) -> str:
        return f"opgen_vec<{self.storage(name).cuda_storage}, {self.lanes}>"

    def vector_step_lines(self) -> list[str]:
        if self.op.rows is not None or self.op.grid is not None or not self.op.updates:
            return []
        names, written, reads = self.code.element_arrays, set(self.code.written), self.code.reads
        lines = [self.head("vstep", "int64_t vi, int64_t gvi"), *self.switch_lines()]
        for n in names:
            source = f"reinterpret_cast<const {self.vec(n)} *>(p_{n})"
            if n == self.grad:
                lines.append(f"    {self.vec(n)} x_{n};")
                lines.append(f"    if (!zero_grad) x_{n} = {source}[gvi];")
            elif n in reads:
                lines.append(f"    {'' if n in written else 'const '}{self.vec(n)} x_{n} = {source}[vi];")
            else:
                lines.append(f"    {self.vec(n)} x_{n};")
        lines += ["#pragma unroll", f"    for (int k = 0; k < {self.lanes}; ++k) {{",
                  *self.call_lines(Memory("x_{name}.v[k]", {}), "        ", f"vi * {self.lanes} + k"), "    }"]
        lines += [f"    reinterpret_cast<{self.vec(n)} *>(p_{n})[vi] = x_{n};" for n in names if n in written]
        return lines + ["}"]

    def aligned(self) -> str:
        """CUDA: whether every touched pointer allows the vector accesses."""
        return " && ".join(f"opgen_aligned({ARG}{n}, {self.lanes * self.storage(n).itemsize})"
                           for n in self.code.element_arrays) or "1"

    def step_call(self, what: str, zero_grad: int, version: Version, table: str = "",
                  pointers: str | None = None) -> str:
        """A schedule's step: the scalar step over (i, gi), CUDA's vector step over (vi, gvi),
        or the block-narrowed step ("bstep") over (i, gi) into the block's buffers. Its arrays:
        the kernel's arguments (``table``: an entry of each pointer table), or the locals
        ``pointers`` names with ``{name}`` (a CUDA multi kernel's typed pointers)."""
        index = f"{LOOP.vi}, {LOOP.gvi}" if what == "vstep" else f"{LOOP.i}, {LOOP.gi}"
        buffers = "".join(f", {LOOP.buffers}[{k}]" for k in range(len(self.narrowed))) if what == "bstep" else ""
        arrays = self.code.pointer_args(self.code.element_arrays, table) if pointers is None else \
            ", ".join(pointers.format(name=n) for n in self.code.element_arrays)
        return f"{self.code.function(what, self.variant.name)}({LOOP.s}, {index}, {zero_grad}, {version.sr}, " \
               f"{''.join(f'{v}, ' for v in version.switches)}{arrays}" \
               f"{f', {LOOP.j}' + buffers if buffers else ''})"

    def narrow_lines(self, table: str = "") -> str:
        """A block-narrowed loop's stores: each buffered tensor's block, rounded to nearest."""
        return " ".join(f"{self.storage(n).narrow}(({self.storage(n).c_storage} *){ARG}{n}{table} + {LOOP.block}, "
                        f"{LOOP.buffers}[{k}], {LOOP.count});" for k, n in enumerate(self.narrowed))

    def narrowing_condition(self) -> str:
        """The preprocessor test of whether this machine narrows every buffered dtype in blocks."""
        names = sorted({self.storage(n).name for n in self.narrowed})
        return " && ".join(f"OPGEN_NARROWS_IN_BLOCKS_{name}" for name in names)


class RowCode:
    """The two-pass row functions of a per-row op (see opgen.expr.rows): pass 1 sums the
    row_mean arguments, the row function computes the per-row values once, pass 2 updates
    the row's elements with them. ``values`` carries the per-row tensors' new values, then
    the per-row temporaries, from the row function to the store and to pass 2."""

    def __init__(self, math: MathCode) -> None:
        self.math, self.code, self.op = math, math.code, math.op
        rows = self.op.rows
        self.row_tensors = [t.name for t in self.op.tensors if t.per_row]
        temps = [s.target for s in rows.row if s.kind is RefKind.TEMP]
        self.values = self.row_tensors + list(dict.fromkeys(temps))
        self.row_written = [n for n in self.row_tensors if any(s.target == n for s in rows.row)]
        self.pass1 = rows.pass1
        self.pass2 = rows.pass2(frozenset({self.op.output}) if self.op.output else frozenset())
        row_names = set(self.row_tensors)
        self.pass1_arrays = self.code.touched(_tensors(self.pass1, rows.reductions) - row_names)
        pass2_names = _tensors(self.pass2) | {s.target for s in self.pass2 if s.kind is RefKind.TENSOR}
        self.pass2_arrays = self.code.touched(pass2_names - row_names)
        self.pass2_written = {s.target for s in self.pass2 if s.kind is RefKind.TENSOR}
        self.pass2_reads = _tensors(self.pass2)

    def value_local(self, name: str) -> str:
        return c_name(RefKind.TENSOR if name in self.row_tensors else RefKind.TEMP, name)

    def math_lines(self) -> list[str]:
        m, struct, rows = self.math.math.c_type, self.code.struct(self.math.math), self.op.rows
        printer = self.math.printer
        fn = lambda what: self.code.function(what, m)  # noqa: E731
        params1 = ", ".join([f"const {struct} s", f"{m} *sums", *self.math.element_params(self.pass1_arrays, set())])
        lines = [f"OPGEN_INLINE void {fn('pass1')}({params1}) {{",
                 *self.math.statements(self.pass1, set(self.pass1_arrays)),
                 *(f"    sums[{k}] += {printer.expr(e)};" for k, e in enumerate(rows.reductions)), "}"]
        row_params = ", ".join([f"const {struct} s", f"const {m} *sums", "int64_t row_len", f"{m} *values",
                                *(f"{m} {c_name(RefKind.TENSOR, n)}" for n in self.row_tensors)])
        lines += [f"OPGEN_INLINE void {fn('row')}({row_params}) {{",
                  *(f"    const {m} {c_name(RefKind.REDUCED, str(k))} = sums[{k}] / ({m})row_len;"
                    for k in range(len(rows.reductions))),
                  *self.math.statements(rows.row, set(self.row_tensors)),
                  *(f"    values[{k}] = {self.value_local(n)};" for k, n in enumerate(self.values)), "}"]
        names = self.pass2_arrays
        params2 = ", ".join([f"const {struct} s", f"const {m} *values",
                             *self.math.element_params(names, self.pass2_written)])
        read_values = {r.name for s in self.pass2 for r in refs(s.expr)}
        before, after = self.math.io_lines(names, self.pass2_written, self.pass2_reads)
        lines += [f"OPGEN_INLINE void {fn('pass2')}({params2}) {{",
                  *(f"    const {m} {self.value_local(n)} = values[{k}];" for k, n in enumerate(self.values)
                    if n in read_values),
                  *before, *self.math.statements(self.pass2, set(self.pass2_reads) | set(self.values)), *after, "}"]
        return lines

    def step_lines(self, step: StepCode) -> list[str]:
        """Per variant: load what each row function reads, call it, store what it wrote."""
        m, d = self.math.math.c_type, step.variant.name
        memory = Memory("p_{name}[{index}]", {step.grad: "gi", **{n: "row" for n in self.row_tensors}})
        scalars = f"const {self.code.struct(self.math.math)} s"

        def function(what: str, params: list[str], pointers: list[str], body: list[str]) -> list[str]:
            signature = ", ".join(params + step.pointer_params(pointers))
            return [f"OPGEN_INLINE void {self.code.function(what, d)}({signature}) {{", *body, "}"]

        def call(what: str, head: str, names: list[str]) -> str:
            return f"    {self.code.function(what, m)}({head}{_more(', '.join(names))});"

        loads = lambda names: [step.load(n, memory) for n in names]  # noqa: E731
        names = self.pass2_arrays
        return [
            *function("pass1", [scalars, "int64_t i", "int64_t gi", f"{m} *sums"], self.pass1_arrays,
                      [call("pass1", "s, sums", loads(self.pass1_arrays))]),
            *function("row", [scalars, f"const {m} *sums", "int64_t row_len", f"{m} *values", "int64_t row"],
                      self.row_tensors, [call("row", "s, sums, row_len, values", loads(self.row_tensors))]),
            *function("row_store", [scalars, f"const {m} *values", "int64_t row", "int sr"], self.row_written,
                      [f"    p_{n}[row] = {step.store(n, f'values[{self.values.index(n)}]', 'row')};"
                       for n in self.row_written]),
            *function("pass2", [scalars, f"const {m} *values", "int64_t i", "int64_t gi", "int sr"], names,
                      step.load_call_store(self.code.function("pass2", m), "s, values", names, self.pass2_written,
                                           self.pass2_reads, memory, "    ", zero_grad=False)),
        ]

    def schedule_args(self, step: StepCode, row_len: str, sr: int = 0) -> list[str]:
        """The row schedule's arguments after the sizes: counts and the four step calls."""
        d = step.variant.name
        fn = lambda what: self.code.function(what, d)  # noqa: E731
        args = self.code.pointer_args
        return [self.math.math.c_type, str(len(self.op.rows.reductions)), str(len(self.values)),
                f"{fn('pass1')}({LOOP.s}, {LOOP.i}, {LOOP.gi}, {LOOP.sums}{_more(args(self.pass1_arrays))})",
                f"{fn('row')}({LOOP.s}, {LOOP.sums}, {row_len}, {LOOP.values}, {LOOP.row}"
                f"{_more(args(self.row_tensors))})",
                f"{fn('row_store')}({LOOP.s}, {LOOP.values}, {LOOP.row}, {sr}{_more(args(self.row_written))})",
                f"{fn('pass2')}({LOOP.s}, {LOOP.values}, {LOOP.i}, {LOOP.gi}, {sr}{_more(args(self.pass2_arrays))})"]


class TotalsCode:
    """The read-only passes of an op's whole-tensor reductions (see opgen.expr.totals): per
    math type and pass, a function computing one element's summands (sums first, then maxima)
    from its tensors' values; per variant and pass, a step that loads them and calls it. The
    schedule macro OPGEN_TOTALS accumulates them."""

    def __init__(self, math: MathCode) -> None:
        self.math, self.code, self.op = math, math.code, math.op
        self.passes = self.op.totals.passes if self.op.totals is not None else ()

    def arrays(self, p) -> list[str]:
        """The tensors a pass reads (nothing is written)."""
        exprs = [s.expr for s in p.statements] + [t.arg for t in p.totals]
        return self.code.touched({r.name for e in exprs for r in refs(e) if r.kind is RefKind.TENSOR})

    def name(self, p, suffix: str) -> str:
        return self.code.function(f"total{p.level}", suffix)

    def math_lines(self) -> list[str]:
        m, struct, printer = self.math.math.c_type, self.code.struct(self.math.math), self.math.printer
        lines: list[str] = []
        for p in self.passes:
            names = self.arrays(p)
            params = ", ".join([f"const {struct} s", f"{m} *{LOOP.summands}", *self.math.element_params(names, set())])
            lines.append(f"OPGEN_INLINE void {self.name(p, m)}({params}) {{")
            lines += [*summand_lines(self.math, p.steps, set(names), p.total_at, p.ordered,
                                     lambda t: printer.expr(t.summand)), "}"]
        return lines

    def step_lines(self, step: StepCode) -> list[str]:
        m, lines = self.math.math.c_type, []
        memory = Memory("p_{name}[{index}]", {step.grad: "gi"})
        switches = [f"int sw{k}" for k in range(len(self.code.switches))]
        head = "sv" if self.code.switches else "s"
        for p in self.passes:
            names = self.arrays(p)
            params = ", ".join([f"const {self.code.struct(self.math.math)} s", "int64_t i", "int64_t gi",
                                f"double (*{LOOP.lanes})[{TOTAL_LANES}]", f"int {LOOP.lane}", *switches,
                                *step.pointer_params(names)])
            loads = ", ".join([LOOP.summands, *(step.load(n, memory) for n in names)])
            lines += [f"OPGEN_INLINE void {self.name(p, step.variant.name)}({params}) {{", *step.switch_lines(),
                      f"    {m} {LOOP.summands}[{len(p.ordered)}];",
                      f"    {self.name(p, m)}({head}, {loads});",
                      *(f"    {self.accumulate(k, t)}" for k, t in enumerate(p.ordered)), "}"]
        return lines

    @staticmethod
    def accumulate(k: int, t) -> str:
        """Summand ``k`` into its lane, as straight-line code (the lanes' loop vectorizes): a
        sum, a sum of squares (squared in double) or a maximum."""
        into, value = f"{LOOP.lanes}[{k}][{LOOP.lane}]", f"(double){LOOP.summands}[{k}]"
        if t.accumulates == "max":
            return f"{into} = opgen_total_max({into}, {value});"
        return f"{into} += {value} * {value};" if t.squared else f"{into} += {value};"

    def schedule_lines(self, step: StepCode, size: str, flush: str, index: str = "", tensor: str = "0") -> list[str]:
        """A kernel's passes, each in its own block: the per-call values so far, the pass,
        its totals finished (OPGEN_FINISH_<how>) into the call's totals. ``index`` and
        ``tensor``: one tensor of a multi-tensor call (its entry of the pointer and value tables)."""
        if not self.passes:
            return []
        m, struct, init = self.math.math.c_type, self.code.struct(self.math.math), self.code.init(self.math.math)
        lines = [f"double {LOOP.totals}[{len(self.op.totals.totals)}] = {{0}};"]
        switches = self.code.switches

        def unswitched(body, depth: int = 0, chosen: tuple[str, ...] = ()) -> list[str]:
            """The pass once per value of each switch (constants in its loop, as the update's)."""
            if depth == len(switches):
                return body(chosen)
            return _branch(f"{LOOP.scalars}.{switches[depth]}", unswitched(body, depth + 1, chosen + ("1",)),
                           unswitched(body, depth + 1, chosen + ("0",)))

        for p in self.passes:
            def schedule(chosen: tuple[str, ...], p=p) -> list[str]:
                call = f"{self.name(p, step.variant.name)}({LOOP.s}, {LOOP.i}, {LOOP.gi}, {LOOP.lanes}, {LOOP.lane}" \
                       f"{_more(', '.join(chosen))}{_more(self.code.pointer_args(self.arrays(p), index))})"
                prefetch = " ".join(f"opgen_prefetch_ahead({ARG}{n}{index}, {LOOP.i0}, {step.storage(n).itemsize});"
                                    for n in self.arrays(p)) or "(void)0"
                return [f"OPGEN_TOTALS({len(p.sums)}, {len(p.maxima)}, {size}, {flush}, {LOOP.accumulated}, "
                        f"{prefetch}, {call});"]

            loads = step.per_tensor_loads(index)
            lines += ["{", f"    const {struct} {LOOP.scalars} = {init}({self.code.init_call(index, tensor, loads)});",
                      f"    double {LOOP.accumulated}[{len(p.totals)}];",
                      *(f"    {line}" for line in unswitched(schedule)),
                      *(f"    {LOOP.totals}[{t.index}] = OPGEN_FINISH_{t.finish}({LOOP.accumulated}[{k}], {size});"
                        for k, t in enumerate(p.ordered)), "}"]
        return lines


def summand_lines(math: MathCode, steps, declared: set[str], marked, order, summand) -> list[str]:
    """A pass's element statements with each reduction's summand where its marker stands in
    the math (a name reassigned after it must not change it): ``marked(marker)`` is the
    reduction, its place in ``order`` its summand's, ``summand(reduction)`` its C expression."""
    lines, pending = [], []
    for s in steps:
        if s.kind is not RefKind.TOTAL:
            pending.append(s)
            continue
        lines += math.statements(pending, declared)
        pending = []
        x = marked(s)
        lines.append(f"    {LOOP.summands}[{order.index(x)}] = {summand(x)}; /* {x.func}: {c_comment(x.source)} */")
    return lines + math.statements(pending, declared)


def _more(text: str) -> str:
    return f", {text}" if text else ""


def _tensors(statements, extra: tuple[Expr, ...] = ()) -> set[str]:
    exprs = [s.expr for s in statements] + list(extra)
    return {r.name for e in exprs for r in refs(e) if r.kind is RefKind.TENSOR}


def math_header(op: OpSpec, relative_to: str = "csrc") -> str:
    """The op's shared header of these lines (csrc/OP_math.h), as the C file (in csrc/) or
    the CUDA file (in cuda/) includes it."""
    name = f"{op.name}_math.h"
    return name if relative_to == "csrc" else f"../csrc/{name}"


def shared_lines(op: OpSpec) -> list[str]:
    """Every line the C and the CUDA file share: per math type, then per variant."""
    code = OpCode(op)
    lines: list[str] = []
    for math in op.math_types:
        lines += MathCode(code, math).lines()
    for variant in op.variants:
        lines += StepCode(code, variant).step_lines()
    return lines
