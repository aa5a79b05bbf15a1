"""generated.optim.Adam inside torch.distributed's own engine (issue 11): DDP, the
ZeroRedundancyOptimizer and FSDP2's fully_shard (and generated.optim.Adafactor under the
ZeroRedundancyOptimizer), each run as 2 processes with the gloo backend
on the CPU; the trajectory must equal the single-process one on the whole batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import generated.optim as optim  # noqa: E402
from distributed_runs.setup import STEPS, batch, make_model  # noqa: E402

WORKER = Path(__file__).resolve().parent / "distributed_runs" / "worker.py"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(mode: str, out: Path, world: int = 2) -> list:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(WORKER), mode, str(out)], env={**env, "RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(world)]
    results = [p.communicate(timeout=300) for p in procs]
    for rank, (p, (stdout, stderr)) in enumerate(zip(procs, results)):
        assert p.returncode == 0, f"rank {rank} failed:\n{stdout}\n{stderr[-4000:]}"
    return torch.load(out)


def _single_process(cls) -> list:
    model = make_model()
    opt = cls(model.parameters(), lr=0.01, weight_decay=0.01)
    for step in range(STEPS):
        x, y = batch(step)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.fixture(scope="module")
def expected():
    return {"adam": _single_process(optim.Adam), "adafactor": _single_process(optim.Adafactor)}


@pytest.mark.parametrize("mode", ["ddp", "zero", "fsdp", "zero-adafactor"])
def test_two_processes_follow_the_single_process_trajectory(mode, expected, tmp_path):
    """(Adafactor's matrices take the grid op per tensor, its vectors a multi-tensor call, on
    the states each rank holds.)"""
    got = _run(mode, tmp_path / "params.pt")
    expected = expected[mode.partition("-")[2] or "adam"]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        # the all-reduce sums in another order than one process's backward: float32 tolerance
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
    start = [p.detach() for p in make_model().parameters()]
    assert any(not torch.allclose(g, s) for g, s in zip(got, start))  # it trained


SHARD_SCRIPT = """\
import os, sys
import numpy as np
import torch
import torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
import generated

mesh = init_device_mesh("cpu", (1,))
def make(placement):
    return [distribute_tensor(torch.full((4, 3), v), mesh, [placement]) for v in (1.0, 0.5, 0.0)]

w, g, mom = make(Shard(0))
before = [t.to_local().clone() for t in (w, g, mom)]
for call in (lambda: generated.lars_update(w, g, mom, lr=0.1, out=w),
             lambda: generated.lars_update_multi([w], [g], [mom], lr=0.1, out=[w])):
    try:
        call()
        raise SystemExit("a sharded parameter was taken")
    except TypeError as exc:
        print(exc)
assert all(torch.equal(a.to_local(), b) for a, b in zip((w, g, mom), before)), "a refused call wrote"
generated.sgd_mom_update(w, g, mom, lr=0.1, out=w)  # element-wise math: a shard is fine
assert torch.allclose(mom.to_local(), torch.full((4, 3), -0.05))
w, g, mom = make(Replicate())
generated.lars_update(w, g, mom, lr=0.1, out=w)  # whole on every rank
rate = 0.1 * 0.001 * np.sqrt(12) / np.sqrt(12 * 0.25)
assert torch.allclose(mom.to_local(), torch.full((4, 3), -rate * 0.5, dtype=torch.float32)), mom

# the optimizer: a sharded parameter after a plain one is refused before either is written,
# and the step counts are as they were
import generated.optim
plain = torch.nn.Parameter(torch.ones(5))
shard = torch.nn.Parameter(distribute_tensor(torch.ones(4, 3), mesh, [Shard(0)]))
plain.grad, shard.grad = torch.ones(5), distribute_tensor(torch.ones(4, 3), mesh, [Shard(0)])
opt = generated.optim.LAMB([plain, shard], lr=0.1)
try:
    opt.step()
    raise SystemExit("LAMB took a sharded parameter")
except TypeError as exc:
    print(exc)
assert torch.equal(plain.detach(), torch.ones(5)), "a refused step wrote the plain parameter"
assert all(float(s["step"]) == 0 for s in opt.state.values()), [s["step"] for s in opt.state.values()]
print("ok")
"""


def test_reducing_ops_refuse_a_sharded_dtensor():
    """lars_update's norms over an FSDP2-style Shard(0) DTensor would be this rank's shard's:
    refused (single and multi-tensor forms) with nothing written; an element-wise op takes the
    shard, and a replicated DTensor is whole."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "1",
           "RANK": "0", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "ok"
    assert "lars_update(): argument 'weight' is a DTensor sharded across ranks (Shard(dim=0))" in lines[0], lines
    assert "lars_update_multi(): argument 'weights[0]' is a DTensor sharded across ranks" in lines[1], lines
    assert "lamb_update: parameter 1 of the group is a DTensor sharded across ranks" in lines[2], lines
