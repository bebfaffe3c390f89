"""The training demo (fastopt.demo, with fastopt.course): backprop against finite differences,
the course-style optimizers against fastopt's, and a short end-to-end run."""
import numpy as np
import pytest

import fastopt
from fastopt import demo

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def _problem(output, seed=0):
    rng = np.random.default_rng(seed)
    dims = [5, 4, 3, 3] if output == "softmax" else [4, 5, 3, 1]
    params = demo.initialize_parameters(dims, seed=seed, dtype=np.float64)
    for k in params:                       # non-zero biases, so their gradients are exercised
        params[k] += 0.1 * rng.standard_normal(params[k].shape)
    m = 7
    X = rng.standard_normal((dims[0], m))
    if output == "softmax":
        Y = np.eye(dims[-1])[rng.integers(0, dims[-1], m)].T
    else:
        Y = rng.integers(0, 2, (1, m)).astype(float)
    return params, X, Y


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
@pytest.mark.parametrize("lambd, m_reg", [(0.0, None), (0.7, None), (0.7, 20)])
def test_backprop_matches_finite_differences(output, lambd, m_reg):
    params, X, Y = _problem(output)

    def cost():
        AL, caches = demo.forward(X, params, output)
        return demo.compute_cost(AL, Y, params, lambd, output, caches, m_reg=m_reg)

    AL, caches = demo.forward(X, params, output)
    grads = demo.backward(AL, Y, caches, params, lambd, m_reg=m_reg)
    h = 1e-6
    for k, p in params.items():
        num = np.empty_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            cp = cost()
            p[i] = old - h
            cm = cost()
            p[i] = old
            num[i] = (cp - cm) / (2 * h)
        np.testing.assert_allclose(grads[k], num, rtol=1e-5, atol=1e-8, err_msg=k)


def test_cost_from_caches_equals_cost_from_activations():
    for output in ("softmax", "sigmoid"):
        params, X, Y = _problem(output, seed=3)
        AL, caches = demo.forward(X, params, output)
        assert demo.compute_cost(AL, Y, params, 0.3, output, caches) == pytest.approx(
            demo.compute_cost(AL, Y, params, 0.3, output), rel=1e-10)


def test_backward_writes_into_arena_grads():
    params, X, Y = _problem("softmax")
    arena = fastopt.Arena(params)
    AL, caches = demo.forward(X, arena.params, "softmax")
    out = demo.backward(AL, Y, caches, arena.params, 0.1, grads=arena.grads)
    assert out is arena.grads
    ref = demo.backward(AL, Y, caches, params, 0.1)
    for k in ref:
        np.testing.assert_allclose(arena.grads[k], ref[k], rtol=1e-12)
    assert np.shares_memory(arena.grads["W1"], arena.buffers[np.dtype(np.float64)][1])


@pytest.mark.parametrize("make_fast, make_naive", [
    (lambda p: fastopt.SGD(p, lr=0.1), lambda p: demo.GDNaive(p, 0.1)),
    (lambda p: fastopt.Momentum(p, lr=0.1, beta=0.9), lambda p: demo.MomentumNaive(p, 0.1, 0.9)),
    (lambda p: fastopt.RMSprop(p, lr=0.01, alpha=0.9, eps=1e-8),
     lambda p: demo.RMSpropNaive(p, 0.01, 0.9)),
    (lambda p: fastopt.Adam(p, lr=0.01), lambda p: demo.AdamNaive(p, 0.01)),
], ids=["gd", "momentum", "rmsprop", "adam"])
def test_course_optimizers_compute_what_fastopt_computes(make_fast, make_naive):
    params, X, Y = _problem("softmax", seed=4)
    copy = {k: v.copy() for k, v in params.items()}
    opt = make_fast(params)
    naive = make_naive(copy)
    for _ in range(5):
        AL, caches = demo.forward(X, params, "softmax")
        g = demo.backward(AL, Y, caches, params, 0.1)
        opt.step(g)
        naive.step(copy, g)
    for k in params:
        np.testing.assert_allclose(params[k], copy[k], rtol=1e-10, atol=1e-12)


def test_training_lowers_the_cost():
    data = demo.load_data("digits", seed=0)
    init = demo.initialize_parameters(demo.layer_dims_for(data), seed=0)
    AL, caches = demo.forward(data["Xtr"], init, "softmax")
    start = demo.compute_cost(AL, data["Ytr"], init, 1.0, "softmax", caches)
    spec = [s for s in demo.run_specs("digits") if s.name == "Adam"][0]
    res = demo.train_one(spec, data, init, epochs=1, batch_size=64, seed=0, backend=None,
                         lambd=1.0)
    assert res.final_cost < 0.5 * start
    assert res.test_acc > 0.5
    assert res.kernel_calls == 1                          # the Arena: one call per update
    assert len(res.costs) == len(res.lrs) == len(res.fast_times) == 23
    assert res.max_diff < 1e-4                            # naive copy followed the same path


def test_short_demo_run_writes_its_pictures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main(["--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("Mini-batch GD", "Momentum", "RMSprop", "Adam", "naive/fastopt"):
        assert name in text
    assert "2-D surfaces" in text and "ravine" in text and "plateau" in text
    for png in ("cost.png", "lr.png", "boundaries.png", "ewa.png", "surfaces.png"):
        f = out / png
        assert f.exists() and f.stat().st_size > 10_000
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_options_exit():
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    with pytest.raises(SystemExit):
        demo.main(["--dataset", "mnist"])
