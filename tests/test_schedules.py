"""Learning-rate schedules (fastopt.schedules) against hand-computed values."""
import math

import numpy as np
import pytest

from fastopt import schedules as S


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def test_constant():
    s = S.constant(0.3)
    assert [s(n) for n in (0, 1, 10**6)] == [0.3, 0.3, 0.3]
    assert isinstance(s(0), float)


def test_inverse_time_decay_is_the_course_formula():
    # alpha = 1 / (1 + decay_rate * epoch_num) * alpha0
    s = S.inverse_time_decay(0.2, decay_rate=1.0)
    assert [s(n) for n in range(4)] == [approx(0.2), approx(0.1), approx(0.2 / 3), approx(0.05)]
    s = S.inverse_time_decay(0.5, decay_rate=0.25)
    assert s(4) == approx(0.25)


def test_exponential_decay_course_and_staircase():
    s = S.exponential_decay(0.1, 0.95)          # 0.95 ** epoch_num * alpha0
    assert s(0) == approx(0.1)
    assert s(3) == approx(0.1 * 0.95**3)
    s = S.exponential_decay(1.0, 0.5, transition_steps=4)
    assert s(2) == approx(0.5**0.5)
    assert s(4) == approx(0.5)
    st = S.exponential_decay(1.0, 0.5, transition_steps=4, staircase=True)
    assert [st(n) for n in (0, 3, 4, 7, 8)] == [1.0, 1.0, 0.5, 0.5, 0.25]


def test_sqrt_decay():
    s = S.sqrt_decay(0.1, k=2.0)                # k / sqrt(epoch_num) * alpha0
    assert s(0) == approx(0.2)                  # n = 0 treated as 1
    assert s(1) == approx(0.2)
    assert s(4) == approx(0.1)
    assert s(9) == approx(0.2 / 3)


def test_step_decay_boundaries():
    s = S.step_decay(0.1, factor=0.5, step_size=10)
    assert [s(n) for n in (0, 9, 10, 19, 20, 25)] == [
        approx(0.1), approx(0.1), approx(0.05), approx(0.05), approx(0.025), approx(0.025)]


def test_piecewise_constant_manual_decay():
    s = S.piecewise_constant(1.0, {20: 0.1, 10: 0.5})   # keys in any order
    assert [s(n) for n in (0, 9, 10, 19, 20, 100)] == [
        approx(1.0), approx(1.0), approx(0.5), approx(0.5), approx(0.05), approx(0.05)]
    assert S.piecewise_constant(0.3, {})(5) == 0.3
    assert S.piecewise_constant(1.0, {0: 0.5})(0) == 0.5   # boundary <= n applies


def test_polynomial_decay():
    s = S.polynomial_decay(1.0, 0.1, decay_steps=10, power=2.0)
    assert s(0) == approx(1.0)
    assert s(5) == approx(0.9 * 0.25 + 0.1)
    assert s(10) == approx(0.1)
    assert s(50) == approx(0.1)
    lin = S.polynomial_decay(1.0, 0.0, decay_steps=4)
    assert [lin(n) for n in range(6)] == [approx(v) for v in (1, 0.75, 0.5, 0.25, 0, 0)]


def test_cosine_decay():
    s = S.cosine_decay(2.0, decay_steps=10, alpha=0.1)
    assert s(0) == approx(2.0)
    assert s(5) == approx(2.0 * (0.9 * 0.5 + 0.1))
    assert s(10) == approx(0.2)
    assert s(11) == approx(0.2)
    n = 3
    assert s(n) == approx(2.0 * (0.9 * 0.5 * (1 + math.cos(math.pi * n / 10)) + 0.1))


def test_linear_schedule_up_and_down():
    up = S.linear_schedule(0.0, 1.0, transition_steps=4)
    assert [up(n) for n in range(6)] == [approx(v) for v in (0, 0.25, 0.5, 0.75, 1, 1)]
    down = S.linear_schedule(1.0, 0.5, transition_steps=2)
    assert [down(n) for n in range(4)] == [approx(v) for v in (1.0, 0.75, 0.5, 0.5)]


def test_warmup_cosine_decay():
    s = S.warmup_cosine_decay(0.1, 1.0, warmup_steps=4, decay_steps=14, end_lr=0.2)
    assert s(0) == approx(0.1)
    assert s(2) == approx(0.55)
    assert s(4) == approx(1.0)                  # peak at the end of the warm-up
    assert s(9) == approx(0.2 + 0.8 * 0.5)      # half way through the cosine part
    assert s(14) == approx(0.2)
    assert s(100) == approx(0.2)
    no_warmup = S.warmup_cosine_decay(0.0, 1.0, warmup_steps=0, decay_steps=10)
    assert no_warmup(0) == approx(1.0)
    assert no_warmup(10) == approx(0.0)


def test_join_schedules():
    s = S.join_schedules([S.linear_schedule(0.0, 1.0, 2), S.constant(0.5),
                          S.step_decay(1.0, 0.5, 1)], [2, 5])
    assert [s(n) for n in range(8)] == [approx(v) for v in
                                        (0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 0.5, 0.25)]
    assert S.join_schedules([S.constant(0.3)], [])(7) == 0.3


def test_schedules_accept_numpy_ints_and_return_floats():
    for s in (S.inverse_time_decay(1.0, 0.5), S.step_decay(1.0, 0.5, 2),
              S.warmup_cosine_decay(0.0, 1.0, 2, 5)):
        v = s(np.int64(3))
        assert type(v) is float


def test_usable_as_optimizer_lr():
    import fastopt
    w = np.zeros(1)
    opt = fastopt.SGD([w], lr=S.step_decay(1.0, 0.5, 1))
    for _ in range(3):
        opt.step([np.ones(1)])
    assert w[0] == approx(-(1.0 + 0.5 + 0.25))   # step t uses schedule(t - 1)


BAD = [
    (lambda: S.constant(-1.0), ValueError, "lr0"),
    (lambda: S.constant(float("nan")), ValueError, "lr0"),
    (lambda: S.constant("0.1"), TypeError, "lr0"),
    (lambda: S.inverse_time_decay(0.1, -0.5), ValueError, "decay_rate"),
    (lambda: S.exponential_decay(0.1, -0.95), ValueError, "rate"),
    (lambda: S.exponential_decay(0.1, 0.0), ValueError, "rate"),
    (lambda: S.exponential_decay(0.1, 0.9, transition_steps=0), ValueError, "transition_steps"),
    (lambda: S.exponential_decay(0.1, 0.9, transition_steps=1.5), TypeError, "transition_steps"),
    (lambda: S.exponential_decay(0.1, 0.9, staircase="yes"), TypeError, "staircase"),
    (lambda: S.sqrt_decay(0.1, k=0.0), ValueError, "k"),
    (lambda: S.sqrt_decay(-0.1), ValueError, "lr0"),
    (lambda: S.step_decay(0.1, -0.5, 10), ValueError, "factor"),
    (lambda: S.step_decay(0.1, 0.5, 0), ValueError, "step_size"),
    (lambda: S.step_decay(0.1, 0.5, -3), ValueError, "step_size"),
    (lambda: S.piecewise_constant(0.1, {-1: 0.5}), ValueError, "boundaries_and_scales"),
    (lambda: S.piecewise_constant(0.1, {5: -0.5}), ValueError, "boundaries_and_scales"),
    (lambda: S.piecewise_constant(0.1, [(5, 0.5)]), TypeError, "boundaries_and_scales"),
    (lambda: S.polynomial_decay(0.1, 0.0, 0), ValueError, "decay_steps"),
    (lambda: S.polynomial_decay(0.1, -0.1, 10), ValueError, "end_lr"),
    (lambda: S.polynomial_decay(0.1, 0.0, 10, power=0.0), ValueError, "power"),
    (lambda: S.cosine_decay(0.1, 0), ValueError, "decay_steps"),
    (lambda: S.cosine_decay(0.1, 10, alpha=1.5), ValueError, "alpha"),
    (lambda: S.cosine_decay(0.1, 10, alpha=-0.1), ValueError, "alpha"),
    (lambda: S.linear_schedule(0.0, 1.0, 0), ValueError, "transition_steps"),
    (lambda: S.linear_schedule(-1.0, 1.0, 5), ValueError, "init_lr"),
    (lambda: S.warmup_cosine_decay(0.0, 1.0, -1, 10), ValueError, "warmup_steps"),
    (lambda: S.warmup_cosine_decay(0.0, 1.0, 10, 10), ValueError, "decay_steps"),
    (lambda: S.warmup_cosine_decay(0.0, -1.0, 2, 10), ValueError, "peak_lr"),
    (lambda: S.join_schedules([S.constant(1.0), S.constant(2.0)], []), ValueError, "boundaries"),
    (lambda: S.join_schedules([S.constant(1.0), S.constant(2.0)], [0]), ValueError,
     "boundaries"),
    (lambda: S.join_schedules([S.constant(1.0)] * 3, [5, 5]), ValueError, "boundaries"),
    (lambda: S.join_schedules([S.constant(1.0), 0.5], [3]), TypeError, "schedules"),
    (lambda: S.join_schedules([], []), ValueError, "schedules"),
]


@pytest.mark.parametrize("make, exc, name", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_arguments_raise_naming_the_argument(make, exc, name):
    with pytest.raises(exc, match=name):
        make()


@pytest.mark.parametrize("s", [S.constant(0.1), S.inverse_time_decay(0.1, 1.0),
                               S.exponential_decay(0.1, 0.9), S.sqrt_decay(0.1),
                               S.step_decay(0.1, 0.5, 2), S.piecewise_constant(0.1, {2: 0.5}),
                               S.polynomial_decay(0.1, 0.0, 5), S.cosine_decay(0.1, 5),
                               S.linear_schedule(0.0, 0.1, 5),
                               S.warmup_cosine_decay(0.0, 0.1, 1, 5),
                               S.join_schedules([S.constant(0.1), S.constant(0.2)], [3])],
                         ids=lambda s: s.__name__)
def test_bad_count(s):
    with pytest.raises(ValueError, match="count"):
        s(-1)
    with pytest.raises(TypeError, match="count"):
        s(1.5)
    with pytest.raises(TypeError, match="count"):
        s(True)
