"""Compare two ``make bench`` runs (before and after a change) by the ratios each run measured
against itself: fraction of the bandwidth floor and speed against torch's fused step, both
from the same run, so that the machine's bandwidth drift between the runs cancels.

Usage::

    python bench/compare.py --before B1.json B2.json ... --after A1.json A2.json ... \\
        [--out bench/results/NAME.md] [--title TITLE]

For every family at 2^16 ... 2^24 (float32) and every host implementation (numba, cython) it
prints the fraction of floor before and after, and for Adam/AdamW the speed against
``torch-fused`` before and after; the model-shaped sets likewise; and, for the after run, the
Cython/Numba throughput at 2^24 per family.  A case is flagged ``slower`` when the after ratio
is below 0.9 of the before one (this VM's run-to-run noise is about +-10%).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402

EXPONENTS = [16, 18, 20, 22, 24]
IMPLS = ["numba", "cython"]
MODEL_IMPLS = ["numba", "numba-arena", "cython", "cython-arena"]


def _index(rows):
    kernels, models = {}, {}
    for r in rows:
        if r.get("suite") == "kernels" and r.get("dtype") == "float32":
            kernels[(r["family"], int(r["n"]), r["impl"])] = r
        elif r.get("suite") == "models":
            models[(r["model"], r["impl"])] = r
    return kernels, models


def _ratio(a, b):
    return None if a is None or b is None else b["median"] / a["median"]


def _fmt(x, suffix=""):
    return "" if x is None else f"{x:.2f}{suffix}"


def _flag(before, after):
    if before is None or after is None:
        return ""
    return "**slower**" if after < 0.9 * before else ""


def compare(before_rows, after_rows):
    bk, bm = _index(before_rows)
    ak, am = _index(after_rows)
    families = [f for f in report.FAMILY_ORDER if any(k[0] == f for k in ak)]
    out = ["## Single buffers, float32: fraction of floor (same run) and vs torch fused "
           "(same run)", "",
           "| family | n | impl | of floor before | after | vs torch fused before | after | |",
           "|---|---|---|---|---|---|---|---|"]
    slower = []
    for fam in families:
        for e in EXPONENTS:
            n = 1 << e
            for impl in IMPLS:
                b, a = bk.get((fam, n, impl)), ak.get((fam, n, impl))
                if a is None and b is None:
                    continue
                fb = b.get("fraction_of_floor") if b else None
                fa = a.get("fraction_of_floor") if a else None
                tb = _ratio(b, bk.get((fam, n, "torch-fused")))
                ta = _ratio(a, ak.get((fam, n, "torch-fused")))
                flag = _flag(fb, fa) or _flag(tb, ta)
                if flag:
                    slower.append(f"{fam} 2^{e} {impl}")
                out.append(f"| {fam} | 2^{e} | {impl} | {_fmt(fb)} | {_fmt(fa)} | "
                           f"{_fmt(tb, '×')} | {_fmt(ta, '×')} | {flag} |")
    out += ["", "## Model-shaped sets (Adam, float32)", "",
            "| model | impl | of floor before | after | vs torch fused before | after | |",
            "|---|---|---|---|---|---|---|"]
    for model in ("course_mlp", "resnet50", "gpt2_small"):
        for impl in MODEL_IMPLS:
            b, a = bm.get((model, impl)), am.get((model, impl))
            if a is None and b is None:
                continue
            fb = b.get("fraction_of_floor") if b else None
            fa = a.get("fraction_of_floor") if a else None
            tb = _ratio(b, bm.get((model, "torch-fused")))
            ta = _ratio(a, am.get((model, "torch-fused")))
            flag = _flag(fb, fa) or _flag(tb, ta)
            if flag:
                slower.append(f"{model} {impl}")
            time_b = report.fmt_time(b["median"]) if b else ""
            time_a = report.fmt_time(a["median"]) if a else ""
            out.append(f"| {model} | {impl} | {_fmt(fb)} ({time_b}) | {_fmt(fa)} ({time_a}) | "
                       f"{_fmt(tb, '×')} | {_fmt(ta, '×')} | {flag} |")
    out += ["", "## After: Cython / Numba throughput at 2^24 (float32, same run)", "",
            "| family | cython time | numba time | cython/numba throughput |", "|---|---|---|---|"]
    for fam in families:
        c, nb = ak.get((fam, 1 << 24, "cython")), ak.get((fam, 1 << 24, "numba"))
        if c and nb:
            out.append(f"| {fam} | {report.fmt_time(c['median'])} | "
                       f"{report.fmt_time(nb['median'])} | {nb['median'] / c['median']:.2f} |")
    out += ["", "Flagged slower (after ratio < 0.9 × before): "
            + (", ".join(slower) if slower else "none")]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", nargs="+", required=True)
    ap.add_argument("--after", nargs="+", required=True)
    ap.add_argument("--out")
    ap.add_argument("--title", default="fastopt: before / after")
    args = ap.parse_args(argv)
    bdata, brows = report.load(args.before)
    adata, arows = report.load(args.after)
    text = f"# {args.title}\n\nbefore: {bdata.get('datetime', '?')}; after: " \
           f"{adata.get('datetime', '?')}\n\n" + compare(brows, arows)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
