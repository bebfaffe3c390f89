"""The course's 2-D surfaces (fastopt.course.surfaces) and the optimizer paths on them: exact
gradients, each surface is what it claims to be, the runner steps every optimizer of the spec
list from the same start, what the picture shows is true, and the picture is written."""
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from fastopt.course import surfaces as S
from fastopt.specs import SPECS


@pytest.fixture(scope="module")
def paths():
    return S.run_paths()


def _path(paths, surface, name):
    return next(p for p in paths[surface] if p.name == name)


def _hessian(surface, p, h=1e-5):
    """Central differences of the exact gradient."""
    p = np.asarray(p, dtype=np.float64)
    H = np.empty((2, 2))
    for j in range(2):
        e = np.zeros(2)
        e[j] = h
        H[:, j] = (surface.grad(p + e) - surface.grad(p - e)) / (2 * h)
    return 0.5 * (H + H.T)


# --- the surfaces -------------------------------------------------------------------------------
@pytest.mark.parametrize("surface", S.SURFACES, ids=lambda s: s.name)
def test_gradient_matches_finite_differences(surface):
    rng = np.random.default_rng(1)
    x0, x1, y0, y1 = surface.extent
    pts = np.column_stack([rng.uniform(x0, x1, 25), rng.uniform(y0, y1, 25)])
    pts = np.vstack([pts, surface.start, *surface.minima])
    h = 1e-6
    for p in pts:
        num = np.array([(surface.value(p + e) - surface.value(p - e)) / (2 * h)
                        for e in (np.array([h, 0.0]), np.array([0.0, h]))])
        np.testing.assert_allclose(surface.grad(p), num, rtol=1e-6, atol=1e-8)
        # what an optimizer is handed (no rng: no noise) is the same gradient
        np.testing.assert_allclose(surface.gradient(p), surface.grad(p), rtol=0, atol=0)
    # vectorised over a grid, as the picture evaluates it
    xx, yy = np.meshgrid(np.linspace(x0, x1, 7), np.linspace(y0, y1, 5))
    grid = np.stack([xx, yy], axis=-1)
    assert surface.grad(grid).shape == (5, 7, 2)
    np.testing.assert_allclose(surface.value(grid), surface.value_fn(xx, yy))


@pytest.mark.parametrize("surface", S.SURFACES, ids=lambda s: s.name)
def test_minima_are_minima_and_start_is_in_the_picture(surface):
    x0, x1, y0, y1 = surface.extent
    for m in (surface.start, *surface.minima, *surface.saddles):
        assert x0 <= m[0] <= x1 and y0 <= m[1] <= y1
    for m in surface.minima:
        np.testing.assert_allclose(surface.grad(m), 0.0, atol=1e-12)
        assert np.all(np.linalg.eigvalsh(_hessian(surface, m)) > 0)
    assert surface.distance_to_minimum(surface.minima[0]) == 0.0
    assert surface.distance_to_minimum(surface.start) > 1.0


def test_ravine_is_an_ill_conditioned_quadratic():
    s = S.surface("ravine")
    for p in [(0.0, 0.0), s.start, (1.0, -0.5)]:      # a quadratic: the same Hessian everywhere
        ev = np.linalg.eigvalsh(_hessian(s, p))
        assert ev[1] / ev[0] == pytest.approx(S.KAPPA, rel=1e-6)
    assert S.KAPPA >= 10


def test_saddle_has_zero_gradient_and_a_negative_curvature_direction():
    s = S.surface("saddle")
    (sx, sy), = s.saddles
    np.testing.assert_allclose(s.grad((sx, sy)), 0.0, atol=1e-15)
    ev, vec = np.linalg.eigh(_hessian(s, (sx, sy)))
    assert ev[0] < 0 < ev[1]                          # a saddle, not an extremum
    np.testing.assert_allclose(np.abs(vec[:, 0]), [0.0, 1.0], atol=1e-8)  # downhill along y
    assert s.value((sx, sy)) > max(s.value(m) for m in s.minima)
    # the start is almost on the ridge that leads into the saddle
    assert abs(s.start[1]) < 0.01 and abs(s.start[0]) > 1


def test_plateau_has_near_zero_gradient_over_a_region():
    s = S.surface("plateau")
    x0, x1, y0, y1 = s.extent
    xx, yy = np.meshgrid(np.linspace(x0, x1, 201), np.linspace(y0, y1, 201))
    far = xx ** 2 + 4 * yy ** 2 >= 16                 # the plain around the well
    g = np.linalg.norm(s.grad(np.stack([xx, yy], axis=-1)), axis=-1)
    assert far.mean() > 0.05                          # a visible part of the picture
    assert g[far].max() < 3e-3                        # flat there
    assert g.max() > 100 * g[far].max()               # and steep inside the well
    assert np.linalg.norm(s.grad(s.start)) < 3e-3     # the start is on the plain


def test_noise_is_seeded_and_only_on_the_noisy_surface():
    noisy = S.surface("noisy")
    p = np.array(noisy.start)
    a = [noisy.gradient(p, np.random.default_rng(3)).copy() for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])
    rng = np.random.default_rng(4)
    draws = np.array([noisy.gradient(p, rng) - noisy.grad(p) for _ in range(4000)])
    assert np.abs(draws.mean(axis=0)).max() < 0.1
    np.testing.assert_allclose(draws.std(axis=0), noisy.noise, rtol=0.05)
    for s in S.SURFACES:
        if s is not noisy:
            assert s.noise == 0
            np.testing.assert_array_equal(s.gradient(p, np.random.default_rng(0)), s.grad(p))


# --- the runner ---------------------------------------------------------------------------------
def test_every_optimizer_in_specs_runs_from_the_same_start(paths):
    names = [s.name for s in SPECS]
    assert list(paths) == [s.name for s in S.SURFACES]
    for surface in S.SURFACES:
        ps = paths[surface.name]
        assert [p.name for p in ps] == names
        for p in ps:
            assert p.error is None, (p.name, surface.name, p.error)
            assert p.points.shape == (surface.steps + 1, 2)
            assert p.points.dtype == np.float64
            np.testing.assert_array_equal(p.points[0], surface.start)
            assert p.lr == S.learning_rate(p.name, surface.name)
            if p.name in S.LEARNING_RATES:           # the hand-tuned ones stay in the picture
                assert p.diverged_at is None and p.steps_done == surface.steps
                assert np.all(np.isfinite(p.points))
            assert not np.array_equal(p.points[-1], p.points[0])   # it moved


def test_runner_steps_the_fastopt_class_in_place():
    s = S.surface("ravine")
    lr = 0.03
    p = S.run_path(s, fastopt.SGD, lr, steps=10)
    x = np.array(s.start)
    for t in range(1, 11):                            # plain gradient descent, by hand
        x = x - lr * s.grad(x)
        np.testing.assert_allclose(p.points[t], x, rtol=1e-14, atol=1e-15)


def test_noisy_runs_see_the_same_noise():
    s = S.surface("noisy")
    a = S.run_path(s, fastopt.SGD, 0.1, seed=5)
    b = S.run_path(s, fastopt.SGD, 0.1, seed=5)
    c = S.run_path(s, fastopt.SGD, 0.1, seed=6)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(a.points, c.points)


def test_unknown_optimizers_get_the_default_learning_rate():
    for s in S.SURFACES:
        assert S.learning_rate("SomeNewOptimizer", s.name) == S.DEFAULT_LR[s.name]
        assert S.learning_rate("SGD", s.name) == S.LEARNING_RATES["SGD"][s.name]


class _TrainEvalSGD(fastopt.SGD):
    """Stands in for an optimizer with a train()/eval() switch (Schedule-Free)."""

    calls = []

    def train(self):
        self.calls.append("train")

    def eval(self):
        self.calls.append("eval")


class _BrokenSGD(fastopt.SGD):
    def step(self, grads):
        if self.step_count == 3:
            raise RuntimeError("boom")
        return super().step(grads)


def test_special_optimizers_are_handled():
    s = S.surface("ravine")
    _TrainEvalSGD.calls.clear()
    p = S.run_path(s, _TrainEvalSGD, 0.03, name="TrainEval")
    assert _TrainEvalSGD.calls == ["train"] and p.notes == ["train()"]
    assert p.error is None and p.steps_done == s.steps

    p = S.run_path(s, _BrokenSGD, 0.03, name="Broken")      # a step raises: recorded
    assert p.error == "RuntimeError: boom"
    assert p.steps_done == 3 and np.all(np.isnan(p.points[4:]))

    p = S.run_path(s, fastopt.SGD, 1.0)                     # far too large: diverges
    assert p.error is None and p.diverged_at is not None
    assert np.all(np.isnan(p.points[p.diverged_at:]))
    assert np.all(np.isfinite(p.end))

    class Missing:                                          # a spec without a class (yet)
        name = "NotAClassYet"
    out = S.run_paths(specs=[SPECS[0], Missing()])
    for ps in out.values():
        assert ps[0].error is None
        assert ps[1].error.startswith("LookupError") and ps[1].steps_done == 0
    table = S.format_paths(out)
    assert "NotAClassYet" in table and "failed" in table


# --- what the picture claims ---------------------------------------------------------------------
def test_ravine_momentum_and_adam_get_closer_than_zigzagging_sgd(paths):
    s = S.surface("ravine")
    sgd, mom, adam = (_path(paths, "ravine", n) for n in ("SGD", "Momentum", "Adam"))

    def flips(p):                                     # y changes sign, in the first 20 steps
        y = p.points[:21, 1]
        return int(np.sum(np.sign(y[1:]) != np.sign(y[:-1])))

    assert flips(sgd) == 20                           # SGD crosses the valley at every step
    assert flips(mom) <= 5 and flips(adam) <= 5
    d = {p.name: s.distance_to_minimum(p.end) for p in (sgd, mom, adam)}
    assert d["Momentum"] < 0.75 * d["SGD"]
    assert d["Adam"] < 0.5 * d["SGD"]
    assert mom.lr == sgd.lr                           # the same learning rate as SGD


def test_saddle_and_plateau_slow_sgd_down(paths):
    near = lambda p: int(np.sum(np.hypot(*p.points.T) < 0.3))  # noqa: E731
    assert near(_path(paths, "saddle", "SGD")) >= 15      # SGD waits at the saddle
    for n in ("RMSprop", "Adam"):
        assert near(_path(paths, "saddle", n)) <= 2       # the adaptive steps leave at once
    pl = S.surface("plateau")
    sgd = _path(paths, "plateau", "SGD")
    assert np.hypot(*(sgd.end - sgd.points[0])) < 0.5     # SGD barely moves on the plain
    for n in ("Momentum", "RMSprop", "Adam"):
        assert pl.distance_to_minimum(_path(paths, "plateau", n).end) < 0.25


# --- the picture --------------------------------------------------------------------------------
def test_plot_writes_a_png(tmp_path, paths):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg", force=True)
    from fastopt.course.plots import plot_paths
    s = S.surface("ravine")
    extra = [S.run_path(s, _BrokenSGD, 0.03, name="Broken"),
             S.run_path(s, fastopt.SGD, 1.0, name="TooLarge")]
    mixed = dict(paths, ravine=paths["ravine"] + extra)
    out = tmp_path / "surfaces.png"
    plot_paths(mixed, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000
    one = tmp_path / "one.png"                            # a single panel works too
    plot_paths({"saddle": paths["saddle"]}, str(one))
    assert one.stat().st_size > 10_000


def test_imports_stay_light():
    code = ("import sys, fastopt, fastopt.course, fastopt.course.surfaces, "
            "fastopt.course.plots; assert 'matplotlib' not in sys.modules, 'matplotlib'")
    subprocess.run([sys.executable, "-c", code], check=True)
