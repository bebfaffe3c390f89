"""Keep the benchmark helpers working (no timings here): the naive course baselines compute the
same update as fastopt (or their speed-ups would mean nothing), every benchmark case can be built
and stepped on tiny arrays, and the report renders from a pytest-benchmark-shaped JSON."""
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
            "adam": 28, "adamw": 28, "adam_amsgrad": 36}
    assert {f: H.bytes_per_element(f) for f in spec} == spec
    assert H.bytes_per_element("adam", np.float64) == 56


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


def test_report_renders(tmp_path):
    def bench(name, median, **extra):
        return {"name": name, "stats": {"median": median}, "extra_info": extra}
    floor = dict(floor_GBps=30.0, floor_serial_GBps=30.0, floor_threads=2)
    rows = [bench("floor", 0.0268, suite="floor", impl="triad-inplace", machine="cpu-test-2c",
                  machine_info=dict(cpu_model="Test", cores=2), GBps=30.0,
                  fraction_of_floor=1.0, **floor)]
    n = 1 << 24
    for impl, t in (("numba", 0.016), ("numpy", 0.1), ("course", 0.12), ("torch-fused", 0.02)):
        rows.append(bench(f"k-{impl}", t, suite="kernels", family="adam", impl=impl, n=n,
                          dtype="float32", GBps=28 * n / t / 1e9,
                          fraction_of_floor=28 * n / 30e9 / t, **floor))
    for n_, s, p in ((1 << 14, 1e-6, 3e-6), (1 << 17, 1e-5, 8e-6), (1 << 18, 2e-5, 1e-5)):
        rows.append(bench("t", s, suite="threshold", family="adam", impl="numba-serial", n=n_,
                          GBps=1.0, fraction_of_floor=1.0))
        rows.append(bench("t", p, suite="threshold", family="adam", impl="numba-parallel", n=n_,
                          GBps=1.0, fraction_of_floor=1.0))
    rows.append(bench("s", 0.9, suite="startup", impl="numba", import_and_first_step_s=0.5))
    path = tmp_path / "latest.json"
    path.write_text(json.dumps({"benchmarks": rows, "datetime": "now", "version": "x"}))
    assert R.main([str(path)]) == 0
    text = (tmp_path / "cpu-test-2c.md").read_text()
    assert "Targets" in text and "30.00 GB/s" in text
    assert "parallel faster from 131,072" in text
    cross = R.crossover(R.load(str(path))[1])
    assert cross["adam"][0] == 1 << 17
