"""What the distributed runs and the single-process run share: the model and the data."""

from __future__ import annotations

import torch

STEPS = 15
BATCH = 32


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def batch(step: int, rank: int = 0, world: int = 1):
    """Step ``step``'s batch; rank ``rank`` of ``world`` takes its equal share of it (so the
    mean of the ranks' mean losses, whose gradient DDP averages, is the whole batch's)."""
    g = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)
    share = BATCH // world
    return x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
