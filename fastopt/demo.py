r"""The course's training demo: an L-layer network trained with every optimizer of the course.

``python -m fastopt demo [--dataset digits|moons] [--epochs N] [--batch-size B] [--seed S]
[--backend numba|cython|numpy] [--dtype float32|float64] [--out DIR]``

The network is the course's fully-connected net in its column layout: ``X`` is ``(n_x, m)``,
parameters are a dict ``{"W1": (n_1, n_x), "b1": (n_1, 1), ...}``, ReLU hidden layers, softmax
(digits, 10 classes) or sigmoid (moons, 2 classes) output, cross-entropy cost with the L2 term
:math:`\frac{\lambda}{2m}\sum_l \|W^{[l]}\|_F^2`, forward and backward propagation in NumPy.

One run per optimizer -- mini-batch gradient descent, Momentum, RMSprop, Adam, Adam with the
course's per-epoch decay :math:`\alpha_0/(1+\text{decay\_rate}\cdot\text{epoch})` and Adam with a
per-iteration warm-up + cosine schedule -- from the same initial weights and with the same
mini-batches.  The parameters live in a :class:`fastopt.Arena`; backprop writes the gradients
into ``arena.grads`` so each step is a single fused kernel call.  Next to every fastopt
optimizer a course-style NumPy optimizer class (a dict loop of NumPy expressions, as the course
writes it) steps an identical copy of the parameters with the same gradients; the table compares
their step times and checks that both computed the same thing.

Pictures written to ``--out`` (default ``demo-out/``):

``cost.png``        mini-batch cost per iteration, raw (faint) and its bias-corrected EWA (bold)
``lr.png``          the learning rate each run actually used, per iteration
``boundaries.png``  decision boundaries on two moons (a small moons run is added to the digits
                    run for this picture)
``ewa.png``         the course's EWA picture: a noisy year of daily temperatures averaged with
                    beta = 0.5, 0.9, 0.98, and beta = 0.98 with and without bias correction
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
from fastopt.averaging import WeightEMA, ewa
from fastopt.data import minibatches

__all__ = ["main", "initialize_parameters", "forward", "compute_cost", "backward", "predict",
           "GDNaive", "MomentumNaive", "RMSpropNaive", "AdamNaive"]

EMA_DECAY = 0.95  # the WeightEMA kept next to every run: averages about the last 20 steps


# =============================================================================================
# The network (the course's L-layer model, column layout)
# =============================================================================================
def initialize_parameters(layer_dims, seed=0, dtype=np.float32):
    """He initialisation: ``W[l] ~ N(0, 2/n[l-1])`` of shape ``(n[l], n[l-1])``, ``b[l] = 0``
    of shape ``(n[l], 1)``."""
    rng = np.random.default_rng(seed)
    params = {}
    for l in range(1, len(layer_dims)):
        params[f"W{l}"] = (rng.standard_normal((layer_dims[l], layer_dims[l - 1]))
                           * np.sqrt(2.0 / layer_dims[l - 1])).astype(dtype)
        params[f"b{l}"] = np.zeros((layer_dims[l], 1), dtype=dtype)
    return params


def _num_layers(params):
    return len(params) // 2


def forward(X, params, output="softmax"):
    """Forward propagation.  Returns ``AL`` and the caches ``[(A_prev, Z), ...]`` per layer.

    ``Z[l] = W[l] A[l-1] + b[l]``; ``A[l] = relu(Z[l])`` for hidden layers; the output layer
    applies ``softmax`` over the classes (axis 0) or ``sigmoid``.
    """
    L = _num_layers(params)
    A = X
    caches = []
    for l in range(1, L + 1):
        Z = params[f"W{l}"] @ A + params[f"b{l}"]
        caches.append((A, Z))
        if l < L:
            A = np.maximum(Z, 0)
        elif output == "softmax":
            E = np.exp(Z - Z.max(axis=0, keepdims=True))
            A = E / E.sum(axis=0, keepdims=True)
        else:
            A = 1.0 / (1.0 + np.exp(-Z))
    return A, caches


def compute_cost(AL, Y, params, lambd=0.0, output="softmax", caches=None, m_reg=None):
    r"""Cross-entropy cost plus the L2 term, as a Python float (accumulated in float64).

    .. math:: J = \frac1m\sum_i \mathcal L(\hat y^{(i)}, y^{(i)})
                  + \frac{\lambda}{2 m_\text{reg}}\sum_l \|W^{[l]}\|_F^2

    ``m`` is the number of samples in ``Y``; ``m_reg`` defaults to it (the course's per-batch
    formula).  The demo passes the training-set size as ``m_reg``: then every mini-batch cost
    estimates the same full-batch cost :math:`J` (the course's :math:`\lambda/2m` with ``m`` the
    training set), and a smaller last mini-batch does not get a larger L2 term.

    With ``caches`` the loss is computed from the output layer's ``Z`` (log-sum-exp form,
    no ``log(0)``); otherwise from ``AL``.
    """
    m = Y.shape[1]
    if caches is not None:
        Z = caches[-1][1].astype(np.float64)
        Yd = Y.astype(np.float64)
        if output == "softmax":
            zmax = Z.max(axis=0, keepdims=True)
            lse = zmax + np.log(np.exp(Z - zmax).sum(axis=0, keepdims=True))
            loss = float(np.sum(lse) - np.sum(Yd * Z))
        else:
            loss = float(np.sum(np.logaddexp(0.0, Z) - Yd * Z))
    else:
        A = np.clip(AL.astype(np.float64), 1e-15, 1 - 1e-15)
        if output == "softmax":
            loss = float(-np.sum(Y * np.log(A)))
        else:
            loss = float(-np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)))
    l2 = sum(float(np.sum(np.square(params[f"W{l}"], dtype=np.float64)))
             for l in range(1, _num_layers(params) + 1))
    return loss / m + lambd / (2 * (m_reg or m)) * l2


def backward(AL, Y, caches, params, lambd=0.0, grads=None, m_reg=None):
    r"""Backward propagation; gradients keyed like the parameters (``"W1"``, ``"b1"``, ...).

    ``dZ[L] = AL - Y`` (softmax + cross-entropy, or sigmoid + binary cross-entropy);
    ``dW[l] = dZ[l] A[l-1]^T / m + (lambd/m_reg) W[l]`` (``m_reg`` as in :func:`compute_cost`);
    ``db[l] = sum(dZ[l], axis=1) / m``;
    ``dZ[l-1] = W[l]^T dZ[l] * (Z[l-1] > 0)``.

    With ``grads`` (e.g. ``arena.grads``) the gradients are written into those arrays in place
    (``out=``), so an optimizer built on an Arena steps them with one kernel call.
    """
    L = _num_layers(params)
    m = Y.shape[1]
    if grads is None:
        grads = {k: np.empty_like(v) for k, v in params.items()}
    dZ = AL - Y
    for l in range(L, 0, -1):
        A_prev, _ = caches[l - 1]
        W = params[f"W{l}"]
        gW, gb = grads[f"W{l}"], grads[f"b{l}"]
        np.matmul(dZ, A_prev.T, out=gW)
        gW *= 1.0 / m
        if lambd:
            gW += (lambd / (m_reg or m)) * W
        np.sum(dZ, axis=1, keepdims=True, out=gb)
        gb *= 1.0 / m
        if l > 1:
            dA = W.T @ dZ
            dZ = dA * (caches[l - 2][1] > 0)
    return grads


def predict(X, params, output="softmax"):
    """Class labels: argmax of the softmax, or sigmoid > 0.5."""
    AL, _ = forward(X, params, output)
    if output == "softmax":
        return AL.argmax(axis=0)
    return (AL[0] > 0.5).astype(int)


# =============================================================================================
# Course-style NumPy optimizers (the baseline: a dict loop of NumPy expressions, temporaries)
# =============================================================================================
class GDNaive:
    """The course's mini-batch gradient descent update."""

    def __init__(self, lr):
        self.lr = lr

    def update(self, params, grads):
        for key in params:
            params[key] = params[key] - self.lr * grads[key]


class MomentumNaive:
    """The course's gradient descent with momentum: ``v = beta v + (1-beta) dW; W -= lr v``."""

    def __init__(self, lr, beta=0.9):
        self.lr, self.beta = lr, beta
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.v[key] = self.beta * self.v[key] + (1 - self.beta) * grads[key]
            params[key] = params[key] - self.lr * self.v[key]


class RMSpropNaive:
    """The course's RMSprop: ``s = beta2 s + (1-beta2) dW**2; W -= lr dW / (sqrt(s) + eps)``."""

    def __init__(self, lr, beta2=0.99, eps=1e-8):
        self.lr, self.beta2, self.eps = lr, beta2, eps
        self.s = None

    def update(self, params, grads):
        if self.s is None:
            self.s = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.s[key] = self.beta2 * self.s[key] + (1 - self.beta2) * grads[key] ** 2
            params[key] = params[key] - self.lr * grads[key] / (np.sqrt(self.s[key]) + self.eps)


class AdamNaive:
    """The course's Adam, with bias correction, keeping ``v`` and ``s`` dicts."""

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.v = self.s = None
        self.t = 0

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
            self.s = {key: np.zeros_like(val) for key, val in params.items()}
        self.t += 1
        for key in params:
            self.v[key] = self.beta1 * self.v[key] + (1 - self.beta1) * grads[key]
            self.s[key] = self.beta2 * self.s[key] + (1 - self.beta2) * grads[key] ** 2
            v_corrected = self.v[key] / (1 - self.beta1 ** self.t)
            s_corrected = self.s[key] / (1 - self.beta2 ** self.t)
            params[key] = params[key] - self.lr * v_corrected / (np.sqrt(s_corrected)
                                                                 + self.eps)


# =============================================================================================
# Runs
# =============================================================================================
@dataclass
class RunSpec:
    name: str
    make_fast: object          # (params, backend, iters_per_epoch, epochs) -> fastopt optimizer
    make_naive: object         # () -> course-style optimizer
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
                lambda: GDNaive(gd), lr_label=f"{gd:g}"),
        RunSpec("Momentum",
                lambda p, be, n, e: fastopt.Momentum(p, lr=gd, beta=0.9, backend=be),
                lambda: MomentumNaive(gd, 0.9), lr_label=f"{gd:g}, beta=0.9"),
        RunSpec("RMSprop",
                lambda p, be, n, e: fastopt.RMSprop(p, lr=rms, alpha=0.99, eps=1e-8,
                                                    backend=be),
                lambda: RMSpropNaive(rms, 0.99, 1e-8), lr_label=f"{rms:g}, beta2=0.99"),
        RunSpec("Adam",
                lambda p, be, n, e: fastopt.Adam(p, lr=adam, backend=be),
                lambda: AdamNaive(adam), lr_label=f"{adam:g}"),
        RunSpec("Adam + 1/(1+0.2·epoch) decay",
                lambda p, be, n, e: fastopt.Adam(p, lr=inv(0), backend=be),
                lambda: AdamNaive(inv(0)), epoch_schedule=inv,
                lr_label=f"{2 * adam:g}/(1+{decay_rate:g}·epoch), set once per epoch"),
        RunSpec("Adam + warm-up/cosine",
                lambda p, be, n, e: fastopt.Adam(p, lr=warm_cos(n, e), backend=be),
                lambda: AdamNaive(0.0),
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
    naive = spec.make_naive()
    naive_params = {k: v.copy() for k, v in init.items()}
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
            naive.update(naive_params, G)
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
# Data
# =============================================================================================
def load_data(name, seed=0, dtype=np.float32):
    """``digits`` (8x8 images, 10 classes) or ``moons`` (2-D, 2 classes), standardized with the
    training set's mean and std, in the course's layout: ``X`` ``(n_x, m)``, ``Y`` ``(n_y, m)``
    (one-hot for digits, 0/1 row for moons)."""
    from sklearn.model_selection import train_test_split

    if name == "digits":
        from sklearn.datasets import load_digits
        X, y = load_digits(return_X_y=True)
        output, n_classes = "softmax", 10
    elif name == "moons":
        from sklearn.datasets import make_moons
        X, y = make_moons(n_samples=600, noise=0.2, random_state=seed)
        output, n_classes = "sigmoid", 2
    else:
        raise ValueError(f"dataset must be 'digits' or 'moons', got {name!r}")
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)
    sd[sd == 0] = 1.0

    def prep(a):
        return np.ascontiguousarray(((a - mu) / sd).T, dtype=dtype)

    def target(labels):
        if output == "softmax":
            return np.ascontiguousarray(np.eye(n_classes, dtype=dtype)[labels].T)
        return labels.reshape(1, -1).astype(dtype)

    return {"name": name, "Xtr": prep(Xtr), "Ytr": target(ytr), "ytr": ytr,
            "Xte": prep(Xte), "Yte": target(yte), "yte": yte, "output": output,
            "mu": mu, "sd": sd, "raw_train": (Xtr, ytr), "raw_test": (Xte, yte)}


def layer_dims_for(data):
    n_x = data["Xtr"].shape[0]
    return [n_x, 64, 32, 10] if data["output"] == "softmax" else [n_x, 16, 16, 1]


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
# Pictures
# =============================================================================================
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_cost(results, path, title, n_iter, beta=0.9):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 6))
    for r, c in zip(results, COLORS):
        it = np.arange(1, len(r.costs) + 1)
        ax.plot(it, r.costs, color=c, alpha=0.22, lw=0.8)
        ax.plot(it, ewa(np.asarray(r.costs), beta, bias_correction=True), color=c, lw=2.2,
                label=r.name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration (one mini-batch step)")
    ax.set_ylabel("mini-batch cost J (cross-entropy + L2), log scale")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    sec = ax.secondary_xaxis("top", functions=(lambda x: x / n_iter, lambda e: e * n_iter))
    sec.set_xlabel("epoch")
    from matplotlib.lines import Line2D
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="grey", alpha=0.3, lw=0.8),
                Line2D([], [], color="grey", lw=2.2)]
    labels += ["faint: raw cost of each mini-batch",
               f"bold: its EWA (β={beta}, bias-corrected)"]
    ax.legend(handles, labels, loc="upper right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lr(results, specs, path, title, n_iter):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 6))
    styles = ["-", "--", "-", "-", "-", "-"]
    for i, (r, s, c) in enumerate(zip(results, specs, COLORS)):
        ax.plot(np.arange(1, len(r.lrs) + 1), r.lrs, color=c, ls=styles[i % len(styles)],
                lw=4 if i == 0 else 2, label=f"{r.name}: α = {s.lr_label}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration (one mini-batch step)")
    ax.set_ylabel("learning rate α used by the step (log scale)")
    ax.set_title(title)
    sec = ax.secondary_xaxis("top", functions=(lambda x: x / n_iter, lambda e: e * n_iter))
    sec.set_xlabel("epoch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_boundaries(results, data, path, epochs):
    plt = _plt()
    Xtr_raw, ytr = data["raw_train"]
    Xte_raw, yte = data["raw_test"]
    lo = np.vstack([Xtr_raw, Xte_raw]).min(axis=0) - 0.5
    hi = np.vstack([Xtr_raw, Xte_raw]).max(axis=0) + 0.5
    xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], 250), np.linspace(lo[1], hi[1], 250))
    grid = np.c_[xx.ravel(), yy.ravel()]
    G = np.ascontiguousarray(((grid - data["mu"]) / data["sd"]).T, dtype=data["Xtr"].dtype)
    n = len(results)
    cols = 3
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows + 0.6),
                             squeeze=False, sharex=True, sharey=True)
    cs = None
    for ax, r in zip(axes.ravel(), results):
        prob = forward(G, r.params, "sigmoid")[0][0].reshape(xx.shape)
        cs = ax.contourf(xx, yy, prob, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.75)
        ax.contour(xx, yy, prob, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(Xtr_raw[:, 0], Xtr_raw[:, 1], c=ytr, cmap="bwr", s=9, edgecolors="k",
                   linewidths=0.3)
        ax.set_title(f"{r.name}\ntest accuracy {100 * r.test_acc:.1f}%", fontsize=10)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("x₁")
    for ax in axes[:, 0]:
        ax.set_ylabel("x₂")
    fig.suptitle(f"Two moons: decision boundary (black line, P(y=1) = 0.5) after {epochs} epochs "
                 "with each optimizer\nbackground: predicted P(y=1); dots: training points "
                 "coloured by their class", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    cax = fig.add_axes((0.93, 0.15, 0.015, 0.65))
    fig.colorbar(cs, cax=cax, label="predicted P(y = 1)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def temperature_year(seed=0):
    """A synthetic noisy year of daily temperatures (°C), London-like: a seasonal cosine plus
    day-to-day noise."""
    rng = np.random.default_rng(seed)
    day = np.arange(1, 366)
    seasonal = 11.0 - 7.0 * np.cos(2 * np.pi * (day - 15) / 365.0)
    return day, seasonal + rng.normal(0.0, 2.5, size=day.size)


def plot_ewa(path, seed=0):
    plt = _plt()
    day, theta = temperature_year(seed)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(14, 5.2), gridspec_kw={"width_ratios": [3, 2]})
    a1.scatter(day, theta, s=7, color="#4c72b0", alpha=0.6, label="θₜ: daily temperature")
    for beta, color in ((0.5, "#e6b000"), (0.9, "#d62728"), (0.98, "#2ca02c")):
        a1.plot(day, ewa(theta, beta, bias_correction=True), color=color, lw=2,
                label=f"β = {beta}: averages ≈ {1 / (1 - beta):.0f} days")
    a1.set_title("Exponentially weighted averages  vₜ = β·vₜ₋₁ + (1−β)·θₜ  (bias-corrected)")
    a1.set_xlabel("day of the year")
    a1.set_ylabel("temperature (°C)")
    a1.legend(loc="upper left", fontsize=9)
    a1.grid(alpha=0.3)

    n = 120
    a2.scatter(day[:n], theta[:n], s=9, color="#4c72b0", alpha=0.6, label="θₜ")
    a2.plot(day[:n], ewa(theta, 0.98)[:n], color="#7b3fa0", lw=2,
            label="β = 0.98, no bias correction: vₜ (starts at v₀ = 0)")
    a2.plot(day[:n], ewa(theta, 0.98, bias_correction=True)[:n], color="#2ca02c", lw=2,
            label="β = 0.98, bias-corrected: vₜ / (1 − βᵗ)")
    a2.set_title(f"Bias correction (first {n} days)")
    a2.set_xlabel("day of the year")
    a2.set_ylabel("temperature (°C)")
    a2.legend(loc="upper left", fontsize=9)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    print(f"\nwrote {', '.join(written)}")
    print(f"demo wall time: {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
