r"""The course's L-layer network in its column layout, in NumPy.

``X`` is ``(n_x, m)``; parameters are a dict ``{"W1": (n_1, n_x), "b1": (n_1, 1), ...}``
(:func:`initialize_parameters`, He initialisation); ReLU hidden layers and a softmax (several
classes) or sigmoid (two classes) output (:func:`forward`); cross-entropy cost with the L2 term
:math:`\frac{\lambda}{2m}\sum_l \|W^{[l]}\|_F^2` (:func:`compute_cost`); backpropagation
(:func:`backward`, optionally writing into given gradient arrays such as ``arena.grads``);
:func:`predict`; and the demo's two data sets (:func:`load_data`, :func:`layer_dims_for`).

Only NumPy is imported here; scikit-learn (a demo dependency) is imported by :func:`load_data`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["initialize_parameters", "forward", "compute_cost", "backward", "predict",
           "load_data", "layer_dims_for"]


def initialize_parameters(layer_dims, seed=0, dtype=np.float32):
    """He initialisation: ``W[l] ~ N(0, 2/n[l-1])`` of shape ``(n[l], n[l-1])``, ``b[l] = 0``
    of shape ``(n[l], 1)``."""
    rng = np.random.default_rng(seed)
    params = {}
    for l in range(1, len(layer_dims)):
        params[f"W{l}"] = (rng.standard_normal((layer_dims[l], layer_dims[l - 1]))
                           * np.sqrt(2.0 / layer_dims[l - 1])).astype(dtype)
        params[f"b{l}"] = np.zeros((layer_dims[l], 1), dtype=dtype)
    return params


def _num_layers(params):
    return len(params) // 2


def forward(X, params, output="softmax"):
    """Forward propagation.  Returns ``AL`` and the caches ``[(A_prev, Z), ...]`` per layer.

    ``Z[l] = W[l] A[l-1] + b[l]``; ``A[l] = relu(Z[l])`` for hidden layers; the output layer
    applies ``softmax`` over the classes (axis 0) or ``sigmoid``.
    """
    L = _num_layers(params)
    A = X
    caches = []
    for l in range(1, L + 1):
        Z = params[f"W{l}"] @ A + params[f"b{l}"]
        caches.append((A, Z))
        if l < L:
            A = np.maximum(Z, 0)
        elif output == "softmax":
            E = np.exp(Z - Z.max(axis=0, keepdims=True))
            A = E / E.sum(axis=0, keepdims=True)
        else:
            A = 1.0 / (1.0 + np.exp(-Z))
    return A, caches


def compute_cost(AL, Y, params, lambd=0.0, output="softmax", caches=None, m_reg=None):
    r"""Cross-entropy cost plus the L2 term, as a Python float (accumulated in float64).

    .. math:: J = \frac1m\sum_i \mathcal L(\hat y^{(i)}, y^{(i)})
                  + \frac{\lambda}{2 m_\text{reg}}\sum_l \|W^{[l]}\|_F^2

    ``m`` is the number of samples in ``Y``; ``m_reg`` defaults to it (the course's per-batch
    formula).  The demo passes the training-set size as ``m_reg``: then every mini-batch cost
    estimates the same full-batch cost :math:`J` (the course's :math:`\lambda/2m` with ``m`` the
    training set), and a smaller last mini-batch does not get a larger L2 term.

    With ``caches`` the loss is computed from the output layer's ``Z`` (log-sum-exp form,
    no ``log(0)``); otherwise from ``AL``.
    """
    m = Y.shape[1]
    if caches is not None:
        Z = caches[-1][1].astype(np.float64)
        Yd = Y.astype(np.float64)
        if output == "softmax":
            zmax = Z.max(axis=0, keepdims=True)
            lse = zmax + np.log(np.exp(Z - zmax).sum(axis=0, keepdims=True))
            loss = float(np.sum(lse) - np.sum(Yd * Z))
        else:
            loss = float(np.sum(np.logaddexp(0.0, Z) - Yd * Z))
    else:
        A = np.clip(AL.astype(np.float64), 1e-15, 1 - 1e-15)
        if output == "softmax":
            loss = float(-np.sum(Y * np.log(A)))
        else:
            loss = float(-np.sum(Y * np.log(A) + (1 - Y) * np.log(1 - A)))
    l2 = sum(float(np.sum(np.square(params[f"W{l}"], dtype=np.float64)))
             for l in range(1, _num_layers(params) + 1))
    return loss / m + lambd / (2 * (m_reg or m)) * l2


def backward(AL, Y, caches, params, lambd=0.0, grads=None, m_reg=None):
    r"""Backward propagation; gradients keyed like the parameters (``"W1"``, ``"b1"``, ...).

    ``dZ[L] = AL - Y`` (softmax + cross-entropy, or sigmoid + binary cross-entropy);
    ``dW[l] = dZ[l] A[l-1]^T / m + (lambd/m_reg) W[l]`` (``m_reg`` as in :func:`compute_cost`);
    ``db[l] = sum(dZ[l], axis=1) / m``;
    ``dZ[l-1] = W[l]^T dZ[l] * (Z[l-1] > 0)``.

    With ``grads`` (e.g. ``arena.grads``) the gradients are written into those arrays in place
    (``out=``), so an optimizer built on an Arena steps them with one kernel call.
    """
    L = _num_layers(params)
    m = Y.shape[1]
    if grads is None:
        grads = {k: np.empty_like(v) for k, v in params.items()}
    dZ = AL - Y
    for l in range(L, 0, -1):
        A_prev, _ = caches[l - 1]
        W = params[f"W{l}"]
        gW, gb = grads[f"W{l}"], grads[f"b{l}"]
        np.matmul(dZ, A_prev.T, out=gW)
        gW *= 1.0 / m
        if lambd:
            gW += (lambd / (m_reg or m)) * W
        np.sum(dZ, axis=1, keepdims=True, out=gb)
        gb *= 1.0 / m
        if l > 1:
            dA = W.T @ dZ
            dZ = dA * (caches[l - 2][1] > 0)
    return grads


def predict(X, params, output="softmax"):
    """Class labels: argmax of the softmax, or sigmoid > 0.5."""
    AL, _ = forward(X, params, output)
    if output == "softmax":
        return AL.argmax(axis=0)
    return (AL[0] > 0.5).astype(int)


def load_data(name, seed=0, dtype=np.float32):
    """``digits`` (8x8 images, 10 classes) or ``moons`` (2-D, 2 classes), standardized with the
    training set's mean and std, in the course's layout: ``X`` ``(n_x, m)``, ``Y`` ``(n_y, m)``
    (one-hot for digits, 0/1 row for moons)."""
    from sklearn.model_selection import train_test_split

    if name == "digits":
        from sklearn.datasets import load_digits
        X, y = load_digits(return_X_y=True)
        output, n_classes = "softmax", 10
    elif name == "moons":
        from sklearn.datasets import make_moons
        X, y = make_moons(n_samples=600, noise=0.2, random_state=seed)
        output, n_classes = "sigmoid", 2
    else:
        raise ValueError(f"dataset must be 'digits' or 'moons', got {name!r}")
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)
    sd[sd == 0] = 1.0

    def prep(a):
        return np.ascontiguousarray(((a - mu) / sd).T, dtype=dtype)

    def target(labels):
        if output == "softmax":
            return np.ascontiguousarray(np.eye(n_classes, dtype=dtype)[labels].T)
        return labels.reshape(1, -1).astype(dtype)

    return {"name": name, "Xtr": prep(Xtr), "Ytr": target(ytr), "ytr": ytr,
            "Xte": prep(Xte), "Yte": target(yte), "yte": yte, "output": output,
            "mu": mu, "sd": sd, "raw_train": (Xtr, ytr), "raw_test": (Xte, yte)}


def layer_dims_for(data):
    """The demo's layer sizes: ``[n_x, 64, 32, 10]`` (digits, softmax) or ``[n_x, 16, 16, 1]``
    (moons, sigmoid)."""
    n_x = data["Xtr"].shape[0]
    return [n_x, 64, 32, 10] if data["output"] == "softmax" else [n_x, 16, 16, 1]
