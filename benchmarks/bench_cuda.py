"""adam_update on a CUDA GPU: achieved GB/s against a device-to-device copy and torch.

    pip install -e '.[cuda]' && python benchmarks/bench_cuda.py [--size 67108864] [--repeat 20]

Dense: 64M float32 elements, out=weight, 28 bytes per element (weight, grad, mean, var
read; weight, mean, var written). Lazy row-sparse: 1,000 rows of a 1,000,000 x 64 weight,
counting the bytes of the touched rows only. Peers in the same run: a device-to-device
copy (cupy.copyto) and torch._fused_adam_ on CUDA when torch is installed. Times are
medians of CUDA-event timings.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np


def median_ms(fn, repeat: int) -> float:
    import cupy

    for _ in range(3):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def main() -> None:
    import cupy

    from generated import RowSparseArray, adam_update

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 26)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    n = args.size
    w = cupy.random.standard_normal(n, dtype=cupy.float32)
    g = cupy.random.standard_normal(n, dtype=cupy.float32)
    m, v = cupy.zeros(n, cupy.float32), cupy.zeros(n, cupy.float32)
    rows = []
    t = median_ms(lambda: adam_update(w, g, m, v, lr=1e-3, out=w), args.repeat)
    rows.append(("opgen adam_update (CUDA), dense", t, 28 * n))
    src, dst = cupy.ones(4 * n, cupy.float32), cupy.empty(4 * n, cupy.float32)
    rows.append(("device-to-device copy (cupy.copyto)", median_ms(lambda: cupy.copyto(dst, src), args.repeat),
                 2 * src.nbytes))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        tw, tg, tm, tv = (torch.as_tensor(a, device="cuda") for a in (w, g, m, v))
        step = torch.zeros((), dtype=torch.float32, device="cuda")

        def fused():
            torch._fused_adam_([tw], [tg], [tm], [tv], [], [step], lr=1e-3, beta1=0.9, beta2=0.999,
                               weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

        rows.append((f"torch._fused_adam_ CUDA (torch {torch.__version__})", median_ms(fused, args.repeat),
                     28 * n))

    nrows, width, touched = 1_000_000, 64, 1000
    W = cupy.random.standard_normal((nrows, width), dtype=cupy.float32)
    M, V = cupy.zeros_like(W), cupy.zeros_like(W)
    idx = cupy.asarray(np.sort(np.random.default_rng(0).choice(nrows, touched, replace=False)))
    G = RowSparseArray(cupy.random.standard_normal((touched, width), dtype=cupy.float32), idx, (nrows, width))
    t = median_ms(lambda: adam_update(W, G, M, V, lr=1e-3, out=W), args.repeat)
    rows.append((f"opgen lazy row-sparse, {touched} of {nrows:,} rows x {width}", t, 28 * touched * width))

    print(f"{'implementation':52} {'median ms':>10} {'GB/s':>8}")
    for name, ms, nbytes in rows:
        print(f"{name:52} {ms:10.3f} {nbytes / ms / 1e6:8.1f}")
    copy = rows[1][2] / rows[1][1]
    print(f"opgen dense reaches {rows[0][2] / rows[0][1] / copy:.0%} of the copy's bandwidth")


if __name__ == "__main__":
    main()
