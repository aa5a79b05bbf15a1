"""generated.optim.Adam inside torch.distributed's own engine (issue 11): DDP, the
ZeroRedundancyOptimizer and FSDP2's fully_shard, each run as 2 processes with the gloo backend
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


def _single_process() -> list:
    model = make_model()
    opt = optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01)
    for step in range(STEPS):
        x, y = batch(step)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.fixture(scope="module")
def expected():
    return _single_process()


@pytest.mark.parametrize("mode", ["ddp", "zero", "fsdp"])
def test_two_processes_follow_the_single_process_trajectory(mode, expected, tmp_path):
    got = _run(mode, tmp_path / "params.pt")
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        # the all-reduce sums in another order than one process's backward: float32 tolerance
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)
    start = [p.detach() for p in make_model().parameters()]
    assert any(not torch.allclose(g, s) for g, s in zip(got, start))  # it trained
