"""opgen's CPU benchmark suite: one command, a table of medians and ratios, two plots.

    pip install -e '.[bench]' && python benchmarks/run.py [--quick] [--plot-dir benchmarks]
    (torch, when installed, is measured as a peer: pip install -e '.[peers]')

Every figure is a median of several runs, measured in one process next to its peers
(the NumPy reference backend, torch when installed, memory copies), so the ratios hold
on a noisy machine even when the absolute times do not. Bandwidth counts the bytes an
update must move: 28 per float32 element for Adam (weight, grad, mean, var read;
weight, mean, var written).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from generated import RowSparseArray, adam_update, adam_update_multi, use_backend

ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, wd=0.0)


def median_seconds(fn: Callable[[], object], repeat: int, number: int = 1) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times)


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def adam_arrays(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32),
            np.zeros(n, np.float32), np.zeros(n, np.float32))


def dense(n: int, repeat: int, torch, with_numpy: bool = True) -> dict[str, float]:
    """Seconds per adam step on n float32 elements, per implementation."""
    w, g, m, v = adam_arrays(n)
    out = {}
    with use_backend("c"):
        out["opgen"] = median_seconds(lambda: adam_update(w, g, m, v, out=w, **ADAM), repeat,
                                      number=max(1, 2_000_000 // max(n, 1)))
    if with_numpy:
        with use_backend("numpy"):
            out["numpy"] = median_seconds(lambda: adam_update(w, g, m, v, out=w, **ADAM), max(3, repeat // 3))
    if torch is not None:
        tw, tg, tm, tv = (torch.from_numpy(a.copy()) for a in (w, g, m, v))
        step = torch.zeros((), dtype=torch.float32)

        def fused():
            torch._fused_adam_([tw], [tg], [tm], [tv], [], [step], lr=1e-3, beta1=0.9, beta2=0.999,
                               weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)

        out["torch"] = median_seconds(fused, repeat, number=max(1, 2_000_000 // max(n, 1)))
    return out


#: the storage variants of the bf16 benchmark: (weight and grad dtype, state dtype) and the
#: bytes an Adam step moves per element (weight and states read and written, grad read)
VARIANTS = {
    "float32": ("float32", "float32", 28),
    "bfloat16 (all tensors)": ("bfloat16", "bfloat16", 14),
    "bfloat16 + float32 states": ("bfloat16", "float32", 22),
    "float32 + bfloat16 states": ("float32", "bfloat16", 20),
}


def dense_bf16(n: int, repeat: int, torch) -> dict[str, float]:
    """Seconds per adam step on n elements in each of VARIANTS, measured in turn round after
    round (the machine is noisy: the ratios are what counts), and torch's fused Adam on
    bfloat16 parameters (with bfloat16 and with float32 states, where torch takes them)."""
    import ml_dtypes

    dtypes = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
    w, g, m, v = adam_arrays(n)
    arrays = {name: [w.astype(dtypes[wd]), g.astype(dtypes[wd]), m.astype(dtypes[sd]), v.astype(dtypes[sd])]
              for name, (wd, sd, _) in VARIANTS.items()}
    number = max(1, 2_000_000 // max(n, 1))
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with use_backend("c"):
        for _ in range(repeat):  # alternate, so every variant sees the same machine
            for name, a in arrays.items():
                times[name].append(median_seconds(lambda: adam_update(*a, out=a[0], **ADAM), 1, number))
    result = {k: statistics.median(t) for k, t in times.items()}
    # each variant's speed-up over float32 round by round (the two measured moments apart):
    # the median of those holds when the machine's memory speed drifts between rounds
    for name in VARIANTS:
        result[f"{name}: paired"] = statistics.median(f / t for f, t in zip(times["float32"], times[name]))
    if torch is not None:
        for label, state_dtype in (("torch bfloat16", torch.bfloat16), ("torch bfloat16 + float32 states", torch.float32)):
            tw, tg = (torch.from_numpy(a.copy()).to(torch.bfloat16) for a in (w, g))
            tm, tv = (torch.from_numpy(a.copy()).to(state_dtype) for a in (m, v))
            step = torch.zeros((), dtype=torch.float32)

            def fused():
                torch._fused_adam_([tw], [tg], [tm], [tv], [], [step], lr=1e-3, beta1=0.9, beta2=0.999,
                                   weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)
            try:
                result[label] = median_seconds(fused, repeat, number)
            except RuntimeError:  # a torch without this fused Adam on the CPU
                pass
    return result


def copies(nbytes: int, repeat: int, torch) -> dict[str, float]:
    """GB/s of copying nbytes (counted twice: read and write), one NumPy thread and torch's threads."""
    src = np.ones(nbytes // 8, np.float32)
    dst = np.empty_like(src)
    rates = {"copy, NumPy (1 thread)": 2 * src.nbytes / median_seconds(lambda: np.copyto(dst, src), repeat)}
    if torch is not None:
        ts, td = torch.from_numpy(src), torch.from_numpy(dst)
        rates[f"copy, torch copy_ ({torch.get_num_threads()} threads)"] = \
            2 * src.nbytes / median_seconds(lambda: td.copy_(ts), repeat)
    return rates


def many_tensors(count: int, size: int, repeat: int, torch) -> dict[str, float]:
    lists = [adam_arrays(size, seed=k) for k in range(count)]
    ws, gs, ms, vs = (list(col) for col in zip(*lists))
    out = {}
    with use_backend("c"):
        out["opgen multi"] = median_seconds(lambda: adam_update_multi(ws, gs, ms, vs, out=ws, **ADAM), repeat)

        def one_by_one():
            for w, g, m, v in lists:
                adam_update(w, g, m, v, out=w, **ADAM)

        out["opgen, one call per tensor"] = median_seconds(one_by_one, max(3, repeat // 3))
    if torch is not None:
        tl = [[torch.from_numpy(a.copy()) for a in group] for group in (ws, gs, ms, vs)]
        steps = [torch.zeros(()) for _ in range(count)]

        def fused():
            torch._fused_adam_(*tl, [], steps, lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8,
                               amsgrad=False, maximize=False)

        out["torch._fused_adam_"] = median_seconds(fused, repeat)
    return out


def plan_recheck(count: int, size: int, repeat: int) -> tuple[float, float]:
    """(seconds with, seconds without) the cached plan's per-call re-check of its arrays
    (opgen.runtime.multi._RECHECK_PLAN): one adam_update_multi call on count tensors of size
    float32 elements, in place, the plan cached. The two are timed alternately, one call at
    a time, so drift on a noisy machine reaches both alike."""
    from opgen.runtime import multi

    lists = [adam_arrays(size, seed=k) for k in range(count)]
    ws, gs, ms, vs = (list(col) for col in zip(*lists))
    flag = multi._RECHECK_PLAN
    saved = flag[0]
    times: dict[bool, list[float]] = {True: [], False: []}
    with use_backend("c"):
        adam_update_multi(ws, gs, ms, vs, out=ws, **ADAM)  # plans and caches
        try:
            for k in range(2 * repeat + 4):
                on = k % 2 == 0
                flag[0] = on
                start = time.perf_counter()
                adam_update_multi(ws, gs, ms, vs, out=ws, **ADAM)
                if k >= 4:  # the first round of each warms up
                    times[on].append(time.perf_counter() - start)
        finally:
            flag[0] = saved
    return statistics.median(times[True]), statistics.median(times[False])


def call_overhead(repeat: int) -> tuple[float, float]:
    """(wrapper seconds, bare C call seconds) for one adam step on 1,000 float32 elements."""
    w, g, m, v = adam_arrays(1000)
    with use_backend("c"):
        adam_update(w, g, m, v, out=w, **ADAM)
        operator = sys.modules["generated.adam_update"]._OP
        module = operator.c_module()
    kernel = module.lib.opgen_adam_update_dense_float32
    pointers = [module.ffi.from_buffer(a) for a in (w, g, m, v)]
    bare = median_seconds(lambda: kernel(1000, *pointers, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0, -1.0, 1.0, 0, 0, 0), repeat,
                          number=2000)
    with use_backend("c"):
        wrapped = median_seconds(lambda: adam_update(w, g, m, v, lr=1e-3, out=w), repeat, number=2000)
    return wrapped, bare


def sparse_weight(rows: int, width: int):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((rows, width), dtype=np.float32)
    return w, np.zeros_like(w), np.zeros_like(w)


def lazy_sparse(w, m, v, touched: int, repeat: int, torch, tstate=None) -> dict[str, float]:
    rows, width = w.shape
    rng = np.random.default_rng(touched)
    idx = np.sort(rng.choice(rows, touched, replace=False))
    data = rng.standard_normal((touched, width), dtype=np.float32)
    grad = RowSparseArray(data, idx, w.shape)
    out = {}
    with use_backend("c"):
        out["opgen lazy"] = median_seconds(lambda: adam_update(w, grad, m, v, out=w, **ADAM), repeat,
                                           number=max(1, 200_000 // (touched * width) + 1))
    if torch is not None and tstate is not None:
        param, optimizer = tstate
        tgrad = torch.sparse_coo_tensor(torch.from_numpy(idx)[None, :], torch.from_numpy(data), w.shape)

        def step():
            param.grad = tgrad
            optimizer.step()

        out["torch SparseAdam"] = median_seconds(step, repeat)
    return out


def plot(path: Path, sizes, curves: dict[str, list[float]], sparse_rows, sparse_curves, sparse_shape,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, seconds in curves.items():
        left.plot(sizes, [28 * n / s / 1e9 for n, s in zip(sizes, seconds)], marker="o", label=name)
    left.set(xscale="log", yscale="log", xlabel="float32 elements", ylabel="GB/s (28 bytes per element)",
             title="adam_update, dense, out=weight")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    for name, seconds in sparse_curves.items():
        right.plot(sparse_rows, [s * 1e6 for s in seconds], marker="o", label=name)
    right.set(xscale="log", yscale="log", xlabel=f"rows touched (of {sparse_shape[0]:,} x {sparse_shape[1]})", ylabel="µs per step",
              title="adam_update, lazy row-sparse")
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--plot-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    repeat = 5 if args.quick else 11
    torch = torch_or_none()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
               f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
               + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ", no torch"))
    print(f"# opgen CPU benchmarks ({machine})\n")
    rows: list[tuple[str, str, str]] = []

    n = 1 << 22 if args.quick else 1 << 24
    d = dense(n, repeat, torch)
    bytes_moved = 28 * n
    rates = copies(bytes_moved // 2, repeat, torch)  # a copy moving the same bytes as the update
    best_copy_name, best_copy = max(rates.items(), key=lambda kv: kv[1])
    opgen_rate = bytes_moved / d["opgen"]
    rows.append((f"dense adam, {n:,} float32, opgen", f"{d['opgen'] * 1e3:.2f} ms, {opgen_rate / 1e9:.1f} GB/s",
                 f"{opgen_rate / best_copy:.0%} of the best copy of the same bytes ({best_copy_name}, "
                 f"{best_copy / 1e9:.1f} GB/s)"))
    rows.append(("dense adam, NumPy reference", f"{d['numpy'] * 1e3:.2f} ms",
                 f"opgen is {d['numpy'] / d['opgen']:.1f}x faster"))
    if "torch" in d:
        rows.append(("dense adam, torch._fused_adam_", f"{d['torch'] * 1e3:.2f} ms",
                     f"opgen is {d['torch'] / d['opgen']:.2f}x faster"))

    b = dense_bf16(n, repeat, torch)
    for name, (_, _, per_element) in VARIANTS.items():
        if name == "float32":
            continue
        moved = per_element * n
        same_bytes = max(copies(moved // 2, repeat, torch).values())
        rate = moved / b[name]
        rows.append((f"dense adam, {n:,} {name}, opgen ({per_element} B/element)",
                     f"{b[name] * 1e3:.2f} ms, {rate / 1e9:.1f} GB/s",
                     f"{b['float32'] / b[name]:.2f}x as fast as float32 ({b['float32'] * 1e3:.2f} ms, same run; "
                     f"{b[f'{name}: paired']:.2f}x, median of the rounds' ratios; {28 / per_element:.2f}x fewer "
                     f"bytes); {rate / same_bytes:.0%} of a copy of the same bytes"))
    for label, name in (("torch bfloat16", "bfloat16 (all tensors)"),
                        ("torch bfloat16 + float32 states", "bfloat16 + float32 states")):
        if label in b:
            rows.append((f"dense adam, {name}, torch._fused_adam_", f"{b[label] * 1e3:.2f} ms",
                         f"opgen is {b[label] / b[name]:.2f}x faster"))

    count, size = (200, 1000) if args.quick else (1000, 1000)
    mt = many_tensors(count, size, repeat, torch)
    base = mt["opgen multi"]
    for name, seconds in mt.items():
        rows.append((f"{count} tensors x {size}, {name}", f"{seconds * 1e3:.3f} ms",
                     "" if name == "opgen multi" else f"opgen multi is {seconds / base:.1f}x faster"))

    for size_ in (size, 10):
        checked, unchecked = plan_recheck(count, size_, 20 * repeat)
        rows.append((f"{count} tensors x {size_}, opgen multi (cached plan): re-check on vs off",
                     f"{checked * 1e3:.3f} vs {unchecked * 1e3:.3f} ms",
                     f"the re-check takes {checked / unchecked:.2f}x the time, "
                     f"{(checked - unchecked) / (4 * count) * 1e9:.0f} ns per array"))

    wrapped, bare = call_overhead(repeat)
    rows.append(("per call, 1,000 elements: wrapper vs bare C call", f"{wrapped * 1e6:.2f} vs {bare * 1e6:.2f} µs",
                 f"wrapper's own cost {(wrapped - bare) * 1e6:.2f} µs"))

    width, nrows = 64, (200_000 if args.quick else 1_000_000)
    w, m, v = sparse_weight(nrows, width)
    tstate = None
    if torch is not None:
        param = torch.nn.Parameter(torch.from_numpy(w.copy()))
        tstate = (param, torch.optim.SparseAdam([param], lr=1e-3))
    sp = lazy_sparse(w, m, v, 1000, repeat, torch, tstate)
    rows.append((f"lazy row-sparse, 1,000 of {nrows:,} x {width} rows, opgen", f"{sp['opgen lazy'] * 1e6:.1f} µs", ""))
    if "torch SparseAdam" in sp:
        rows.append(("lazy row-sparse, torch.optim.SparseAdam", f"{sp['torch SparseAdam'] * 1e6:.1f} µs",
                     f"opgen is {sp['torch SparseAdam'] / sp['opgen lazy']:.1f}x faster"))
    idx = np.arange(0, nrows, 3)
    grad = RowSparseArray(np.ones((len(idx), width), np.float32), idx, w.shape)
    dense_grad = grad.todense()
    with use_backend("c"):
        std = median_seconds(lambda: adam_update(w, grad, m, v, lazy_update=False, out=w, **ADAM), repeat)
        full = median_seconds(lambda: adam_update(w, dense_grad, m, v, out=w, **ADAM), repeat)
    rows.append(("standard row-sparse (1/3 of rows) vs dense, same weight", f"{std * 1e3:.2f} vs {full * 1e3:.2f} ms",
                 f"standard takes {std / full:.2f}x the dense time"))

    print("| measurement | median | ratio |")
    print("| --- | --- | --- |")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")

    sizes = [1 << k for k in range(10, 23 if args.quick else 27, 2)]
    curves: dict[str, list[float]] = {}
    for size in sizes:
        for name, seconds in dense(size, max(3, repeat // 2), torch).items():
            curves.setdefault({"opgen": "opgen (C)", "numpy": "NumPy", "torch": "torch._fused_adam_"}[name],
                              []).append(seconds)
    touched_counts = [10, 100, 1000, 10_000, 100_000 if not args.quick else 50_000]
    sparse_curves: dict[str, list[float]] = {}
    for touched in touched_counts:
        for name, seconds in lazy_sparse(w, m, v, touched, max(3, repeat // 2), torch, tstate).items():
            sparse_curves.setdefault(name, []).append(seconds)
    args.plot_dir.mkdir(parents=True, exist_ok=True)
    path = args.plot_dir / "throughput.png"
    plot(path, sizes, curves, touched_counts, sparse_curves, w.shape, machine)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
