"""Adafactor, factored (a grid op): opgen's one call against torch.optim.Adafactor.

    python benchmarks/factored.py [--repeat R] [--shapes 1024x4096,768x768,256x256x3x3]

Per float32 weight shape (rows x cols, or a stack of them: a 4-D convolution weight is
factored over its last two dimensions, as torch does), medians of R runs in one process:

- ``torch_adafactor_update``: opgen's call with torch.optim.Adafactor's semantics (a
  read-only pass for the row and column means and the weight's RMS, one for the update's RMS,
  then the update: 24 bytes per element moved, the factors' few bytes aside);
- ``adafactor_update``: the paper's variant, the same passes;
- ``torch.optim.Adafactor`` (foreach=False and foreach=True), when torch >= 2.5 is
  installed: its step on a parameter of the same shape (the gradient set once);
- ``adam_update``: opgen's dense Adam on as many elements, for scale (one pass over four
  tensors: 28 bytes per element);
- the roofline: a C kernel with the grid op's memory traffic (roofline.py's roof_grid32: the
  same three passes, trivial integer math, the best of 1 and 2 threads), reported as its time
  over opgen's (1.0: at the bandwidth limit).

Ratios are to opgen's torch_adafactor_update in the same run. Every call runs in place on
the same arrays; the values drift, the figures do not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

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


def roofline_module():
    """roofline.py, beside this file (its C kernels, built once per run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import roofline

    return roofline


def measure(shape: tuple[int, ...], repeat: int, lib=None) -> dict[str, float]:
    """Seconds per call (medians), by name; with ``lib`` (roofline.build_roofline()), the
    same-bytes kernel's as "roofline (same bytes)"."""
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=shape).astype(np.float32), rng.normal(size=shape).astype(np.float32)
    r, c = np.full(shape[:-1], 1e-3, np.float32), np.full((*shape[:-2], shape[-1]), 1e-3, np.float32)
    m, v = np.zeros(shape, np.float32), np.full(shape, 1e-3, np.float32)
    timings = {
        "torch_adafactor_update (opgen)": median_seconds(lambda: torch_adafactor_update(w, g, r, c, t=5, out=w),
                                                         repeat),
        "adafactor_update (opgen)": median_seconds(lambda: adafactor_update(w, g, r, c, t=5, out=w), repeat),
        "adam_update (opgen, same elements)": median_seconds(lambda: adam_update(w, g, m, v, lr=1e-3, out=w),
                                                            repeat),
    }
    if lib is not None:
        timings["roofline (same bytes)"] = roofline_module().grid_roofline(lib, w.size, repeat)
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
    parser.add_argument("--shapes", default="768x768,1024x4096,4096x1024,256x256x3x3,12x768x64")
    args = parser.parse_args()
    lib = roofline_module().build_roofline()
    for text in args.shapes.split(","):
        shape = tuple(int(x) for x in text.split("x"))
        timings = measure(shape, args.repeat, lib)
        base = timings["torch_adafactor_update (opgen)"]
        print(f"\n{' x '.join(map(str, shape))} float32 ({int(np.prod(shape)):,} elements), medians of {args.repeat}"
              f" (roofline fraction {timings['roofline (same bytes)'] / base:.2f}):")
        for name, seconds in timings.items():
            print(f"  {name:<40} {seconds * 1e3:9.3f} ms  {seconds / base:6.2f}x")


if __name__ == "__main__":
    main()
