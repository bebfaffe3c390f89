"""The demo's pictures: mini-batch cost, learning rate, decision boundaries, and the course's
EWA picture.

matplotlib (a demo dependency) is imported on first use, by :func:`_plt`, with the ``Agg``
backend: importing this module costs nothing more than NumPy and :mod:`fastopt.averaging`.
"""
from __future__ import annotations

import numpy as np

from fastopt.averaging import ewa
from fastopt.course.network import forward

__all__ = ["COLORS", "plot_cost", "plot_lr", "plot_boundaries", "temperature_year", "plot_ewa"]

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
