"""Ops with whole-tensor reductions: LAMB in one call against the ways people run it now.

    python benchmarks/reductions.py [--size N] [--repeat R]

At N float32 elements (default 4M), medians of R runs in one process, as ratios to opgen's
dense Adam on the same arrays (one pass over the same four tensors: the floor an update
that reads weight, grad and two states can reach; LAMB's norms add one read-only pass:
44 bytes per float32 element in all, against 48 for MXNet's sequence):

- ``lamb_update``: opgen's LAMB in one call (a read-only pass for both norms, then the update);
- MXNet's sequence as its LAMB optimizer runs it, with opgen's ops: ``lamb_update_phase1``
  (writes the direction g), two norms (NumPy), ``lamb_update_phase2``;
- torch eager, when torch is installed: the paper's step in tensor ops (what a user writes
  without a fused LAMB: torch.optim has none);
- ``lars_update`` and ``novograd_update``, the other reducing ops, for scale.

Every timed call runs in place on the same arrays; the values drift (the figures do not).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from generated import adam_update, lamb_update, lamb_update_phase1, lamb_update_phase2, lars_update, novograd_update


def median_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 22)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    n, repeat = args.size, args.repeat
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=n).astype(np.float32), rng.normal(size=n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.full(n, 1e-3, np.float32)
    direction, scalar = np.empty(n, np.float32), np.zeros(1, np.float32)
    lamb = dict(t=3, wd=0.01)

    def mxnet_sequence():
        lamb_update_phase1(w, g, m, v, out=direction, **lamb)
        r1, r2 = np.linalg.norm(w), np.linalg.norm(direction)
        lamb_update_phase2(w, direction, float(r1), float(r2), lr=1e-3, out=w)

    timings = {
        "adam_update (same arrays, one pass)": median_seconds(lambda: adam_update(w, g, m, v, lr=1e-3, out=w), repeat),
        "lamb_update (one call)": median_seconds(lambda: lamb_update(w, g, m, v, lr=1e-3, out=w, **lamb), repeat),
        "phase1 + 2 norms + phase2 (MXNet's LAMB, opgen's ops)": median_seconds(mxnet_sequence, repeat),
        "lars_update (one call)": median_seconds(lambda: lars_update(w, g, m, lr=1.0, momentum=0.9, out=w), repeat),
        "novograd_update (one call)": median_seconds(
            lambda: novograd_update(w, g, m, scalar, lr=1e-3, t=3, out=w), repeat),
    }
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tw, tg, tm, tv = (torch.from_numpy(a.copy()) for a in (w, g, m, v))

        def torch_lamb():
            with torch.no_grad():
                tm.mul_(0.9).add_(tg, alpha=0.1)
                tv.mul_(0.999).addcmul_(tg, tg, value=0.001)
                u = (tm / (1 - 0.9 ** 3)) / ((tv / (1 - 0.999 ** 3)).sqrt_().add_(1e-6)) + 0.01 * tw
                r1, r2 = tw.norm(), u.norm()
                trust = torch.where((r1 > 0) & (r2 > 0), r1 / r2, torch.ones(()))
                tw.sub_(1e-3 * trust * u)

        timings[f"torch {torch.__version__} eager LAMB step"] = median_seconds(torch_lamb, repeat)
    base = timings["adam_update (same arrays, one pass)"]
    print(f"{n:,} float32 elements, medians of {repeat} runs")
    print(f"{'':58} {'ms':>8} {'x adam_update':>14}")
    for name, seconds in timings.items():
        print(f"{name:58} {seconds * 1e3:8.2f} {seconds / base:14.2f}")


if __name__ == "__main__":
    main()
