"""``python -m fastopt info | demo | steptime``.

info      version, backends (and why a missing one is missing), threads, threading layer, SIMD
demo      the course's training demo (fastopt.demo), then the step-time table
steptime  time of one step of every optimizer on a small-transformer-shaped parameter set
          (~10M float32 values) for the Numba backend and the NumPy reference, and their ratio
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastopt

OPTIMIZERS = [
    ("SGD", fastopt.SGD, dict(lr=1e-2)),
    ("SGD momentum", fastopt.SGD, dict(lr=1e-2, momentum=0.9)),
    ("Momentum (course)", fastopt.Momentum, dict(lr=1e-2, beta=0.9)),
    ("RMSprop", fastopt.RMSprop, dict(lr=1e-3)),
    ("Adagrad", fastopt.Adagrad, dict(lr=1e-2)),
    ("Adam", fastopt.Adam, dict(lr=1e-3)),
    ("AdamW", fastopt.AdamW, dict(lr=1e-3)),
]


def _simd_features():
    try:
        import llvmlite.binding as llvm
        feats = llvm.get_host_cpu_features()
        on = sorted(k for k, v in feats.items() if v)
        name = llvm.get_host_cpu_name()
    except Exception:
        on, name = [], "?"
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("flags"):
                        on = sorted(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
    keep = [f for f in on if f.startswith(("sse", "avx", "fma", "neon", "sve", "asimd"))]
    return name, keep


def info(out=sys.stdout):
    import numba
    from fastopt import config
    from fastopt.kernels import backend_status, cpu

    cpu._all_finite_par(np.ones(4))  # initialise the threading layer so it can be reported
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"fastopt {fastopt.__version__}  (numpy {np.__version__}, numba {numba.__version__}, "
      f"python {sys.version.split()[0]})")
    p("backends:")
    for name, (ok, detail) in backend_status().items():
        p(f"  {name:7s} {'available  ' if ok else 'unavailable'}  {detail}")
    p(f"threads: {numba.get_num_threads()} (numba), threading layer: {numba.threading_layer()}")
    p(f"parallel threshold: {config.PARALLEL_THRESHOLD} elements")
    name, feats = _simd_features()
    p(f"cpu: {name}; SIMD: {' '.join(feats) or 'unknown'}")


def _median_time(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def steptime(repeat=5, out=sys.stdout):
    """Print one step's time per optimizer: Numba (separate arrays, Arena) vs NumPy reference."""
    from fastopt._shapes import small_transformer, total

    shapes = small_transformer()
    rng = np.random.default_rng(0)
    base = [rng.standard_normal(s).astype(np.float32) * 0.02 for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 1e-3 for s in shapes]
    print(f"\nOne optimizer step on a small-transformer-shaped parameter set: {len(shapes)} "
          f"float32 tensors, {total(shapes) / 1e6:.1f}M values (median of {repeat})", file=out)
    head = (f"{'optimizer':18s} {'numba':>10s} {'numba+Arena':>12s} {'numpy ref':>10s} "
            f"{'numpy/numba':>12s}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for name, cls, kw in OPTIMIZERS:
        times = {}
        for label, backend, arena in (("numba", "numba", False), ("arena", "numba", True),
                                      ("numpy", "numpy", False)):
            if arena:
                ar = fastopt.Arena([b.copy() for b in base])
                params, g = ar.params, ar.grads
                for dst, src in zip(g, grads):
                    np.copyto(dst, src)
            else:
                params, g = [b.copy() for b in base], grads
            opt = cls(params, backend=backend, **kw)
            opt.step(g)  # compile / warm up
            times[label] = _median_time(lambda: opt.step(g), repeat)
        print(f"{name:18s} {times['numba'] * 1e3:8.2f}ms {times['arena'] * 1e3:10.2f}ms "
              f"{times['numpy'] * 1e3:8.2f}ms {times['numpy'] / times['numba']:11.1f}x",
              file=out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastopt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["info", "demo", "steptime"])
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        info()
    elif args.command == "steptime":
        steptime()
    else:
        from fastopt import demo
        rc = demo.main(rest)
        steptime()
        return rc or 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
