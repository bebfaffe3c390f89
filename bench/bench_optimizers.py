"""The optimizers beyond Adam, and clipping folded into the step: fastopt.torch against torch's
own implementations (and schedulefree's), at 2^24 float32 elements, in one process, interleaved.

    python bench/bench_optimizers.py [--n 16777216] [--rounds 9] [--out bench/results]

Each case is one optimizer over one parameter of ``n`` elements with its gradient set once; a
round times one ``step()`` of every case in turn (the VM's bandwidth drift hits all alike), each
figure is the median over rounds.  The floor is an in-place triad (torch's ``a.add_(b, alpha=s)``
over 2^26 float32, 12 bytes per element) timed once in every round (the median; also before
and after the rounds, for the report); a case's floor
time is its bytes per element (every array the rule reads, every one it writes: ``Spec.
bytes_per_element``) times ``n`` over that bandwidth, and "of floor" is floor time / measured.
The triad runs on torch's own allocations, in 4 KiB pages as the parameters and gradients are;
the report also gives it on huge pages, where fastopt.torch keeps its state (faster: "of floor"
above 1 is possible for a case whose state is most of its bytes).  Bytes a case moves in
passes that only read (Adafactor's first two) are timed against a read-only floor instead:
``torch.dot`` over two 2^26 float32 (8 bytes per element, both streams read, nothing written),
measured with the triad.  Memory systems stream reads alone slower than a mix of reads and
writes (on the 2-core VMs here: 38-46 against 55-63 GB/s), so no read pass can reach the
triad's rate; "of triad" gives every case against the triad alone as well.

Peers per optimizer: torch's single-tensor for-loop (``foreach=False``) and ``foreach=True``
(torch fuses none of these on the CPU); Schedule-Free against ``schedulefree``'s two paths;
Lion, LAMB (two passes: 40 bytes per element) and fastopt's own extras have no torch peer.
Adafactor steps one 2^12 x 2^12 matrix (its factored second moment; three passes, 24 bytes per
element) against torch.optim.Adafactor's two paths on the same matrix, and the course MLP's and
a small transformer's parameter sets (``fastopt._shapes``: 6 and 40 tensors, each set when it
is no larger than ``--n``; "of floor" at 24 bytes per element there, its vectors take 32), where
the per-tensor overhead shows.
The clipped step: fastopt ``AdamW(..., max_grad_norm=1.0)`` (the norm is one read of the
gradient, the factor is applied inside the fused update: 28 + 4 bytes per element) against
``clip_grad_norm_`` + ``AdamW(fused=True)`` (a norm read, a scaling pass that writes the
gradient back, then the step: 28 + 12).

Writes ``optimizers-<machine>.md`` and ``.json`` into ``--out``.  Needs torch.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_formats import floor_gbps, machine_tag  # noqa: E402


def read_floor_gbps(torch, n=1 << 26, repeats=15):
    """``torch.dot(a, b)`` over two arrays of ``n`` float32 (8 bytes per element read, nothing
    written), GB/s of the median of ``repeats``: the floor of a pass that only reads."""
    a = torch.ones(n)
    b = torch.ones(n)
    torch.dot(a, b)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.dot(a, b)
        ts.append(time.perf_counter() - t0)
    return 8 * n / statistics.median(ts) / 1e9

#: torch.optim classes that have a fused CPU step (the issue's ">= 1.0x where torch fuses it")
TORCH_FUSED = {"Adam", "AdamW", "SGD", "Adagrad"}
#: the new optimizers of issue 14 (the first six are in bench_kernels.py / bench_models.py)
NEW = ("Adamax", "NAdam", "RAdam", "Adadelta", "ASGD", "Rprop", "Lion", "LAMB",
       "AdamWScheduleFree")


def _machine():
    machine = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            machine = next(line.split(":", 1)[1].strip() for line in fh
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return machine


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)

    import torch

    import fastopt.torch as ft
    from fastopt import _shapes
    from fastopt.kernels import backend_status
    from fastopt.specs import spec
    torch.manual_seed(0)
    n = args.n
    base = torch.randn(n)
    grad = torch.randn(n) * 1e-2
    cases = {}       # name -> (step function, bytes per element, optimizer, peer of)
    read_only = {}   # name -> those bytes per element moved by passes that only read

    elements = {}    # name -> elements stepped, where not n (the model-shaped sets)

    def add(name, make, bpe, peer_of=None, clip=False, shape=None, shapes=None, reads=0):
        read_only[name] = reads
        if shapes is not None:      # a model's parameter set, one tensor per shape
            ps = []
            at = 0
            for sh in shapes:        # (consecutive slices of the one random vector)
                k = math.prod(sh)
                q = base[at:at + k].clone().view(sh).requires_grad_()
                q.grad = grad[at:at + k].clone().view(sh)
                ps.append(q)
                at += k
            elements[name] = sum(q.numel() for q in ps)
            p = ps[0]
        else:
            p = base.clone().view(shape or (n,)).requires_grad_()
            p.grad = grad.clone().view(shape or (n,))
            ps = [p]
        try:
            opt = make(ps)
        except Exception as exc:  # noqa: BLE001 - a peer that does not install or run here
            cases[name] = (None, bpe, f"not run: {type(exc).__name__}: {exc}", peer_of)
            return
        if hasattr(opt, "train"):
            opt.train()
        if clip:
            def step():
                torch.nn.utils.clip_grad_norm_(ps, 1.0)
                opt.step()
        else:
            step = opt.step
        step()       # allocate state, compile
        cases[name] = (step, bpe, "", peer_of)

    for name in NEW:
        s = spec(name)
        kw = dict(s.bench[next(iter(s.bench))])
        bpe = s.bytes_per_element(s.defaults() | kw)
        add(f"fastopt {name}", lambda ps, s=s, kw=kw: getattr(ft, s.name)(ps, **kw), bpe)
        if not s.torch:
            continue
        module, _, cls = s.torch.rpartition(".")
        peer = getattr(__import__(module, fromlist=[cls]), cls)
        for label, extra in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True))):
            add(f"{s.torch} ({label})", lambda ps, peer=peer, kw=kw, extra=extra:
                peer(ps, **kw, **extra), bpe, peer_of=f"fastopt {name}")
    # Adafactor: a matrix (its factored moment; 3 passes, 24 bytes per element: Spec's figure
    # is a vector's, 2 passes of 16); its first two passes only read (the parameter and the
    # gradient for the sums of their squares, then the gradient for the update's): 12 bytes
    # against the read-only floor (torch's two paths take the same floor)
    rows_ = 1 << (n.bit_length() - 1) // 2
    mat = (rows_, n // rows_)
    kw = dict(spec("Adafactor").bench["adafactor"])
    label = f"fastopt Adafactor ({mat[0]} x {mat[1]})"
    add(label, lambda ps: ft.Adafactor(ps, **kw), 24, shape=mat, reads=12)
    for how, extra in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True))):
        add(f"torch.optim.Adafactor ({how})", lambda ps, extra=extra:
            torch.optim.Adafactor(ps, **kw, **extra), 24, peer_of=label, shape=mat, reads=12)
    # Adafactor on model-shaped sets: many small tensors, where the per-tensor work (three
    # kernel calls and the factors' host arithmetic per matrix) weighs as much as the bytes
    for set_name, shapes in (("course MLP", _shapes.course_mlp()),
                             ("small transformer", _shapes.small_transformer())):
        if _shapes.total(shapes) > n:     # (a set larger than --n: not run)
            continue
        label = f"fastopt Adafactor ({set_name}, {len(shapes)} tensors)"
        add(label, lambda ps: ft.Adafactor(ps, **kw), 24, shapes=shapes)
        for how, extra in (("for-loop", dict(foreach=False)), ("foreach", dict(foreach=True))):
            add(f"torch.optim.Adafactor ({set_name}, {how})", lambda ps, extra=extra:
                torch.optim.Adafactor(ps, **kw, **extra), 24, peer_of=label, shapes=shapes)
    add("fastopt AdamW, max_grad_norm=1.0", lambda ps: ft.AdamW(ps, lr=1e-3, max_grad_norm=1.0),
        28 + 4)
    add("torch clip_grad_norm_ + AdamW(fused=True)",
        lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), 28 + 12,
        peer_of="fastopt AdamW, max_grad_norm=1.0", clip=True)
    add("fastopt AdamW (no clipping)", lambda ps: ft.AdamW(ps, lr=1e-3), 28)
    add("torch AdamW(fused=True) (no clipping)",
        lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), 28,
        peer_of="fastopt AdamW (no clipping)")

    floors = [floor_gbps(torch)]
    reads = [read_floor_gbps(torch)]
    times = {k: [] for k, v in cases.items() if v[0] is not None}
    # the floors in every round as well (the triad first, the dot half way): this VM's bandwidth
    # drifts by a third within a run, and a floor taken only before and after can miss it
    # (each on buffers of its own, and half a round apart: a triad right after a dot over
    # the same buffers ran up to 1.3x faster than one after other work)
    fn = 1 << 26
    fa, fb, da, db = (torch.ones(fn) for _ in range(4))
    fa.add_(fb, alpha=1e-7)
    torch.dot(da, db)
    round_triad, round_dot = [], []
    names = list(times)
    half = len(names) // 2
    for _ in range(args.rounds):
        for j, name in enumerate(names):
            if j in (0, half):
                t0 = time.perf_counter()
                if j == 0:
                    fa.add_(fb, alpha=1e-7)
                    round_triad.append(12 * fn / (time.perf_counter() - t0) / 1e9)
                else:
                    torch.dot(da, db)
                    round_dot.append(8 * fn / (time.perf_counter() - t0) / 1e9)
            step = cases[name][0]
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    del fa, fb, da, db
    floors.append(floor_gbps(torch))
    reads.append(read_floor_gbps(torch))
    gbps = statistics.median(round_triad)
    rgbps = statistics.median(round_dot)
    huge = floor_gbps(torch, huge=True)     # (for the report: what huge pages allow)

    rows = []
    for name, (step, bpe, note, peer_of) in cases.items():
        row = dict(case=name, bytes_per_element=bpe, peer_of=peer_of, note=note)
        if step is not None:
            t = statistics.median(times[name])
            k = elements.get(name, n)
            ro = read_only.get(name, 0)
            floor_s = (ro / rgbps + (bpe - ro) / gbps) * k / 1e9
            row.update(ms=t * 1e3, gbps=bpe * k / t / 1e9, of_floor=floor_s / t,
                       of_triad=bpe * k / (gbps * 1e9) / t, read_only_bytes=ro, elements=k)
        rows.append(row)
    by = {r["case"]: r for r in rows}
    for r in rows:
        ours = by.get(r["peer_of"]) if r["peer_of"] else None
        if ours is not None and "ms" in r and "ms" in ours:
            r["fastopt_speedup"] = r["ms"] / ours["ms"]

    info = dict(n=n, rounds=args.rounds, floor_gbps=gbps, floors=floors, floor_huge_gbps=huge,
                read_floor_gbps=rgbps, read_floors=reads,
                floor_range=[min(round_triad), max(round_triad)],
                read_floor_range=[min(round_dot), max(round_dot)],
                machine=_machine(),
                cores=os.cpu_count(), torch=torch.__version__,
                fastopt_backend="cython" if backend_status()["cython"][0] else "numba",
                date=time.strftime("%Y-%m-%d"))
    try:
        import schedulefree
        info["schedulefree"] = getattr(schedulefree, "__version__", "installed")
    except ImportError:
        info["schedulefree"] = None
    os.makedirs(args.out, exist_ok=True)
    tag = machine_tag(info["machine"])
    with open(os.path.join(args.out, f"optimizers-{tag}.json"), "w") as fh:
        json.dump(dict(info=info, rows=rows), fh, indent=1)
    text = render(info, rows)
    with open(os.path.join(args.out, f"optimizers-{tag}.md"), "w") as fh:
        fh.write(text)
    print(text)
    return info, rows


def render(info, rows):
    n = info["n"]
    lines = [f"# More optimizers, fused: one step at 2^{n.bit_length() - 1} float32 elements", "",
             f"{info['machine']}, {info['cores']} cores; torch {info['torch']}, schedulefree "
             f"{info['schedulefree']}; fastopt.torch on the {info['fastopt_backend']} backend; "
             f"{info['date']}.  `python bench/bench_optimizers.py` (one process, "
             f"{info['rounds']} interleaved rounds, medians).  Floor: in-place triad "
             f"{info['floor_gbps']:.1f} GB/s (median of one run per round, "
             f"{info['floor_range'][0]:.1f}-{info['floor_range'][1]:.1f}; before/after the "
             f"rounds: {', '.join(f'{x:.1f}' for x in info['floors'])}), on torch's own "
             f"allocations "
             f"like the parameters and gradients here (4 KiB pages); the same triad on huge "
             f"pages, as fastopt.torch allocates its state: "
             f"{info.get('floor_huge_gbps', float('nan')):.1f} GB/s.  Read-only floor (the "
             f"bytes of passes that only read, marked r): `torch.dot` over two 2^26 float32, "
             f"{info['read_floor_gbps']:.1f} GB/s (per round "
             f"{info['read_floor_range'][0]:.1f}-{info['read_floor_range'][1]:.1f}; before/after: "
             f"{', '.join(f'{x:.1f}' for x in info['read_floors'])}).", "",
             "| case | bytes/elem | ms/step | GB/s | of floor | of triad | fastopt × faster |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['case']} | {r['bytes_per_element']} | – | – | – | – | "
                         f"({r['note']}) |")
            continue
        sp = f"{r['fastopt_speedup']:.2f}" if "fastopt_speedup" in r else ""
        ro = r.get("read_only_bytes", 0)
        bpe = f"{r['bytes_per_element']} ({ro} r)" if ro else f"{r['bytes_per_element']}"
        lines.append(f"| {r['case']} | {bpe} | {r['ms']:.2f} | "
                     f"{r['gbps']:.1f} | {r['of_floor']:.2f} | {r['of_triad']:.2f} | {sp} |")
    lines += ["", "\"of floor\": the time the case's bytes take at the floors (read-only "
              "bytes at the read-only floor, the rest at the triad's) over its time; \"of "
              "triad\": every byte at the triad's rate.  \"fastopt × faster\": the peer's time "
              "over the fastopt case it is listed under (its `peer_of`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
