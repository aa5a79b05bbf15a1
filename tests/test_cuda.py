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

import reference
from opgen.build import DEFAULT_TEMPLATES, render
from opgen.runtime.cuda import CHECK_ARCHES, cuda_source, nvrtc_check
from opgen.spec.loader import parse_spec

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
    assert entries and all(e.startswith(f"opgen_{path.stem}_") for e in entries)


@needs_nvrtc
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.stem)
def test_float_kernels_do_no_double_math(path):
    _, ptx = nvrtc_check(cuda_source(path), CHECK_ARCHES[-1], name=path.name)
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    kernels = re.split(r"(?=\.visible \.entry)", text)[1:]
    assert kernels
    for kernel in kernels:
        name = re.search(r"\.entry\s+(\w+)\(", kernel).group(1)
        if name.endswith(("_float16", "_float32")):
            assert ".f64" not in kernel, f"{name} computes in double"


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
    return {"c": files["csrc/probe_update.c"], "cuda": files["cuda/probe_update.cu"]}


def test_c_and_cuda_bodies_come_from_one_tree(tmp_path):
    before = _kernel_sources("weight - lr * grad", tmp_path)
    after = _kernel_sources("weight - lr * grad * abs(grad)", tmp_path)
    for target in ("c", "cuda"):
        assert "v_weight = v_weight - s_lr * v_grad;" in before[target]
        assert "v_weight = v_weight - s_lr * v_grad * fabsf(v_grad);" in after[target]
        assert "v_weight = v_weight - s_lr * v_grad * fabs(v_grad);" in after[target]  # float64
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
DTYPES = [np.float16, np.float32, np.float64]
SHAPES = [(0,), (1,), (7,), (1000,), (3, 4, 5), (257, 33), (64, 64)]
PARAMS = [dict(lr=0.1), dict(lr=0.05, wd=0.1, rescale_grad=0.5, clip_gradient=0.3)]


@needs_gpu
@pytest.mark.parametrize("params", PARAMS, ids=["defaults", "wd-rescale-clip"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", sorted(reference.OPS))
@pytest.mark.parametrize("mode", ["dense", "lazy", "standard"])
def test_gpu_matches_reference(op, dtype, shape, params, mode):
    import cupy

    import generated
    from generated import RowSparseArray

    state_names, ref = reference.OPS[op]
    if mode == "lazy" and op not in reference.LAZY_OPS:
        pytest.skip(f"{op} has no lazy update")
    if mode != "dense" and len(shape) == 0:
        pytest.skip("row-sparse needs rows")
    weight, grad, states = reference.make_inputs(op, 7, shape, dtype)
    rows = np.arange(0, shape[0], 3)
    host_states = [s.copy() for s in states]
    if mode == "dense":
        expected = reference.as_tuple(ref(weight, grad, *host_states, **params))
        device_grad = cupy.asarray(grad)
    else:
        dense = reference.densify(grad[rows], rows, shape)
        expected = reference.as_tuple(ref(weight, dense, *host_states, **params,
                                          rows=rows if mode == "lazy" else None))
        device_grad = RowSparseArray(cupy.asarray(grad[rows]), cupy.asarray(rows), shape)
    device = [cupy.asarray(a) for a in (weight, *states)]
    extra = {} if op not in reference.LAZY_OPS else {"lazy_update": mode == "lazy"}
    result = getattr(generated, op)(device[0], device_grad, *device[1:], **params, **extra, out=device[0])
    assert result is device[0]
    for name, got, want in zip(("weight", *state_names), device, expected):
        reference.assert_close(cupy.asnumpy(got), want, f"{op} {mode} {name}")


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


FAMILY_CASES = [(op, pset) for op in ("nag_mom_update", "rmspropalex_update", "ftrl_update", "ftml_update",
                                      "signsgd_update", "signum_update", "adagrad_update", "adamw_update",
                                      "mp_sgd_update", "mp_sgd_mom_update", "mp_nag_mom_update", "mp_adamw_update",
                                      "lamb_update_phase1", "lamb_update_phase2", "group_adagrad_update")
                for pset in ("defaults", "mixed")]


@needs_gpu
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 4, 5), (65, 33)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("op,pset", FAMILY_CASES, ids=[f"{o}-{p}" for o, p in FAMILY_CASES])
def test_gpu_family_matches_reference(op, pset, dtype, shape):
    """One step of every family op on CuPy arrays against tests/reference_family.py."""
    import cupy

    import test_family as fam
    from generated import RowSparseArray

    fn = getattr(__import__("generated"), op)
    seed = fam._seed("gpu", op, pset, np.dtype(dtype).name, shape)
    weight, states = fam.make_case(op, seed, shape, dtype)
    rng = np.random.default_rng(seed + 1)
    params = fam._t_params(op, fam.PARAMS[op][pset], 0)
    dev = cupy.asarray
    if op == "lamb_update_phase2":
        g, r1, r2 = fam._lamb2_inputs(rng, weight, dtype)
        (want,) = fam.REF[op](weight, g, r1, r2, **params)
        w = dev(weight)
        fn(w, dev(g), dev(r1), dev(r2), **params, out=w)
        fam.check(cupy.asnumpy(w), want, op, dtype, "weight")
        return
    grad = rng.normal(0.0, 1.0, size=shape).astype(dtype)
    if op in fam.SPARSE_ONLY:
        rows = fam._rows(rng, shape[0])
        expected = fam.REF[op](weight, fam.densify(grad[rows], rows, shape), *states, **params, rows=rows)
        device_grad = RowSparseArray(dev(grad[rows]), dev(rows), shape)
    else:
        expected = fam.REF[op](weight, grad, *states, **params)
        device_grad = dev(grad)
    w, s = dev(weight), [dev(x) for x in states]
    if op == "lamb_update_phase1":
        result = fn(w, device_grad, *s, **params)
    else:
        result = fn(w, device_grad, *s, **params, out=w)
    fam.check(cupy.asnumpy(result), expected[0], op, dtype, "out")
    for name, got, want in zip(fam.STATES[op], s, expected[1:]):
        fam.check(cupy.asnumpy(got), want, op, dtype, name)
