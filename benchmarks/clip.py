"""Clipping by the global gradient norm, fused into the multi-tensor step, against torch.

    python benchmarks/clip.py [--tensors T] [--size N] [--repeat R]

T float32 tensors of N elements each (default 64 x 256K: 16M elements), medians of R runs
in one process, each variant in turn every round (the machine is noisy: the ratios count):

- opgen's ``adam_update_multi`` without clipping (one pass: 28 bytes per element);
- the same with ``max_grad_norm`` (a read-only pass over the gradients for the norm, then
  the update with the factor applied as each gradient element is loaded: 32 bytes);
- torch, when installed: ``torch.nn.utils.clip_grad_norm_`` (foreach norms, then every
  gradient multiplied in place: 4 + 8 bytes more) followed by ``torch._fused_adam_``, and
  the fused Adam alone.

Every timed call runs in place on the same arrays; the values drift (the figures do not).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from generated import adam_update_multi, use_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensors", type=int, default=64)
    parser.add_argument("--size", type=int, default=1 << 18)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=args.size).astype(np.float32) for _ in range(args.tensors)]
    gs = [rng.normal(size=args.size).astype(np.float32) for _ in range(args.tensors)]
    ms, vs = [np.zeros_like(w) for w in ws], [np.zeros_like(w) for w in ws]
    variants = {
        "opgen multi Adam": lambda: adam_update_multi(ws, gs, ms, vs, lr=1e-3, out=ws),
        "opgen multi Adam, max_grad_norm": lambda: adam_update_multi(ws, gs, ms, vs, lr=1e-3, out=ws,
                                                                     max_grad_norm=1.0),
    }
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        tw = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
        for p, g in zip(tw, gs):
            p.grad = torch.from_numpy(g.copy())
        tg = [p.grad for p in tw]
        tm, tv = [torch.zeros_like(p) for p in tw], [torch.zeros_like(p) for p in tw]
        steps = [torch.zeros((), dtype=torch.float32) for _ in tw]
        saved = [g.clone() for g in tg]

        def fused():
            with torch.no_grad():
                torch._fused_adam_(tw, tg, tm, tv, [], steps, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0,
                                   eps=1e-8, amsgrad=False, maximize=False)

        def clipped():
            torch.nn.utils.clip_grad_norm_(tw, 1.0, foreach=True)
            fused()
            torch._foreach_copy_(tg, saved)  # (untimed in spirit: restores the gradients; measured apart)

        def restore():
            torch._foreach_copy_(tg, saved)

        variants["torch clip_grad_norm_ + fused Adam"] = clipped
        variants["torch fused Adam"] = fused
        variants["(torch gradient restore, subtracted)"] = restore
    times: dict[str, list[float]] = {k: [] for k in variants}
    with use_backend("c"):
        for fn in variants.values():
            fn()
        for _ in range(args.repeat):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    if "(torch gradient restore, subtracted)" in med:
        med["torch clip_grad_norm_ + fused Adam"] -= med.pop("(torch gradient restore, subtracted)")
    base = med["opgen multi Adam"]
    n = args.tensors * args.size
    print(f"{args.tensors} tensors x {args.size} float32 elements ({n / 1e6:.1f}M), medians of {args.repeat}")
    print(f"{'variant':40s} {'ms':>8s} {'x opgen unclipped':>18s}")
    for name, t in med.items():
        print(f"{name:40s} {t * 1e3:8.2f} {t / base:18.2f}")


if __name__ == "__main__":
    main()
