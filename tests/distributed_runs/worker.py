"""One rank of a 2-process gloo run (tests/test_distributed.py): trains the test model with
generated.optim.Adam under DDP, ZeroRedundancyOptimizer or FSDP2's fully_shard (MODE ddp,
zero, fsdp; zero-adafactor: generated.optim.Adafactor under ZeroRedundancyOptimizer), and
saves the final parameters (full tensors) to OUT on rank 0.

    python worker.py MODE OUT   (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE in the environment)
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from distributed_runs.setup import STEPS, batch, make_model  # noqa: E402

import generated.optim as optim  # noqa: E402


def main(mode: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mode, _, name = mode.partition("-")
    cls = optim.Adafactor if name == "adafactor" else optim.Adam
    model = make_model()
    if mode == "ddp":
        trained = torch.nn.parallel.DistributedDataParallel(model)
        opt = optim.Adam(trained.parameters(), lr=0.01, weight_decay=0.01)
    elif mode == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        trained = torch.nn.parallel.DistributedDataParallel(model)
        opt = ZeroRedundancyOptimizer(trained.parameters(), optimizer_class=cls, lr=0.01, weight_decay=0.01)
    elif mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        trained = fully_shard(model)
        opt = optim.Adam(trained.parameters(), lr=0.01, weight_decay=0.01)
    else:
        raise SystemExit(f"unknown mode {mode}")
    for step in range(STEPS):
        x, y = batch(step, rank, world)
        opt.zero_grad()
        loss = ((trained(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    params = [p.full_tensor() if hasattr(p, "full_tensor") else p.detach() for p in model.parameters()]
    if mode == "zero":
        opt.consolidate_state_dict(to=0)
        if rank == 0:
            state = opt.state_dict()
            names = ("row_var", "variance") if cls is optim.Adafactor else ("exp_avg",)
            assert all(any(k in s for k in names) for s in state["state"].values()), state["state"].keys()
    if rank == 0:
        torch.save([p.detach().clone() for p in params], out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Done and synchronised: leave without the interpreter's teardown, where gloo's threads
    # have been seen to abort the process ("terminate called without an active exception")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
