"""Shared test helpers: tolerances per dtype (one place), backends, the optimizer table.

A plain module (not conftest.py) so that tests/cuda/conftest.py cannot shadow it."""
import os

import numpy as np

import fastopt

#: Tolerances of a backend run in the given dtype against the float64 NumPy reference.
TOL = {
    np.float32: dict(rtol=3e-5, atol=3e-6),
    np.float64: dict(rtol=1e-11, atol=1e-12),
}

#: Host backends every conformance test runs on.  The Cython extension must be built (CI has a
#: compiler); only FASTOPT_NO_CYTHON=1 takes it out, so a failed build cannot pass silently.
HOST_BACKENDS = ["numba", "numpy"] + ([] if os.environ.get("FASTOPT_NO_CYTHON") == "1"
                                      else ["cython"])

#: (id, class, kwargs): every family and option of SPEC.md.
OPTIMIZERS_UNDER_TEST = [
    ("sgd", fastopt.SGD, dict(lr=0.05)),
    ("sgd-wd-max", fastopt.SGD, dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("sgd-mom", fastopt.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd-mom-damp-wd", fastopt.SGD, dict(lr=0.05, momentum=0.8, dampening=0.3,
                                          weight_decay=0.01)),
    ("sgd-nesterov", fastopt.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("momentum", fastopt.Momentum, dict(lr=0.1, beta=0.9)),
    ("momentum-bc-wd", fastopt.Momentum, dict(lr=0.1, beta=0.8, bias_correction=True,
                                              weight_decay=0.01)),
    ("rmsprop", fastopt.RMSprop, dict(lr=0.01)),
    ("rmsprop-mom-wd-max", fastopt.RMSprop, dict(lr=0.01, momentum=0.9, weight_decay=0.01,
                                                 maximize=True)),
    ("rmsprop-centered", fastopt.RMSprop, dict(lr=0.01, alpha=0.9, centered=True)),
    ("rmsprop-centered-mom", fastopt.RMSprop, dict(lr=0.01, centered=True, momentum=0.5)),
    ("adagrad", fastopt.Adagrad, dict(lr=0.1)),
    ("adagrad-decay-init-wd-max", fastopt.Adagrad, dict(lr=0.1, lr_decay=0.01,
                                                        initial_accumulator_value=0.1,
                                                        weight_decay=0.01, maximize=True)),
    ("adam", fastopt.Adam, dict(lr=0.01)),
    ("adam-wd-ams", fastopt.Adam, dict(lr=0.01, weight_decay=0.01, amsgrad=True)),
    ("adam-nobc-max", fastopt.Adam, dict(lr=0.01, bias_correction=False, maximize=True,
                                         betas=(0.8, 0.99))),
    ("adamw", fastopt.AdamW, dict(lr=0.01)),
    ("adamw-ams-max", fastopt.AdamW, dict(lr=0.01, weight_decay=0.1, amsgrad=True,
                                          maximize=True)),
]


def make_problem(sizes, dtype, seed=0):
    """A dict of parameters with the given sizes (a 2-D one included) and a gradient function."""
    rng = np.random.default_rng(seed)
    params = {}
    for k, n in enumerate(sizes):
        shape = (n,) if n % 3 or n == 0 else (3, n // 3)
        params[f"p{k}"] = rng.standard_normal(shape).astype(dtype)
    grads = [{k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
             for _ in range(5)]
    return params, grads
