"""GPU benchmark of the 'cuda' backend: ``python bench/gpu.py [--quick] [--repeat N]``.

Per case (Adam, SGD-momentum and RMSprop at 2**20, 2**24, 2**28 float32 elements, and Adam over a
GPT-2-small-shaped parameter list of 148 tensors / 124M values in a device Arena):

* time per step: CUDA events around one ``opt.step`` after warm-up, median of ``--repeat`` runs
  (includes the Python dispatch of the step, as a training loop sees it);
* the device-to-device copy bandwidth measured in the same run (``bytes = 2 * nbytes`` per copy,
  a buffer well beyond L2) and the fraction of the bandwidth floor reached: bytes moved per
  SPEC.md (Adam 28 B/element in float32, SGD-momentum and RMSprop 20) / bandwidth / time;
* ``torch.optim.Adam(fused=True)`` (and SGD/RMSprop with ``foreach=True``) on the same sizes when
  torch with CUDA is installed.

Prints a table and writes JSON to ``bench/results/gpu-<timestamp>.json``.  Exits with status 2 and
a message when no GPU is present (the simulator does not count: its timings mean nothing).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import statistics
import sys

import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results"

#: bytes read + written per element in float32 (SPEC.md table).
BYTES_PER_ELEMENT_F32 = {"sgd": 12, "sgd_momentum": 20, "momentum": 20, "rmsprop": 20,
                         "adagrad": 20, "adam": 28, "adam_amsgrad": 36}

SIZES = (2 ** 20, 2 ** 24, 2 ** 28)
FAMILIES = ("adam", "sgd_momentum", "rmsprop")


def gpt2_small_shapes(vocab=50257, n_ctx=1024, d=768, layers=12):
    """The 148 parameter shapes of GPT-2 small (124,439,808 values), in HF transformers order."""
    shapes = [(vocab, d), (n_ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),                      # ln_1 weight, bias
                   (d, 3 * d), (3 * d,),            # attn.c_attn
                   (d, d), (d,),                    # attn.c_proj
                   (d,), (d,),                      # ln_2
                   (d, 4 * d), (4 * d,),            # mlp.c_fc
                   (4 * d, d), (d,)]                # mlp.c_proj
    shapes += [(d,), (d,)]                          # ln_f
    return shapes


def bytes_moved(family, n, itemsize=4):
    """Bytes a step must move for ``n`` elements (SPEC.md's table, scaled by the item size)."""
    return BYTES_PER_ELEMENT_F32[family] // 4 * itemsize * n


def floor_seconds(family, n, bandwidth_bytes_per_s, itemsize=4):
    return bytes_moved(family, n, itemsize) / bandwidth_bytes_per_s


def fraction_of_floor(family, n, seconds, bandwidth_bytes_per_s, itemsize=4):
    """floor time / measured time: 1.0 means the step runs at copy bandwidth."""
    return floor_seconds(family, n, bandwidth_bytes_per_s, itemsize) / seconds


def gpu_unavailable_reason():
    """None when a real CUDA GPU is usable, else a sentence saying why not."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return "NUMBA_ENABLE_CUDASIM is set: the CUDA simulator has no meaningful timings"
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba.cuda cannot be imported ({exc}); pip install fastopt[cuda]"
    try:
        if not cuda.is_available():
            return "numba.cuda.is_available() is False (no CUDA GPU or driver)"
    except Exception as exc:
        return f"numba.cuda.is_available() raised {type(exc).__name__}: {exc}"
    return None


# -- timing (GPU only) ---------------------------------------------------------------------------
def _time_events(fn, repeat, warmup=5):
    from numba import cuda
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(nbytes=1 << 30, repeat=20):
    """Device-to-device copy bandwidth in bytes/s (2 * nbytes moved per copy)."""
    from numba import cuda
    n = nbytes // 4
    src = cuda.device_array(n, dtype=np.float32)
    dst = cuda.device_array(n, dtype=np.float32)
    t = _time_events(lambda: dst.copy_to_device(src), repeat)
    del src, dst
    return 2 * nbytes / t


def _make_opt(family, params, backend=None):
    """The optimizer of the benchmark case ``family`` (a spec's ``bench`` key: adam ->
    ``Adam(lr=1e-3)``, sgd_momentum -> ``SGD(lr=1e-3, momentum=0.9)``, rmsprop ->
    ``RMSprop(lr=1e-3)``), as bench/conftest.py's ``family_cases`` builds it."""
    import fastopt
    from fastopt.specs import SPECS
    for spec in SPECS:
        if family in spec.bench:
            return getattr(fastopt, spec.name)(params, backend=backend, **spec.bench[family])
    raise ValueError(family)


def _torch_opt(family, params):
    import torch
    if family == "adam":
        return torch.optim.Adam(params, lr=1e-3, fused=True), "Adam(fused=True)"
    if family == "sgd_momentum":
        try:
            return torch.optim.SGD(params, lr=1e-3, momentum=0.9, fused=True), "SGD(fused=True)"
        except (RuntimeError, TypeError, ValueError):
            return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=True), \
                "SGD(foreach=True)"
    return torch.optim.RMSprop(params, lr=1e-3, foreach=True), "RMSprop(foreach=True)"


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def _time_torch(torch, opt, repeat, warmup=5):
    for _ in range(warmup):
        opt.step()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeat):
        start.record()
        opt.step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def bench_flat(family, n, bandwidth, repeat):
    from numba import cuda
    rng = np.random.default_rng(0)
    host = rng.standard_normal(min(n, 1 << 20)).astype(np.float32)
    reps = -(-n // host.size)
    p = cuda.device_array(n, dtype=np.float32)
    g = cuda.device_array(n, dtype=np.float32)
    for k in range(reps):  # fill without a host copy of n elements
        lo, hi = k * host.size, min(n, (k + 1) * host.size)
        p[lo:hi].copy_to_device(host[:hi - lo])
        g[lo:hi].copy_to_device(host[:hi - lo] * np.float32(1e-3))
    opt = _make_opt(family, [p], backend="cuda")
    t = _time_events(lambda: opt.step([g]), repeat)
    row = {"case": f"{family} {_fmt_n(n)}", "family": family, "elements": n, "tensors": 1,
           "seconds_per_step": t, "bytes_moved": bytes_moved(family, n),
           "gbytes_per_s": bytes_moved(family, n) / t / 1e9,
           "fraction_of_floor": fraction_of_floor(family, n, t, bandwidth)}
    del opt
    torch = _torch_cuda()
    if torch is not None:
        tp = torch.as_tensor(p, device="cuda")  # zero-copy view via __cuda_array_interface__
        tp = torch.nn.Parameter(tp.clone())
        tp.grad = torch.as_tensor(g, device="cuda").clone()
        topt, label = _torch_opt(family, [tp])
        tt = _time_torch(torch, topt, repeat)
        row.update(torch_impl=label, torch_seconds_per_step=tt, speedup_vs_torch=tt / t)
        del topt, tp
        torch.cuda.empty_cache()
    del p, g
    return row


def bench_gpt2(bandwidth, repeat):
    import fastopt
    shapes = gpt2_small_shapes()
    n = sum(math.prod(s) for s in shapes)
    rng = np.random.default_rng(0)
    params = [(rng.standard_normal(s).astype(np.float32) * np.float32(0.02)) for s in shapes]
    arena = fastopt.Arena(params, device="cuda")
    for gv, p in zip(arena.grads, params):
        gv.copy_to_device(p * np.float32(0.1))
    opt = fastopt.Adam(arena.params, lr=1e-3, backend="cuda")
    t = _time_events(lambda: opt.step(arena.grads), repeat)
    row = {"case": f"adam gpt2-small arena ({len(shapes)} tensors)", "family": "adam",
           "elements": n, "tensors": len(shapes), "seconds_per_step": t,
           "bytes_moved": bytes_moved("adam", n), "gbytes_per_s": bytes_moved("adam", n) / t / 1e9,
           "fraction_of_floor": fraction_of_floor("adam", n, t, bandwidth)}
    torch = _torch_cuda()
    if torch is not None:
        tps = []
        for p in params:
            tp = torch.nn.Parameter(torch.from_numpy(p).cuda())
            tp.grad = torch.from_numpy(p * np.float32(0.1)).cuda()
            tps.append(tp)
        topt, label = _torch_opt("adam", tps)
        tt = _time_torch(torch, topt, repeat)
        row.update(torch_impl=label, torch_seconds_per_step=tt, speedup_vs_torch=tt / t)
        del topt, tps
        torch.cuda.empty_cache()
    del opt, arena
    return row


def _fmt_n(n):
    k = int(math.log2(n))
    return f"2^{k}" if 2 ** k == n else str(n)


def format_table(rows, bandwidth):
    lines = [f"device-to-device copy bandwidth: {bandwidth / 1e9:.0f} GB/s",
             f"{'case':38s} {'ms/step':>9s} {'GB/s':>7s} {'of floor':>8s} "
             f"{'torch ms':>9s} {'vs torch':>8s}"]
    for r in rows:
        tms = r.get("torch_seconds_per_step")
        lines.append(f"{r['case']:38s} {r['seconds_per_step'] * 1e3:9.3f} "
                     f"{r['gbytes_per_s']:7.0f} {r['fraction_of_floor']:8.2f} "
                     + (f"{tms * 1e3:9.3f} {r['speedup_vs_torch']:7.2f}x" if tms else
                        f"{'-':>9s} {'-':>8s}"))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=50, help="timed steps per case (median)")
    ap.add_argument("--quick", action="store_true", help="sizes 2^20 and 2^24 only, no GPT-2")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="JSON path")
    args = ap.parse_args(argv)
    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"bench/gpu.py needs a CUDA GPU: {reason}", file=sys.stderr)
        return 2
    from numba import cuda

    from fastopt.kernels import get_backend
    bandwidth = copy_bandwidth()
    sizes = SIZES[:2] if args.quick else SIZES
    rows = []
    for family in FAMILIES:
        for n in sizes:
            rows.append(bench_flat(family, n, bandwidth, args.repeat))
            print(format_table(rows[-1:], bandwidth).splitlines()[-1], flush=True)
    if not args.quick:
        rows.append(bench_gpt2(bandwidth, args.repeat))
    table = format_table(rows, bandwidth)
    print()
    print(table)
    from fastopt import config
    meta = {"device": get_backend("cuda").detail(), "copy_bandwidth_bytes_per_s": bandwidth,
            "threads_per_block": config.CUDA_THREADS_PER_BLOCK,
            "blocks_per_sm": config.CUDA_BLOCKS_PER_SM, "repeat": args.repeat,
            "timing": "CUDA events around one step after 5 warm-up steps, median",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "compute_capability": list(cuda.get_current_device().compute_capability)}
    torch = _torch_cuda()
    if torch is not None:
        meta["torch"] = torch.__version__
    out = args.out or RESULTS / f"gpu-{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    sys.exit(main())
