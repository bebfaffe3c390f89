"""The demo's pictures: mini-batch cost, learning rate, decision boundaries, the course's
EWA picture, and every optimizer's path on the course's 2-D surfaces.

matplotlib (a demo dependency) is imported on first use, by :func:`_plt`, with the ``Agg``
backend: importing this module costs nothing more than NumPy and :mod:`fastopt.averaging`.
"""
from __future__ import annotations

import numpy as np

from fastopt.averaging import ewa
from fastopt.course.network import forward

__all__ = ["COLORS", "plot_cost", "plot_lr", "plot_boundaries", "temperature_year", "plot_ewa",
           "plot_paths"]

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


#: one colour per optimizer on the surfaces picture (then the line style changes)
PATH_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#17becf", "#bcbd22", "#7f7f7f", "#000080", "#aa6600", "#00a087", "#ff1493",
               "#6b8e23", "#4b0082"]
PATH_STYLES = ["-", "--", ":", "-."]
#: drawn thicker: the optimizers the course notes teach
COURSE_OPTIMIZERS = ("SGD", "Momentum", "RMSprop", "Adam")


def plot_paths(paths, path, surfaces=None, title=None):
    """Every optimizer's path on each 2-D surface, one panel per surface.

    ``paths``: ``{surface name: [Path, ...]}`` from :func:`fastopt.course.surfaces.run_paths`;
    ``surfaces``: the :class:`~fastopt.course.surfaces.Surface` objects (default: all of
    :data:`~fastopt.course.surfaces.SURFACES` named in ``paths``)."""
    from fastopt.course.surfaces import SURFACES
    plt = _plt()
    from matplotlib.lines import Line2D
    if surfaces is None:
        surfaces = [s for s in SURFACES if s.name in paths]
    names = list(dict.fromkeys(p.name for s in surfaces for p in paths[s.name]))
    style = {n: (PATH_COLORS[i % len(PATH_COLORS)], PATH_STYLES[(i // len(PATH_COLORS))
                                                               % len(PATH_STYLES)])
             for i, n in enumerate(names)}
    cols = 2 if len(surfaces) > 1 else 1
    rows = -(-len(surfaces) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.2 * cols + 4.2, 5.4 * rows + 1.0),
                             squeeze=False)
    troubles = {n: [] for n in names}
    for ax, s in zip(axes.ravel(), surfaces):
        x0, x1, y0, y1 = s.extent
        xx, yy = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
        F = s.value_fn(xx, yy)
        lo = max(float(F.min()), 0.0) + 1e-3 * (float(F.max()) - float(F.min()))
        levels = np.geomspace(lo, float(F.max()), 16)
        ax.contourf(xx, yy, F, levels=np.concatenate([[F.min()], levels]), cmap="Greys_r",
                    alpha=0.35)
        ax.contour(xx, yy, F, levels=levels, colors="0.45", linewidths=0.6)
        # drawn last to first, so the course's optimizers (first in the spec list) are on top
        for p in reversed(paths[s.name]):
            c, ls = style[p.name]
            ok = np.all(np.isfinite(p.points), axis=1)
            pts = p.points[ok]
            lw = 2.2 if p.name in COURSE_OPTIMIZERS else 1.2
            ax.plot(pts[:, 0], pts[:, 1], color=c, ls=ls, lw=lw, alpha=0.9, marker=".",
                    ms=3.0, zorder=3)
            ax.plot(*pts[-1], marker="o", ms=6, mfc="none", mec=c, mew=1.6, zorder=4)
            if p.error:
                troubles[p.name].append(f"failed on {s.name}")
            elif p.diverged_at is not None:
                troubles[p.name].append(f"diverged on {s.name} at step {p.diverged_at}")
        ax.plot(*s.start, marker="*", ms=17, color="k", mec="w", zorder=5)
        for m in s.minima:
            ax.plot(*m, marker="X", ms=12, color="gold", mec="k", zorder=5)
        for m in s.saddles:
            ax.plot(*m, marker="P", ms=11, color="tab:red", mec="k", zorder=5)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xlabel("parameter x (first element)")
        ax.set_ylabel("parameter y (second element)")
        ax.set_title(f"{s.title}\n{s.formula},  {s.steps} steps", fontsize=10.5)
        ax.text(0.01, 0.01, s.lesson, transform=ax.transAxes, fontsize=8.5, style="italic",
                va="bottom", ha="left",
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.7", alpha=0.85))
    for ax in axes.ravel()[len(surfaces):]:
        ax.set_visible(False)

    # one legend for all panels: each optimizer's colour and its learning rate per surface
    handles, labels = [], []
    for n in names:
        c, ls = style[n]
        lrs = " / ".join(next((f"{p.lr:g}" for p in paths[s.name] if p.name == n), "-")
                         for s in surfaces)
        label = f"{n}   lr {lrs}"
        if troubles[n]:
            label += "\n   (" + "; ".join(troubles[n]) + ")"
        handles.append(Line2D([], [], color=c, ls=ls, lw=2.2 if n in COURSE_OPTIMIZERS else 1.2,
                              marker=".", ms=5))
        labels.append(label)
    handles += [Line2D([], [], ls="", marker="*", ms=14, color="k", mec="w"),
                Line2D([], [], ls="", marker="X", ms=11, color="gold", mec="k"),
                Line2D([], [], ls="", marker="P", ms=10, color="tab:red", mec="k"),
                Line2D([], [], ls="", marker="o", ms=6, mfc="none", mec="k", mew=1.6),
                Line2D([], [], ls="", marker=".", ms=6, color="k")]
    labels += ["start (the same for every optimizer)", "minimum", "saddle point",
               "where the optimizer ended", "one dot per step"]
    fig.legend(handles, labels, loc="center right", fontsize=9, frameon=True,
               title="optimizer   learning rate on\n" + " / ".join(s.name for s in surfaces),
               title_fontsize=9)
    fig.suptitle(title or "Each fastopt optimizer stepping a 2-element parameter [x, y] "
                 "downhill on the course's four kinds of surface\n(contours: the function; "
                 "lines: the path of [x, y], one dot per step, from the same start; thick: the "
                 f"course's {', '.join(COURSE_OPTIMIZERS)})",
                 fontsize=12)
    # a fixed layout (tight_layout measures every text: seconds for this many artists)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.7 / width, right=1 - 4.3 / width, bottom=0.6 / height,
                        top=1 - 1.25 / height, wspace=0.22, hspace=0.38)
    fig.savefig(path, dpi=100)
    plt.close(fig)
