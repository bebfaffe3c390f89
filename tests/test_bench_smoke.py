"""Keep the benchmark helpers working (no timings here): the naive course baselines compute the
same update as fastopt (or their speed-ups would mean nothing), every benchmark case can be built
and stepped on tiny arrays (the optimizer cases, the threshold and overhead cases, the Cython vs
Numba bound calls), and the report renders from a pytest-benchmark-shaped JSON."""
import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

import fastopt

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"


sys.path.insert(0, str(BENCH))
from _bench_import import sibling  # noqa: E402


def _load(name, filename):
    return sibling(filename, name)


H = _load("fastopt_bench_conftest", "conftest.py")
K = _load("fastopt_bench_kernels", "bench_kernels.py")
M = _load("fastopt_bench_models", "bench_models.py")
R = _load("fastopt_bench_report", "report.py")


def test_bytes_per_element_match_spec():
    spec = {"sgd": 12, "sgd_momentum": 20, "momentum": 20, "rmsprop": 20, "adagrad": 20,
            "adam": 28, "adamw": 28, "adam_amsgrad": 36, "adamax": 28, "nadam": 28, "radam": 28,
            "adadelta": 28, "asgd": 20, "rprop": 28, "adafactor": 32, "lion": 20, "lamb": 40,
            "adamw_schedulefree": 28}
    assert set(H.ARRAY_PASSES) == set(spec)      # the specs' bench keys: every SPEC.md row
    assert {f: H.bytes_per_element(f) for f in spec} == spec
    assert H.bytes_per_element("adam", np.float64) == 56
    assert H.ARRAYS_RESIDENT == {"sgd": 2, "sgd_momentum": 3, "momentum": 3, "rmsprop": 3,
                                 "adagrad": 3, "adam": 4, "adamw": 4, "adam_amsgrad": 5,
                                 "adamax": 4, "nadam": 4, "radam": 4, "adadelta": 4, "asgd": 3,
                                 "rprop": 4, "adafactor": 3, "lion": 3, "lamb": 4,
                                 "adamw_schedulefree": 4}
    assert list(K.FAMILIES) == list(H.family_cases()) == list(H.ARRAY_PASSES)
    # bench/gpu.py keeps its own table (it is standalone): it must say the same
    gpu_spec = importlib.util.spec_from_file_location("fastopt_bench_gpu_smoke",
                                                      BENCH / "gpu.py")
    gpu = importlib.util.module_from_spec(gpu_spec)
    gpu_spec.loader.exec_module(gpu)
    assert gpu.BYTES_PER_ELEMENT_F32 == {f: b for f, b in spec.items()
                                         if f in gpu.BYTES_PER_ELEMENT_F32}


@pytest.mark.parametrize("family", sorted(H.COURSE))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_course_baseline_equals_fastopt(family, dtype):
    ccls, ckw, fname, fkw = H.COURSE[family]
    rng = np.random.default_rng(1)
    shapes = [(5, 3), (5, 1), (7,)]
    base = {f"W{i}": rng.standard_normal(s).astype(dtype) for i, s in enumerate(shapes)}
    course_p = {k: v.copy() for k, v in base.items()}
    fast_p = {k: v.copy() for k, v in base.items()}
    course = ccls(course_p, **ckw)
    fast = getattr(fastopt, fname)(fast_p, backend="numba", **fkw)
    for _ in range(6):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in base.items()}
        course.step(course_p, grads)
        fast.step(grads)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-6)
    for k in base:
        assert course_p[k].dtype == dtype          # no silent upcast in the baseline
        np.testing.assert_allclose(course_p[k], fast_p[k], **tol)
        assert not np.allclose(course_p[k], base[k])   # it moved


@pytest.mark.parametrize("family", list(H.ARRAY_PASSES))
def test_kernel_cases_build_and_agree(family):
    n = 1000
    rng = np.random.default_rng(2)
    p0 = (rng.standard_normal(n) * 0.02).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    impls = ["numba", "numpy"]
    if H.backend_available("cython"):
        impls.append("cython")
    if family in H.COURSE:
        impls.append("course")
    if family in K.TORCH_FAMILIES and H.torch_or_none() is not None:
        impls += list(K.TORCH_IMPLS)
    results = {}
    for impl in impls:
        p = p0.copy()
        step = K.make_step(family, impl, p, g)
        for _ in range(3):
            step()
        results[impl] = p
    for impl, p in results.items():
        np.testing.assert_allclose(p, results["numpy"], rtol=1e-4, atol=1e-6, err_msg=impl)


def test_model_cases_build_and_agree():
    params0, grads = H.random_set(M.shapes_of("course_mlp"))
    assert len(params0) == 6
    out = {}
    for impl in M.IMPLS:
        if impl.startswith("cython") and not H.backend_available("cython"):
            continue
        if impl.startswith("torch") and H.torch_or_none() is None:
            continue
        step, params = M.make_step(impl, params0, grads)
        for _ in range(3):
            step()
        out[impl] = [np.array(p) for p in params]
    for impl, ps in out.items():
        for a, b in zip(ps, out["numpy"]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=impl)


def _host_backends():
    return ["numba", "cython"] if H.backend_available("cython") else ["numba"]


@pytest.mark.parametrize("family", K.THRESHOLD_FAMILIES)
@pytest.mark.parametrize("backend", K.THRESHOLD_BACKENDS)
def test_threshold_cases_build_and_agree(monkeypatch, backend, family):
    """test_threshold's bound calls, forced serial and forced parallel, agree with the NumPy
    reference bound the same way."""
    from fastopt import config
    if backend not in _host_backends():
        pytest.skip("cython backend not built")
    n = 3000
    ref, p_ref = K.threshold_case("numpy", family, n)
    ref()
    for kind, threshold in K.THRESHOLD_FORCED.items():
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        fn, p = K.threshold_case(backend, family, n)
        fn()
        np.testing.assert_allclose(p, p_ref, rtol=1e-5, atol=1e-7, err_msg=kind)
    assert {K.THRESHOLD_FORCED["parallel"], K.THRESHOLD_FORCED["serial"]} == {0, 1 << 62}


def test_overhead_cases_build():
    """test_overhead's cases: every backend, layout and level runs; the bound-call level calls
    exactly the plan's calls (one bound call, a row per tensor or one row in an Arena)."""
    default = H.default_backend()
    for backend in M.OVERHEAD_BACKENDS:
        if backend == "cython" and not H.backend_available("cython"):
            continue
        for layout in M.OVERHEAD_LAYOUTS:
            for level in M.OVERHEAD_LEVELS:
                fn, info = M.overhead_case(backend, layout, level)
                opt, params, _ = fn.keep
                before = [p.copy() for p in params]
                for _ in range(3):
                    fn()
                assert all(np.isfinite(p).all() for p in params)
                assert any(not np.array_equal(a, b) for a, b in zip(params, before))
                assert info["resolved"] == (default if backend == "default" else backend)
                assert info["bound_calls"] == 1 and info["tensors"] == 6
                assert info["rows"] == (1 if layout == "arena" else 6)
                assert opt.step_count == (4 if level == "step" else 1)
    assert M._overhead_id("default") == f"default-{default}"


def test_cython_vs_numba_bound_calls_agree():
    """bench_cython.py's bound calls: each backend (and the baseline build) from the same state
    gives the same update, and the build switch is restored."""
    if not H.backend_available("cython"):
        pytest.skip("cython backend not built")
    C = _load("fastopt_bench_cython", "bench_cython.py")
    from fastopt.kernels import cython as cy
    isa = cy.ISA
    n = 4096
    for case in C.CASE_IDS:
        arrays = C._arrays(case, n)
        start = [None if a is None else a.copy() for a in arrays]
        out = {}
        for backend in C.BACKENDS:
            for a, a0 in zip(arrays, start):
                if a is not None:
                    np.copyto(a, a0)
            call, scalars, detail = C.bind(case, backend, n)
            assert cy.ISA == isa and detail
            call(scalars)
            # every array (LAMB's first pass writes its moments, not the parameter)
            out[backend] = [None if a is None else a.copy() for a in arrays]
        for backend, got in out.items():
            for k, (a, b) in enumerate(zip(got, out["numba"])):
                if a is not None:
                    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7,
                                               err_msg=f"{case} {backend} array {k}")
        assert any(a is not None and not np.array_equal(a, a0)
                   for a, a0 in zip(out["numba"], start))
    assert C.CASES == {"adam": 28, "sgd_momentum": 20, "rmsprop": 20, "lamb": 24}


def test_startup_reports_the_default_backend():
    inner, outer, all_inner, backend = H.startup_seconds(repeats=1, warm=False)
    assert backend == H.default_backend()
    assert 0 < inner <= outer and len(all_inner) == 1


def test_plan_rounds():
    r, i = H.plan_rounds(1e-6)
    assert i >= 1000 and 3 <= r <= 60
    r, i = H.plan_rounds(2.0)
    assert (r, i) == (3, 1)


def test_floor_small_and_machine_name():
    f = H.Floor(n=1 << 12, repeats=2)
    assert f.gbps > 0 and f.serial_gbps > 0
    assert f.cache_gbps(1 << 14) > 0
    assert f.time_for(1e9) == pytest.approx(1 / f.gbps)
    name = H.machine_name(dict(cpu_model="AMD EPYC 9654 96-Core Processor", cores=2))
    assert name.startswith("cpu-amd-epyc-9654") and name.endswith("-2c") and " " not in name
    # the kernels' ISA where the run recorded it (VMs sold under one CPU name differ in it)
    assert H.machine_name(dict(cpu_model="AMD EPYC", cores=2, isa="avx2")) == \
        "cpu-amd-epyc-avx2-2c"
    assert H.machine_name().split("-")[-2] in ("avx512", "avx2", "baseline", "numba")


def test_report_renders(tmp_path):
    def bench(name, median, **extra):
        return {"name": name, "stats": {"median": median}, "extra_info": extra}
    floor = dict(floor_GBps=30.0, floor_serial_GBps=30.0, floor_threads=2)
    rows = [bench("floor", 0.0268, suite="floor", impl="triad-inplace", machine="cpu-test-2c",
                  machine_info=dict(cpu_model="Test", cores=2, default_backend="cython",
                                    backends={"cython": "built with OpenMP, 2 threads"}),
                  GBps=30.0, fraction_of_floor=1.0, **floor)]
    n = 1 << 24
    for impl, t in (("numba", 0.016), ("numpy", 0.1), ("course", 0.12), ("torch-fused", 0.02)):
        rows.append(bench(f"k-{impl}", t, suite="kernels", family="adam", impl=impl, n=n,
                          dtype="float32", GBps=28 * n / t / 1e9,
                          fraction_of_floor=28 * n / 30e9 / t, **floor))
    # test_threshold: numba crosses over at 2^17, cython at 2^14
    thr = {"numba": ((1 << 14, 1e-6, 3e-6), (1 << 17, 1e-5, 8e-6), (1 << 18, 2e-5, 1e-5)),
           "cython": ((1 << 14, 4e-6, 3e-6), (1 << 17, 1e-5, 8e-6), (1 << 18, 2e-5, 1e-5))}
    for backend, pts in thr.items():
        for n_, s, p in pts:
            for kind, t in (("serial", s), ("parallel", p)):
                rows.append(bench("t", t, suite="threshold", family="adam", backend=backend,
                                  kind=kind, impl=f"{backend}-{kind}", n=n_, GBps=1.0,
                                  fraction_of_floor=1.0))
    # test_overhead: the default backend (cython here) meets 3 µs in an Arena, misses 8 µs
    # separate; numba has only an arena row
    ov = [("default", "cython", "arena", 1.1e-6, 2.4e-6, 1),
          ("default", "cython", "separate", 1.2e-6, 9.0e-6, 6),
          ("numba", "numba", "arena", 1.5e-6, 2.9e-6, 1)]
    for backend, resolved, layout, bound, step, nrows in ov:
        for level, t in (("bound-call", bound), ("step", step)):
            rows.append(bench("o", t, suite="overhead", family="adam", impl=level, level=level,
                              backend=backend, resolved=resolved, layout=layout,
                              model="course_mlp", bound_calls=1, rows=nrows, n=2762,
                              tensors=6, GBps=1.0, fraction_of_floor=1.0))
    rows.append(bench("s", 0.9, suite="startup", impl="cython", backend="cython",
                      import_and_first_step_s=0.5))
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"benchmarks": rows, "datetime": "now", "version": "x"}))
    assert R.main([str(path)]) == 0
    text = (tmp_path / "cpu-test-2c.md").read_text()
    assert "Targets" in text and "30.00 GB/s" in text
    assert "default backend (`backend=None`): cython" in text
    assert "**numba adam**: parallel faster from 131,072" in text
    assert "**cython adam**: parallel faster from 16,384" in text
    assert "| default (cython) | arena | 1 | 1 | 1.1 µs | 2.4 µs | 1.3 µs |" in text
    assert "| numba | arena | 1 | 1 | 1.5 µs | 2.9 µs | 1.4 µs |" in text
    assert ("| course MLP Adam step ≤ 3 µs (default backend: cython, arena) | 2.4 µs | met |"
            in text)
    assert ("| course MLP Adam step ≤ 8 µs (default backend: cython, separate) | 9.0 µs | "
            "**not met** |" in text)
    assert "on the default backend (cython): 0.500 s" in text
    loaded = R.load(str(path))[1]
    cross = R.crossover(loaded)
    assert cross["numba", "adam"][0] == 1 << 17
    assert cross["cython", "adam"][0] == 1 << 14
    # rows of older runs (impl only, no backend/kind fields) still group by backend
    old = [dict(r, backend=None, kind=None) for r in loaded if r["suite"] == "threshold"]
    assert R.crossover(old) == cross


def test_compare_flags_a_slower_case(tmp_path):
    """bench/compare.py: ratios from each run against itself, a case flagged when its ratio
    drops below 0.9 of the before run's."""
    C = _load("fastopt_bench_compare", "compare.py")

    def run(path, adam_frac, sgd_frac, torch_t, adam_t):
        rows = []
        n = 1 << 20
        for fam, frac, t in (("adam", adam_frac, adam_t), ("sgd", sgd_frac, 0.001)):
            rows.append({"name": fam, "stats": {"median": t},
                         "extra_info": dict(suite="kernels", family=fam, impl="numba", n=n,
                                            dtype="float32", fraction_of_floor=frac)})
        rows.append({"name": "tf", "stats": {"median": torch_t},
                     "extra_info": dict(suite="kernels", family="adam", impl="torch-fused", n=n,
                                        dtype="float32", fraction_of_floor=0.9)})
        path.write_text(json.dumps({"benchmarks": rows, "datetime": "t"}))
        return str(path)

    before = run(tmp_path / "b.json", 0.95, 1.0, 0.002, 0.001)
    after = run(tmp_path / "a.json", 0.94, 0.5, 0.002, 0.001)
    out = tmp_path / "cmp.md"
    assert C.main(["--before", before, "--after", after, "--out", str(out)]) == 0
    text = out.read_text()
    assert "| adam | 2^20 | numba | 0.95 | 0.94 | 2.00× | 2.00× |  |" in text
    assert "| sgd | 2^20 | numba | 1.00 | 0.50 |" in text and "**slower**" in text
    assert text.rstrip().endswith("sgd 2^20 numba")


def test_versus_runs_against_a_checkout(tmp_path):
    """bench/versus.py imports another checkout's package next to this one and times both,
    interleaved; here the other checkout is this one (so nothing can be 'slower' by design,
    only the mechanics are checked)."""
    V = _load("fastopt_bench_versus", "versus.py")
    out = tmp_path / "versus.md"
    root = BENCH.parent
    assert V.main(["--old", str(root), "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| adam | 2^10 | numba |" in text and "| adam course_mlp | arena |" in text
    import sys as _sys
    assert _sys.modules["fastopt"].__file__.startswith(str(root))
    assert "fastopt_old" in _sys.modules


def test_bench_optimizers_runs_tiny(tmp_path):
    """bench/bench_optimizers.py end to end on 4096 elements: every case runs (schedulefree's
    too when installed) and the report names each one."""
    pytest.importorskip("torch")
    B = _load("fastopt_bench_optimizers", "bench_optimizers.py")
    info, rows = B.main(["--n", "4096", "--rounds", "2", "--out", str(tmp_path)])
    by = {r["case"]: r for r in rows}
    for name in B.NEW:
        assert "ms" in by[f"fastopt {name}"], by[f"fastopt {name}"]
    assert "ms" in by["torch clip_grad_norm_ + AdamW(fused=True)"]
    assert by["torch.optim.NAdam (foreach)"]["peer_of"] == "fastopt NAdam"
    assert "fastopt_speedup" in by["torch.optim.NAdam (for-loop)"]
    text = (next(tmp_path.glob("optimizers-*.md"))).read_text()
    assert "fastopt AdamW, max_grad_norm=1.0" in text and "| fastopt Lion | 20 |" in text


def test_torch_overhead_runs_tiny(capsys):
    """bench/torch_overhead.py on the course MLP, two rounds: every implementation timed."""
    pytest.importorskip("torch")
    B = _load("fastopt_bench_torch_overhead", "torch_overhead.py")
    out = B.main(["--rounds", "2", "--sets", "course_mlp"])
    assert set(out["course_mlp"]) == set(B.IMPLS)
    assert all(v > 0 for v in out["course_mlp"].values())
    assert "torch-fused" in capsys.readouterr().out
    assert len(B.resnet18()) == 62 and sum(np.prod(s) for s in B.resnet18()) == 11_689_512


def test_bench_formats_runs_tiny(tmp_path):
    """bench_formats end to end at 2^13 elements without the peers: every fastopt case runs and
    the report renders (with the AVX2-table comparison where the AVX-512 codecs run)."""
    pytest.importorskip("torch")
    import importlib
    bf = importlib.import_module("bench_formats")
    bf.main(["--n", str(1 << 13), "--rounds", "2", "--no-first-step", "--no-peers",
             "--out", str(tmp_path)])
    (md,) = tmp_path.glob("formats-*.md")
    text = md.read_text()
    assert "| fastopt AdamW, float32 p/g, int8 state | 16.06 |" in text
    assert "| bitsandbytes AdamW8bit (CPU) | 16.00 | – |" in text       # skipped, and says so
    assert "| fastopt LAMB, bfloat16 p/g, int8 state, stochastic | 16.09 |" in text
    assert "| fastopt Adafactor 64x128, bfloat16 p/g, stochastic | 12.00 |" in text
    assert "int8 state LAMB against float32 LAMB" in text and "against torch's (foreach" in text
    if bf._q8_avx512_extension() is not None:
        assert "AVX2 gather codecs" in text and "faster." in text


def test_adafactor_passes_runs_tiny(capsys):
    """bench/adafactor_passes.py on a 64 x 96 matrix: every pass and both floors timed."""
    pytest.importorskip("torch")
    B = _load("fastopt_bench_adafactor_passes", "adafactor_passes.py")
    out = B.main(["--rows", "64", "--cols", "96", "--rounds", "2", "--floor-n", "4096"])
    assert all(out[k] > 0 for k in ("triad_gbps", "dot_gbps", "sums", "u*u", "update"))
    assert out["step_ms"] > 0 and "of its floor" in capsys.readouterr().out


def test_lamb_passes_runs_tiny(capsys):
    """bench/lamb_passes.py on 8192 elements: both passes, both steps and the triad timed, and
    each pass's in-cache cost per element."""
    B = _load("fastopt_bench_lamb_passes", "lamb_passes.py")
    out = B.main(["--n", "8192", "--rounds", "2", "--floor-n", "4096", "--cache-n", "4096",
                  "--cache-work", "4096", "--backend", "numpy"])
    assert out["triad_gbps"] > 0
    for k in ("pass 1", "pass 2", "LAMB step", "Adam step"):
        assert out[k]["ms"] > 0 and out[k]["gbps"] > 0
    assert out["pass 1"]["cache_ns"] > 0 and out["pass 2"]["cache_ns"] > 0
    assert "of the triad's" in capsys.readouterr().out


def test_q8_blocks_c_builds_and_runs(tmp_path):
    """bench/q8_blocks.c, compiled as its header says against ``c_tables()`` (the extension's
    8-bit tables), runs on 4096 elements and prints its three rows."""
    import shutil
    import subprocess
    from fastopt.kernels import _codegen
    from fastopt.kernels import cython as cy
    if shutil.which("gcc") is None or not cy._cpu_has("AVX2"):
        pytest.skip("needs gcc and an AVX2 CPU")
    (tmp_path / "q8_tables.h").write_text(_codegen.c_tables())
    exe = tmp_path / "q8_blocks"
    subprocess.run(["gcc", "-O2", "-mavx2", "-mfma", "-fno-math-errno", f"-I{tmp_path}",
                    str(BENCH / "q8_blocks.c"), "-o", str(exe), "-lm"], check=True)
    out = subprocess.run([str(exe), "4096"], check=True, capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [" ".join(r[:-2]) for r in rows] == ["whole step", "decode + rule", "rule alone"]
    assert all(float(x) > 0 for r in rows for x in r[-2:])


def test_layout_backends_runs_tiny(capsys):
    """bench/layout_backends.py on 4096 elements: both torch steps and every case on both host
    backends timed."""
    pytest.importorskip("torch")
    B = _load("fastopt_bench_layout_backends", "layout_backends.py")
    out = B.main(["--n", "4096", "--rounds", "2"])
    assert set(out) == {"torch fused float32", "torch fused bfloat16"} | {
        f"{b}: {c}" for b in ("cython", "numba") for c in B.CASES}
    assert all(v > 0 for v in out.values()) and "x torch bf16" in capsys.readouterr().out
