"""Turn a pytest-benchmark JSON of the fastopt suite into a Markdown report and a plot.

Usage::

    python bench/report.py [JSON ...] [--out-dir bench/results] [--name NAME]   # several JSONs are merged

Writes ``<out-dir>/<machine>.md`` (machine: a stable label such as ``cpu-amd-epyc-2c``, no host
name) and ``<out-dir>/<machine>-gbps.png`` (GB/s against buffer size per implementation, one panel
per optimizer family, with the floor), plus ``<machine>-threshold.png`` (serial vs parallel loops
of the numba and cython backends around the parallel threshold, per backend).  Every ratio in
the report is between two medians of the same run; nothing is compared across runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict

FASTOPT_IMPLS = ["numba", "numba-arena", "cython", "cython-arena"]
BASELINES = [("course", "course NumPy"), ("numpy", "reference"),
             ("torch-forloop", "torch for-loop"), ("torch-foreach", "torch foreach"),
             ("torch-fused", "torch fused")]
FAMILY_ORDER = ["sgd", "sgd_momentum", "momentum", "rmsprop", "adagrad", "adam", "adamw",
                "adam_amsgrad"]
IMPL_ORDER = FASTOPT_IMPLS + [b for b, _ in BASELINES]
#: test_overhead's levels (bench_models.OVERHEAD_LEVELS) and backends, in table order
OVERHEAD_LEVELS = ["bound-call", "step"]
OVERHEAD_BACKENDS = ["default", "cython", "numba"]
#: course MLP Adam step on the default backend: layout -> the most it may take (seconds)
MLP_STEP_TARGETS = {"arena": 3e-6, "separate": 8e-6}


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def load(path):
    """One JSON, or several (a list of paths: one pytest process per implementation group,
    merged; the first file's run metadata is kept)."""
    paths = [path] if isinstance(path, str) else list(path)
    data, rows = None, []
    for pth in paths:
        d, r = _load_one(pth)
        data = data or d
        rows += r
    return data, rows


def _load_one(path):
    with open(path) as fh:
        data = json.load(fh)
    rows = []
    for b in data.get("benchmarks", []):
        e = dict(b.get("extra_info") or {})
        if "suite" not in e:
            continue  # a standalone file's benchmark (bench_cython.py, ...): not ours
        e["median"] = float(b["stats"]["median"])
        e["name"] = b["name"]
        rows.append(e)
    return data, rows


def _helpers():
    """bench/conftest.py by path (machine description when the run had no test_floor)."""
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py")
    spec = importlib.util.spec_from_file_location("fastopt_bench_conftest_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine(data, rows):
    for r in rows:
        if r.get("suite") == "floor" and "machine" in r:
            return r["machine"], r.get("machine_info", {}), r
    try:
        h = _helpers()
        info = h.machine_info()
        return h.machine_name(info), info, None
    except Exception:  # noqa: BLE001 - a report without the machine line is still a report
        mi = data.get("machine_info", {})
        info = dict(cpu_model=(mi.get("cpu") or {}).get("brand_raw", "?"),
                    cores=(mi.get("cpu") or {}).get("count", "?"))
        return "cpu-unknown", info, None


def floor_of(rows):
    with_floor = [r for r in rows if "floor_GBps" in r]
    for r in with_floor:
        if r.get("suite") == "floor":
            return r
    return with_floor[0] if with_floor else {}


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------

def fmt_time(s):
    if s is None:
        return ""
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_x(x):
    return "" if x is None else f"{x:.2f}×"


def fmt_n(n):
    if n and n & (n - 1) == 0:
        return f"2^{int(math.log2(n))}"
    return f"{n:,}"


def table(header, body):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(out)


def _impl_key(impl):
    return IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)


def case_table(cases, key_cols):
    """cases: {key tuple: {impl: row}} -> Markdown table, one line per implementation."""
    header = key_cols + ["impl", "time", "GB/s", "of floor"] + [f"vs {lab}" for _, lab in
                                                                   BASELINES]
    body = []
    for key in sorted(cases, key=_case_sort):
        impls = cases[key]
        for impl in sorted(impls, key=_impl_key):
            r = impls[impl]
            speed = []
            for b, _ in BASELINES:
                base = impls.get(b)
                if base is None or impl == b or impl not in FASTOPT_IMPLS:
                    speed.append("")
                else:
                    speed.append(fmt_x(base["median"] / r["median"]))
            label = f"**{impl}**" if impl in FASTOPT_IMPLS else impl
            body.append([*_key_cells(key), label, fmt_time(r["median"]), f"{r['GBps']:.2f}",
                         f"{r['fraction_of_floor']:.2f}", *speed])
    return table(header, body)


def _case_sort(key):
    out = []
    for k in key:
        if k in FAMILY_ORDER:
            out.append((0, FAMILY_ORDER.index(k), ""))
        elif isinstance(k, (int, float)):
            out.append((1, k, ""))
        else:
            out.append((2, 0, str(k)))
    return out


def _key_cells(key):
    return [fmt_n(k) if isinstance(k, int) else k for k in key]


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------

def by_case(rows, suite, key_fields):
    cases = defaultdict(dict)
    for r in rows:
        if r.get("suite") == suite:
            cases[tuple(r.get(k) for k in key_fields)][r["impl"]] = r
    return cases


def _threshold_key(r):
    """(backend, kind) of a threshold row: its own fields, else its impl ``<backend>-<kind>``
    (older runs recorded only ``numba-serial`` / ``numba-parallel``)."""
    backend, kind = r.get("backend"), r.get("kind")
    if backend is None or kind is None:
        backend, _, kind = str(r["impl"]).rpartition("-")
    return backend, kind


def crossover(rows):
    """{(backend, family): (crossover n or None, [(n, serial s, parallel s)])}: per backend, the
    smallest measured n from which its parallel loop is faster than its serial one at every
    larger measured n."""
    out = {}
    series = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("suite") == "threshold":
            backend, kind = _threshold_key(r)
            series[backend, r["family"]][r["n"]][kind] = r["median"]
    for key, d in series.items():
        pts = sorted((n, v["serial"], v["parallel"]) for n, v in d.items()
                     if "serial" in v and "parallel" in v)
        cross = None
        for i in range(len(pts)):
            if all(par < ser for _, ser, par in pts[i:]):
                cross = pts[i][0]
                break
        out[key] = (cross, pts)
    return out


def _backend_sort(name):
    return (OVERHEAD_BACKENDS.index(name) if name in OVERHEAD_BACKENDS
            else len(OVERHEAD_BACKENDS), str(name))


def targets(rows, kernels, models, overhead, startup, info=None):
    """-> list of (target, measured text, met: bool or None)."""
    out = []

    def k(fam, n, impl, dtype="float32"):
        return kernels.get((dtype, fam, n), {}).get(impl)

    def ratio(a, b):
        return None if a is None or b is None else b["median"] / a["median"]

    # Adam 2^24
    a = k("adam", 1 << 24, "numba")
    if a:
        out.append(("Adam f32 2^24 ≥ 0.90 of floor", f"{a['fraction_of_floor']:.2f}",
                    a["fraction_of_floor"] >= 0.90))
        r = ratio(a, k("adam", 1 << 24, "torch-fused"))
        if r is not None:
            out.append(("Adam f32 2^24 ≥ 1.0× torch fused", f"{r:.2f}×", r >= 1.0))
    # Adam 2^16..2^20 vs torch fused
    rs = []
    for e in (16, 18, 20):
        r = ratio(k("adam", 1 << e, "numba"), k("adam", 1 << e, "torch-fused"))
        if r is not None:
            rs.append((e, r))
    if rs:
        out.append(("Adam f32 2^16…2^20 ≥ 1.3× torch fused",
                    ", ".join(f"2^{e}: {r:.2f}×" for e, r in rs), all(r >= 1.3 for _, r in rs)))
    # every family 2^24
    fr = []
    for fam in FAMILY_ORDER:
        r = k(fam, 1 << 24, "numba")
        if r:
            fr.append((fam, r["fraction_of_floor"]))
    if fr:
        out.append(("every family f32 2^24 ≥ 0.85 of floor",
                    ", ".join(f"{f} {x:.2f}" for f, x in fr), all(x >= 0.85 for _, x in fr)))
    # course -> fastopt >= 10x at >= 2^20
    cr = []
    for (dtype, fam, n), impls in sorted(kernels.items(), key=lambda kv: _case_sort(kv[0])):
        if dtype == "float32" and n >= (1 << 20) and "course" in impls and "numba" in impls:
            cr.append((fam, n, impls["course"]["median"] / impls["numba"]["median"]))
    if cr:
        worst = min(cr, key=lambda t: t[2])
        adam = [f"2^{int(math.log2(n))}: {x:.1f}×" for f, n, x in cr if f == "adam"]
        out.append(("naive course NumPy → fastopt ≥ 10× at ≥ 2^20",
                    f"Adam {', '.join(adam)}; worst case {worst[0]} 2^{int(math.log2(worst[1]))}"
                    f" {worst[2]:.1f}×", all(x >= 10 for _, _, x in cr)))
    # course MLP Adam step on the default backend: test_overhead's "step" level, else the
    # model suite's row of the default backend (when the run recorded which one it is)
    mlp = models.get(("course_mlp",), {})
    default = (info or {}).get("default_backend")
    for layout, limit in MLP_STEP_TARGETS.items():
        r = overhead.get(("default", layout), {}).get("step")
        label = f"default backend: {(r or {}).get('resolved', '?')}, {layout}"
        if r is None and default:
            r = mlp.get(default if layout == "separate" else f"{default}-arena")
            label = f"default backend: {default}, {layout}, model suite"
        if r:
            out.append((f"course MLP Adam step ≤ {limit * 1e6:.0f} µs ({label})",
                        fmt_time(r["median"]), r["median"] <= limit))
    # GPT-2
    gpt = models.get(("gpt2_small",), {})
    for impl in ("numba", "numba-arena"):
        r = gpt.get(impl)
        if r:
            x = 1 / r["fraction_of_floor"]
            out.append((f"GPT-2 set ≤ 1.05× floor ({impl})", f"{x:.2f}× floor time", x <= 1.05))
            tf = gpt.get("torch-fused")
            if tf:
                s = tf["median"] / r["median"]
                out.append((f"GPT-2 set ≥ 1.0× torch fused ({impl})", f"{s:.2f}×", s >= 1.0))
    # start-up
    for r in startup:
        s = r.get("import_and_first_step_s")
        if s is not None:
            be = r.get("backend") or r.get("impl") or "?"
            out.append(("`import fastopt` + first Adam step, new process, cached ≤ 0.6 s",
                        f"{s:.3f} s ({be}; whole process incl. interpreter "
                        f"{r['median']:.2f} s)", s <= 0.6))
    return out


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------

def plot(kernels, floor, cross, out_png, out_thr):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fams = [f for f in FAMILY_ORDER if any(k[1] == f for k in kernels)]
    if fams:
        cols = 4
        rows_n = int(math.ceil(len(fams) / cols))
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.4 * rows_n), squeeze=False,
                                 sharey=True)
        for ax, fam in zip(axes.flat, fams):
            series = defaultdict(list)
            for (dtype, f, n), impls in kernels.items():
                if f != fam or dtype != "float32":
                    continue
                for impl, r in impls.items():
                    series[impl].append((n, r["GBps"]))
            for impl in sorted(series, key=_impl_key):
                pts = sorted(series[impl])
                style = "-o" if impl in FASTOPT_IMPLS else "--."
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=impl, ms=3)
            if floor.get("floor_GBps"):
                ax.axhline(floor["floor_GBps"], color="k", lw=1, ls=":", label="DRAM floor")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{fam} (float32)")
            ax.set_xlabel("elements")
            ax.grid(True, which="both", alpha=0.3)
        for ax in axes.flat[len(fams):]:
            ax.axis("off")
        axes[0][0].set_ylabel("GB/s (bytes moved / median time)")
        handles, labels = [], []
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.savefig(out_png, dpi=110)
        plt.close(fig)
    if cross:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for (backend, fam), (c, pts) in sorted(cross.items()):
            if not pts:
                continue
            ns = [p[0] for p in pts]
            style = "-o" if backend == "numba" else "--s"
            ax.plot(ns, [p[1] / p[2] for p in pts], style, ms=3,
                    label=f"{backend} {fam} (crossover {c:,})" if c else f"{backend} {fam}")
        ax.axhline(1.0, color="k", lw=1, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements (float32)")
        ax.set_ylabel("serial time / parallel time")
        ax.set_title("Bound kernel calls: parallel speed-up over serial")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_thr, dpi=110)
        plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------

def render(data, rows, name, info, png, thr_png):
    floor = floor_of(rows)
    kernels = by_case(rows, "kernels", ["dtype", "family", "n"])
    models = by_case(rows, "models", ["model"])
    overhead = by_case(rows, "overhead", ["backend", "layout"])
    startup = [r for r in rows if r.get("suite") == "startup"]
    cross = crossover(rows)
    lines = [f"# fastopt benchmarks: {name}", ""]
    lines.append(f"Run {data.get('datetime', '?')}; pytest-benchmark {data.get('version', '?')}. "
                 "Every ratio below is between medians of this one run.")
    lines.append("")
    lines.append(f"- CPU: {info.get('cpu_model', '?')}, {info.get('cores', '?')} cores "
                 f"(Numba threads {info.get('numba_threads', '?')}, "
                 f"torch threads {info.get('torch_threads', '?')})")
    lines.append(f"- python {info.get('python', '?')}, numpy {info.get('numpy', '?')}, "
                 f"numba {info.get('numba', '?')}, torch {info.get('torch') or 'not installed'}")
    if info.get("default_backend"):
        detail = (info.get("backends") or {}).get(info["default_backend"])
        lines.append(f"- default backend (`backend=None`): {info['default_backend']}"
                     + (f" ({detail})" if detail else ""))
    if info.get("parallel_threshold") is not None:
        lines.append(f"- fastopt PARALLEL_THRESHOLD: {info['parallel_threshold']:,} elements")
    if info.get("loadavg"):
        lines.append(f"- load average when the floor was measured: "
                     f"{', '.join(f'{x:.2f}' for x in info['loadavg'])}")
    if floor:
        lines.append(f"- **floor: {floor['floor_GBps']:.2f} GB/s** (in-place triad "
                     f"`a[i] = a[i] + s*b[i]`, 12 B/elem, 2^26 float32 = 256 MiB per buffer, "
                     f"{floor.get('floor_threads', '?')} threads, median of 20); the same kernel "
                     f"on one thread: {floor.get('floor_serial_GBps', float('nan')):.2f} GB/s")
    lines += ["", "GB/s = bytes moved per step (SPEC.md: 12/20/28/36 B per float32 element) / "
              "median time. *of floor* = floor time for those bytes / median time (1.00 = at "
              "the DRAM bandwidth; above 1 for cache-resident sizes). *vs X* = X's median / "
              "this implementation's median (> 1: fastopt faster).", ""]

    tg = targets(rows, kernels, models, overhead, startup, info)
    if tg:
        lines += ["## Targets (issue 5)", ""]
        lines.append(table(["target", "measured", "met"],
                           [[t, m, "met" if ok else "**not met**"] for t, m, ok in tg]))
        lines.append("")
    if os.path.exists(png):
        lines += [f"![GB/s vs size]({os.path.basename(png)})", ""]

    if models:
        lines += ["## Model-shaped parameter sets (Adam, float32)", ""]
        mrows = {k: v for k, v in models.items()}
        lines.append(case_table(mrows, ["model"]))
        lines.append("")
    if overhead:
        lines += ["## Per-step overhead: course MLP (6 tensors), Adam", "",
                  "`bound-call`: the step's bound kernel call(s) alone (the optimizer's plan "
                  "after one step, called with the step's scalars); `step`: the whole "
                  "`Optimizer.step`.  *Python cost* = step − bound-call: what a step adds "
                  "around the kernels (scalars, plan check, dispatch).  *default* is the "
                  "backend `backend=None` picks.", ""]
        body = []
        for (backend, layout), impls in sorted(overhead.items(),
                                               key=lambda kv: (_backend_sort(kv[0][0]),
                                                               str(kv[0][1]))):
            levels = [impls.get(lev) for lev in OVERHEAD_LEVELS]
            if not any(levels):
                continue
            first = next(r for r in levels if r)
            resolved = first.get("resolved", backend)
            # rows of older runs have no backend (it was numba) and count kernel calls
            label = (f"default ({resolved})" if backend == "default" else
                     str(backend) if backend else "numba")
            bound, step = impls.get("bound-call"), impls.get("step")
            py = fmt_time(step["median"] - bound["median"]) if bound and step else ""
            body.append([label, layout, first.get("bound_calls", ""),
                         first.get("rows", first.get("calls", "")),
                         *[fmt_time(r["median"]) if r else "" for r in levels], py])
        lines.append(table(["backend", "layout", "bound calls", "rows", *OVERHEAD_LEVELS,
                            "Python cost"], body))
        lines.append("")
    if startup:
        lines += ["## Start-up", ""]
        for r in startup:
            be = r.get("backend") or r.get("impl") or "?"
            cache = "; kernels in Numba's disk cache" if be == "numba" else ""
            lines.append(f"`import fastopt` + Adam + first step in a new interpreter on the "
                         f"default backend ({be}{cache}): "
                         f"{r['import_and_first_step_s']:.3f} s inside the process; whole "
                         f"process including interpreter start {r['median']:.2f} s (median "
                         f"of 5).")
        lines.append("")
    if cross:
        lines += ["## Parallel threshold: serial vs parallel loops, per backend", "",
                  "The bound kernel call on one float32 buffer, `PARALLEL_THRESHOLD` forced to "
                  "2^62 (serial) or 0 (parallel).", ""]
        for (backend, fam), (c, pts) in sorted(cross.items(),
                                               key=lambda kv: (_backend_sort(kv[0][0]),
                                                               _case_sort([kv[0][1]]))):
            lines.append(f"**{backend} {fam}**: parallel faster from {c:,} elements on" if c else
                         f"**{backend} {fam}**: parallel never consistently faster in the "
                         f"measured range")
            lines.append("")
            lines.append(table(["n", "serial", "parallel", "serial/parallel"],
                               [[f"{n:,}", fmt_time(s), fmt_time(p), f"{s / p:.2f}"]
                                for n, s, p in pts]))
            lines.append("")
        if os.path.exists(thr_png):
            lines += [f"![serial/parallel]({os.path.basename(thr_png)})", ""]
    if kernels:
        lines += ["## Single buffers", ""]
        for fam in FAMILY_ORDER:
            sub = {k: v for k, v in kernels.items() if k[1] == fam}
            if not sub:
                continue
            lines += [f"### {fam}", ""]
            sub = {(k[0], k[2]): v for k, v in sub.items()}
            lines.append(case_table(sub, ["dtype", "n"]))
            lines.append("")
    return "\n".join(lines) + "\n", tg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="*", default=[os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results", "latest.json")],
        help="one or more pytest-benchmark JSON files (merged)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--name", default=None, help="machine label (default: from the run)")
    args = ap.parse_args(argv)
    data, rows = load(args.json)
    if not rows:
        print(f"{args.json}: no fastopt suite benchmarks found", file=sys.stderr)
        return 1
    name, info, _ = machine(data, rows)
    name = args.name or name
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.json[0]))
    os.makedirs(out_dir, exist_ok=True)
    png = os.path.join(out_dir, f"{name}-gbps.png")
    thr = os.path.join(out_dir, f"{name}-threshold.png")
    plot(by_case(rows, "kernels", ["dtype", "family", "n"]), floor_of(rows), crossover(rows),
         png, thr)
    text, tg = render(data, rows, name, info, png, thr)
    md = os.path.join(out_dir, f"{name}.md")
    with open(md, "w") as fh:
        fh.write(text)
    print(f"wrote {md}")
    for t, m, ok in tg:
        print(f"  [{'met' if ok else 'NOT MET'}] {t}: {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
