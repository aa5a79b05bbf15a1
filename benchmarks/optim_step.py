"""One optimizer step over GPT-2 small's parameter set: generated.optim.Adam against the bare
multi-tensor call it makes and against torch.optim.Adam (fused, foreach, and torch.compile of
its step, with the compile time); with --adafactor, generated.optim.Adafactor against
torch.optim.Adafactor (its for-loop and foreach steps).

    pip install -e '.[torch]' && python benchmarks/optim_step.py [--quick] [--rounds 10] [--adafactor [--resnet]]

GPT-2 small: 148 tensors, 124M parameters (the embeddings, 12 blocks of 12 tensors, the final
layer norm). --quick runs a copy scaled down to 7M parameters (width 192, vocabulary 8192,
context 256; the same 148 tensors). Each implementation has its own copy of the parameters,
gradients and states; the steps alternate between them, round after round, and the table
gives medians, and each ratio to opgen also as the median of the rounds' ratios ("paired"), so
the ratios hold on a noisy machine. The step's own work (Python, per tensor) is measured apart,
on a copy of the tensors with a few elements each. float32, then bfloat16 parameters with
float32 states (22 bytes an element) and with bfloat16 states (14 bytes, what torch.optim
keeps: states in the parameter's dtype). With --resnet (and --adafactor), ResNet-18's parameter
set instead: convolution weights that Adafactor factors over their last two dimensions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch

import generated
import generated.optim as optim

LR = 1e-3
PAUSE = 0.2  # seconds between two implementations' steps (see measure)


def gpt2_shapes(width: int = 768, vocab: int = 50257, context: int = 1024, layers: int = 12) -> list[tuple]:
    shapes = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,), (width, 3 * width), (3 * width,), (width, width), (width,), (width,), (width,),
                   (width, 4 * width), (4 * width,), (4 * width, width), (width,)]
    return shapes + [(width,), (width,)]


def resnet18_shapes(width: int = 64, classes: int = 1000) -> list[tuple]:
    """ResNet-18's 62 tensors (11.7M parameters at width 64): 4-D convolution weights (3 x 3,
    the 7 x 7 stem and 1 x 1 shortcuts), batch-norm vectors, the classifier."""
    def bn(c):
        return [(c,), (c,)]

    shapes = [(width, 3, 7, 7), *bn(width)]
    cin = width
    for stage in range(4):
        cout = width * 2 ** stage
        for block in range(2):
            first = block == 0 and stage > 0
            shapes += [(cout, cin if block == 0 else cout, 3, 3), *bn(cout), (cout, cout, 3, 3), *bn(cout)]
            if first:
                shapes += [(cout, cin, 1, 1), *bn(cout)]
        cin = cout
    return shapes + [(classes, cin), (classes,)]


def parameters(shapes, dtype) -> list:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(dtype)) for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(dtype)
    return params


def steps(shapes, dtype, compile_step: bool) -> dict:
    """name -> (a step function, its setup seconds)."""
    out = {}
    ours = parameters(shapes, dtype)
    opt = optim.Adam(ours, lr=LR, state_dtype=torch.float32)
    opt.step()
    out["generated.optim.Adam"] = (opt.step, 0.0)
    if dtype is not torch.float32:  # the same memory as torch's all-16-bit states
        same = parameters(shapes, dtype)
        same_opt = optim.Adam(same, lr=LR)
        same_opt.step()
        out["opgen, 16-bit states"] = (same_opt.step, 0.0)
    # the bare multi call the step makes, on the same kind of memory
    views = [[t.detach().view(torch.int16).numpy().view("bfloat16") if t.dtype is torch.bfloat16
              else t.detach().numpy() for t in ts]
             for ts in ([p for p in ours], [p.grad for p in ours], [opt.state[p]["exp_avg"] for p in ours],
                        [opt.state[p]["exp_avg_sq"] for p in ours])]

    def bare():
        generated.torch_adam_update_multi(*views, step_size=LR / (1 - 0.9 ** 10), bias_correction2_sqrt=0.1,
                                          out=views[0])

    out["bare multi call"] = (bare, 0.0)
    for name, kwargs in (("torch fused", dict(fused=True)), ("torch foreach", dict(foreach=True))):
        params = parameters(shapes, dtype)
        peer = torch.optim.Adam(params, lr=LR, **kwargs)
        peer.step()
        out[name] = (peer.step, 0.0)
    if compile_step:
        params = parameters(shapes, dtype)
        peer = torch.optim.Adam(params, lr=LR, foreach=True)
        compiled = torch.compile(peer.step)
        start = time.perf_counter()
        compiled()
        out["torch.compile(step)"] = (compiled, time.perf_counter() - start)
    return out


def adafactor_steps(shapes) -> dict:
    """name -> (a step function, 0.0): Adafactor over the parameter set, float32. Ours makes
    one grid call per matrix (its row and column means, the means' mean and two RMS norms in
    the call) and one multi-tensor call for the vectors; torch.optim.Adafactor's for-loop step
    (its default) and its foreach step."""
    out = {}
    ours = parameters(shapes, torch.float32)
    opt = optim.Adafactor(ours)
    opt.step()
    out["generated.optim.Adafactor"] = (opt.step, 0.0)
    if hasattr(torch.optim, "Adafactor"):  # (torch >= 2.5)
        for name, foreach in (("torch for-loop", False), ("torch foreach", True)):
            peer = torch.optim.Adafactor(parameters(shapes, torch.float32), foreach=foreach)
            peer.step()
            out[name] = (peer.step, 0.0)
    return out


def measure(table: dict, rounds: int) -> dict:
    times = {name: [] for name in table}
    for fn, _ in table.values():
        fn()
    names = list(table)
    order = random.Random(0)
    for _ in range(rounds):
        # a new order each round: the step after torch's heaviest ones runs slower (its
        # threads are still busy), and shuffling spreads that over every implementation
        order.shuffle(names)
        for name in names:
            fn = table[name][0]
            # opgen's kernels and torch's run on two OpenMP pools, whose threads spin for a
            # while after each parallel region: a pause lets the other pool's go to sleep
            time.sleep(PAUSE)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def paired(times: dict, name: str, base: str) -> float:
    """The median over rounds of ``name``'s time over ``base``'s in the same round (robust to
    the shared host's memory speed drifting between rounds)."""
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def own_cost(dtype, rounds: int = 200) -> tuple[float, float]:
    """The step's own cost, its Python work: generated.optim.Adam.step and the bare multi call
    it makes, on a copy of the 148 tensors with a few elements each (the kernel's share is then
    negligible), back to back; medians in seconds."""
    table = steps(gpt2_shapes(4, 8, 4), dtype, False)
    step, bare = table["generated.optim.Adam"][0], table["bare multi call"][0]
    times: tuple[list, list] = ([], [])
    for _ in range(rounds):
        for fn, ts in ((step, times[0]), (bare, times[1])):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the scaled-down parameter set (7M)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compile takes a while)")
    parser.add_argument("--adafactor", action="store_true", help="Adafactor against torch.optim.Adafactor instead")
    parser.add_argument("--resnet", action="store_true",
                        help="with --adafactor: ResNet-18's parameter set (4-D convolution weights) instead")
    args = parser.parse_args()
    if args.resnet:
        shapes, name = (resnet18_shapes(16, 100), "ResNet-18 (width 16)") if args.quick else (resnet18_shapes(), "ResNet-18")
    else:
        shapes = gpt2_shapes(192, 8192, 256) if args.quick else gpt2_shapes()
        name = f"GPT-2 small{' (scaled down)' if args.quick else ''}"
    total = sum(int(np.prod(s)) for s in shapes)
    print(f"{name}: {len(shapes)} tensors, {total / 1e6:.1f}M "
          f"parameters; torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.rounds}")
    if args.adafactor:
        times = measure(adafactor_steps(shapes), args.rounds)
        ours = statistics.median(times["generated.optim.Adafactor"])
        print(f"\nAdafactor, float32\n  {'':26s} {'ms':>9s} {'vs opgen':>9s} {'paired':>8s}")
        for name, ts in times.items():
            print(f"  {name:26s} {statistics.median(ts) * 1e3:9.2f} {statistics.median(ts) / ours:9.2f}x "
                  f"{paired(times, name, 'generated.optim.Adafactor'):7.2f}x")
        return
    for dtype in (torch.float32, torch.bfloat16):
        table = steps(shapes, dtype, not args.no_compile)
        times = measure(table, args.rounds)
        result = {name: statistics.median(ts) for name, ts in times.items()}
        ours = result["generated.optim.Adam"]
        label = "float32" if dtype is torch.float32 else "bfloat16 parameters (opgen: float32 states)"
        print(f"\n{label}")
        print(f"  {'':24s} {'ms':>9s} {'vs opgen':>9s} {'paired':>8s}  setup")
        for name, seconds in result.items():
            setup = table[name][1]
            print(f"  {name:24s} {seconds * 1e3:9.2f} {seconds / ours:9.2f}x "
                  f"{paired(times, name, 'generated.optim.Adam'):7.2f}x" + (f"  {setup:.1f} s compile" if setup else ""))
        step, bare = own_cost(dtype)
        print(f"  the step's own work (148 tensors of a few elements): {(step - bare) * 1e6:.0f} us over the bare "
              f"call ({step * 1e6:.0f} vs {bare * 1e6:.0f} us), {(step - bare) / ours:.1%} of the step above")


if __name__ == "__main__":
    main()
