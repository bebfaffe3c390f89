"""Training quality with fewer bytes (the small versions of ``bench/quality.py``): the same
initial weights and batches, only the optimizer's storage differs.  int8 state ends within 2% of
the float32 run's final loss, bfloat16 parameters with stochastic rounding within 1%, and
round-to-nearest bfloat16 parameters end visibly worse (they stall once the updates fall below
half an ulp) -- the reason stochastic rounding exists."""
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
from _bench_import import sibling  # noqa: E402

Q = sibling("quality.py", "fastopt_bench_quality")


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return {name: Q.train_digits(name, epochs=40) for name in Q.CONFIGS}


def test_digits_int8_state_within_2_percent(digits):
    assert Q.gaps(digits)["int8 state"] <= 0.02


def test_digits_bf16_stochastic_within_1_percent(digits):
    assert abs(Q.gaps(digits)["bf16 params, stochastic"]) <= 0.01


def test_digits_bf16_nearest_stalls(digits):
    g = Q.gaps(digits)
    assert g["bf16 params, nearest"] >= 0.10 + g["bf16 params, stochastic"]
    assert min(r["test_acc"] for r in digits.values()) >= 0.9    # every run still learns


@pytest.fixture(scope="module")
def charlm():
    pytest.importorskip("torch")
    text = Q.stdlib_text(120_000)
    return {name: Q.train_charlm(name, steps=150, d=32, layers=1, text=text)
            for name in Q.CONFIGS}


def test_charlm_int8_and_stochastic_track_float32(charlm):
    g = Q.gaps(charlm)
    assert charlm["float32"]["final"] < 0.8 * charlm["float32"]["losses"][0]   # it learned
    assert g["int8 state"] <= 0.02
    assert abs(g["bf16 params, stochastic"]) <= 0.01
    assert g["bf16 params, nearest"] > g["bf16 params, stochastic"]
