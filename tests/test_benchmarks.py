"""The benchmark suite's measuring functions still run against today's kernels.

Nothing here is timed: each function is called once on tiny inputs and must return
positive figures. (run.py's bare kernel call once fell behind a new kernel argument and
failed, unnoticed, until the suite was next run by hand.)
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from opgen.runtime import available_backends

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif("c" not in available_backends(), reason="the benchmarks measure the C backend")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_run_py_measures():
    run = _load("run")
    wrapped, bare = run.call_overhead(1)
    assert wrapped > 0 and bare > 0
    on, off = run.plan_recheck(4, 16, 1)
    assert on > 0 and off > 0
    assert all(t > 0 for t in run.dense(4096, 1, None, with_numpy=True).values())
    assert all(t > 0 for t in run.dense_bf16(4096, 1, None).values())
    assert all(t > 0 for t in run.many_tensors(4, 64, 1, None).values())


def test_roofline_py_measures():
    roofline = _load("roofline")
    lib = roofline.build_roofline()
    for dtype in roofline.DTYPES.values():
        assert roofline.roofline(lib, 4096, dtype, 1) > 0
        assert roofline.opgen_dense(4096, dtype, 1) > 0
    assert roofline.opgen_multi(4096, 1) > 0


def test_optim_step_py_measures():
    pytest.importorskip("torch")
    import torch

    optim_step = _load("optim_step")
    step, bare = optim_step.own_cost(torch.float32, rounds=2)
    assert step > 0 and bare > 0
    table = optim_step.steps(optim_step.gpt2_shapes(4, 8, 4), torch.bfloat16, False)
    times = optim_step.measure(table, 1)
    assert all(t > 0 for ts in times.values() for t in ts)
    assert optim_step.paired(times, "torch fused", "generated.optim.Adam") > 0
    assert len(optim_step.resnet18_shapes()) == 62
    assert sum(math.prod(s) for s in optim_step.resnet18_shapes()) == 11_689_512  # torchvision's resnet18
    table = optim_step.adafactor_steps(optim_step.resnet18_shapes(2, 3))
    times = optim_step.measure(table, 1)
    assert all(t > 0 for ts in times.values() for t in ts)
    table = optim_step.adafactor_steps(optim_step.gpt2_shapes(4, 8, 4))
    times = optim_step.measure(table, 1)
    assert all(t > 0 for ts in times.values() for t in ts) and "generated.optim.Adafactor" in times


def test_factored_py_measures():
    factored = _load("factored")
    lib = factored.roofline_module().build_roofline()
    for shape in ((8, 16), (3, 4, 5)):
        timings = factored.measure(shape, 1, lib)
        assert "roofline (same bytes)" in timings and all(t > 0 for t in timings.values())
