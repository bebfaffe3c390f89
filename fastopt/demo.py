r"""The course's training demo: an L-layer network trained with every optimizer of the course.

``python -m fastopt demo [--dataset digits|moons] [--epochs N] [--batch-size B] [--seed S]
[--backend numba|cython|numpy] [--dtype float32|float64] [--out DIR]``

The network is the course's fully-connected net in its column layout: ``X`` is ``(n_x, m)``,
parameters are a dict ``{"W1": (n_1, n_x), "b1": (n_1, 1), ...}``, ReLU hidden layers, softmax
(digits, 10 classes) or sigmoid (moons, 2 classes) output, cross-entropy cost with the L2 term
:math:`\frac{\lambda}{2m}\sum_l \|W^{[l]}\|_F^2`, forward and backward propagation in NumPy
(:mod:`fastopt.course.network`).

One run per optimizer -- mini-batch gradient descent, Momentum, RMSprop, Adam, Adam with the
course's per-epoch decay :math:`\alpha_0/(1+\text{decay\_rate}\cdot\text{epoch})` and Adam with a
per-iteration warm-up + cosine schedule -- from the same initial weights and with the same
mini-batches.  The parameters live in a :class:`fastopt.Arena`; backprop writes the gradients
into ``arena.grads`` so each step is a single fused kernel call.  Next to every fastopt
optimizer a course-style NumPy optimizer class (:mod:`fastopt.course.naive`: a dict loop of
NumPy expressions, as the course writes it) steps an identical copy of the parameters with the
same gradients; the table compares their step times and checks that both computed the same thing.

Pictures written to ``--out`` (default ``demo-out/``; drawn by :mod:`fastopt.course.plots`):

``cost.png``        mini-batch cost per iteration, raw (faint) and its bias-corrected EWA (bold)
``lr.png``          the learning rate each run actually used, per iteration
``boundaries.png``  decision boundaries on two moons (a small moons run is added to the digits
                    run for this picture)
``ewa.png``         the course's EWA picture: a noisy year of daily temperatures averaged with
                    beta = 0.5, 0.9, 0.98, and beta = 0.98 with and without bias correction
``surfaces.png``    every optimizer of the spec list stepping a 2-element float64 ``[x, y]`` from
                    the same start on the course's 2-D surfaces: a ravine (ill-conditioned
                    quadratic), a saddle point, a plateau and a noisy bowl
                    (:mod:`fastopt.course.surfaces`); the table of how close each one got to
                    the minimum is printed
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import fastopt
from fastopt import schedules
from fastopt.averaging import WeightEMA
from fastopt.course.naive import AdamNaive, GDNaive, MomentumNaive, RMSpropNaive
from fastopt.course.network import (backward, compute_cost, forward, initialize_parameters,
                                    layer_dims_for, load_data, predict)
from fastopt.course.plots import plot_boundaries, plot_cost, plot_ewa, plot_lr, plot_paths
from fastopt.course.surfaces import format_paths, run_paths
from fastopt.data import minibatches

# The network, the naive optimizers and the pictures live in fastopt.course; they are imported
# here for the runs, and stay importable from fastopt.demo.
__all__ = ["main", "run_specs", "train_one", "run_dataset", "RunSpec", "RunResult",
           "initialize_parameters", "forward", "compute_cost", "backward", "predict",
           "load_data", "layer_dims_for", "GDNaive", "MomentumNaive", "RMSpropNaive",
           "AdamNaive"]

EMA_DECAY = 0.95  # the WeightEMA kept next to every run: averages about the last 20 steps


# =============================================================================================
# Runs
# =============================================================================================
@dataclass
class RunSpec:
    name: str
    make_fast: object          # (params, backend, iters_per_epoch, epochs) -> fastopt optimizer
    make_naive: object         # (params) -> course-style optimizer (fastopt.course.naive)
    epoch_schedule: object = None   # opt.lr = epoch_schedule(epoch) at each epoch start
    lr_label: str = ""


def run_specs(dataset):
    """The optimizers compared, with learning rates that suit each data set."""
    if dataset == "digits":
        gd, rms, adam = 0.1, 1e-3, 2e-3
    else:
        gd, rms, adam = 0.5, 5e-3, 1e-2
    decay_rate = 0.2
    inv = schedules.inverse_time_decay(2 * adam, decay_rate=decay_rate)

    def warm_cos(n_iter, epochs):
        total = n_iter * epochs
        return schedules.warmup_cosine_decay(adam / 10, 2 * adam, warmup_steps=max(1, n_iter),
                                             decay_steps=max(2, total) if total > n_iter
                                             else n_iter + 1, end_lr=adam / 100)

    return [
        RunSpec("Mini-batch GD",
                lambda p, be, n, e: fastopt.SGD(p, lr=gd, backend=be),
                lambda p: GDNaive(p, gd), lr_label=f"{gd:g}"),
        RunSpec("Momentum",
                lambda p, be, n, e: fastopt.Momentum(p, lr=gd, beta=0.9, backend=be),
                lambda p: MomentumNaive(p, gd, 0.9), lr_label=f"{gd:g}, beta=0.9"),
        RunSpec("RMSprop",
                lambda p, be, n, e: fastopt.RMSprop(p, lr=rms, alpha=0.99, eps=1e-8,
                                                    backend=be),
                lambda p: RMSpropNaive(p, rms, 0.99, 1e-8), lr_label=f"{rms:g}, beta2=0.99"),
        RunSpec("Adam",
                lambda p, be, n, e: fastopt.Adam(p, lr=adam, backend=be),
                lambda p: AdamNaive(p, adam), lr_label=f"{adam:g}"),
        RunSpec("Adam + 1/(1+0.2·epoch) decay",
                lambda p, be, n, e: fastopt.Adam(p, lr=inv(0), backend=be),
                lambda p: AdamNaive(p, inv(0)), epoch_schedule=inv,
                lr_label=f"{2 * adam:g}/(1+{decay_rate:g}·epoch), set once per epoch"),
        RunSpec("Adam + warm-up/cosine",
                lambda p, be, n, e: fastopt.Adam(p, lr=warm_cos(n, e), backend=be),
                lambda p: AdamNaive(p, 0.0),
                lr_label=f"{adam / 10:g}→{2 * adam:g} in 1 epoch, then cosine to {adam / 100:g} "
                         "(a schedule over iterations)"),
    ]


@dataclass
class RunResult:
    name: str
    costs: list = field(default_factory=list)     # mini-batch cost per iteration
    lrs: list = field(default_factory=list)       # learning rate used per iteration
    fast_times: list = field(default_factory=list)
    naive_times: list = field(default_factory=list)
    final_cost: float = float("nan")
    train_acc: float = float("nan")
    test_acc: float = float("nan")
    ema_test_acc: float = float("nan")
    max_diff: float = float("nan")
    kernel_calls: int = 0
    params: dict = None


def _accuracy(X, labels, params, output):
    return float(np.mean(predict(X, params, output) == labels))


def train_one(spec, data, init, *, epochs, batch_size, seed, backend, lambd, progress=None):
    """Train one optimizer from ``init``; returns a :class:`RunResult`."""
    Xtr, Ytr, ytr, Xte, yte, output = (data[k] for k in ("Xtr", "Ytr", "ytr", "Xte", "yte",
                                                         "output"))
    m = Xtr.shape[1]
    n_iter = -(-m // batch_size)
    arena = fastopt.Arena({k: v.copy() for k, v in init.items()})
    P, G = arena.params, arena.grads
    opt = spec.make_fast(P, backend, n_iter, epochs)
    naive_params = {k: v.copy() for k, v in init.items()}
    naive = spec.make_naive(naive_params)
    ema = WeightEMA(P, decay=EMA_DECAY)
    res = RunResult(spec.name, kernel_calls=ema.num_kernel_calls)
    clock = time.perf_counter
    for epoch in range(epochs):
        if spec.epoch_schedule is not None:
            opt.lr = spec.epoch_schedule(epoch)
        for Xb, Yb in minibatches(Xtr, Ytr, batch_size=batch_size, seed=seed + epoch, axis=1):
            AL, caches = forward(Xb, P, output)
            res.costs.append(compute_cost(AL, Yb, P, lambd, output, caches, m_reg=m))
            backward(AL, Yb, caches, P, lambd, grads=G, m_reg=m)
            lr = opt.lr
            lr = float(lr(opt.step_count)) if callable(lr) else float(lr)  # what step t uses
            res.lrs.append(lr)
            t0 = clock()
            opt.step(G)
            t1 = clock()
            naive.lr = lr
            naive.step(naive_params, G)
            t2 = clock()
            res.fast_times.append(t1 - t0)
            res.naive_times.append(t2 - t1)
            ema.update()
        if progress is not None:
            progress.set_postfix_str(f"{spec.name}: cost {np.mean(res.costs[-n_iter:]):.3f}")
            progress.update(1)
    AL, caches = forward(Xtr, P, output)
    res.final_cost = compute_cost(AL, Ytr, P, lambd, output, caches)
    res.train_acc = _accuracy(Xtr, ytr, P, output)
    res.test_acc = _accuracy(Xte, yte, P, output)
    with ema.swapped():
        res.ema_test_acc = _accuracy(Xte, yte, P, output)
    res.max_diff = max(float(np.max(np.abs(naive_params[k].astype(np.float64) - P[k])))
                       for k in P)
    res.params = {k: v.copy() for k, v in P.items()}
    return res


# =============================================================================================
# Report
# =============================================================================================
def step_time_us(ts, trim=0.05):
    """Mean step time in µs, without the first step (it pays for compilation or loading the
    compiled kernel from the disk cache) and without the slowest ``trim`` fraction of steps
    (on a busy machine a few steps are pre-empted for milliseconds, which would dominate a
    plain mean of microsecond steps)."""
    ts = np.sort(np.asarray(ts[1:] if len(ts) > 1 else ts, dtype=float))
    if ts.size == 0:
        return float("nan")
    keep = max(1, int(round(ts.size * (1.0 - trim))))
    return 1e6 * float(ts[:keep].mean())


def format_table(results):
    head = (f"{'optimizer':30s} {'final cost':>10s} {'train acc':>9s} {'test acc':>8s} "
            f"{'test(EMA)':>9s} {'fastopt step':>12s} {'naive step':>10s} {'naive/fastopt':>13s} "
            f"{'max|Δp|':>8s}")
    lines = [head, "-" * len(head)]
    for r in results:
        f, n = step_time_us(r.fast_times), step_time_us(r.naive_times)
        lines.append(f"{r.name:30s} {r.final_cost:10.4f} {100 * r.train_acc:8.1f}% "
                     f"{100 * r.test_acc:7.1f}% {100 * r.ema_test_acc:8.1f}% "
                     f"{f:9.1f} µs {n:7.1f} µs {n / f:12.1f}x {r.max_diff:8.1e}")
    return "\n".join(lines)


# =============================================================================================
# main
# =============================================================================================
def run_dataset(name, *, epochs, batch_size, seed, backend, dtype, lambd, progress_desc=None):
    data = load_data(name, seed=seed, dtype=dtype)
    dims = layer_dims_for(data)
    init = initialize_parameters(dims, seed=seed, dtype=dtype)
    specs = run_specs(name)
    try:
        from tqdm import tqdm
        bar = tqdm(total=epochs * len(specs), desc=progress_desc or name, unit="epoch",
                   file=sys.stderr, leave=False, disable=None)
    except ImportError:  # pragma: no cover - tqdm is a demo dependency
        bar = None
    results = []
    try:
        for spec in specs:
            results.append(train_one(spec, data, init, epochs=epochs, batch_size=batch_size,
                                     seed=seed, backend=backend, lambd=lambd, progress=bar))
    finally:
        if bar is not None:
            bar.close()
    return data, dims, specs, results


def _describe(data, dims, epochs, batch_size, dtype, backend_name, lambd):
    m, mt = data["Xtr"].shape[1], data["Xte"].shape[1]
    n_iter = -(-m // batch_size)
    return (f"{data['name']}: {m} train / {mt} test samples, layers {dims} "
            f"(ReLU, {data['output']} output, L2 λ={lambd:g}), {epochs} epochs × {n_iter} "
            f"mini-batches of {batch_size}, {np.dtype(dtype).name}, fastopt backend "
            f"{backend_name!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastopt demo",
        description="Train the course's L-layer network with mini-batch GD, Momentum, RMSprop, "
                    "Adam and Adam with learning-rate decay; compare fastopt's fused steps "
                    "with course-style NumPy optimizers; draw the pictures.")
    parser.add_argument("--dataset", choices=["digits", "moons"], default="digits",
                        help="digits (default; a small moons run is added for the decision-"
                             "boundary picture) or moons only")
    parser.add_argument("--epochs", type=int, default=20,
                        help="epochs (default 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (64)")
    parser.add_argument("--seed", type=int, default=0, help="seed: split, init and batches")
    parser.add_argument("--backend", choices=["numba", "cython", "numpy"], default=None,
                        help="fastopt backend (default: the first available)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--lambd", type=float, default=1.0,
                        help="L2 strength λ; the term is λ/(2·m_train)·Σ‖W‖² (default 1)")
    parser.add_argument("--out", default="demo-out", help="folder for the PNGs (demo-out/)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    t_start = time.perf_counter()
    dtype = np.dtype(args.dtype)
    os.makedirs(args.out, exist_ok=True)
    backend_name = args.backend
    if backend_name is None:
        from fastopt.kernels import resolve_backend
        backend_name = resolve_backend([np.zeros(1, dtype)]).name
    common = dict(batch_size=args.batch_size, seed=args.seed, backend=args.backend, dtype=dtype,
                  lambd=args.lambd)
    written = []

    data, dims, specs, results = run_dataset(args.dataset, epochs=args.epochs, **common)
    n_iter = -(-data["Xtr"].shape[1] // args.batch_size)
    print(_describe(data, dims, args.epochs, args.batch_size, dtype, backend_name, args.lambd))
    print("step: mean time of one optimizer step (without the first step and the slowest 5%, "
          "which are OS pre-emptions); naive: the course's\nNumPy optimizer class stepping an "
          "identical copy with the same gradients; max|Δp|: largest difference between the two "
          "copies\nat the end (same math, different rounding); test(EMA): test accuracy of the "
          "WeightEMA(decay="
          f"{EMA_DECAY}) average of the weights")
    print(format_table(results))
    title = (f"{args.dataset}: mini-batch cost per iteration, {args.epochs} epochs, batch "
             f"size {args.batch_size}, same initial weights and batches for every optimizer")
    p = os.path.join(args.out, "cost.png")
    plot_cost(results, p, title, n_iter)
    written.append(p)
    p = os.path.join(args.out, "lr.png")
    plot_lr(results, specs, p, f"{args.dataset}: learning rate used at each step", n_iter)
    written.append(p)

    if args.dataset == "moons":
        moons_results, moons_data = results, data
    else:
        moons_epochs = args.epochs
        moons_data, mdims, _, moons_results = run_dataset(
            "moons", epochs=moons_epochs, progress_desc="moons (for the boundary picture)",
            **common)
        print()
        print(_describe(moons_data, mdims, moons_epochs, args.batch_size, dtype, backend_name,
                        args.lambd))
        print(format_table(moons_results))
    p = os.path.join(args.out, "boundaries.png")
    plot_boundaries(moons_results, moons_data, p, args.epochs)
    written.append(p)
    p = os.path.join(args.out, "ewa.png")
    plot_ewa(p, seed=args.seed)
    written.append(p)

    # every optimizer of the spec list on the course's 2-D surfaces, from the same start
    paths = run_paths(seed=args.seed, backend=args.backend)
    p = os.path.join(args.out, "surfaces.png")
    plot_paths(paths, p)
    written.append(p)
    print("\n2-D surfaces (surfaces.png): each optimizer steps a 2-element float64 [x, y] from "
          "the same start; distance to the nearest\nminimum after the surface's step budget "
          "(lr: hand-tuned per surface in fastopt.course.surfaces.LEARNING_RATES)")
    print(format_paths(paths))
    for ps in paths.values():
        for q in ps:
            if q.error:
                print(f"  note: {q.name} on {q.surface} stopped: {q.error}")
    print(f"\nwrote {', '.join(written)}")
    print(f"demo wall time: {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
