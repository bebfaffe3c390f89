"""The Cython extension's builds against each other: AdamW at 2^24 through fastopt.torch, in
float32, with int8 state, all bfloat16 (nearest and stochastic rounding) and bfloat16 with int8
state, each case stepped on the AVX2 and the AVX-512 build in turn (interleaved rounds in one
process, medians).

    python bench/bench_isa.py [--n 16777216] [--rounds 9]

Each build gets its own optimizers (fastopt.torch binds its kernels to the build in use when a
step is first planned).  Prints one line per case: the two times and AVX2 / AVX-512.
"""
import argparse
import statistics
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    import torch
    import fastopt.torch as ft
    from fastopt.kernels import cython as cy
    builds = [b for b in ("avx2", "avx512") if b in cy.variants()]
    if len(builds) < 2:
        raise SystemExit(f"needs the AVX2 and AVX-512 builds; here: {sorted(cy.variants())}")
    n = args.n
    f32, bf16 = torch.float32, torch.bfloat16
    kinds = {"float32": (f32, {}), "float32, int8 state": (f32, {"state_dtype": "int8"}),
             "all bfloat16": (bf16, {}),
             "all bfloat16, stochastic": (bf16, {"rounding": "stochastic"}),
             "bfloat16, int8 state, stochastic": (bf16, {"state_dtype": "int8",
                                                          "rounding": "stochastic"})}

    def make(dtype, kw):
        p = torch.nn.Parameter(torch.randn(n).to(dtype))
        p.grad = (torch.randn(n) * 1e-2).to(dtype)
        opt = ft.AdamW([p], lr=1e-3, **kw)
        opt.step()
        return opt

    before = cy.ISA
    opts = {}
    for b in builds:
        cy._use(b)
        opts[b] = {k: make(*v) for k, v in kinds.items()}
    cy._use(before)
    times = {(k, b): [] for k in kinds for b in builds}
    for _ in range(args.rounds):
        for k in kinds:
            for b in builds:
                t0 = time.perf_counter()
                opts[b][k].step()
                times[(k, b)].append(time.perf_counter() - t0)
    print(f"AdamW at n={n}, {args.rounds} interleaved rounds, medians")
    for k in kinds:
        a, v = (statistics.median(times[(k, b)]) * 1e3 for b in builds)
        print(f"{k:34s} avx2 {a:7.2f} ms  avx512 {v:7.2f} ms  avx2/avx512 {a / v:.2f}")


if __name__ == "__main__":
    main()
