"""The C functions of a grid op (opgen.expr.grid): a weight's (rows, cols) slices with per-row and
per-column values.

Per math type (shared by the C and the CUDA file, like the rest of opgen.targets.element):

- per element pass, a function computing one element's summands from its values (the
  element tensors', the per-row and per-column ones of its row and column);
- per level and shape, a function computing one row's (or column's) statements of that
  level, reading and writing the slots of the call's workspace;
- the update's element function.

Per variant, the steps that load those values from memory, call them and accumulate or
store; the kernel body runs them through the grid schedules of the shared header
(OPGEN_GRID_TOTALS, OPGEN_GRID_EACH, OPGEN_GRID_UPDATE), level by level.
"""

from __future__ import annotations

from opgen.expr.grid import GridPass, Shape
from opgen.expr.printers.c import c_name
from opgen.expr.tree import Assign, Expr, Ref, RefKind, refs
from opgen.kinds import ArgRole
from opgen.targets.abi import ARG, TOTAL_THREADS, grid_layout
from opgen.targets.element import (LOOP, TOTAL_LANES, MathCode, Memory, StepCode, Version, summand_lines,
                                   versions)

BLOCKS = "opgen_blocks"  # the row blocks of the passes, from the shape
WHOLE = "opgen_whole_totals"  # the C kernel's totals over the whole weight (each slice's view: LOOP.totals)
SCRATCH = ("row_sums", "col_partials", "col_sums")  # the workspace's parts one slice's passes use in turn

SLOT_KIND = {Shape.ROW: RefKind.ROWVAL, Shape.COL: RefKind.COLVAL}
WORD = {Shape.ROW: "rows", Shape.COL: "cols"}
# how the kernels' helpers reduce per-row (or per-column) values, by Total.how
VECTOR_HOW = {"sum": 0, "sum_squares": 1, "max": 2}


def _reads(exprs) -> list[Ref]:
    seen: dict[tuple, Ref] = {}
    for e in exprs:
        for r in refs(e):
            seen.setdefault((r.kind, r.name), r)
    return list(seen.values())


class GridCode:
    def __init__(self, math: MathCode) -> None:
        self.math, self.code, self.op = math, math.code, math.op
        self.g = self.op.grid
        self.printer = math.printer
        self.m = math.math.c_type

    # -- what each function reads ------------------------------------------------------------
    def inputs(self, exprs, targets: set[str] = frozenset()) -> tuple[list[Ref], list[str]]:
        """The slots (ROWVAL/COLVAL refs) and tensors (in kernel-argument order) ``exprs``
        read, less the names computed in the function (``targets``)."""
        found = _reads(exprs)
        slots = [r for r in found if r.kind in (RefKind.ROWVAL, RefKind.COLVAL)
                 and (r.kind, r.name) not in targets]
        tensors = self.code.touched({r.name for r in found if r.kind is RefKind.TENSOR and r.name not in targets})
        return sorted(slots, key=lambda r: (r.kind.value, int(r.name))), tensors

    def pass_exprs(self, p: GridPass) -> list[Expr]:
        return [s.expr for s in p.steps]

    def value_params(self, slots: list[Ref], tensors: list[str], written: set[str] = frozenset()) -> list[str]:
        m = self.m
        return [f"{m} {c_name(r.kind, r.name)}" for r in slots] + self.math.element_params(tensors, written)

    def name(self, what: str, suffix: str) -> str:
        return self.code.function(f"grid_{what}", suffix)

    # -- per math type -------------------------------------------------------------------------
    def math_lines(self) -> list[str]:
        m, struct = self.m, self.code.struct(self.math.math)
        lines: list[str] = []
        for p in self.g.passes:
            slots, tensors = self.inputs(self.pass_exprs(p))
            order = p.ordered
            params = ", ".join([f"const {struct} s", f"{m} *{LOOP.summands}", *self.value_params(slots, tensors)])
            lines.append(f"OPGEN_INLINE void {self.name(f'total{p.level}', m)}({params}) {{")
            lines += [*summand_lines(self.math, p.steps, set(tensors), p.marked, order,
                                     lambda x: self.printer.expr(x.arg)), "}"]
        for level in range(self.g.levels + 1):
            for shape in (Shape.ROW, Shape.COL):
                lines += self.vector_math(level, shape)
        lines += self.update_math()
        return lines

    def vector_statements(self, level: int, shape: Shape) -> list[Assign]:
        return [Assign(str(v.slot), SLOT_KIND[shape], v.statement.expr, v.statement.source, v.statement.location)
                for v in self.g.vectors_at(level, shape)]

    def vector_math(self, level: int, shape: Shape) -> list[str]:
        statements = self.vector_statements(level, shape)
        if not statements:
            return []
        m, struct = self.m, self.code.struct(self.math.math)
        targets = {(s.kind, s.target) for s in statements}
        slots, tensors = self.inputs([s.expr for s in statements], targets)
        params = ", ".join([f"const {struct} s", *self.value_params(slots, tensors), *(f"{m} *io_{c_name(s.kind, s.target)}"
                                                                                        for s in statements)])
        body = self.math.statements(statements, set())
        return [f"OPGEN_INLINE void {self.name(f'{WORD[shape]}{level}', m)}({params}) {{", *body,
                *(f"    *io_{c_name(s.kind, s.target)} = {c_name(s.kind, s.target)};" for s in statements), "}"]

    def update_names(self) -> tuple[list[Ref], list[str], set[str]]:
        written = {s.target for s in self.g.update if s.kind is RefKind.TENSOR}
        slots, tensors = self.inputs([s.expr for s in self.g.update])
        return slots, self.code.touched(set(tensors) | written), written

    def update_math(self) -> list[str]:
        slots, names, written = self.update_names()
        reads = {r.name for s in self.g.update for r in refs(s.expr) if r.kind is RefKind.TENSOR}
        params = ", ".join([f"const {self.code.struct(self.math.math)} s", *self.value_params(slots, names, written)])
        before, after = self.math.io_lines(names, written, reads)
        body = self.math.statements(self.g.update, set(reads))
        return [f"OPGEN_INLINE void {self.name('update', self.m)}({params}) {{", *before, *body, *after, "}"]

    # -- per variant -------------------------------------------------------------------------------
    def slot_loads(self, slots: list[Ref]) -> list[str]:
        return [f"{LOOP.rv}[{r.name} * {LOOP.nrows} + {LOOP.row}]" if r.kind is RefKind.ROWVAL
                else f"{LOOP.cv}[{r.name} * {LOOP.ncols} + {LOOP.col}]" for r in slots]

    def memory(self, step: StepCode) -> Memory:
        index = {step.grad: LOOP.i}  # (dense, laid out as the weight; gi: the element's key)
        for t in self.op.tensors:
            if t.per_row or t.per_col:
                index[t.name] = LOOP.row if t.per_row else LOOP.col
        return Memory("p_{name}[{index}]", index)

    def grid_head(self) -> list[str]:
        return [f"int64_t {LOOP.i}", f"int64_t {LOOP.gi}", f"int64_t {LOOP.row}", f"int64_t {LOOP.col}",
                f"const {self.m} *{LOOP.rv}", f"const {self.m} *{LOOP.cv}", f"int64_t {LOOP.nrows}",
                f"int64_t {LOOP.ncols}"]

    def step_lines(self, step: StepCode) -> list[str]:
        d, m = step.variant.name, self.m
        struct = f"const {self.code.struct(self.math.math)} s"
        memory = self.memory(step)
        lines: list[str] = []
        for p in self.g.passes:
            slots, tensors = self.inputs(self.pass_exprs(p))
            order = p.ordered
            params = ", ".join([struct, *self.grid_head(), f"double (*{LOOP.lanes})[{TOTAL_LANES}]", f"int {LOOP.lane}",
                                f"double (*{LOOP.row_lanes})[{TOTAL_LANES}]", f"double *OPGEN_RESTRICT {LOOP.col_acc}",
                                *step.pointer_params(tensors)])
            args = ", ".join([LOOP.summands, *self.slot_loads(slots), *(step.load(n, memory) for n in tensors)])
            lines += [f"OPGEN_INLINE void {self.name(f'total{p.level}', d)}({params}) {{",
                      f"    {m} {LOOP.summands}[{len(order)}];", f"    {self.name(f'total{p.level}', m)}(s, {args});"]
            rows = len(p.totals)
            for k, x in enumerate(order):
                value = f"(double){LOOP.summands}[{k}]"
                if k < rows:
                    into = f"{LOOP.lanes}[{k}][{LOOP.lane}]"
                    lines.append(f"    {into} = opgen_total_max({into}, {value});" if x.accumulates == "max" else
                                 f"    {into} += {value} * {value};" if x.squared else f"    {into} += {value};")
                elif x.shape is Shape.ROW:
                    lines.append(f"    {LOOP.row_lanes}[{k - rows}][{LOOP.lane}] += {value};")
                else:
                    lines.append(f"    {LOOP.col_acc}[{k - rows - len(p.row_means)} * {LOOP.ncols} + {LOOP.col}] "
                                 f"+= {value};")
            lines.append("}")
        for level in range(self.g.levels + 1):
            for shape in (Shape.ROW, Shape.COL):
                statements = self.vector_statements(level, shape)
                if not statements:
                    continue
                targets = {(s.kind, s.target) for s in statements}
                slots, tensors = self.inputs([s.expr for s in statements], targets)
                index, values, count = self.axis(shape)
                loads = [*self.slot_loads(slots), *(step.load(n, memory) for n in tensors)]
                lines += [f"OPGEN_INLINE void {self.name(f'{WORD[shape]}{level}', d)}({struct}, int64_t {index}, "
                          f"{m} *{values}, int64_t {count}{''.join(', ' + p for p in step.pointer_params(tensors))}) {{",
                          *(f"    {m} {c_name(s.kind, s.target)};" for s in statements),
                          f"    {self.name(f'{WORD[shape]}{level}', m)}(s{''.join(', ' + a for a in loads)}"
                          f"{''.join(f', &{c_name(s.kind, s.target)}' for s in statements)});",
                          *(f"    {values}[{s.target} * {count} + {index}] = {c_name(s.kind, s.target)};"
                            for s in statements), "}"]
        slots, names, written = self.update_names()
        reads = {r.name for s in self.g.update for r in refs(s.expr) if r.kind is RefKind.TENSOR}
        head = ", ".join(["s", *self.slot_loads(slots)])
        lines += [f"OPGEN_INLINE void {self.name('update', d)}({', '.join([struct, *self.grid_head(), 'int sr', *step.pointer_params(names)])}) {{",
                  *step.load_call_store(self.name("update", m), head, names, written, reads, memory, "    ",
                                        zero_grad=False, element=LOOP.gi),
                  "}"]
        for shape in (Shape.ROW, Shape.COL):
            stored = [(name, slot) for name, sh, slot in self.g.stores if sh is shape]
            if not stored:
                continue
            index, values, count = self.axis(shape)
            pointers = step.pointer_params([name for name, _ in stored])
            # (a row's rounding key: its place among the whole weight's rows, key_base + index)
            lines += [f"OPGEN_INLINE void {self.name(f'store_{WORD[shape]}', d)}({struct}, int64_t {index}, "
                      f"const {m} *{values}, int64_t {count}, int64_t key_base, int sr, {', '.join(pointers)}) {{",
                      *(f"    p_{name}[{index}] = "
                        f"{step.store(name, f'{values}[{slot} * {count} + {index}]', f'key_base + {index}')};"
                        for name, slot in stored), "}"]
        return lines

    # -- the kernel body ---------------------------------------------------------------------------
    def schedule_lines(self, step: StepCode, names: dict) -> list[str]:
        """The grid kernel: its workspace's parts, then level by level, each slice in turn, its
        passes, per-call values and row and column statements, then the update and the
        states' stores. A slice's totals over its rows (or columns) are its own; a total over
        elements is the whole weight's, its slices' partial totals combined in slice order."""
        op, g = self.op, self.g
        block_rows, flush = names[ArgRole.BLOCK_ROWS], names[ArgRole.FLUSH]
        lines = self.preamble(names, sliced=True)
        if op.whole_totals:
            lines.append(f"double {WHOLE}[{len(op.whole_totals)}] = {{0}};")
        scalars = self.scalars(LOOP.scalars)
        casts = lambda tensors: self.casts(step, tensors, sliced=True)  # noqa: E731
        own: list[int] = []  # the slices' own totals computed so far (the levels before, then this one's)
        for level in range(g.levels + 1):
            p = g.pass_at(level)
            if p is not None:
                lines += self.each_slice(self.pass_lines(step, p, scalars, block_rows, flush, casts), own)
                lines += self.pass_totals(p)
            for v in g.vector_totals_at(level):
                t = v.total
                _, values, count = self.axis(v.over)
                lines += self.each_slice([
                    f"opgen_slice_totals[{LOOP.slice} * {self.total_count} + {t.index}] = OPGEN_FINISH_{t.finish}("
                    f"opgen_grid_total_{self.m}({values} + {self.slot_of(t.arg)} * {count}, {count}, "
                    f"{VECTOR_HOW[t.how]}), {count});"], None)
            own += [v.total.index for v in g.vector_totals_at(level)]
            block = self.vector_calls(step, level, casts,
                                      lambda index, count, call: f"OPGEN_GRID_EACH({index}, {count}, {flush}, {call});")
            if block:
                lines += self.each_slice([scalars, *block], own)

        def update(v: Version) -> list[str]:
            return [f"OPGEN_GRID_UPDATE({LOOP.nrows}, {LOOP.ncols}, {LOOP.first_element}, {flush}, "
                    f"{self.update_call(step, v, casts)});",
                    *self.store_calls(step, v, casts, lambda index, count, store: (
                        f"OPGEN_GRID_EACH({index}, {count}, {flush}, {store});"), sliced=True)]

        lines += self.each_slice([scalars, *versions(step, update, unswitch=False)], own)
        return lines

    @property
    def total_count(self) -> int:
        """A slice's room in the workspace's per-slice totals (abi.GridLayout.totals)."""
        return grid_layout(self.op).totals

    def each_slice(self, body: list[str], own: list[int] | None) -> list[str]:
        """``body`` once per slice, with its per-row and per-column values and its first
        element, row and column in scope, and its own copy of the call's totals, the slice's
        own totals ``own`` (over its rows or columns, computed so far) among them (None: no
        copy). Many small slices run side by side (opgen_grid_slice_threads), each with its
        passes' scratch on its thread's stack; otherwise in turn, each slice's passes sharing
        the threads."""
        m, layout = self.m, grid_layout(self.op)
        count = len(self.op.whole_totals)
        head = [f"{m} *const {LOOP.rv} = opgen_rv_all + {LOOP.slice} * {layout.row_slots} * {LOOP.nrows};",
                f"{m} *const {LOOP.cv} = opgen_cv_all + {LOOP.slice} * {layout.col_slots} * {LOOP.ncols};",
                f"const int64_t {LOOP.first_element} = {LOOP.slice} * {LOOP.nrows} * {LOOP.ncols}, "
                f"{LOOP.first_row} = {LOOP.slice} * {LOOP.nrows}, {LOOP.first_col} = {LOOP.slice} * {LOOP.ncols};",
                f"(void){LOOP.rv}; (void){LOOP.cv}; (void){LOOP.first_element}; (void){LOOP.first_row}; "
                f"(void){LOOP.first_col};"]
        if count and own is not None:
            head += [f"double {LOOP.totals}[{count}];",
                     f"for (int opgen_k = 0; opgen_k < {count}; ++opgen_k) {LOOP.totals}[opgen_k] = {WHOLE}[opgen_k];",
                     *(f"{LOOP.totals}[{k}] = opgen_slice_totals[{LOOP.slice} * {self.total_count} + {k}];"
                       for k in own)]
        loop = [f"for (int64_t {LOOP.slice} = 0; {LOOP.slice} < {LOOP.nslices}; ++{LOOP.slice}) {{",
                *(f"    {line}" for line in head + body), "}"]
        parts = dict(layout.parts(LOOP.nrows, LOOP.ncols, BLOCKS, LOOP.nslices))
        scratch, offset = [], "opgen_scratch"
        for part in SCRATCH:
            scratch.append(f"double *const opgen_{part} = {offset}; (void)opgen_{part};")
            offset = f"opgen_{part} + {parts[part]}"
        need = " + ".join(f"{parts[part]}" for part in SCRATCH)
        return ["{", f"    const int opgen_st = opgen_grid_slice_threads({LOOP.nslices}, {LOOP.nrows} * {LOOP.ncols}, "
                     f"{need});",
                "    if (opgen_st > 1) {",
                "        #pragma omp parallel num_threads(opgen_st)",
                "        {",
                "            double opgen_scratch[OPGEN_GRID_SLICE_SCRATCH];",
                *(f"            {line}" for line in scratch),
                "            #pragma omp for schedule(static)",
                *(f"            {line}" for line in loop),
                "        }",
                "    } else {", *(f"        {line}" for line in loop), "    }", "}"]

    def pass_totals(self, p: GridPass) -> list[str]:
        """A pass's whole totals: its slices' partial totals combined in slice order (the same
        bits on any thread count), finished over the whole weight's elements."""
        lines = []
        for k, x in enumerate(p.ordered[:len(p.totals)]):
            combine = "opgen_max_of" if x.accumulates == "max" else "opgen_sum_pairwise"
            lines.append(f"{WHOLE}[{x.index}] = OPGEN_FINISH_{x.finish}({combine}(opgen_slice_parts + {k}, "
                         f"{LOOP.nslices}, {self.total_count}), {LOOP.nslices} * {LOOP.nrows} * {LOOP.ncols});")
        return lines

    def preamble(self, names: dict, sliced: bool = False) -> list[str]:
        """The kernel's sizes and its workspace's parts (abi.GridLayout: the runtime sizes it);
        ``sliced``: the C kernel's, over every slice (CUDA's kernels take one)."""
        rows, cols, block_rows = names[ArgRole.NROWS], names[ArgRole.ROW_LEN], names[ArgRole.BLOCK_ROWS]
        lines = [f"const int64_t {LOOP.nrows} = {rows}, {LOOP.ncols} = {cols};",
                 f"const int64_t {BLOCKS} = ({rows} + {block_rows} - 1) / {block_rows};", f"(void){BLOCKS};"]
        if sliced:
            lines.append(f"const int64_t {LOOP.nslices} = {names[ArgRole.NSLICES]};")
        offset = names[ArgRole.WORKSPACE]
        for part, length in grid_layout(self.op).parts(LOOP.nrows, LOOP.ncols, BLOCKS, LOOP.nslices if sliced else 1):
            lines.append(f"double *const opgen_{part} = {offset}; (void)opgen_{part};")
            offset = f"opgen_{part} + {length}"
        # the slots hold values of the math type (a double's room each: the layout counts doubles)
        m = self.m
        rv, cv = ("opgen_rv_all", "opgen_cv_all") if sliced else (LOOP.rv, LOOP.cv)
        return lines + [f"{m} *const {rv} = ({m} *)opgen_row_values, *const {cv} = ({m} *)opgen_col_values;",
                        f"(void){rv}; (void){cv};"]

    # -- CUDA: the same steps, a kernel per stage (abi.grid_stages) ------------------------------------
    def cuda_kernels(self, step: StepCode, kernel, parameters: str) -> list[dict]:
        """Per level its pass (a block per row block: OPGEN_CUDA_GRID_PASS) and its phase (one
        block: the pass's results finished into the workspace's totals and slots, the
        reductions of per-row and per-column values, the row and column statements), the
        update (a grid-stride loop), the states' store (one block). Each kernel reads the
        totals so far from the workspace."""
        g, op = self.g, self.op
        names = {a.role: a.name for a in kernel.cuda_args if not a.source}
        block_rows = names[ArgRole.BLOCK_ROWS]
        casts = lambda tensors: self.casts(step, tensors)  # noqa: E731
        count = len(op.whole_totals)
        scalars = self.scalars(LOOP.s)

        def totals_so_far() -> list[str]:
            if not count:
                return []
            return [f"double {LOOP.totals}[{count}];",
                    f"for (int opgen_k = 0; opgen_k < {count}; ++opgen_k) {LOOP.totals}[opgen_k] = opgen_passed_totals[opgen_k];"]

        head = self.preamble(names)
        kernels = []
        threads = TOTAL_THREADS
        for level in range(g.levels + 1):
            p = g.pass_at(level)
            if p is not None:
                body = [*head, "{", *totals_so_far(), scalars,
                        f"OPGEN_CUDA_GRID_PASS({p.sums}, {len(p.totals) - p.sums}, {len(p.row_means)}, "
                        f"{len(p.col_means)}, {LOOP.nrows}, {LOOP.ncols}, {block_rows}, opgen_block_totals, "
                        f"opgen_row_sums, opgen_col_partials, {self.pass_call(step, p, casts)});", "}"]
                kernels.append({"name": f"{kernel.name}_total{level}", "parameters": parameters, "threads": threads,
                                "body": body})
            kernels.append({"name": f"{kernel.name}_phase{level}", "parameters": parameters, "threads": threads,
                            "body": [*head, *self.cuda_phase(step, level, casts, scalars, totals_so_far)]})

        def update(v: Version) -> list[str]:
            call = self.update_call(step, v, casts)
            return [f"for (long long {LOOP.i} = (long long)blockIdx.x * blockDim.x + threadIdx.x; "
                    f"{LOOP.i} < {LOOP.nrows} * {LOOP.ncols}; {LOOP.i} += (long long)gridDim.x * blockDim.x) {{",
                    f"    const long long {LOOP.row} = {LOOP.i} / {LOOP.ncols}, {LOOP.col} = {LOOP.i} - {LOOP.row} * "
                    f"{LOOP.ncols}, {LOOP.gi} = {LOOP.i};", f"    {call};", "}"]

        kernels.append({"name": kernel.name, "parameters": parameters,
                        "threads": kernel.launch.block[0] * kernel.launch.block[1],
                        "body": [*head, *totals_so_far(), scalars, *versions(step, update, unswitch=False)]})

        def store(v: Version) -> list[str]:
            return self.store_calls(step, v, casts, lambda index, count, call: (
                f"for (long long {index} = threadIdx.x; {index} < {count}; {index} += blockDim.x) {call};"))

        kernels.append({"name": kernel.store, "parameters": parameters, "threads": threads,
                        "body": [*head, *totals_so_far(), scalars, *versions(step, store, unswitch=False)]})
        return kernels

    def cuda_phase(self, step: StepCode, level: int, casts, scalars: str, totals_so_far) -> list[str]:
        """One block: the level's pass results finished, its vector reductions, its row and
        column statements (each stage after a barrier: the next reads what it wrote)."""
        m, g = self.m, self.g
        lines = [f"__shared__ double opgen_red[{TOTAL_THREADS}];"] if g.vector_totals_at(level) else []
        if level == 0 and self.op.whole_totals:  # (a call's totals start from nothing)
            lines += [f"for (int opgen_k = threadIdx.x; opgen_k < {len(self.op.whole_totals)}; opgen_k += blockDim.x) "
                      f"opgen_passed_totals[opgen_k] = 0.0;", "__syncthreads();"]
        p = g.pass_at(level)
        if p is not None:
            order = p.ordered
            ncol = len(p.col_means)
            for k, x in enumerate(order):
                if k < len(p.totals):
                    lines.append(f"if (threadIdx.x == 0) opgen_passed_totals[{x.index}] = OPGEN_FINISH_{x.finish}("
                                 f"opgen_cuda_grid_combine(opgen_block_totals + {k} * OPGEN_GRID_MAX_BLOCKS, {BLOCKS}, 1, "
                                 f"{int(x.accumulates == 'max')}), {LOOP.nrows} * {LOOP.ncols});")
            if ncol:
                lines.append(f"for (long long opgen_c = threadIdx.x; opgen_c < {ncol} * {LOOP.ncols}; opgen_c += blockDim.x) "
                             f"opgen_col_sums[opgen_c] = opgen_cuda_grid_combine(opgen_col_partials + opgen_c, {BLOCKS}, "
                             f"{ncol} * {LOOP.ncols}, 0);")
            lines.append("__syncthreads();")
            for k, x in enumerate(order[len(p.totals):]):
                if x.shape is Shape.ROW:
                    lines.append(f"for (long long opgen_j = threadIdx.x; opgen_j < {LOOP.nrows}; opgen_j += blockDim.x) "
                                 f"{LOOP.rv}[{x.slot} * {LOOP.nrows} + opgen_j] = ({m})((opgen_row_sums"
                                 f"[{k} * {LOOP.nrows} + opgen_j]) / (double){LOOP.ncols if x.divides else 1});")
                else:
                    j = k - len(p.row_means)
                    lines.append(f"for (long long opgen_j = threadIdx.x; opgen_j < {LOOP.ncols}; opgen_j += blockDim.x) "
                                 f"{LOOP.cv}[{x.slot} * {LOOP.ncols} + opgen_j] = ({m})((opgen_col_sums"
                                 f"[{j} * {LOOP.ncols} + opgen_j]) / (double){LOOP.nrows if x.divides else 1});")
            lines.append("__syncthreads();")
        for v in g.vector_totals_at(level):
            t = v.total
            _, values, n = self.axis(v.over)
            lines += [f"{{ const double opgen_r = opgen_cuda_grid_total({values} + {self.slot_of(t.arg)} * {n}, {n}, "
                      f"opgen_red, {VECTOR_HOW[t.how]});",
                      f"  if (threadIdx.x == 0) opgen_passed_totals[{t.index}] = OPGEN_FINISH_{t.finish}(opgen_r, {n}); }}"]
        if g.vector_totals_at(level):
            lines.append("__syncthreads();")
        block = self.vector_calls(step, level, casts, lambda index, count, call: (
            f"for (long long {index} = threadIdx.x; {index} < {count}; {index} += blockDim.x) {call};"))
        if block:
            lines += ["{", *totals_so_far(), scalars, *block, "}"]
        return lines

    def scalars(self, name: str) -> str:
        """The per-call struct, from the kernel's arguments and the totals so far."""
        code = self.code
        return f"const {code.struct(self.math.math)} {name} = {code.init(self.math.math)}({code.init_call()});"

    def casts(self, step: StepCode, tensors: list[str], sliced: bool = False) -> str:
        """The kernel's untyped tensor arguments, typed by their storage, as the steps take them
        (``sliced``: at the slice's first element, row or column)."""
        first = {t.name: LOOP.first_row if t.per_row else LOOP.first_col if t.per_col else LOOP.first_element
                 for t in self.op.tensors}
        return "".join(f", ({'const ' if self.op.is_const(n) else ''}{step.storage(n).c_storage} *){ARG}{n}"
                       f"{f' + {first[n]}' if sliced else ''}" for n in tensors)

    def pass_call(self, step: StepCode, p: GridPass, casts) -> str:
        """A pass's step on element (row, col), as the C and CUDA pass macros call it."""
        _, tensors = self.inputs(self.pass_exprs(p))
        return (f"{self.name(f'total{p.level}', step.variant.name)}({LOOP.s}, {LOOP.i}, {LOOP.gi}, {LOOP.row}, "
                f"{LOOP.col}, {LOOP.rv}, {LOOP.cv}, {LOOP.nrows}, {LOOP.ncols}, {LOOP.lanes}, {LOOP.lane}, "
                f"{LOOP.row_lanes}, {LOOP.col_acc}{casts(tensors)})")

    def update_call(self, step: StepCode, v: Version, casts) -> str:
        """The update's step on element (row, col), in version ``v`` (its rounding)."""
        return (f"{self.name('update', step.variant.name)}({LOOP.s}, {LOOP.i}, {LOOP.gi}, {LOOP.row}, {LOOP.col}, "
                f"{LOOP.rv}, {LOOP.cv}, {LOOP.nrows}, {LOOP.ncols}, {v.sr}{casts(self.update_names()[1])})")

    @staticmethod
    def axis(shape: Shape) -> tuple[str, str, str]:
        """A row's (or column's) index, the slots' array and the count, as the kernels name them."""
        if shape is Shape.ROW:
            return LOOP.row, LOOP.rv, LOOP.nrows
        return LOOP.col, LOOP.cv, LOOP.ncols

    def store_calls(self, step: StepCode, v: Version, casts, loop, sliced: bool = False) -> list[str]:
        """The per-row and per-column states' stores: per shape, ``loop(index, count, call)``
        (``sliced``: the slice's rows and columns, keyed by their place in the whole weight)."""
        out = []
        for shape in (Shape.ROW, Shape.COL):
            stored = [name for name, sh, _ in self.g.stores if sh is shape]
            if stored:
                index, values, count = self.axis(shape)
                first = (LOOP.first_row if shape is Shape.ROW else LOOP.first_col) if sliced else "0"
                out.append(loop(index, count, f"{self.name(f'store_{WORD[shape]}', step.variant.name)}({LOOP.s}, "
                                              f"{index}, {values}, {count}, {first}, {v.sr}{casts(stored)})"))
        return out

    def vector_calls(self, step: StepCode, level: int, casts, loop) -> list[str]:
        """The level's row and column statements: per shape, ``loop(index, count, call)`` of
        the step that computes one row's (or column's)."""
        out = []
        for shape in (Shape.ROW, Shape.COL):
            statements = self.vector_statements(level, shape)
            if statements:
                _, tensors = self.inputs([s.expr for s in statements], {(s.kind, s.target) for s in statements})
                index, values, count = self.axis(shape)
                out.append(loop(index, count, f"{self.name(f'{WORD[shape]}{level}', step.variant.name)}({LOOP.s}, "
                                              f"{index}, {values}, {count}{casts(tensors)})"))
        return out

    def pass_lines(self, step: StepCode, p: GridPass, scalars: str, block_rows: str, flush: str, casts) -> list[str]:
        """One slice's element pass: the per-call values so far, the pass, its results: its
        partial whole totals into the slice's, its row and column means into their slots."""
        m, order = self.m, p.ordered
        lines = [scalars, f"double {LOOP.accumulated}[{len(p.totals) + 1}];",
                 f"OPGEN_GRID_TOTALS({p.sums}, {len(p.totals) - p.sums}, {len(p.row_means)}, {len(p.col_means)}, "
                 f"{LOOP.nrows}, {LOOP.ncols}, {block_rows}, {flush}, {LOOP.accumulated}, opgen_row_sums, "
                 f"opgen_col_partials, opgen_col_sums, {self.pass_call(step, p, casts)});"]
        for k, x in enumerate(order):
            if k < len(p.totals):  # (finished over the whole weight after the last slice: pass_totals)
                lines.append(f"opgen_slice_parts[{LOOP.slice} * {self.total_count} + {k}] = {LOOP.accumulated}[{k}];")
            elif x.shape is Shape.ROW:
                j = k - len(p.totals)
                lines.append(f"opgen_grid_means_{m}({LOOP.rv} + {x.slot} * {LOOP.nrows}, opgen_row_sums + {j} * "
                             f"{LOOP.nrows}, {LOOP.nrows}, {LOOP.ncols if x.divides else 1});")
            else:
                j = k - len(p.totals) - len(p.row_means)
                lines.append(f"opgen_grid_means_{m}({LOOP.cv} + {x.slot} * {LOOP.ncols}, opgen_col_sums + {j} * "
                             f"{LOOP.ncols}, {LOOP.ncols}, {LOOP.nrows if x.divides else 1});")
        return lines

    @staticmethod
    def slot_of(e: Expr) -> str:
        """The slot a reduction over rows or columns reads: its argument is one slot's value
        (opgen.expr.grid keeps a vector reduction's argument a slot reference)."""
        assert isinstance(e, Ref) and e.kind in (RefKind.ROWVAL, RefKind.COLVAL), e
        return e.name
