"""Mini-batch iteration (fastopt.data.minibatches)."""
import math

import numpy as np
import pytest

from fastopt.data import minibatches


@pytest.mark.parametrize("m, batch_size", [(10, 3), (64, 64), (65, 64), (7, 1), (5, 100),
                                           (1, 1), (0, 4)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_sample_exactly_once_and_sizes(m, batch_size, shuffle):
    X = np.arange(m * 2).reshape(m, 2)
    batches = list(minibatches(X, batch_size=batch_size, shuffle=shuffle, seed=0))
    assert len(batches) == math.ceil(m / batch_size)
    sizes = [xb.shape[0] for xb, _ in batches]
    assert all(s == batch_size for s in sizes[:-1])
    if m:
        assert sizes[-1] == m - batch_size * (len(batches) - 1)
        assert all(yb is None for _, yb in batches)
        rows = np.concatenate([xb for xb, _ in batches])
        assert sorted(rows[:, 0].tolist()) == X[:, 0].tolist()
        if not shuffle:
            np.testing.assert_array_equal(rows, X)


def test_course_layout_axis1_with_labels_aligned():
    m = 50
    X = np.vstack([np.arange(m), 10 * np.arange(m)]).astype(float)    # (n_x=2, m)
    Y = (np.arange(m) % 3).reshape(1, m)                                # (1, m)
    seen = []
    for xb, yb in minibatches(X, Y, batch_size=8, seed=3, axis=1):
        assert xb.shape[0] == 2 and yb.shape[0] == 1 and xb.shape[1] == yb.shape[1]
        np.testing.assert_array_equal(yb[0], xb[0].astype(int) % 3)    # columns stay paired
        np.testing.assert_array_equal(xb[1], 10 * xb[0])
        seen.extend(xb[0].astype(int).tolist())
    assert sorted(seen) == list(range(m))
    assert seen != list(range(m))                                      # it was shuffled


def test_one_hot_labels_axis1_and_1d_labels():
    m = 20
    X = np.random.default_rng(0).normal(size=(5, m))
    labels = np.arange(m) % 4
    onehot = np.eye(4)[labels].T                                       # (4, m)
    for xb, yb in minibatches(X, onehot, batch_size=6, seed=1, axis=1):
        assert yb.shape == (4, xb.shape[1])
    for xb, yb in minibatches(X, labels, batch_size=6, seed=1, axis=1):   # 1-D Y: its axis 0
        assert yb.shape == (xb.shape[1],)
    Xr = X.T.copy()
    for xb, yb in minibatches(Xr, labels, batch_size=6, seed=1):
        j = [int(np.flatnonzero((Xr == row).all(axis=1))[0]) for row in xb]
        np.testing.assert_array_equal(yb, labels[j])


def test_seed_reproducible_and_different_seeds_differ():
    X = np.arange(100)
    a = [xb.tolist() for xb, _ in minibatches(X, batch_size=10, seed=42)]
    b = [xb.tolist() for xb, _ in minibatches(X, batch_size=10, seed=42)]
    c = [xb.tolist() for xb, _ in minibatches(X, batch_size=10, seed=43)]
    assert a == b
    assert a != c
    rng = np.random.default_rng(5)
    d = [xb.tolist() for xb, _ in minibatches(X, batch_size=10, seed=rng)]
    assert sorted(sum(d, [])) == list(range(100))


def test_batch_gradient_descent_and_sgd_extremes():
    X = np.arange(12).reshape(3, 4)
    (xb, _), = list(minibatches(X, batch_size=4, shuffle=False, axis=1))
    np.testing.assert_array_equal(xb, X)
    assert len(list(minibatches(X, batch_size=1, axis=1))) == 4


def test_is_a_generator_copying_one_batch_at_a_time():
    X = np.zeros((1000, 3))
    gen = minibatches(X, batch_size=10, seed=0)
    assert iter(gen) is gen
    xb, _ = next(gen)
    assert xb.shape == (10, 3) and not np.shares_memory(xb, X)
    views = minibatches(X, batch_size=10, shuffle=False)
    xb, _ = next(views)
    assert np.shares_memory(xb, X)                                     # in order: views


@pytest.mark.parametrize("kw, exc, name", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=-5), ValueError, "batch_size"),
    (dict(batch_size=2.0), TypeError, "batch_size"),
    (dict(batch_size=True), TypeError, "batch_size"),
    (dict(axis=2), ValueError, "axis"),
    (dict(axis=1.0), TypeError, "axis"),
    (dict(shuffle="yes"), TypeError, "shuffle"),
])
def test_bad_arguments_raise_at_call(kw, exc, name):
    with pytest.raises(exc, match=name):
        minibatches(np.ones((4, 3)), **kw)          # raised before iterating


def test_sample_count_mismatch():
    with pytest.raises(ValueError, match="samples"):
        minibatches(np.ones((2, 10)), np.ones((1, 9)), axis=1)
    with pytest.raises(ValueError, match="samples"):
        minibatches(np.ones((10, 2)), np.ones(11))
    with pytest.raises(ValueError, match="X"):
        minibatches(np.float64(3.0))
