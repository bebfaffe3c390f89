"""``python -m fastopt info | demo | steptime``.

info      version, backends (and why a missing one is missing), threads, threading layer, SIMD,
          and every optimizer (from its spec): rule, torch equivalent, bytes per element
demo      the course's training demo (fastopt.demo), then the step-time table
steptime  time of one step of every optimizer on a small-transformer-shaped parameter set
          (~10M float32 values) for the default backend and the NumPy reference, and their ratio
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastopt

from fastopt.specs import SPECS

#: (label, class, kwargs): every spec's benchmark cases
OPTIMIZERS = [(case, getattr(fastopt, s.name), kw) for s in SPECS for case, kw in s.bench.items()]


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
    from fastopt.kernels import HOST_ORDER, backend_status, cpu, resolve_backend

    cpu._all_finite_par(np.ones(4))  # initialise the threading layer so it can be reported
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(f"fastopt {fastopt.__version__}  (numpy {np.__version__}, numba {numba.__version__}, "
      f"python {sys.version.split()[0]})")
    p("backends:")
    for name, (ok, detail) in backend_status().items():
        p(f"  {name:7s} {'available  ' if ok else 'unavailable'}  {detail}")
    p(f"threads: {numba.get_num_threads()} (numba), threading layer: {numba.threading_layer()}")
    p(f"parallel threshold: {config.PARALLEL_THRESHOLD} elements")
    p(f"default host backend: {resolve_backend([]).name} (tried in order: "
      f"{', '.join(HOST_ORDER)})")
    name, feats = _simd_features()
    p(f"cpu: {name}; SIMD: {' '.join(feats) or 'unknown'}")
    p("optimizers (float32 bytes per element of one step, default options):")
    for s in SPECS:
        group = s.defaults()
        torch = s.torch or "(fastopt extra)"
        p(f"  {s.name:9s} rule {s.rule:8s} {s.bytes_per_element(group):3d} B/elem  {torch:22s} "
          f"state: {', '.join(s.state_names)}")


def _median_time(fn, repeat):
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def steptime(repeat=5, out=sys.stdout):
    """Print one step's time per optimizer: the default backend (separate arrays, Arena) vs the
    NumPy reference."""
    from fastopt.kernels import resolve_backend
    default = resolve_backend([]).name
    from fastopt._shapes import small_transformer, total

    shapes = small_transformer()
    rng = np.random.default_rng(0)
    base = [rng.standard_normal(s).astype(np.float32) * 0.02 for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 1e-3 for s in shapes]
    print(f"\nOne optimizer step on a small-transformer-shaped parameter set: {len(shapes)} "
          f"float32 tensors, {total(shapes) / 1e6:.1f}M values (median of {repeat})", file=out)
    head = (f"{'optimizer':18s} {default:>10s} {default + '+Arena':>13s} {'numpy ref':>10s} "
            f"{'numpy/' + default:>13s}")
    print(head, file=out)
    print("-" * len(head), file=out)
    for name, cls, kw in OPTIMIZERS:
        times = {}
        for label, backend, arena in (("fast", default, False), ("arena", default, True),
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
        print(f"{name:18s} {times['fast'] * 1e3:8.2f}ms {times['arena'] * 1e3:11.2f}ms "
              f"{times['numpy'] * 1e3:8.2f}ms {times['numpy'] / times['fast']:12.1f}x",
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
