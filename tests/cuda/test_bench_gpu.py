"""The pure-Python pieces of bench/gpu.py (runs on the CPU, in every test run)."""
import importlib.util
import math
import pathlib

import pytest

NEEDS_CUDA = False  # tests/cuda/conftest.py: do not skip this module without CUDA

_PATH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("fastopt_bench_gpu", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpt2_small_shapes(gpu):
    shapes = gpu.gpt2_small_shapes()
    assert len(shapes) == 148
    assert sum(math.prod(s) for s in shapes) == 124_439_808  # GPT-2 small's 124M


def test_floor_math(gpu):
    assert gpu.bytes_moved("adam", 1000) == 28_000
    assert gpu.bytes_moved("sgd_momentum", 1000) == 20_000
    assert gpu.bytes_moved("rmsprop", 1000) == 20_000
    assert gpu.bytes_moved("adam", 1000, itemsize=8) == 56_000
    bw = 2e12  # 2 TB/s
    n = 2 ** 24
    assert gpu.floor_seconds("adam", n, bw) == pytest.approx(28 * n / bw)
    assert gpu.fraction_of_floor("adam", n, 2 * 28 * n / bw, bw) == pytest.approx(0.5)


def test_table_formats(gpu):
    rows = [{"case": "adam 2^20", "seconds_per_step": 1e-4, "gbytes_per_s": 293.6,
             "fraction_of_floor": 0.1},
            {"case": "sgd_momentum 2^20", "seconds_per_step": 1e-4, "gbytes_per_s": 200.0,
             "fraction_of_floor": 0.07, "torch_seconds_per_step": 2e-4,
             "speedup_vs_torch": 2.0}]
    text = gpu.format_table(rows, 3e12)
    assert "3000 GB/s" in text and "adam 2^20" in text and "2.00x" in text


def test_exits_cleanly_without_gpu(gpu, monkeypatch, capsys):
    monkeypatch.setattr(gpu, "gpu_unavailable_reason", lambda: "no GPU in this test")
    assert gpu.main([]) == 2
    assert "needs a CUDA GPU: no GPU in this test" in capsys.readouterr().err


def test_simulator_does_not_count(gpu, monkeypatch):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert "simulator" in gpu.gpu_unavailable_reason()
