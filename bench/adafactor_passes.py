"""Adafactor's three passes on one matrix against the floors of their access patterns, in one
process, interleaved: the in-place triad (reads and writes, as the update pass) and
``torch.dot`` (two streams read, nothing written, as the row and column sums), each over
``--floor-n`` float32; then the row and column sums (8 bytes per element), the separable sum
of ``u*u`` (4), the update (12), each timed on its own, and ``fastopt.torch.Adafactor``'s whole
step (24 bytes, and the factors' host arithmetic between the passes).

    python bench/adafactor_passes.py [--rows 4096] [--cols 4096] [--rounds 15]

Prints each pass's GB/s, the step's time against its floor (the read-only passes' 12 bytes at
the ``dot`` rate, the update's 12 at the triad's) and against the triad alone, and the time the
step spends beyond its passes.
"""
import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _bench_import import sibling  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--floor-n", type=int, default=1 << 26)
    args = ap.parse_args(argv)
    import torch
    import fastopt.torch as ft
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(args.rows, args.cols))
    p.grad = torch.randn_like(p) * 1e-2
    opt = ft.Adafactor([p], lr=1e-2)
    opt.step()
    st = next(v[1] for k, v in opt._calls.items() if k[0] == "adafactor")
    if not st.separable:
        raise SystemExit("the separable passes did not run (a dead row or column?)")
    k_sq, _, _, k_su, k_sapply = st.kernels
    g = p.grad.numpy().reshape(-1)
    x, y = torch.ones(args.floor_n), torch.ones(args.floor_n)
    fs = {"triad": lambda: x.add_(y, alpha=1e-9), "dot": lambda: torch.dot(x, y),
          "sums": lambda: k_sq((st.param, g), (1.0,)),
          "u*u": lambda: k_su((g, st._scale, st._cols), ()),
          "update": lambda: k_sapply((st.param, g, st._scale, st._cols), (1.0,)),
          "step": opt.step}
    med = sibling("conftest.py", "fastopt_bench_conftest").interleaved_medians(fs, args.rounds)
    n = args.rows * args.cols
    triad = 12 * args.floor_n / med["triad"] / 1e9
    dot = 8 * args.floor_n / med["dot"] / 1e9
    out = {"triad_gbps": triad, "dot_gbps": dot}
    print(f"Adafactor, one {args.rows} x {args.cols} matrix, {args.rounds} interleaved rounds, "
          f"medians; floors over {args.floor_n} float32: triad {triad:.1f} GB/s, "
          f"dot {dot:.1f} GB/s")
    for k, b, fl in (("sums", 8, dot), ("u*u", 4, dot), ("update", 12, triad)):
        gbps = b * n / med[k] / 1e9
        out[k] = gbps
        print(f"  {k:7s} {med[k] * 1e3:7.2f} ms  {b:2d} B/elem  {gbps:6.1f} GB/s  "
              f"{gbps / fl:.2f} of its floor")
    floor = n * (12 / dot + 12 / triad) / 1e9
    passes = med["sums"] + med["u*u"] + med["update"]
    out.update(step_ms=med["step"] * 1e3, of_floor=floor / med["step"],
               of_triad=24 * n / triad / 1e9 / med["step"],
               beyond_passes_ms=(med["step"] - passes) * 1e3)
    print(f"  step    {med['step'] * 1e3:7.2f} ms  {out['of_floor']:.2f} of its floor "
          f"({floor * 1e3:.2f} ms), {out['of_triad']:.2f} of the triad's; "
          f"{out['beyond_passes_ms']:.2f} ms beyond its passes ({passes * 1e3:.2f} ms)")
    return out


if __name__ == "__main__":
    main()
