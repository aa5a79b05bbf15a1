"""opgen's dense Adam as a fraction of a same-bytes roofline kernel, from 4K to 64M elements.

    pip install -e '.[bench]' && python benchmarks/roofline.py [--quick] [--plot-dir benchmarks]

The roofline kernel is a fused C loop with exactly Adam's memory traffic (weight, grad, mean
and var read; weight, mean and var written, in the storage dtype) and trivial integer math,
compiled here with opgen's own compiler flags and OpenMP, called through cffi like the
kernels, at the best of 1 and 2 threads (each size's own best). Every opgen figure is
measured in the same run, alternating with the roofline, and reported as the roofline's time
over opgen's (1.0: at the bandwidth limit). Curves: float32, bfloat16 and float16 storage,
and the multi-tensor kernel (64 tensors sharing the elements, float32).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cffi
import ml_dtypes
import numpy as np

from generated import adam_update, adam_update_multi, use_backend
from opgen.cbuild import toolchain

ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8)
_C = r"""
#include <stdint.h>
#define ROOF(NAME, T)                                                                          \
void NAME(int64_t n, T *w, const T *g, T *m, T *v, int threads) {                              \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")           \
    for (int64_t i = 0; i < n; i++) {                                                          \
        T gi = g[i], mi = (T)(m[i] + gi), vi = (T)(v[i] ^ gi);                                 \
        m[i] = mi; v[i] = vi; w[i] = (T)(w[i] - mi);                                           \
    }                                                                                          \
}
ROOF(roof32, uint32_t)
ROOF(roof16, uint16_t)

/* A grid op's traffic (factored.py): a read-only pass over weight and grad, one over grad,
 * then the update reading both and writing the weight, 24 bytes per float32 element. */
void roof_grid32(int64_t n, uint32_t *w, const uint32_t *g, int threads, uint32_t *sink) {
    uint32_t a = 0, b = 0;
    _Pragma("omp parallel for schedule(static) reduction(^:a) num_threads(threads) if(threads > 1)")
    for (int64_t i = 0; i < n; i++) a ^= w[i] ^ g[i];
    _Pragma("omp parallel for schedule(static) reduction(+:b) num_threads(threads) if(threads > 1)")
    for (int64_t i = 0; i < n; i++) b += g[i];
    const uint32_t k = a ^ b;
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(threads > 1)")
    for (int64_t i = 0; i < n; i++) w[i] = w[i] - (g[i] ^ k);
    *sink = k;
}
"""
_CDEF = """
void roof32(int64_t n, uint32_t *w, const uint32_t *g, uint32_t *m, uint32_t *v, int threads);
void roof16(int64_t n, uint16_t *w, const uint16_t *g, uint16_t *m, uint16_t *v, int threads);
void roof_grid32(int64_t n, uint32_t *w, const uint32_t *g, int threads, uint32_t *sink);
"""
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def build_roofline():
    tc = toolchain()
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    ffi.set_source("_opgen_roofline", _C, extra_compile_args=list(tc.flags), extra_link_args=["-fopenmp"])
    folder = tempfile.mkdtemp(prefix="opgen-roofline-")
    path = ffi.compile(tmpdir=folder)
    import importlib.util

    spec = importlib.util.spec_from_file_location("_opgen_roofline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def arrays(n: int, dtype):
    rng = np.random.default_rng(0)
    w, g = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    return w, g, np.zeros(n, dtype), np.zeros(n, dtype)


def repeat_for(n: int, quick: bool) -> int:
    return max(5, min(200, (1 << 24) // max(n, 1))) // (4 if quick else 1) or 5


def roofline(lib, n: int, dtype, repeat: int) -> float:
    """The best of 1 and 2 threads: the same-bytes kernel's seconds for n elements."""
    w, g, m, v = (a.view(np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint16) for a in arrays(n, dtype))
    wide = w.dtype == np.uint32
    fn = lib.lib.roof32 if wide else lib.lib.roof16
    ptrs = [lib.ffi.from_buffer("uint32_t[]" if wide else "uint16_t[]", a) for a in (w, g, m, v)]
    return min(seconds(lambda: fn(n, *ptrs, threads), repeat) for threads in (1, 2))


def grid_roofline(lib, n: int, repeat: int) -> float:
    """The best of 1 and 2 threads: the grid op's same-bytes kernel (three passes, float32)."""
    rng = np.random.default_rng(0)
    w, g = (rng.standard_normal(n).astype(np.float32).view(np.uint32) for _ in range(2))
    sink = lib.ffi.new("uint32_t *")
    pw, pg = (lib.ffi.from_buffer("uint32_t[]", a) for a in (w, g))
    return min(seconds(lambda: lib.lib.roof_grid32(n, pw, pg, threads, sink), repeat) for threads in (1, 2))


def opgen_dense(n: int, dtype, repeat: int) -> float:
    w, g, m, v = arrays(n, dtype)
    with use_backend("c"):
        return seconds(lambda: adam_update(w, g, m, v, out=w, **ADAM), repeat)


def opgen_multi(n: int, repeat: int, count: int = 64) -> float:
    size = max(1, n // count)
    groups = [arrays(size, np.float32) for _ in range(count)]
    ws, gs, ms, vs = ([grp[k] for grp in groups] for k in range(4))
    with use_backend("c"):
        return seconds(lambda: adam_update_multi(ws, gs, ms, vs, out=ws, **ADAM), repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4K to 4M elements, fewer repeats")
    parser.add_argument("--plot-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    lib = build_roofline()
    sizes = [1 << k for k in range(12, 23 if args.quick else 27, 2)]  # 4K ... 64M
    curves: dict[str, list[float]] = {}
    print("| elements | " + " | ".join(f"{name} (opgen / roofline µs)" for name in [*DTYPES, "multi float32"]) + " |")
    print("| ---: |" + " --- |" * (len(DTYPES) + 1))
    for n in sizes:
        repeat = repeat_for(n, args.quick)
        cells = []
        for name, dtype in DTYPES.items():
            roof = roofline(lib, n, dtype, repeat)
            ours = opgen_dense(n, dtype, repeat)
            curves.setdefault(name, []).append(roof / ours)
            cells.append(f"{roof / ours:.2f} ({ours * 1e6:.1f} / {roof * 1e6:.1f})")
        roof = roofline(lib, n, np.float32, repeat)
        ours = opgen_multi(n, repeat)
        curves.setdefault("multi float32 (64 tensors)", []).append(roof / ours)
        cells.append(f"{roof / ours:.2f} ({ours * 1e6:.1f} / {roof * 1e6:.1f})")
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("\n(no matplotlib: pip install -e '.[bench]' for the plot)")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, fractions in curves.items():
        ax.plot(sizes, fractions, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("elements")
    ax.set_ylabel("roofline time / opgen time")
    ax.set_ylim(0, 1.2)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_title("dense Adam, fraction of a same-bytes kernel")
    ax.legend()
    args.plot_dir.mkdir(parents=True, exist_ok=True)
    path = args.plot_dir / "roofline.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
