"""Adafactor, factored (a grid op): opgen's one call against torch.optim.Adafactor.

    python benchmarks/factored.py [--repeat R] [--shapes 1024x4096,768x768]

Per 2-D float32 weight shape, medians of R runs in one process:

- ``torch_adafactor_update``: opgen's call with torch.optim.Adafactor's semantics (a
  read-only pass for the row and column means and the weight's RMS, one for the update's RMS,
  then the update: 24 bytes per element moved, the factors' few bytes aside);
- ``adafactor_update``: the paper's variant, the same passes;
- ``torch.optim.Adafactor`` (foreach=False and foreach=True), when torch >= 2.5 is
  installed: its step on a parameter of the same shape (the gradient set once);
- ``adam_update``: opgen's dense Adam on as many elements, for scale (one pass over four
  tensors: 28 bytes per element).

Ratios are to opgen's torch_adafactor_update in the same run. Every call runs in place on
the same arrays; the values drift, the figures do not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from generated import adafactor_update, adam_update, torch_adafactor_update


def median_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(shape: tuple[int, int], repeat: int) -> dict[str, float]:
    rows, cols = shape
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    r, c = np.full(rows, 1e-3, np.float32), np.full(cols, 1e-3, np.float32)
    m, v = np.zeros(shape, np.float32), np.full(shape, 1e-3, np.float32)
    timings = {
        "torch_adafactor_update (opgen)": median_seconds(lambda: torch_adafactor_update(w, g, r, c, t=5, out=w),
                                                         repeat),
        "adafactor_update (opgen)": median_seconds(lambda: adafactor_update(w, g, r, c, t=5, out=w), repeat),
        "adam_update (opgen, same elements)": median_seconds(lambda: adam_update(w, g, m, v, lr=1e-3, out=w),
                                                            repeat),
    }
    try:
        import torch
    except ImportError:
        return timings
    if not hasattr(torch.optim, "Adafactor"):
        return timings
    for foreach in (False, True):
        p = torch.nn.Parameter(torch.from_numpy(w.copy()))
        p.grad = torch.from_numpy(g.copy())
        opt = torch.optim.Adafactor([p], foreach=foreach)
        with torch.no_grad():
            timings[f"torch.optim.Adafactor(foreach={foreach})"] = median_seconds(opt.step, repeat)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--shapes", default="768x768,1024x4096,4096x1024")
    args = parser.parse_args()
    for text in args.shapes.split(","):
        shape = tuple(int(x) for x in text.split("x"))
        timings = measure(shape, args.repeat)
        base = timings["torch_adafactor_update (opgen)"]
        print(f"\n{shape[0]} x {shape[1]} float32 ({shape[0] * shape[1]:,} elements), medians of {args.repeat}:")
        for name, seconds in timings.items():
            print(f"  {name:<40} {seconds * 1e3:9.3f} ms  {seconds / base:6.2f}x")


if __name__ == "__main__":
    main()
