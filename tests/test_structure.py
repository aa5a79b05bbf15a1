"""One home for every fact: the kernel ABI, the element math once per math type, the
schedules in the shared headers, per-call values in double, and the spec-language gaps
closed with them (issue 8). Every op of specs/ is covered where the concern applies."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import cases
import generated
from packages import build_package
from opgen.errors import SpecError
from opgen.runtime import use_backend
from opgen.runtime.arrays import ArrayAdapter
from opgen.spec import load_spec
from opgen.spec.loader import parse_spec

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))


def module(op: str):
    return importlib.import_module(f"generated.{op}")


# ---- the kernel ABI ------------------------------------------------------------------------

@pytest.mark.parametrize("op", SPECS)
def test_abi_names_every_compiled_kernel_and_the_cdef_declares_it(op):
    """The module's ABI records are what the cdef declares, one per schedule and variant."""
    operator = module(op)._OP
    cdef = (ROOT / "generated" / "csrc" / f"{op}.cdef").read_text()
    declared = re.findall(r"^void (\w+)\(", cdef, re.M)
    assert sorted(k.name for k in operator.kernel_abis.values()) == sorted(declared)
    for kernel in operator.kernel_abis.values():
        line = next(l for l in cdef.splitlines() if f" {kernel.name}(" in l)
        # the argument names, in order, as the runtime will pass them
        names = [part.strip().split()[-1].lstrip("*") for part in line[line.index("(") + 1:-2].split(",")]
        assert names == [a.name for a in kernel.args]


@pytest.mark.parametrize("op", SPECS)
def test_cuda_kernels_take_the_abi_arguments_in_order(op):
    """Every CUDA kernel the ABI launches is defined with the ABI's CUDA arguments, and its
    __launch_bounds__ is the launch's block size."""
    operator = module(op)._OP
    cu = (ROOT / "generated" / "cuda" / f"{op}.cu").read_text()
    for kernel in operator.kernel_abis.values():
        if kernel.launch is None:
            assert f" {kernel.name}(" not in cu
            continue
        m = re.search(rf"__launch_bounds__\((\d+)\) {kernel.name}\((.*)\) {{", cu)
        assert m, kernel.name
        assert int(m.group(1)) == kernel.launch.block[0] * kernel.launch.block[1]
        names = [part.strip().split()[-1].lstrip("*") for part in m.group(2).split(",")]
        assert names == [a.name for a in kernel.cuda_args]


@pytest.mark.parametrize("op", SPECS)
def test_cuda_launch_vectors_are_sized_by_the_widest_element(op):
    """16-byte vectors of the widest tensor a call touches (fixed dtypes included), derived
    here from the op's tensor table, not from the generator."""
    operator = module(op)._OP
    for (schedule, dtype, states), kernel in operator.kernel_abis.items():
        if kernel.launch is None:  # norms, a reducing op's multi (tensor by tensor), an op that only reduces
            spec = load_spec(ROOT / "specs" / f"{op}.yaml")
            assert schedule == "norms" or spec.reduction or (schedule == "multi" and spec.totals is not None) \
                or (schedule == "multi" and spec.per_tensor_states)
            continue
        free = [states] if any(t.role == "state" and not t.dtype for t in operator.tensors) else []
        widest = max([np.dtype(d).itemsize for d in [dtype, *free]] +
                     [np.dtype(t.dtype).itemsize for t in operator.tensors
                      if t.dtype and t.role != "scalar" and not t.per_tensor])  # (a per-tensor state: one value)
        assert kernel.lanes == 16 // widest, (op, dtype)
        if schedule == "dense":
            assert kernel.launch.per_block == kernel.launch.block[0] * kernel.lanes


@pytest.mark.parametrize("op", SPECS)
def test_the_runtime_passes_every_kernel_argument_once_in_order(op):
    """The runtime's argument layouts (C and CUDA), laid back out in call order, are the
    ABI's arguments: nothing dropped, repeated or reordered (the CUDA launch cannot run here)."""
    from opgen.kinds import ArgRole

    operator = module(op)._OP
    for kernel in operator.kernel_abis.values():
        if kernel.schedule in ("multi", "norms"):  # (multi.py lays the multi-tensor calls out)
            continue
        for cuda in (False, True):
            head, tensors, positions, _ = operator.c_layout(kernel, cuda)
            laid = [r.value for r in head] + [f"tensor:{t}" for t in tensors] + \
                [f"scalar:{operator.kernel_scalar_names[k]}" for k in positions] + ["grad_scale", "rounding", "seed"] + \
                ([] if cuda else ["flush_denormal"]) + \
                (["partials"] if cuda and (kernel.passes or kernel.store) else [])  # as the backends pass them
            args = kernel.cuda_args if cuda else kernel.args
            assert laid == [f"{a.role.value}:{a.source}" if a.role in (ArgRole.TENSOR, ArgRole.SCALAR)
                            else a.role.value for a in args]


def test_mixed_precision_launch_covers_every_element():
    """The bug this fixes: mp ops sized their vectors by the float16 weight (8 lanes) while
    the kernel used 4 (float32 master weights): too few blocks."""
    kernel = module("mp_sgd_update")._OP.kernel("dense", np.float16)
    assert kernel.lanes == 4  # 16 bytes of float32
    # 10M elements, 512 threads of 4 lanes a block: ceil(10e6 / 2048) blocks, by hand
    assert kernel.launch.grid(10_000_000, sm_count=1000) == 4883
    assert kernel.launch.grid(10_000_000, sm_count=100) == 800  # capped at 8 per multiprocessor


def test_the_compiler_never_imports_the_runtime():
    for folder in ("spec", "expr", "targets"):
        for path in (ROOT / "opgen" / folder).rglob("*.py"):
            assert "opgen.runtime" not in path.read_text(), path


def test_the_runtime_never_derives_a_kernel_name():
    for path in (ROOT / "opgen" / "runtime").rglob("*.py"):
        assert not re.search(r"f\"opgen_\{", path.read_text()), path


# ---- the element math once per math type ---------------------------------------------------

@pytest.mark.parametrize("op", SPECS)
def test_each_statement_is_printed_once_per_math_type(op):
    """In the op's one element-math header, which the C and the CUDA file both include."""
    spec = load_spec(ROOT / "specs" / f"{op}.yaml")
    text = (ROOT / "generated" / "csrc" / f"{op}_math.h").read_text()
    functions = text.split("OPGEN_INLINE ")
    # (a grid op's update is its grid_update function: opgen/targets/grid_code.py)
    update = "grid_update" if spec.grid is not None else "element"
    elements = "".join(f for f in functions if re.match(rf"void opgen_\w+_{update}_\w+\(", f))
    element_statements = spec.program.body if spec.rows is None else ()
    for s in element_statements if spec.updates else ():
        comment = f"/* {' '.join(s.source.split())} */"
        assert elements.count(comment) == len(spec.math_types), (op, s.source)
        assert f"_{update}_" in text
    for math in spec.math_types:
        if not spec.updates:  # an op that only reduces: its passes' functions, no element update
            assert text.count(f"opgen_{op}_total1_{math.c_type}(") >= 1 and "_element_" not in text
            continue
        name = f"opgen_{op}_{update if spec.rows is None else 'pass2'}_{math.c_type}("
        assert text.count(name) >= 1


@pytest.mark.parametrize("op", SPECS)
def test_generated_c_and_cuda_share_their_element_and_step_functions(op):
    """Both include the one header; neither defines an element or scalar step itself, and
    the CUDA file's source, as NVRTC gets it, holds the header's lines."""
    from opgen.runtime.cuda import cuda_source

    c = (ROOT / "generated" / "csrc" / f"{op}.c").read_text()
    cu = (ROOT / "generated" / "cuda" / f"{op}.cu").read_text()
    header = (ROOT / "generated" / "csrc" / f"{op}_math.h").read_text()
    assert f'#include "{op}_math.h"' in c and f'#include "../csrc/{op}_math.h"' in cu
    defined = re.compile(r"^OPGEN_INLINE void (opgen_\w+_(element|step|pass1|row|row_store|pass2|total\d+)_\w+)\(",
                         re.M)
    assert defined.findall(header) and not defined.findall(c) and not defined.findall(cu)
    inlined = cuda_source(ROOT / "generated" / "cuda" / f"{op}.cu")
    assert all(line in inlined for line in header.splitlines()[1:] if line.startswith("OPGEN_INLINE"))


def _gcc():
    return shutil.which("gcc")


@pytest.mark.skipif(_gcc() is None, reason="no gcc (the report is gcc's)")
@pytest.mark.parametrize("op", ["adam_update", "mp_adamw_update", "lamb_update_phase1", "group_adagrad_update",
                                "torch_adam_update", "torch_sgd_momentum_update", "torch_rmsprop_centered_update"])
def test_every_schedule_loop_is_vectorized(op, tmp_path):
    """gcc's own report: each kernel's schedule loop is vectorized, mixed state dtypes included.
    (float16 kernels convert through _Float16 scalars; gcc 12 vectorizes them on no x86
    without AVX512-FP16, before or after the element math moved into functions.)"""
    source = ROOT / "generated" / "csrc" / f"{op}.c"
    from opgen.cbuild import toolchain

    tc = toolchain()  # the flags the kernels are built with
    run = subprocess.run([*tc.command, *tc.flags, "-fopt-info-vec-optimized", "-c", str(source),
                          "-o", str(tmp_path / "k.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    vectorized = {(m.group(1), int(m.group(2))) for m in
                  re.finditer(rf"({op}\.c|{op}_math\.h):(\d+):\d+: optimized: loop vectorized", run.stderr)}
    lines = source.read_text().splitlines()
    header = (source.parent / f"{op}_math.h").read_text().splitlines()
    starts = {m.group(1): k + 1 for k, line in enumerate(header) if (m := re.match(r"OPGEN_INLINE void (\w+)\(", line))}

    def function_lines(name: str) -> set:
        first = starts[name]
        last = next(k for k in range(first, len(header) + 1) if header[k - 1] == "}")
        return {(f"{op}_math.h", k) for k in range(first, last + 1)}

    schedule_lines = [k + 1 for k, line in enumerate(lines) if re.match(r"\s+OPGEN_(DENSE|MULTI|LAZY|STANDARD|LAZY_ROWS)\(", line)]
    assert schedule_lines
    missing = []
    for k in schedule_lines:
        # gcc reports the loop at the macro's line, or inside the inlined step it calls
        steps = re.findall(r"(opgen_\w+_(?:step|pass2)_b?float\d+(?:_with_b?float\d+_states)?)\(", lines[k - 1])
        if any(re.search(r"(?<!b)float16", n) for n in steps):
            continue
        where = {(f"{op}.c", k)}.union(*(function_lines(n) for n in steps))
        if not where & vectorized:
            missing.append(lines[k - 1].strip()[:70])
    assert not missing, missing


# ---- per-call values in double --------------------------------------------------------------

@pytest.mark.parametrize("beta2", [0.999, 0.9999])
def test_per_call_values_are_computed_in_double_and_rounded_once(backend, beta2):
    """With zero states and grad 1, one Adam step leaves var = (1 - beta2) exactly as the
    kernels hold it: float32(1 - beta2) computed in double, not float32(1) - float32(beta2)."""
    weight, grad = np.zeros(5, np.float32), np.ones(5, np.float32)
    mean, var = np.zeros(5, np.float32), np.zeros(5, np.float32)
    generated.adam_update(weight, grad, mean, var, lr=0.5, beta1=0.9, beta2=beta2, out=weight)
    assert var[0] == np.float32(1.0 - beta2)
    assert var[0] != np.float32(1) - np.float32(beta2)
    assert mean[0] == np.float32(1.0 - 0.9)


def test_float64_per_call_values_stay_double(backend):
    weight, grad = np.zeros(3), np.ones(3)
    mean, var = np.zeros(3), np.zeros(3)
    generated.adam_update(weight, grad, mean, var, lr=0.5, beta2=0.9999, out=weight)
    assert var[0] == 1.0 - 0.9999


def test_pages_state_the_per_call_precision():
    page = (ROOT / "generated" / "docs" / "adam_update.md").read_text()
    assert "`1 - beta1`, `1 - beta2`" in page and "in double" in page


# ---- op facts decided once, at the parse boundary -------------------------------------------

MULTI_WITH_SKIP = """\
name: mskip_update
summary: s
tensors:
  - {name: weight, role: weight, doc: w}
  - {name: grad, role: grad, doc: g}
params:
  - {name: lrs, type: float, required: true, doc: l}
  - {name: num_weights, type: int, default: 1, doc: n}
skip_if: lrs > 1
multi:
  count: num_weights
  per_tensor: {lrs: lr_list}
math:
  - weight = weight - lrs * grad
"""


def test_multi_convention_with_skip_if_is_refused_at_the_spec():
    with pytest.raises(SpecError) as err:
        parse_spec(MULTI_WITH_SKIP, "specs/mskip_update.yaml")
    assert str(err.value).startswith("specs/mskip_update.yaml:10:1: ")
    assert "skip_if" in str(err.value)


@pytest.mark.parametrize("op", SPECS)
def test_the_entry_points_follow_the_model(op):
    spec = load_spec(ROOT / "specs" / f"{op}.yaml")
    mod = module(op)
    assert hasattr(mod, f"{op}_multi") == (spec.has_multi and spec.multi is None)
    assert set(mod._OP.schedules) == set(spec.schedules)


def test_triple_quotes_in_any_description_build_and_import(tmp_path):
    spec = """\
        name: quoted_update
        summary: Has quotes inside
        description: |
          A description with \"\"\" in it.
        tensors:
          - {name: weight, role: weight, doc: w}
          - {name: grad, role: grad, doc: g}
        params:
          - {name: lrs, type: float, required: true, doc: l}
          - {name: num_weights, type: int, default: 1, doc: n}
        multi:
          count: num_weights
          per_tensor: {lrs: lr_list}
        math:
          - weight = weight - lrs * grad
        """
    pkg = build_package(tmp_path, {"quoted_update": spec}, "pkg_quoted")
    w = np.ones(3, np.float32)
    out = pkg.quoted_update(w, np.ones(3, np.float32), lr_list=[0.5], num_weights=1)
    np.testing.assert_array_equal(out[0], np.full(3, 0.5, np.float32))
    assert 'A description with """ in it.' in pkg.quoted_update.__doc__  # the text exactly, as data


# ---- spec-language gaps ----------------------------------------------------------------------

ROW_DECAY = """\
    name: rowdecay_update
    summary: Per-row decayed accumulator.
    tensors:
      - {name: weight, role: weight, doc: w}
      - {name: grad, role: grad, doc: g}
      - {name: history, role: state, per_row: true, doc: h}
    params:
      - {name: lr, type: float, required: true, doc: l}
      - {name: decay, type: float, default: 0.9, doc: d}
    row_sparse: {lazy: true, dense: false}
    math:
      - k = 1 - decay
      - unused_in_rows = grad * 3
      - history = decay * history + k * row_mean(grad * grad)
      - weight = weight - lr * unused_in_rows / sqrt(history + 1)
    """


def test_per_row_statement_reads_a_temporary_of_parameters(tmp_path, backend):
    pkg = build_package(tmp_path, {"rowdecay_update": ROW_DECAY}, f"pkg_rowdecay_{backend}")
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(6, 5))
    history = rng.uniform(size=6)
    rows = np.array([1, 4])
    data = rng.normal(size=(2, 5))
    w0, h0 = weight.copy(), history.copy()
    pkg.rowdecay_update(weight, pkg.RowSparseArray(data, rows, weight.shape), history, lr=0.1, decay=0.8,
                        out=weight)
    # by hand, in float64
    for k, r in enumerate(rows):
        h = 0.8 * h0[r] + (1 - 0.8) * np.mean(data[k] ** 2)
        np.testing.assert_allclose(history[r], h, rtol=1e-14)
        np.testing.assert_allclose(weight[r], w0[r] - 0.1 * (data[k] * 3) / np.sqrt(h + 1), rtol=1e-14)
    untouched = [r for r in range(6) if r not in rows]
    np.testing.assert_array_equal(weight[untouched], w0[untouched])
    np.testing.assert_array_equal(history[untouched], h0[untouched])


def test_first_row_pass_computes_only_what_the_sums_need(tmp_path):
    build_package(tmp_path, {"rowdecay_update": ROW_DECAY}, "pkg_rowdecay_src")
    c = (tmp_path / "pkg_rowdecay_src" / "csrc" / "rowdecay_update_math.h").read_text()
    pass1 = c[c.index("void opgen_rowdecay_update_pass1_float("):]
    pass1 = pass1[:pass1.index("}")]
    assert "t_unused_in_rows" not in pass1 and "sums[0] +=" in pass1


def test_row_kernels_compile_without_nvrtc_warnings(tmp_path):
    pytest.importorskip("cupy")
    from opgen.runtime.cuda import CHECK_ARCHES, cuda_source, nvrtc_check

    build_package(tmp_path, {"rowdecay_update": ROW_DECAY}, "pkg_rowdecay_cuda")
    path = tmp_path / "pkg_rowdecay_cuda" / "cuda" / "rowdecay_update.cu"
    try:
        log, _ = nvrtc_check(cuda_source(path), CHECK_ARCHES[-1], name=path.name)
    except (ImportError, OSError) as exc:  # CuPy without its NVRTC library
        pytest.skip(f"NVRTC unavailable: {exc}")
    assert "warning" not in log, log


def test_assigning_to_a_scalar_input_says_so():
    spec = """\
name: s_update
summary: s
tensors:
  - {name: weight, role: weight, doc: w}
  - {name: grad, role: grad, doc: g}
  - {name: r1, role: scalar, doc: r}
math:
  - r1 = 2
  - weight = weight - r1 * grad
"""
    with pytest.raises(SpecError) as err:
        parse_spec(spec, "specs/s_update.yaml")
    assert str(err.value) == "specs/s_update.yaml:8:5: cannot assign to 'r1': it is a scalar input"


# ---- float math stays float -------------------------------------------------------------------

@pytest.mark.parametrize("op", SPECS)
def test_float_element_and_step_functions_have_no_double(op):
    """Per-call values are computed in double once; the per-element code of a float kernel
    (element, step and vector-step functions, in C and CUDA) never touches a double."""
    for path in (ROOT / "generated" / "csrc" / f"{op}_math.h", ROOT / "generated" / "cuda" / f"{op}.cu"):
        for function in path.read_text().split("OPGEN_INLINE ")[1:]:
            head = function.split("(", 1)[0]
            # (a grid op's update and its per-row and per-column statements and stores included)
            per_element = re.search(r"_(element|pass1|row|pass2|grid_update|grid_(rows|cols)\d+)_float$|"
                                    r"_(v?step|pass1|row|row_store|pass2|grid_update|grid_(rows|cols)\d+|"
                                    r"grid_store_(rows|cols))_float(16|32)$", head)
            if per_element:
                body = function[:function.index("\n}") + 2]
                assert "double" not in body, (path.name, head)


# ---- a new array type is one adapter ------------------------------------------------------

class Boxed:
    """An array type the runtime has never heard of: no buffer protocol, no NumPy API."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array


class BoxedArrays(ArrayAdapter):
    """The whole adapter: which values it owns, a NumPy view of one, a result as a Boxed."""

    name, type_names, device, native = "Boxed (host)", "Boxed", False, False

    def owns(self, value) -> bool:
        return isinstance(value, Boxed)

    def view(self, value):
        return value._array

    def wrap(self, array, like):
        return Boxed(array)


@pytest.fixture
def boxed_arrays():
    from opgen.runtime import arrays

    adapter = BoxedArrays()
    arrays.register(adapter)
    yield adapter
    arrays.unregister(adapter)


def test_a_registered_adapter_runs_every_path_in_place(boxed_arrays, backend):
    rng = np.random.default_rng(5)
    w, g = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    m, v = np.zeros_like(w), np.zeros_like(w)
    expected = generated.adam_update(w.copy(), g, m.copy(), v.copy(), lr=0.1)  # NumPy arrays
    weight, mean, var = Boxed(w.copy()), Boxed(m.copy()), Boxed(v.copy())
    result = generated.adam_update(weight, Boxed(g), mean, var, lr=0.1, out=weight)
    assert result is weight  # in place: the caller's own object comes back
    np.testing.assert_array_equal(weight._array, expected)
    fresh = generated.adam_update(weight, Boxed(g), Boxed(m.copy()), Boxed(v.copy()), lr=0.1)
    assert isinstance(fresh, Boxed) and fresh._array is not weight._array
    # many tensors in one call
    weights = [Boxed(w.copy()), Boxed(w.copy())]
    out = generated.adam_update_multi(weights, [Boxed(g), Boxed(g)], [Boxed(m.copy()), Boxed(m.copy())],
                                      [Boxed(v.copy()), Boxed(v.copy())], lr=0.1, out=weights)
    assert out[0] is weights[0] and out[1] is weights[1]
    np.testing.assert_array_equal(weights[1]._array, expected)


def test_an_unregistered_type_is_named_in_the_error(boxed_arrays):
    from opgen.runtime import arrays

    arrays.unregister(boxed_arrays)
    with pytest.raises(TypeError, match=r"adam_update\(\): argument 'weight' must be a numpy.ndarray, "
                                        r"cupy.ndarray, torch.Tensor or an object with __dlpack__ or "
                                        r"__array_interface__, got Boxed"):
        generated.adam_update(Boxed(np.zeros(2, np.float32)), np.zeros(2, np.float32), np.zeros(2, np.float32),
                              np.zeros(2, np.float32), lr=0.1)


def test_included_headers_are_inlined_once_and_reach_the_cache_key(tmp_path):
    """The C cache key and the NVRTC source both read a kernel with its headers inlined, so
    an edit of the element-math header alone rebuilds the kernels."""
    from opgen.cbuild import inline_includes

    (tmp_path / "a.h").write_text('#include "a.h"\nint a;\n')  # includes itself: inlined once
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "k.c").write_text('#include "../a.h"\n#include "../a.h"\nint k;\n')
    text = inline_includes(tmp_path / "sub" / "k.c")
    assert text.count("int a;") == 2 and "int k;" in text and "#include" not in text
    source = ROOT / "generated" / "csrc" / "adam_update.c"
    inlined = inline_includes(source)
    header = (ROOT / "generated" / "csrc" / "adam_update_math.h").read_text()
    assert header.splitlines()[-1] in inlined and "OPGEN_DENSE(" in inlined


def test_the_fast_path_names_a_number_too_large_for_its_kernel():
    """After a first call has loaded the kernel, a plain call takes the fast path; a number
    too large for its C type must still be a ValueError naming it, with nothing written."""
    w, g = np.ones(8, np.float32), np.ones(8, np.float32)
    with use_backend("c"):
        generated.sgd_update(w, g, lr=0.1, out=w)
        before = w.copy()
        with pytest.raises(ValueError, match="argument 'lr' is too large for a float"):
            generated.sgd_update(w, g, lr=10 ** 400, out=w)
        np.testing.assert_array_equal(w, before)


def test_multi_takes_the_dtype_from_the_weight_and_accepts_ranged_unused_params(tmp_path, backend):
    """A multi-tensor op whose first tensor is a float32 master state and whose weight is
    float16; and an ignored parameter with a range: both work on every backend."""
    spec = """\
        name: mpfirst_update
        summary: s
        tensors:
          - {name: master, role: state, dtype: float32, doc: m}
          - {name: weight, role: weight, doc: w}
          - {name: grad, role: grad, doc: g}
        params:
          - {name: lr, type: float, required: true, doc: l}
          - {name: beta, type: float, default: 1.5, range: [1, 2], ignored: true, doc: b}
        math:
          - master = master - lr * grad
          - weight = master
        """
    pkg = build_package(tmp_path, {"mpfirst_update": spec}, f"pkg_mpfirst_{backend}")
    with use_backend(backend):
        masters = [np.ones(4, np.float32), np.full(3, 2.0, np.float32)]
        weights = [m.astype(np.float16) for m in masters]
        grads = [np.ones(4, np.float16), np.ones(3, np.float16)]
        out = pkg.mpfirst_update_multi(masters, weights, grads, lr=0.25, out=weights)
    np.testing.assert_array_equal(masters[0], np.full(4, 0.75, np.float32))
    np.testing.assert_array_equal(out[1], np.full(3, 1.75, np.float16))


BASE = """\
name: {name}
summary: s
tensors:
  - {{name: weight, role: weight, doc: w}}
  - {{name: grad, role: grad, doc: g}}
{extra}"""


@pytest.mark.parametrize("extra, where, message", [
    # an output with lazy rows: the rows the gradient lacks would have no output
    ("params:\n  - {name: lazy_update, type: bool, default: true, doc: l}\nrow_sparse: {lazy: lazy_update}\n"
     "output: upd\nmath:\n  - upd = weight - grad\n", "9:1", "an op with an output cannot have lazy row-sparse updates"),
    # a per-row temporary is constant along a row
    ("  - {name: h, role: state, per_row: true, doc: h}\nrow_sparse: {lazy: true, dense: false}\nmath:\n"
     "  - d = row_mean(grad * grad)\n  - h = h + d\n  - d = d * 2\n  - weight = weight - d * grad\n", "11:5",
     "'d' holds one value per row: an element statement cannot assign it"),
])
def test_specs_the_kernels_could_not_run_are_refused(extra, where, message):
    with pytest.raises(SpecError) as err:
        parse_spec(BASE.format(name="x_update", extra=extra), "specs/x_update.yaml")
    assert str(err.value).startswith(f"specs/x_update.yaml:{where}: {message}"), str(err.value)


def test_an_op_without_parameters_builds_and_runs(tmp_path, backend):
    spec = BASE.format(name="plain_update", extra="math:\n  - weight = weight - grad\n")
    pkg = build_package(tmp_path, {"plain_update": spec}, f"pkg_plain_{backend}")
    w = np.full(5, 3.0, np.float32)
    np.testing.assert_array_equal(pkg.plain_update(w, np.ones(5, np.float32)), np.full(5, 2.0, np.float32))
    ws = [np.full(2, 3.0), np.full(3, 1.0)]
    out = pkg.plain_update_multi(ws, [np.ones(2), np.ones(3)], out=ws)
    np.testing.assert_array_equal(out[1], np.zeros(3))


def test_skip_if_reads_the_parameters_in_the_math_type(backend):
    """adamw skips when rescale_grad is 0: 1e-50 is 0 in float32 (skipped), not in float64."""
    for dtype, skipped in ((np.float32, True), (np.float64, False)):
        w, g = np.ones(3, dtype), np.ones(3, dtype)
        m, v = np.zeros(3, dtype), np.zeros(3, dtype)
        generated.adamw_update(w, g, m, v, 1e-50, lr=0.1, eta=1.0, out=w)
        assert (m == 0).all() == skipped, dtype
