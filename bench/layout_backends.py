"""The storage-layout loops of the two host backends against each other: ``fastopt.torch.AdamW``
at ``--n`` elements with bfloat16 parameters (float32 state; bfloat16 state with nearest and
stochastic rounding), on the Cython build (per block: decode, rule, encode) and on Numba (one
fused element loop), in interleaved rounds in one process, against torch's fused AdamW in
float32 and in bfloat16.

    python bench/layout_backends.py [--n 16777216] [--rounds 11]

Prints each case's median step time and its ratio to both torch steps.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _bench_import import sibling  # noqa: E402

CASES = {"bfloat16 p/g, float32 state": {"state_dtype": "float32"},
         "all bfloat16": {},
         "all bfloat16, stochastic": {"rounding": "stochastic"}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args(argv)
    import torch
    import fastopt.torch as ft
    torch.manual_seed(0)

    def make(cls, dtype, **kw):
        p = torch.nn.Parameter(torch.randn(args.n).to(dtype))
        p.grad = (torch.randn(args.n) * 1e-2).to(dtype)
        opt = cls([p], lr=1e-3, **kw)
        opt.step()
        return opt.step

    fns = {"torch fused float32": make(torch.optim.AdamW, torch.float32, fused=True),
           "torch fused bfloat16": make(torch.optim.AdamW, torch.bfloat16, fused=True)}
    for backend in ("cython", "numba"):
        for name, kw in CASES.items():
            fns[f"{backend}: {name}"] = make(ft.AdamW, torch.bfloat16, backend=backend, **kw)
    med = sibling("conftest.py", "fastopt_bench_conftest").interleaved_medians(fns, args.rounds)
    f32, bf16 = med["torch fused float32"], med["torch fused bfloat16"]
    print(f"AdamW at {args.n} elements, {args.rounds} interleaved rounds, medians")
    print(f"  {'case':46s} {'ms':>8s} {'x torch f32':>12s} {'x torch bf16':>13s}")
    out = {}
    for k, t in med.items():
        out[k] = t * 1e3
        print(f"  {k:46s} {t * 1e3:8.2f} {f32 / t:11.2f}x {bf16 / t:12.2f}x")
    return out


if __name__ == "__main__":
    main()
