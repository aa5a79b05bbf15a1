"""adam_update on the CPU against its peers, measured in one run (medians, ratios).

    python benchmarks/bench_adam.py [--size 16777216] [--repeat 15]

Peers: the NumPy reference backend (one array expression per line), a memory copy
(NumPy, one thread; torch's copy_, all threads, when torch is installed) and
torch._fused_adam_ (PyTorch's fused CPU Adam) when torch is installed. Bandwidth counts
28 bytes per float32 element: weight, grad, mean, var read; weight, mean, var written.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from generated import adam_update, use_backend


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 24)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    n = args.size
    rng = np.random.default_rng(0)
    w, g = rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, wd=0.0)
    adam_bytes = 28 * n
    rows: list[tuple[str, float, float]] = []  # name, seconds, bytes moved

    def opgen_c():
        with use_backend("c"):
            adam_update(w, g, m, v, out=w, **hyper)

    def opgen_numpy():
        with use_backend("numpy"):
            adam_update(w, g, m, v, out=w, **hyper)

    rows.append(("opgen adam_update (C)", median_seconds(opgen_c, args.repeat), adam_bytes))
    rows.append(("opgen NumPy reference", median_seconds(opgen_numpy, max(3, args.repeat // 3)), adam_bytes))
    src, dst = np.ones(4 * n, np.float32), np.empty(4 * n, np.float32)
    rows.append(("memory copy (NumPy, 1 thread)", median_seconds(lambda: np.copyto(dst, src), args.repeat),
                 2 * src.nbytes))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tw, tg, tm, tv = (torch.from_numpy(a.copy()) for a in (w, g, m, v))
        step = torch.zeros((), dtype=torch.float32)

        def torch_fused():
            torch._fused_adam_([tw], [tg], [tm], [tv], [], [step], lr=hyper["lr"], beta1=0.9, beta2=0.999,
                               weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

        rows.append((f"torch._fused_adam_ (torch {torch.__version__})", median_seconds(torch_fused, args.repeat),
                     adam_bytes))
        ts, td = torch.from_numpy(src), torch.from_numpy(dst)
        rows.append(("memory copy (torch copy_, all threads)", median_seconds(lambda: td.copy_(ts), args.repeat),
                     2 * src.nbytes))

    base = rows[0][1]
    print(f"adam_update, {n:,} float32 elements, out=weight; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'implementation':44} {'median ms':>10} {'GB/s':>8} {'time / opgen C':>15}")
    for name, seconds, nbytes in rows:
        print(f"{name:44} {seconds * 1e3:10.2f} {nbytes / seconds / 1e9:8.1f} {seconds / base:15.2f}")
    copies = [r for r in rows if r[0].startswith("memory copy")]
    best_copy = max(nb / s for _, s, nb in copies)
    print(f"opgen C reaches {adam_bytes / base / best_copy:.0%} of the best copy bandwidth measured")


if __name__ == "__main__":
    main()
