"""The Cython backend (fastopt.kernels._cython + the fastopt.kernels.cython wrappers), at kernel
level: every family x option x dtype against the float64 NumPy reference over many steps, on the
serial and the threaded path, plus read-only gradients, dtype errors and agreement with Numba.

The extension must be built: a missing extension FAILS here (CI has a compiler), so a silent
fallback to Numba/NumPy cannot pass.  Only ``FASTOPT_NO_CYTHON=1`` turns this module off.
"""
import importlib
import os
import platform

import numpy as np
import pytest

from fastopt import config
from fastopt.kernels import _scalars, reference
from _support import TOL

NO_CYTHON = os.environ.get("FASTOPT_NO_CYTHON") == "1"
pytestmark = pytest.mark.skipif(NO_CYTHON, reason="FASTOPT_NO_CYTHON=1")

STEPS = 20
SIZES = [0, 1, 7, 4097]
LARGE = config.PARALLEL_THRESHOLD + 5       # above the default threshold: the threaded path
DTYPES = [np.float32, np.float64]


def _wrapper():
    """The wrapper module; importing the compiled extension must work (no skip)."""
    try:
        importlib.import_module("fastopt.kernels._cython")
    except ImportError as exc:  # pragma: no cover - this is the failure the test exists for
        pytest.fail(f"fastopt.kernels._cython is not built ({exc}); build it with "
                    "`pip install -e . --no-build-isolation` or set FASTOPT_NO_CYTHON=1")
    return importlib.import_module("fastopt.kernels.cython")


@pytest.fixture(scope="module", params=["baseline", "avx2"])
def cy(request):
    """The wrapper bound to each extension build (the portable one and, where built and this
    CPU has AVX2, the AVX2 one); restored afterwards."""
    mod = _wrapper()
    if request.param not in mod.variants():
        pytest.skip(f"no {request.param} build usable here")
    before = mod.ISA
    mod._use(request.param)
    yield mod
    mod._use(before)


@pytest.fixture
def threshold(monkeypatch):
    """Set fastopt.config.PARALLEL_THRESHOLD (read by the wrappers at call time)."""
    def set_(value):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", value)
    return set_


# -- one table drives every kernel test: (id, family, options) -----------------------------------

CASES = [
    ("sgd", "sgd", dict(lr=0.05)),
    ("sgd-wd-max", "sgd", dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("sgd-mom", "sgd", dict(lr=0.05, momentum=0.9)),
    ("sgd-mom-damp-wd", "sgd", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("sgd-nesterov-max", "sgd", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("momentum", "momentum", dict(lr=0.1, beta=0.9)),
    ("momentum-bc-wd", "momentum", dict(lr=0.1, beta=0.8, bias_correction=True,
                                        weight_decay=0.01)),
    ("rmsprop", "rmsprop", dict(lr=0.01)),
    ("rmsprop-mom-wd-max", "rmsprop", dict(lr=0.01, momentum=0.9, weight_decay=0.01,
                                           maximize=True)),
    ("rmsprop-centered", "rmsprop", dict(lr=0.01, alpha=0.9, centered=True)),
    ("rmsprop-centered-mom", "rmsprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("adagrad", "adagrad", dict(lr=0.1)),
    ("adagrad-decay-init-wd-max", "adagrad", dict(lr=0.1, lr_decay=0.01, initial=0.1,
                                                  weight_decay=0.01, maximize=True)),
    ("adam", "adam", dict(lr=0.01)),
    ("adam-wd-ams", "adam", dict(lr=0.01, weight_decay=0.01, amsgrad=True)),
    ("adam-nobc-max", "adam", dict(lr=0.01, bias_correction=False, maximize=True,
                                   betas=(0.8, 0.99))),
    ("adamw", "adam", dict(lr=0.01, weight_decay=1e-2, decoupled=True)),
    ("adamw-ams-max", "adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True,
                                   decoupled=True)),
]
PARAMS = [pytest.param(fam, kw, id=name) for name, fam, kw in CASES]


def _state(family, kw, n, dtype):
    """State buffers in kernel argument order; unused ones are zero-length."""
    z = lambda used, fill=0.0: np.full(n if used else 0, fill, dtype=dtype)  # noqa: E731
    if family == "sgd":
        return [z(kw.get("momentum", 0) != 0)]
    if family == "momentum":
        return [z(True)]
    if family == "rmsprop":
        return [z(True), z(kw.get("centered", False)), z(kw.get("momentum", 0) > 0)]
    if family == "adagrad":
        return [z(True, kw.get("initial", 0.0))]
    return [z(True), z(True), z(kw.get("amsgrad", False))]


def _scalars_for(family, kw, t, dtype):
    """The contract tuple for step t (1-based), built as the optimizers build it."""
    lr, wd, mx = kw["lr"], kw.get("weight_decay", 0.0), kw.get("maximize", False)
    if family == "sgd":
        return _scalars.sgd(dtype, lr=lr, momentum=kw.get("momentum", 0.0),
                            dampening=kw.get("dampening", 0.0), weight_decay=wd,
                            nesterov=kw.get("nesterov", False), maximize=mx, first_step=t == 1)
    if family == "momentum":
        beta = kw["beta"]
        bc = 1.0 - beta ** t if kw.get("bias_correction") else 1.0
        return _scalars.momentum(dtype, lr=lr, beta=beta, weight_decay=wd, bias_correction=bc)
    if family == "rmsprop":
        return _scalars.rmsprop(dtype, lr=lr, alpha=kw.get("alpha", 0.99), eps=1e-8,
                                weight_decay=wd, momentum=kw.get("momentum", 0.0),
                                centered=kw.get("centered", False), maximize=mx)
    if family == "adagrad":
        clr = lr / (1.0 + (t - 1) * kw.get("lr_decay", 0.0))
        return _scalars.adagrad(dtype, clr=clr, eps=1e-10, weight_decay=wd, maximize=mx)
    b1, b2 = kw.get("betas", (0.9, 0.999))
    bc = kw.get("bias_correction", True)
    return _scalars.adam(dtype, lr=lr, beta1=b1, beta2=b2, eps=1e-8, weight_decay=wd,
                         decoupled_weight_decay=kw.get("decoupled", False),
                         amsgrad=kw.get("amsgrad", False), maximize=mx,
                         bias_correction1=1.0 - b1 ** t if bc else 1.0,
                         bias_correction2=1.0 - b2 ** t if bc else 1.0)


def _problem(n, dtype, seed=0):
    rng = np.random.default_rng(seed + n)
    param = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(5)]
    return param, grads


def _run(kernels, family, kw, param, grads, steps=STEPS, readonly=False):
    """Run ``steps`` updates in place; returns [param, *state]."""
    dtype = param.dtype
    state = _state(family, kw, param.size, dtype)
    fn = getattr(kernels, family)
    for t in range(1, steps + 1):
        g = grads[(t - 1) % len(grads)]
        if readonly:
            g = g.copy()
            g.setflags(write=False)
        fn(param, g, *state, _scalars_for(family, kw, t, dtype))
    return [param] + state


def _reference64(family, kw, param, grads, steps=STEPS):
    return _run(reference, family, kw, param.astype(np.float64),
                [g.astype(np.float64) for g in grads], steps)


def _assert_close(got, want, dtype, what=""):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, **TOL[dtype], err_msg=f"{what} array {k}")


# -- the extension itself ---------------------------------------------------------------------

def test_extension_is_built():
    mod = _wrapper()
    from fastopt.kernels import _cython
    assert mod.variants()["baseline"] is _cython
    assert mod.ISA in mod.variants()


@pytest.mark.skipif(os.environ.get("FASTOPT_NO_OPENMP") == "1", reason="FASTOPT_NO_OPENMP=1")
def test_built_with_openmp(cy):
    from fastopt.kernels import backend_status, get_backend
    assert cy.OPENMP, "the extension was built without OpenMP on a machine whose gcc has it"
    assert get_backend("cython").kernels is cy
    ok, detail = backend_status()["cython"]
    assert ok and detail.startswith("built with OpenMP")


# -- against the float64 reference ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, kw", PARAMS)
def test_matches_float64_reference(cy, family, kw, dtype):
    for n in SIZES + [LARGE]:
        param, grads = _problem(n, dtype)
        want = _reference64(family, kw, param, grads)
        got = _run(cy, family, kw, param, grads)
        _assert_close(got, want, dtype, f"n={n}")
        if n > 1:
            assert not np.allclose(got[0], _problem(n, dtype)[0])   # it really moved


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, kw", PARAMS)
def test_threaded_path_matches_reference(cy, family, kw, dtype, threshold):
    threshold(1)            # every size takes the prange/OpenMP path
    for n in SIZES + [1000]:
        param, grads = _problem(n, dtype, seed=1)
        want = _reference64(family, kw, param, grads)
        got = _run(cy, family, kw, param, grads)
        _assert_close(got, want, dtype, f"n={n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, kw", PARAMS)
def test_serial_and_threaded_are_bitwise_equal(cy, family, kw, dtype, threshold):
    param, grads = _problem(4097, dtype, seed=2)
    threshold(1)
    threaded = _run(cy, family, kw, param.copy(), grads, steps=5)
    threshold(10**12)
    serial = _run(cy, family, kw, param.copy(), grads, steps=5)
    for a, b in zip(threaded, serial):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="other targets may contract a*b+c into FMA")
@pytest.mark.parametrize("family, kw", PARAMS)
def test_float32_math_stays_float32(cy, family, kw):
    """Same operations in the same order, all in float32 (sqrtf, no promotion to double): on
    x86-64 (SSE, no FMA contraction) the result equals NumPy's float32 reference bit for bit."""
    param, grads = _problem(4097, np.float32, seed=3)
    want = _run(reference, family, kw, param.copy(), grads)
    got = _run(cy, family, kw, param.copy(), grads)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, kw", PARAMS)
def test_readonly_gradient(cy, family, kw, dtype):
    param, grads = _problem(33, dtype, seed=4)
    want = _run(cy, family, kw, param.copy(), grads, steps=3)
    got = _run(cy, family, kw, param.copy(), grads, steps=3, readonly=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# -- dtype errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("family, kw", PARAMS)
def test_mixed_dtype_raises_type_error_naming_the_argument(cy, family, kw):
    param, grads = _problem(8, np.float32)
    state = _state(family, kw, 8, np.float32)
    scalars = _scalars_for(family, kw, 1, np.float32)
    before = [param.copy()] + [s.copy() for s in state]
    fn = getattr(cy, family)
    with pytest.raises(TypeError, match=r"^grad: dtype float64 does not match"):
        fn(param, grads[0].astype(np.float64), *state, scalars)
    # A float64 state buffer next to float32 param/grad: named too.
    bad = [s.astype(np.float64) if k == 0 else s for k, s in enumerate(state)]
    with pytest.raises(TypeError, match=r"dtype float64 does not match param's dtype float32"):
        fn(param, grads[0], *bad, scalars)
    for a, b in zip([param] + state, before):
        np.testing.assert_array_equal(a, b)


def test_unsupported_dtype_raises_type_error(cy):
    p = np.zeros(3, np.float16)
    with pytest.raises(TypeError, match=r"^param: .*float32 and float64"):
        cy.sgd(p, p.copy(), np.zeros(0, np.float16), _scalars_for("sgd", dict(lr=0.1), 1,
                                                                    np.float16))
    with pytest.raises(TypeError, match=r"^param:"):
        cy.all_finite(np.zeros(3, np.int64))


# -- all_finite -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("parallel", [False, True])
def test_all_finite(cy, dtype, parallel, threshold):
    threshold(1 if parallel else 10**12)
    assert cy.all_finite(np.zeros(0, dtype)) is True
    for n in (1, 7, 4097):
        x = np.random.default_rng(n).standard_normal(n).astype(dtype)
        x.setflags(write=False)
        assert cy.all_finite(x) is True
        for bad in (np.nan, np.inf, -np.inf):
            for pos in {0, n // 2, n - 1}:
                y = x.copy()
                y[pos] = bad
                assert cy.all_finite(y) is False, (n, bad, pos)
    big = np.full(5, np.finfo(dtype).max, dtype=dtype)
    assert cy.all_finite(big) is True


# -- agreement with the Numba backend ----------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family, kw", PARAMS)
def test_agrees_with_numba(cy, family, kw, dtype):
    cpu = pytest.importorskip("fastopt.kernels.cpu")
    for n in (7, LARGE):
        param, grads = _problem(n, dtype, seed=5)
        got = _run(cy, family, kw, param.copy(), grads)
        want = _run(cpu, family, kw, param.copy(), grads)
        _assert_close(got, want, dtype, f"n={n}")
