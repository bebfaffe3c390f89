"""Fewer bytes per step: fastopt's storage formats against torch's fused AdamW, bitsandbytes'
and torchao's 8-bit AdamW, at 2^24 elements, in one process, interleaved; LAMB and Adafactor
(a 2^12 x 2^12 matrix) in the same formats, Adafactor against torch's on bfloat16.

    python bench/bench_formats.py [--n 16777216] [--rounds 15] [--out bench/results]

Every case is one optimizer over one parameter of ``n`` elements with its gradient set once; a
round times one ``step()`` of each case in turn (so slow drifts of this VM's bandwidth hit all
cases alike), and each figure is the median over the rounds.  The floor is torch's in-place
``a.add_(b, alpha=s)`` over 2^26 float32 (12 bytes per element, threaded), measured before and
after the rounds in the same process (median).  A case's floor time is its bytes moved divided
by that bandwidth; "of floor" is floor time / measured time.

The first step of fastopt's int8 AdamW and of torchao's AdamW8bit are also timed each in a fresh
interpreter: the imports, then construction and first step (torchao compiles its kernel there).

Writes ``formats-<machine>.md`` and ``.json`` into ``--out``.  Needs torch; bitsandbytes and
torchao cases are skipped (and say so) when those are not installed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

warnings.filterwarnings("ignore")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _sync():
    pass


def kernel_isa():
    """The ISA of the Cython build fastopt uses here (``avx512``, ``avx2``, ``baseline``), or
    ``numba`` without the extension: part of the results' labels, since VMs sold under one
    CPU name differ in it (an AMD EPYC with AVX-512 and one without ran these benchmarks)."""
    try:
        from fastopt.kernels import cython as cy
    except Exception:  # noqa: BLE001 - not built, or stale: the Numba backend runs
        return "numba"
    return cy.ISA


def machine_tag(machine):
    """The results' label: ``cpu-`` and the model's first words, the kernels' ISA, the core
    count, e.g. ``cpu-amd-epyc-avx2-2c`` (results before the ISA was in it are labelled
    without)."""
    return "cpu-" + "-".join(machine.lower().replace("(r)", "").split()[:3]) + \
        f"-{kernel_isa()}-{os.cpu_count()}c"


def floor_gbps(torch, n=1 << 26, repeats=15, huge=False):
    """The in-place triad ``a.add_(b, alpha)`` over ``n`` float32 (12 bytes per element), GB/s
    of the median of ``repeats``; on torch's own allocations (4 KiB pages unless
    ``THP_MEM_ALLOC_ENABLE=1``), or with ``huge`` on buffers advised into huge pages as
    fastopt.torch allocates its state."""
    if huge:
        from fastopt.torch import _tensors as T
        a = T.filled((n,), 1.0, torch.float32, torch.device("cpu"))
        b = T.filled((n,), 1.0, torch.float32, torch.device("cpu"))
    else:
        a = torch.ones(n)
        b = torch.ones(n)
    a.add_(b, alpha=1e-7)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.add_(b, alpha=1e-7)
        ts.append(time.perf_counter() - t0)
    return 12 * n / statistics.median(ts) / 1e9


def _q8_avx512_extension():
    """The Cython build in use when its 8-bit codecs run their AVX-512 paths here, else None."""
    try:
        from fastopt.kernels import cython as cy
    except (ImportError, RuntimeError):
        return None
    ext = cy.extension
    return ext if cy.ISA != "baseline" and ext.q8_avx512() else None


class _WithoutAvx512:
    """An optimizer whose step runs with the AVX-512 8-bit codecs switched off (their AVX2
    gather path: in the AVX-512 build the rest of the step stays 16 lanes wide)."""

    def __init__(self, opt, ext):
        self.opt, self.ext, self.state = opt, ext, opt.state

    def step(self):
        self.ext.q8_avx512(False)
        try:
            return self.opt.step()
        finally:
            self.ext.q8_avx512(True)


def state_bytes(opt, params):
    """Bytes of optimizer state per parameter element (tensors in opt.state, steps excluded)."""
    total = 0
    seen = set()
    for p in params:
        for k, v in opt.state[p].items():
            if k == "step" or not hasattr(v, "element_size") or id(v) in seen:
                continue
            if k.startswith("qmap"):
                continue            # one shared 1 KiB map
            seen.add(id(v))
            if hasattr(v, "codes") and hasattr(v, "scale"):   # torchao's quantized subclass
                total += sum(t.numel() * t.element_size() for t in (v.codes, v.scale))
            else:
                total += v.numel() * v.element_size()
    return total / sum(p.numel() for p in params)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-first-step", action="store_true")
    ap.add_argument("--no-peers", action="store_true",
                    help="skip bitsandbytes and torchao (torchao compiles for tens of seconds)")
    args = ap.parse_args(argv)

    import torch
    import fastopt.torch as ft
    torch.manual_seed(0)
    n = args.n
    base = torch.randn(n)
    grad = torch.randn(n) * 1e-2
    cases = {}     # name -> (opt, params, bytes per element, note)

    def add(name, make, dtype, gdtype, bpe, note="", shape=None):
        p = base.to(dtype).clone()
        if shape is not None:
            p = p.view(shape)
        p.requires_grad_()
        if gdtype != dtype:
            p.grad_dtype = None
        p.grad = grad.to(gdtype).view(p.shape)
        try:
            opt = make([p])
        except Exception as exc:  # a peer that does not install or run here
            cases[name] = (None, None, bpe, f"not run: {type(exc).__name__}: {exc}")
            return
        opt.step()   # allocate state, compile
        cases[name] = (opt, [p], bpe, note)

    f32, bf16 = torch.float32, torch.bfloat16
    blk = 2 * 2 * 4 / 256       # two states' absmax, read and written
    add("torch fused AdamW, float32", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        f32, f32, 28)
    add("torch fused AdamW, all bfloat16", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        bf16, bf16, 14)
    add("fastopt AdamW, float32", lambda ps: ft.AdamW(ps, lr=1e-3), f32, f32, 28)
    add("fastopt AdamW, float32 p/g, int8 state",
        lambda ps: ft.AdamW(ps, lr=1e-3, state_dtype="int8"), f32, f32, 12 + 4 + blk)
    q8_ext = _q8_avx512_extension()
    if q8_ext is not None:      # the same step on the AVX2 build's gather path, for comparison
        add("fastopt AdamW, float32 p/g, int8 state, AVX2 gather codecs",
            lambda ps: _WithoutAvx512(ft.AdamW(ps, lr=1e-3, state_dtype="int8"), q8_ext),
            f32, f32, 12 + 4 + blk)
    add("fastopt AdamW, bfloat16 p/g, int8 state, stochastic",
        lambda ps: ft.AdamW(ps, lr=1e-3, state_dtype="int8", rounding="stochastic"),
        bf16, bf16, 6 + 4 + blk)
    add("fastopt AdamW, bfloat16 p/g, float32 state",
        lambda ps: ft.AdamW(ps, lr=1e-3, state_dtype="float32"), bf16, bf16, 22)
    add("fastopt AdamW, bfloat16 p/g, float32 state, stochastic",
        lambda ps: ft.AdamW(ps, lr=1e-3, state_dtype="float32", rounding="stochastic"),
        bf16, bf16, 22)
    add("fastopt AdamW, all bfloat16", lambda ps: ft.AdamW(ps, lr=1e-3), bf16, bf16, 14)
    add("fastopt AdamW, all bfloat16, stochastic",
        lambda ps: ft.AdamW(ps, lr=1e-3, rounding="stochastic"), bf16, bf16, 14)
    # the two families with per-tensor passes, in the same formats (LAMB: two passes; with
    # 8-bit state the first only reads; Adafactor: a matrix's three passes, 12 of its 24 bytes
    # read-only)
    lamb_blk = 6 * 4 / 256      # absmax: pass 1 reads two, pass 2 reads and writes two
    add("fastopt LAMB, float32", lambda ps: ft.LAMB(ps, lr=1e-3), f32, f32, 40)
    add("fastopt LAMB, bfloat16 p/g, bfloat16 state, stochastic",
        lambda ps: ft.LAMB(ps, lr=1e-3, rounding="stochastic"), bf16, bf16, 20)
    add("fastopt LAMB, float32 p/g, int8 state",
        lambda ps: ft.LAMB(ps, lr=1e-3, state_dtype="int8"), f32, f32, 26 + lamb_blk)
    add("fastopt LAMB, bfloat16 p/g, int8 state, stochastic",
        lambda ps: ft.LAMB(ps, lr=1e-3, state_dtype="int8", rounding="stochastic"), bf16, bf16,
        16 + lamb_blk)
    rows_ = 1 << (int(np.log2(n)) // 2)
    if n % rows_ == 0:         # (a matrix, square for an even power of two: factored passes)
        mat = (rows_, n // rows_)
        size = f"{mat[0]}x{mat[1]}"
        add(f"fastopt Adafactor {size}, float32", lambda ps: ft.Adafactor(ps), f32, f32,
            24, shape=mat)
        add(f"fastopt Adafactor {size}, bfloat16 p/g, stochastic",
            lambda ps: ft.Adafactor(ps, rounding="stochastic"), bf16, bf16, 12, shape=mat)
        add(f"torch Adafactor {size}, bfloat16 (foreach)",
            lambda ps: torch.optim.Adafactor(ps, foreach=True), bf16, bf16, 12, shape=mat)
    try:
        if args.no_peers:
            raise ImportError("--no-peers")
        import bitsandbytes as bnb
        bnb_version = bnb.__version__
        add("bitsandbytes AdamW8bit (CPU)", lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3),
            f32, f32, 12 + 4 + blk)
    except ImportError as exc:
        bnb_version = None
        cases["bitsandbytes AdamW8bit (CPU)"] = (None, None, 16, f"not run: {exc}")
    try:
        if args.no_peers:
            raise ImportError("--no-peers")
        import torchao
        from torchao.optim import AdamW8bit as AoAdamW8bit
        ao_version = torchao.__version__
        add("torchao AdamW8bit (CPU)", lambda ps: AoAdamW8bit(ps, lr=1e-3), f32, f32,
            12 + 4 + blk)
    except ImportError as exc:
        ao_version = None
        cases["torchao AdamW8bit (CPU)"] = (None, None, 16, f"not run: {exc}")

    floors = [floor_gbps(torch)]
    times = {k: [] for k, v in cases.items() if v[0] is not None}
    for _ in range(args.rounds):
        for name in times:
            opt = cases[name][0]
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    floors.append(floor_gbps(torch))
    gbps = statistics.median(floors)

    first = {}
    if not args.no_first_step:
        code = {
            # after the imports (printed apart): construction and first step at 2^20
            "fastopt AdamW int8": (
                "import time; t0 = time.perf_counter(); import torch, fastopt.torch as ft; "
                "t1 = time.perf_counter(); "
                "p = torch.zeros(1 << 20, requires_grad=True); p.grad = torch.ones(1 << 20); "
                "o = ft.AdamW([p], state_dtype='int8'); o.step(); "
                "print(t1 - t0, time.perf_counter() - t1)"),
            "torchao AdamW8bit": (
                "import time, warnings; warnings.filterwarnings('ignore'); "
                "t0 = time.perf_counter(); import torch; from torchao.optim import AdamW8bit; "
                "t1 = time.perf_counter(); "
                "p = torch.zeros(1 << 20, requires_grad=True); p.grad = torch.ones(1 << 20); "
                "o = AdamW8bit([p]); o.step(); print(t1 - t0, time.perf_counter() - t1)"),
        }
        for name, src in code.items():
            if name.startswith("torchao") and ao_version is None:
                continue
            out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                                 timeout=600)
            try:
                imp, step = map(float, out.stdout.strip().splitlines()[-1].split())
                first[name] = {"import_s": imp, "first_step_s": step}
            except (ValueError, IndexError):
                first[name] = None

    ref = statistics.median(times["torch fused AdamW, float32"])
    ref16 = statistics.median(times["torch fused AdamW, all bfloat16"])
    rows = []
    for name, (opt, ps, bpe, note) in cases.items():
        if opt is None:
            rows.append(dict(case=name, note=note, bytes_per_element=bpe))
            continue
        t = statistics.median(times[name])
        fl = bpe * n / (gbps * 1e9)
        rows.append(dict(case=name, ms=t * 1e3, bytes_per_element=bpe,
                         gbps=bpe * n / t / 1e9, of_floor=fl / t, vs_torch_fused_f32=ref / t,
                         vs_torch_fused_bf16=ref16 / t,
                         state_bytes_per_param=state_bytes(opt, ps), note=note))
    by = {r["case"]: r for r in rows}
    for peer in ("bitsandbytes AdamW8bit (CPU)", "torchao AdamW8bit (CPU)"):
        if "ms" in by.get(peer, {}):
            by["fastopt AdamW, float32 p/g, int8 state"]["vs_" + peer.split()[0]] = \
                by[peer]["ms"] / by["fastopt AdamW, float32 p/g, int8 state"]["ms"]

    from fastopt.kernels import backend_status
    machine = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            machine = next(line.split(":", 1)[1].strip() for line in fh
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = dict(n=n, rounds=args.rounds, floor_gbps=gbps, floors=floors, machine=machine,
                cores=os.cpu_count(), torch=torch.__version__, bitsandbytes=bnb_version,
                torchao=ao_version, fastopt_backend="the cython backend ("
                + backend_status()["cython"][1] + ")" if backend_status()["cython"][0]
                else "the numba backend", first_step_s=first,
                date=time.strftime("%Y-%m-%d"))
    os.makedirs(args.out, exist_ok=True)
    tag = machine_tag(machine)
    with open(os.path.join(args.out, f"formats-{tag}.json"), "w") as fh:
        json.dump(dict(info=info, rows=rows), fh, indent=1)
    text = render(info, rows)
    with open(os.path.join(args.out, f"formats-{tag}.md"), "w") as fh:
        fh.write(text)
    print(text)


def render(info, rows):
    n = info["n"]
    lines = [f"# Storage formats: AdamW, LAMB and Adafactor at 2^{int(np.log2(n))} elements", "",
             f"{info['machine']}, {info['cores']} cores; torch {info['torch']}, bitsandbytes "
             f"{info['bitsandbytes']}, torchao {info['torchao']}; fastopt on "
             f"{info['fastopt_backend']}; {info['date']}.  `python bench/bench_formats.py` "
             f"(one process, {info['rounds']} interleaved rounds, medians).  Floor: in-place "
             f"triad {info['floor_gbps']:.1f} GB/s (before/after: "
             f"{', '.join(f'{x:.1f}' for x in info['floors'])}).", "",
             "| case | bytes/elem | ms/step | GB/s | of floor | × torch fused f32 | "
             "× torch fused bf16 | state B/param |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "ms" not in r:
            lines.append(f"| {r['case']} | {r['bytes_per_element']:.2f} | – | – | – | – | – | "
                         f"– ({r['note']}) |")
            continue
        lines.append(f"| {r['case']} | {r['bytes_per_element']:.2f} | {r['ms']:.2f} | "
                     f"{r['gbps']:.1f} | {r['of_floor']:.2f} | {r['vs_torch_fused_f32']:.2f} | "
                     f"{r['vs_torch_fused_bf16']:.2f} | {r['state_bytes_per_param']:.2f} |")
    by = {r["case"]: r for r in rows}
    q = by.get("fastopt AdamW, float32 p/g, int8 state", {})
    lines.append("")
    for peer in ("bitsandbytes", "torchao"):
        if "vs_" + peer in q:
            lines.append(f"fastopt int8 AdamW against {peer}'s AdamW8bit on the same tensors: "
                         f"**{q['vs_' + peer]:.1f}×** faster per step.")
    lamb = by.get("fastopt LAMB, float32", {})
    for other in ("fastopt LAMB, float32 p/g, int8 state",
                  "fastopt LAMB, bfloat16 p/g, int8 state, stochastic",
                  "fastopt LAMB, bfloat16 p/g, bfloat16 state, stochastic"):
        if "ms" in lamb and "ms" in by.get(other, {}):
            lines.append(f"{other[len('fastopt LAMB, '):]} LAMB against float32 LAMB: "
                         f"**{lamb['ms'] / by[other]['ms']:.2f}×**.")
    ada = [r for r in rows if r["case"].startswith("fastopt Adafactor") and "bfloat16" in r["case"]]
    peer = [r for r in rows if r["case"].startswith("torch Adafactor")]
    if ada and peer and "ms" in ada[0] and "ms" in peer[0]:
        lines.append(f"bfloat16 Adafactor against torch's (foreach, bfloat16) on the same matrix: "
                     f"**{peer[0]['ms'] / ada[0]['ms']:.1f}×**.")
    gather = by.get("fastopt AdamW, float32 p/g, int8 state, AVX2 gather codecs", {})
    if "ms" in gather and "ms" in q:
        lines.append(f"The int8 step with the AVX-512 codecs against the same step with the AVX2 "
                     f"gather codecs: **{gather['ms'] / q['ms']:.2f}×** faster.")
    fs = info.get("first_step_s") or {}
    if fs:
        lines.append("In a fresh interpreter, construction and first step at 2^20 (after the "
                     "imports, whose time is in parentheses): " + ", ".join(
                         f"{k} {v['first_step_s']:.2f} s ({v['import_s']:.2f} s)"
                         if v is not None else f"{k} failed" for k, v in fs.items()) + ".")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
