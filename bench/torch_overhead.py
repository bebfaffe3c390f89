"""Per-step time of ``fastopt.torch.Adam`` against ``torch.optim.Adam``, interleaved in one process.

Run::

    .venv/bin/python bench/torch_overhead.py [--rounds 15] [--sets course_mlp,resnet18,gpt2_small]
                                             [--fresh-grads]

Parameter sets: the course MLP (6 tensors, 2,762 values), a ResNet-18-shaped set (62 tensors:
convolutions, batch norms, the classifier; 11.7M values) and the GPT-2-small-shaped set
(148 tensors, 124.4M values, :func:`fastopt._shapes.gpt2_small`).  Implementations: fastopt with
its default settings (one kernel row per tensor), fastopt ``flatten=True`` (one row per step),
torch ``fused=True`` and torch ``foreach=True``.  All four optimizers of a set live at once, each
on its own copy of the parameters, sharing one set of fixed random gradients (read only); after
a warm-up step each, every round times each implementation once (``steps`` steps, the number
chosen so one timing lasts about 20 ms, at least 1), in a rotating order, so drifts of the
machine hit every implementation alike.  Printed: the median per-step time over the rounds, its
ratio to torch fused (< 1: faster), and the spread (min-max over rounds).

``--fresh-grads``: as a training loop with ``zero_grad()`` (``set_to_none=True``) and
``backward()``, every step sees new gradient tensors at new addresses: before each step (not
timed) each ``.grad`` becomes a fresh copy of its gradient; ``flatten=True`` keeps its gradient
views (there ``zero_grad()`` keeps them and ``backward()`` writes into them).  Only the
``step()`` calls are timed.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import fastopt
import fastopt.torch as ft
from fastopt import _shapes
from fastopt.kernels import resolve_backend

IMPLS = ("fastopt", "fastopt-flatten", "torch-fused", "torch-foreach")


def resnet18():
    """ResNet-18 (torchvision's layout): conv weights (no bias), BatchNorm weight and bias per
    conv, the 512 -> 1000 classifier: 62 tensors, 11,689,512 values."""
    out = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            first = block == 0
            out += [(cout, cin if first else cout, 3, 3), (cout,), (cout,),
                    (cout, cout, 3, 3), (cout,), (cout,)]
            if first and (stride != 1 or cin != cout):
                out += [(cout, cin, 1, 1), (cout,), (cout,)]
        cin = cout
    return out + [(1000, 512), (1000,)]


SETS = {"course_mlp": _shapes.course_mlp, "resnet18": resnet18, "gpt2_small": _shapes.gpt2_small}


def make(impl, params):
    if impl == "torch-fused":
        return torch.optim.Adam(params, lr=1e-3, fused=True)
    if impl == "torch-foreach":
        return torch.optim.Adam(params, lr=1e-3, foreach=True)
    return ft.Adam(params, lr=1e-3, flatten=impl == "fastopt-flatten")


def build(shapes, fresh=False):
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    opts = {}
    for impl in IMPLS:
        params = [torch.nn.Parameter(v.clone()) for v in values]
        for p, g in zip(params, grads):
            p.grad = g            # shared, read only (flatten copies them into its buffer)
        opts[impl] = make(impl, params)
        opts[impl].step()         # state allocated, kernels compiled
        # --fresh-grads: (parameter, gradient) pairs whose .grad is renewed before each step
        opts[impl].fresh = list(zip(params, grads)) if fresh and impl != "fastopt-flatten" \
            else None
    return opts


def time_steps(opt, steps):
    if opt.fresh is None:
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        return (time.perf_counter() - t0) / steps
    total = 0.0
    for _ in range(steps):
        for p, g in opt.fresh:
            p.grad = None
        for p, g in opt.fresh:
            p.grad = g.clone()
        t0 = time.perf_counter()
        opt.step()
        total += time.perf_counter() - t0
    return total / steps


def run_set(name, rounds, fresh=False):
    shapes = SETS[name]()
    opts = build(shapes, fresh)
    steps = {}
    for impl, opt in opts.items():          # calibrate: ~20 ms per timing
        one = time_steps(opt, 1)
        steps[impl] = max(1, min(2000, int(0.02 / max(one, 1e-7))))
    times = {impl: [] for impl in IMPLS}
    for r in range(rounds):
        order = IMPLS[r % len(IMPLS):] + IMPLS[:r % len(IMPLS)]
        for impl in order:
            times[impl].append(time_steps(opts[impl], steps[impl]))
    del opts
    return len(shapes), _shapes.total(shapes), times


def fmt(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--fresh-grads", action="store_true",
                    help="new gradient tensors before every step (not timed)")
    args = ap.parse_args(argv)
    print(f"fastopt {fastopt.__version__}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
          f"threads, fastopt host backend {resolve_backend([], None).name}; "
          f"{args.rounds} interleaved rounds, median per step (min-max)"
          f"{'; fresh gradient tensors every step' if args.fresh_grads else ''}")
    head = f"{'set':<28}" + "".join(f"{i:>26}" for i in IMPLS)
    print(head)
    print("-" * len(head))
    medians = {}
    for name in args.sets.split(","):
        n_tensors, n_values, times = run_set(name, args.rounds, args.fresh_grads)
        medians[name] = {impl: statistics.median(t) for impl, t in times.items()}
        fused = statistics.median(times["torch-fused"])
        row = f"{name + f' ({n_tensors} t, {n_values / 1e6:.2f}M)':<28}"
        for impl in IMPLS:
            med = statistics.median(times[impl])
            cell = f"{fmt(med)} ({med / fused:.2f}x)"
            row += f"{cell:>26}"
        print(row)
        spread = f"{'  min-max':<28}" + "".join(
            f"{fmt(min(times[i])) + '-' + fmt(max(times[i])):>26}" for i in IMPLS)
        print(spread, flush=True)
    return medians


if __name__ == "__main__":
    main()
