"""The CUDA backend: every generated .cu compiles with NVRTC (no GPU needed), float math has
no double in it, C and CUDA share one expression tree, and (on a GPU) numerics match the
independent NumPy reference.

Without CuPy's NVRTC these tests skip with the reason; CI installs CuPy and the NVRTC wheel
and sets OPGEN_REQUIRE_NVRTC=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

import cases
from opgen.build import DEFAULT_TEMPLATES, render
from opgen.runtime.cuda import CHECK_ARCHES, cuda_source, nvrtc_check
from opgen.spec.loader import load_spec, parse_spec
from opgen.targets import abi

ROOT = Path(__file__).resolve().parent.parent
CU_FILES = sorted((ROOT / "generated" / "cuda").glob("*.cu"))


def _nvrtc_missing() -> str | None:
    try:
        nvrtc_check('extern "C" __global__ void probe() {}', CHECK_ARCHES[0])
    except Exception as exc:  # ImportError, or libnvrtc not found
        return f"NVRTC unavailable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return None


NVRTC_MISSING = _nvrtc_missing()
if NVRTC_MISSING and os.environ.get("OPGEN_REQUIRE_NVRTC") == "1":
    raise RuntimeError(f"OPGEN_REQUIRE_NVRTC=1 but {NVRTC_MISSING}")
needs_nvrtc = pytest.mark.skipif(NVRTC_MISSING is not None, reason=NVRTC_MISSING or "")


def test_the_multi_tensor_chunk_table_covers_every_element_once():
    """The table a multi-tensor launch walks (built on the host: checked here without a GPU),
    against the chunks written out one by one."""
    from opgen.runtime.multi import chunk_table

    for sizes, chunk in (([0, 1, 5, 0, 8, 9], 4), ([70_000, 0, 65_536, 65_537, 3], 65_536), ([], 8), ([0, 0], 8)):
        expected = [(i, lo) for i, n in enumerate(sizes) for lo in range(0, n, chunk)]
        got = chunk_table(np.array(sizes, np.int64), chunk)
        assert got.dtype == np.int64 and got.reshape(-1, 2).tolist() == [list(p) for p in expected]


def test_every_spec_has_cuda_source():
    specs = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))
    assert [p.stem for p in CU_FILES] == specs


@needs_nvrtc
@pytest.mark.parametrize("arch", CHECK_ARCHES)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.stem)
def test_nvrtc_compiles_without_warnings(path, arch):
    log, ptx = nvrtc_check(cuda_source(path), arch, name=path.name)
    assert "warning" not in log.lower(), log
    entries = re.findall(r"\.entry\s+(\w+)\(", ptx.decode() if isinstance(ptx, bytes) else ptx)
    # exactly the kernels the ABI gives a launch, with their reduction passes, a grid op's
    # stages, and stores (none for an op that only reduces: it runs on the host)
    spec = load_spec(ROOT / "specs" / f"{path.stem}.yaml")
    expected = {name for k in abi.kernels(spec) for name in k.device_kernels}
    assert set(entries) == expected
    assert expected or spec.reduction


@needs_nvrtc
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.stem)
def test_float_kernels_do_no_double_math_per_element(path):
    """Parameters arrive in double and the per-call values are computed in double once
    (pinned by OPGEN_PER_CALL, else NVRTC recomputes them inside the loops); no f64
    instruction may sit in an element loop (a loop that reads or writes global memory).
    Ops whose per-call values call double pow (``**``) are covered at the source level
    (tests/test_structure.py): pow's out-of-line slow paths land after the loops in PTX,
    where this loop finder cannot tell them from loop code."""
    if _per_call_pow(path.stem):
        pytest.skip("per-call pow: checked at the source level")
    if load_spec(ROOT / "specs" / f"{path.stem}.yaml").reduction:
        pytest.skip("an op that only reduces: no CUDA kernels (it runs on the host)")
    _, ptx = nvrtc_check(cuda_source(path), CHECK_ARCHES[-1], name=path.name)
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    kernels = re.split(r"(?=\.visible \.entry)", text)[1:]
    assert kernels
    for kernel in kernels:
        name = re.search(r"\.entry\s+(\w+)\(", kernel).group(1)
        if name.endswith(("_float16", "_float32")):
            assert not _element_loop_f64(kernel), f"{name} computes in double per element"


def _per_call_pow(op: str) -> bool:
    """Whether the op's per-call values raise to a power (double pow)."""
    from opgen.expr.tree import Binary, children
    from opgen.spec import load_spec

    def has_pow(e) -> bool:
        return (isinstance(e, Binary) and e.op == "**") or any(has_pow(c) for c in children(e))

    return any(has_pow(s.expr) for s in load_spec(ROOT / "specs" / f"{op}.yaml").program.prologue)


def _element_loop_f64(kernel_ptx: str) -> list[str]:
    """f64 instructions between a label and a later branch back to it, in innermost loops
    that touch global memory other than in double (a reducing op's update first combines its
    passes' double partial totals in a loop of their own, and a multi-tensor kernel computes
    each chunk's per-call values in the loop over the chunks: per call, not per element)."""
    lines = kernel_ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^(\$L__BB\d+_\d+):", line))}
    loops = []
    for j, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+);", line)
        if m and labels.get(m.group(1), j + 1) < j:
            loops.append((labels[m.group(1)], j))
    found = []
    for start, end in loops:
        if any(start < s and e < end for s, e in loops):
            continue  # an outer loop: its inner loops are checked
        body = lines[start:end]
        if any(("ld.global" in x or "st.global" in x) and ".f64" not in x for x in body):
            found += [x.strip() for x in body if ".f64" in x]
    return found


SPEC = """\
name: probe_update
summary: Probe.
tensors:
  - {name: weight, role: weight, doc: Weight}
  - {name: grad, role: grad, doc: Gradient}
params:
  - {name: lr, type: float, required: true, doc: Learning rate}
math:
  - weight = MATH
"""


def _kernel_sources(math: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "probe_update.yaml").write_text(SPEC.replace("MATH", math))
    op = parse_spec(SPEC.replace("MATH", math), "specs/probe_update.yaml", "probe_update")
    files = render([op], DEFAULT_TEMPLATES).files
    # the element math lives in one header that the C and the CUDA file both include
    assert '#include "probe_update_math.h"' in files["csrc/probe_update.c"]
    assert '#include "../csrc/probe_update_math.h"' in files["cuda/probe_update.cu"]
    header = files["csrc/probe_update_math.h"]
    return {"c": header + files["csrc/probe_update.c"], "cuda": header + files["cuda/probe_update.cu"]}


def test_c_and_cuda_bodies_come_from_one_tree(tmp_path):
    before = _kernel_sources("weight - lr * grad", tmp_path)
    after = _kernel_sources("weight - lr * grad * abs(grad)", tmp_path)
    for target in ("c", "cuda"):
        assert "v_weight = v_weight - s.s_lr * v_grad;" in before[target]
        assert "v_weight = v_weight - s.s_lr * v_grad * fabsf(v_grad);" in after[target]
        assert "v_weight = v_weight - s.s_lr * v_grad * fabs(v_grad);" in after[target]  # float64
        assert "fabsf" not in before[target]


# ---- on a GPU --------------------------------------------------------------------------

def _gpu_missing() -> str | None:
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA GPU"
    except Exception as exc:
        return f"no CUDA GPU ({type(exc).__name__})"
    return None


GPU_MISSING = _gpu_missing()
needs_gpu = pytest.mark.skipif(GPU_MISSING is not None, reason=GPU_MISSING or "")
DTYPES = cases.DTYPES
GPU_SHAPES = [(0,), (1,), (7,), (1000,), (3, 4, 5), (65, 33), (257, 33), (64, 64)]
# every op with the usual call, in every mode it has: dense, and its row-sparse modes
GPU_CASES = [(op, mode) for op in cases.SINGLE
             for mode in (["dense"] if cases.op(op).dense else []) + list(cases.op(op).sparse_modes)]


def _to_device(cupy, a):
    from generated import RowSparseArray

    if isinstance(a, RowSparseArray):
        return RowSparseArray(cupy.asarray(a.data), cupy.asarray(a.indices), a.shape)
    return cupy.asarray(a) if isinstance(a, np.ndarray) else a


@needs_gpu
@pytest.mark.parametrize("pset", ["defaults", "mixed"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("op,mode", GPU_CASES, ids=[f"{op}-{mode}" for op, mode in GPU_CASES])
def test_gpu_matches_reference(op, mode, dtype, shape, pset):
    """One step of every op on CuPy arrays (dense; lazy and standard row-sparse, every third
    row) against the independent reference."""
    import cupy

    info = cases.op(op)
    params = cases.step_params(op, cases.PARAMS[op][pset])
    case = cases.make_case(op, cases.seed("gpu", op, mode, pset, np.dtype(dtype).name, shape), shape, dtype,
                           params)
    extra = {} if mode == "dense" else info.sparse_modes[mode]
    if mode != "dense":
        rows = np.arange(0, shape[0], 3)
        dense = np.random.default_rng(cases.seed("gpu-grad", op, shape)).normal(size=shape).astype(dtype)
        case.grad = cases.rsp(dense[rows].copy(), rows, shape)
        case.new_scalars()
    expected = case.expected(extra)
    device = cases.Case(op, {n: _to_device(cupy, a) for n, a in case.arrays.items()}, params, dtype)
    result = device(out=None if info.output else device.weight, **extra)
    if not info.output:
        assert result is device.weight
    case.check(cupy.asnumpy(result), expected[0], f"{mode} out")
    for name, got, want in zip(info.states, device.states, expected[1:], strict=True):
        case.check(cupy.asnumpy(got), want, f"{mode} {name}")


REDUCING_SINGLE = [op for op in cases.SINGLE if cases.op(op).reduces]


@needs_gpu
@pytest.mark.parametrize("pset", ["defaults", "mixed"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("size", [0, 1, 511, 513, 100_003, 3_000_001])
@pytest.mark.parametrize("op", REDUCING_SINGLE)
def test_gpu_reductions_match_the_c_kernels_and_repeat_bit_for_bit(op, size, dtype, pset):
    """The CUDA passes (a fixed grid of partial totals, combined in a fixed tree) against the C
    kernels on the same inputs, over sizes that leave blocks empty, partial and full, and
    parameter sets that switch clipping, bias correction, gradient averaging; the same call
    twice gives the same bits."""
    import cupy

    params = cases.step_params(op, cases.PARAMS[op][pset])
    host = cases.make_case(op, cases.seed("gpu-reduce", op, size), (size,), dtype, params)
    results = []
    for _ in range(2):
        device = cases.Case(op, {n: _to_device(cupy, a) for n, a in host.arrays.items()}, params, np.float32)
        out = device(out=device.weight)
        results.append([cupy.asnumpy(out)] + [cupy.asnumpy(s) for s in device.states])
    c = host.copy()
    expected = [c(out=c.weight)] + list(c.states)
    for got, again, want in zip(results[0], results[1], expected, strict=True):
        np.testing.assert_array_equal(got, again)
        host.check(got, want, f"{op} {size}")  # the suites' tolerance of the dtype


@needs_gpu
@pytest.mark.parametrize("op", ["lamb_update", "novograd_update"])
def test_gpu_reduction_step_captures_in_a_cuda_graph(op):
    """No host synchronisation in a reducing op's call: it is captured into a CUDA graph, and
    each replay does what a call does, also after other allocations (the partial totals live
    in the op's workspace, not in memory the pool hands out again)."""
    import cupy

    import generated

    fn = getattr(generated, op)
    info = cases.op(op)
    params = {k: v for k, v in cases.step_params(op, cases.PARAMS[op]["defaults"]).items() if k in info.params}
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        host = cases.make_case(op, cases.seed("graph", op), (4096,), np.float32, params)
        device = [cupy.asarray(host.arrays[n]) for n in info.tensor_names]
        expected = [a.copy() for a in device]
        fn(*device, **params, out=device[0])  # warm: compiled, the workspace made
        for _ in range(3):  # the warm call and the two replays below
            fn(*expected, **params, out=expected[0])
        stream.begin_capture()
        fn(*device, **params, out=device[0])
        graph = stream.end_capture()
        graph.launch(stream)
        _ = [cupy.zeros(1 << 20, cupy.float64) for _ in range(8)]  # the pool hands out memory in between
        graph.launch(stream)
        stream.synchronize()
    for got, want in zip(device, expected, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(got), cupy.asnumpy(want))


MULTI_ON_DEVICE = [op for op in cases.SINGLE if cases.op(op).has_multi_variant and not cases.op(op).reduces]


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", MULTI_ON_DEVICE)
def test_gpu_multi_tensor_call_is_one_launch_matching_the_c_kernel(op, dtype, monkeypatch):
    """Tensors of 0, 1, 3, 65,537 (two chunks) and 200,000 elements in one call on CuPy
    arrays: one kernel launch, and the bits of the C multi-tensor kernel on the same inputs
    (+ - * / sqrt with --fmad=false round as in C)."""
    import cupy

    from opgen.runtime import cuda

    launches = []
    real = cuda.launch
    monkeypatch.setattr(cuda, "launch", lambda *a: (launches.append(a[1].name), real(*a)))
    info = cases.op(op)
    params = cases.step_params(op, cases.PARAMS[op]["defaults"])
    host = [cases.make_case(op, cases.seed("gpu-multi", op, k), (n,), dtype, params)
            for k, n in enumerate((0, 1, 3, 65_537, 200_000))]
    lists = [[c.arrays[name] for c in host] for name in info.tensor_names]
    multi = getattr(__import__("generated"), f"{op}_multi")
    kernel_params = {k: v for k, v in params.items() if k in info.param and info.param[k].in_kernel}
    device = [[cupy.asarray(a) for a in lst] for lst in lists]
    got = multi(*device, **kernel_params, out=device[0])
    expected = multi(*lists, **kernel_params, out=lists[0])
    assert len(launches) == 1 and launches[0].endswith(f"_multi_{np.dtype(dtype).name}"), launches
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(g), e)
    for k, name in enumerate(info.tensor_names):
        if name in info.states:
            for g, e in zip(device[k], lists[k], strict=True):
                np.testing.assert_array_equal(cupy.asnumpy(g), e)


@needs_gpu
def test_gpu_refuses_mixed_host_and_device_arrays():
    import cupy

    from generated import adam_update

    w = cupy.ones(8, cupy.float32)
    with pytest.raises(TypeError, match="'grad'.*cannot be mixed"):
        adam_update(w, np.ones(8, np.float32), cupy.zeros(8, cupy.float32), cupy.zeros(8, cupy.float32), lr=0.1)


def test_compile_error_names_the_spec_and_shows_the_source_lines():
    source = "\n".join(f"line {k}" for k in range(1, 21))
    log = 'kern.cu(12): error: identifier "v_foo" is undefined\n1 error detected'
    text = __import__("opgen.runtime.cuda", fromlist=["x"]).explain_compile_error("specs/x_update.yaml", source, log)
    assert text.startswith("specs/x_update.yaml: the generated CUDA source did not compile:")
    assert 'identifier "v_foo" is undefined' in text
    assert "    12> line 12" in text and "     9  line 9" in text and "    15  line 15" in text


@needs_nvrtc
def test_nvrtc_reports_errors():
    from opgen.runtime.cuda import CudaCompileError

    with pytest.raises(CudaCompileError, match="undefined"):
        nvrtc_check('extern "C" __global__ void k(float *x) { x[0] = v_foo; }', CHECK_ARCHES[0])


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (300, 129), (3, 40_000), (20_000, 3), (0, 5), (5, 0)],
                         ids=cases.shape_id)
@pytest.mark.parametrize("op", cases.GRID_OPS)
def test_gpu_grid_ops_match_the_c_kernels_and_repeat_bit_for_bit(op, shape, dtype):
    """A grid op's CUDA stages (a pass per level on a block per row block, one-block phases,
    the update, the states' store) against the C kernel on the same inputs, three steps; the
    same call twice gives the same bits."""
    import cupy

    import generated

    fn = getattr(generated, op)
    rng = np.random.default_rng(cases.seed("gpu-grid", op, shape))
    w = rng.normal(size=shape).astype(dtype)
    r, c = rng.uniform(0.001, 0.01, shape[0]).astype(dtype), rng.uniform(0.001, 0.01, shape[1]).astype(dtype)
    grads = [rng.normal(size=shape).astype(dtype) for _ in range(3)]
    runs = []
    for _ in range(2):
        dw, dr, dc = cupy.asarray(w), cupy.asarray(r), cupy.asarray(c)
        for t, g in enumerate(grads, 1):
            fn(dw, cupy.asarray(g), dr, dc, t=t, out=dw)
        runs.append([cupy.asnumpy(a) for a in (dw, dr, dc)])
    hw, hr, hc = w.copy(), r.copy(), c.copy()
    for t, g in enumerate(grads, 1):
        fn(hw, g, hr, hc, t=t, out=hw)
    for got, again, want in zip(runs[0], runs[1], (hw, hr, hc), strict=True):
        np.testing.assert_array_equal(got, again)
        cases.check(got, want, op, dtype, f"gpu {shape}")


@needs_gpu
def test_gpu_grid_step_captures_in_a_cuda_graph():
    """No host synchronisation in a grid op's call: captured into a CUDA graph, each replay
    does what a call does."""
    import cupy

    import generated

    stream = cupy.cuda.Stream(non_blocking=True)
    rng = np.random.default_rng(1)
    with stream:
        arrays = [cupy.asarray(a) for a in (rng.normal(size=(64, 96)).astype(np.float32),
                                            rng.normal(size=(64, 96)).astype(np.float32),
                                            np.full(64, 0.01, np.float32), np.full(96, 0.01, np.float32))]
        expected = [a.copy() for a in arrays]
        generated.adafactor_update(*arrays, t=2, out=arrays[0])  # warm: compiled, the workspace made
        for _ in range(3):
            generated.adafactor_update(*expected, t=2, out=expected[0])
        stream.begin_capture()
        generated.adafactor_update(*arrays, t=2, out=arrays[0])
        graph = stream.end_capture()
        graph.launch(stream)
        _ = [cupy.zeros(1 << 20, cupy.float64) for _ in range(8)]
        graph.launch(stream)
        stream.synchronize()
    for got, want in zip(arrays, expected, strict=True):
        np.testing.assert_array_equal(cupy.asnumpy(got), cupy.asnumpy(want))
