"""LAMB's two passes on one float32 buffer against the in-place triad, in one process,
interleaved: pass 1 (the moments written and the sums of ``p*p`` and ``u*u`` taken: 16 bytes
read, 8 written), pass 2 (``p += -lr*trust*u`` from the stored moments: 12 read, 4 written),
``fastopt.LAMB``'s whole step (40 bytes, and the trust ratio between the passes) and, as a
reference with the same square root and division per element, ``fastopt.Adam``'s (28 bytes).

    python bench/lamb_passes.py [--n 16777216] [--rounds 15] [--backend cython]

Prints each one's GB/s and its fraction of the triad's, then each pass's cost per element on one
thread in cache (``--cache-n`` elements, each timing over ``--cache-work`` elements in all),
which says whether a pass is bound by memory or by its arithmetic.
"""
import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _bench_import import sibling  # noqa: E402


def _passes(backend, n, rng):
    """(pass 1, pass 2) bound to fresh float32 buffers of ``n`` elements."""
    from fastopt.kernels import get_backend
    be = get_backend(backend)
    p = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.full(n, 1e-4, np.float32)
    c1 = be.bind(be.kernel("lamb", np.float32, (False,)), [(p, g, m, v)])
    c2 = be.bind(be.kernel("lamb_apply", np.float32, (False,)), [(p, m, v)])
    s1 = (1.0, 0.9, 0.1, 0.999, 0.001, 1.0, 1.0, 1e-6, 0.0)
    s2 = (-1e-9, 1.0, 1.0, 1e-6, 0.0)
    return (lambda: c1(s1)), (lambda: c2(s2)), (p, g)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--floor-n", type=int, default=1 << 26)
    ap.add_argument("--cache-n", type=int, default=1 << 14)
    ap.add_argument("--cache-work", type=int, default=1 << 25)
    args = ap.parse_args(argv)
    import fastopt
    from fastopt import config
    H = sibling("conftest.py", "fastopt_bench_conftest")       # the suite's triad and timers
    rng = np.random.default_rng(0)
    pass1, pass2, (p, g) = _passes(args.backend, args.n, rng)
    lamb = fastopt.LAMB([p.copy()], lr=1e-3, backend=args.backend)
    adam = fastopt.Adam([p.copy()], lr=1e-3, backend=args.backend)
    par, _, _ = H._triad_kernels()
    x, y = np.ones(args.floor_n, np.float32), np.ones(args.floor_n, np.float32)
    s = np.float32(1e-9)
    fs = {"triad": lambda: par(x, y, s), "pass 1": pass1, "pass 2": pass2,
          "LAMB step": lambda: lamb.step([g]), "Adam step": lambda: adam.step([g])}
    for f in fs.values():
        f()
    med = H.interleaved_medians(fs, args.rounds)
    triad = 12 * args.floor_n / med["triad"] / 1e9
    out = {"triad_gbps": triad}
    print(f"LAMB on {args.n} float32 ({args.backend}), {args.rounds} interleaved rounds, medians; "
          f"triad over {args.floor_n} float32: {triad:.1f} GB/s")
    for k, b in (("pass 1", 24), ("pass 2", 16), ("LAMB step", 40), ("Adam step", 28)):
        gbps = b * args.n / med[k] / 1e9
        out[k] = {"ms": med[k] * 1e3, "gbps": gbps, "of_triad": gbps / triad}
        print(f"  {k:9s} {med[k] * 1e3:8.2f} ms  {b:2d} B/elem  {gbps:6.1f} GB/s  "
              f"{gbps / triad:.2f} of the triad's")
    saved = config.PARALLEL_THRESHOLD
    config.PARALLEL_THRESHOLD = 1 << 62         # one thread
    try:
        c1, c2, _ = _passes(args.backend, args.cache_n, rng)
        inner = max(1, args.cache_work // args.cache_n)
        print(f"  one thread, {args.cache_n} elements in cache, ns per element:", end="")
        for k, f in (("pass 1", c1), ("pass 2", c2)):
            f()
            ns = min(H._median_time(f, 3, inner) for _ in range(3)) / args.cache_n * 1e9
            out[k]["cache_ns"] = ns
            print(f"  {k} {ns:.3f}", end="")
        print()
    finally:
        config.PARALLEL_THRESHOLD = saved
    return out


if __name__ == "__main__":
    main()
