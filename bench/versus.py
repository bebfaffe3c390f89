"""Before / after, interleaved in one process: this checkout's fastopt against another one.

Usage::

    git worktree add /tmp/before <rev>                      # the revision to compare with
    (cd /tmp/before && ../work/.venv/bin/python setup.py build_ext --inplace)   # its extension
    python bench/versus.py --old /tmp/before [--out bench/results/NAME.md] [--quick]

The other checkout's package is imported under another name (``fastopt_old``) next to this one,
so both run in the same process, on the same buffers' sizes, alternating round by round: the
machine's bandwidth drift and other processes hit both alike, and the ratio of their medians is
what changed.  Cases: every spec's benchmark case (the same classes and arguments exist in both
versions) at 2^16 ... 2^24 float32 elements on the numba and cython backends, and Adam on the
model-shaped sets (course MLP, ResNet-50, GPT-2 small; separate arrays and an Arena).  A case is
flagged when the new version is more than 10% slower.

Nothing here is a test; ``tests/test_bench_smoke.py`` runs it on tiny sizes against this very
checkout (old == new) to keep it working.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def load_old(path, name="fastopt_old"):
    """Import the ``fastopt`` package of the checkout at ``path`` as ``name``.

    A Cython extension registers itself in ``sys.modules`` under the name it was compiled with
    (``fastopt.kernels._cython``) whatever name it is imported as, so this checkout's backends
    are loaded first, and every ``fastopt.*`` entry the old package overwrote is put back."""
    import fastopt.kernels as new_kernels
    for b in ("cython", "numba"):
        try:
            new_kernels.get_backend(b)
        except RuntimeError:
            pass
    keep = {k: v for k, v in sys.modules.items() if k == "fastopt" or k.startswith("fastopt.")}
    pkg = os.path.join(os.path.abspath(path), "fastopt")
    spec = importlib.util.spec_from_file_location(name, os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    for b in ("cython", "numba"):
        try:
            mod.kernels.get_backend(b)
        except RuntimeError:
            pass
    for k in [k for k in sys.modules if k == "fastopt" or k.startswith("fastopt.")]:
        if k in keep:
            sys.modules[k] = keep[k]
        else:
            del sys.modules[k]
    return mod


def _cases():
    from fastopt.specs import SPECS
    return [(case, s.name, kw) for s in SPECS for case, kw in s.bench.items()]


def _make(pkg, cls_name, kw, params, backend, grads):
    opt = getattr(pkg, cls_name)(params, backend=backend, **kw)
    return lambda: opt.step(grads)


def _time(fn, inner):
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def interleave(fns, rounds, budget=0.02):
    """Median seconds per call of each function, timed alternately round by round (ABAB...:
    each always runs right after the other, so for cache-resident sizes each starts with the
    other's data in the caches; reversing the order every other round would let each run
    twice in a row half the time and make the median flip between hot and cold)."""
    for fn in fns:      # warm up (compiles, pages in)
        fn()
        fn()
    probe = max(_time(fns[0], 1), 1e-7)
    inner = max(1, int(budget / probe))
    ts = [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            ts[k].append(_time(fn, inner))
    return [float(np.median(t)) for t in ts]


def _wanted(only, *label):
    return only is None or only in " ".join(label)


def single_buffers(old, new, exponents, backends, rounds, only=None):
    rows = []
    rng = np.random.default_rng(0)
    for e in exponents:
        n = 1 << e
        p0 = (rng.standard_normal(n, dtype=np.float32) * 0.02)
        g = (rng.standard_normal(n, dtype=np.float32) * 1e-3)
        for case, cls_name, kw in _cases():
            for be in backends:
                if not _wanted(only, case, f"2^{e}", be):
                    continue
                fns = [_make(pkg, cls_name, kw, [p0.copy()], be, [g]) for pkg in (old, new)]
                t_old, t_new = interleave(fns, rounds)
                rows.append((case, f"2^{e}", be, t_old, t_new))
                del fns
                gc.collect()
    return rows


def models(old, new, backends, rounds, names, only=None):
    """Adam on the model-shaped sets.  Which optimizer is built first changes where its
    gigabytes of state land (measured: up to ~9% on GPT-2 between the two orders, and ~3%
    between two identical optimizers), so every case is measured twice, built old-first and
    new-first, and the times are the geometric means of the two."""
    from fastopt import _shapes
    rows = []
    for model in names:
        shapes = getattr(_shapes, model)()
        rng = np.random.default_rng(1)
        p0 = [(rng.standard_normal(s, dtype=np.float32) * 0.02) for s in shapes]
        g0 = [(rng.standard_normal(s, dtype=np.float32) * 1e-3) for s in shapes]
        for be in backends:
            for layout in ("separate", "arena"):
                if not _wanted(only, f"adam {model}", layout, be):
                    continue
                times = []
                for first in (0, 1):
                    fns = {}
                    for k in (first, 1 - first):
                        pkg = (old, new)[k]
                        if layout == "arena":
                            ar = pkg.Arena([p.copy() for p in p0])
                            for d, s in zip(ar.grads, g0):
                                np.copyto(d, s)
                            fns[k] = _make(pkg, "Adam", dict(lr=1e-3), ar.params, be, ar.grads)
                        else:
                            fns[k] = _make(pkg, "Adam", dict(lr=1e-3), [p.copy() for p in p0],
                                           be, g0)
                    times.append(interleave([fns[0], fns[1]], rounds))
                    del fns
                    gc.collect()
                t_old = float(np.sqrt(times[0][0] * times[1][0]))
                t_new = float(np.sqrt(times[0][1] * times[1][1]))
                rows.append((f"adam {model}", layout, be, t_old, t_new))
    return rows


def fmt_time(s):
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def table(rows, head):
    out = [f"| {head[0]} | {head[1]} | backend | before | after | after speed vs before | |",
           "|---|---|---|---|---|---|---|"]
    slower = []
    for a, b, be, t_old, t_new in rows:
        x = t_old / t_new
        flag = "**slower**" if x < 0.9 else ""
        if flag:
            slower.append(f"{a} {b} {be}")
        out.append(f"| {a} | {b} | {be} | {fmt_time(t_old)} | {fmt_time(t_new)} | {x:.2f}× | "
                   f"{flag} |")
    return out, slower


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="a built checkout of the other revision")
    ap.add_argument("--out")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, course MLP only (tests)")
    ap.add_argument("--only", help="run only the cases whose 'case n/layout backend' contains "
                                   "this text (re-measuring a flagged case)")
    args = ap.parse_args(argv)
    import fastopt as new
    old = load_old(args.old)
    backends = [b for b in ("numba", "cython")
                if all(_available(pkg, b) for pkg in (old, new))]
    exps = [10, 12] if args.quick else [16, 18, 20, 22, 24]
    names = ["course_mlp"] if args.quick else ["course_mlp", "resnet50", "gpt2_small"]
    rounds = 3 if args.quick else args.rounds
    lines = [f"# fastopt before / after, interleaved in one process", "",
             f"before: `{os.path.abspath(args.old)}`; after: `{os.path.dirname(HERE)}`; "
             f"{rounds} alternating rounds per case, median per call; float32.", ""]
    rows = single_buffers(old, new, exps, backends, rounds, args.only)
    t1, s1 = table(rows, ("case", "n"))
    rows = models(old, new, backends, rounds, names, args.only)
    t2, s2 = table(rows, ("case", "layout"))
    lines += ["## Single buffers (optimizer.step on one array)", ""] + t1
    lines += ["", "## Model-shaped parameter sets", ""] + t2
    lines += ["", "More than 10% slower after: " + (", ".join(s1 + s2) if s1 + s2 else "none")]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)
    return 0


def _available(pkg, backend):
    try:
        getattr(pkg, "SGD")([np.zeros(2, np.float32)], lr=0.1, backend=backend)
        return True
    except RuntimeError:
        return False


if __name__ == "__main__":
    sys.exit(main())
