"""The Cython backend (the extension generated from the rules, and fastopt.kernels.cython), at
kernel level: every family x option x dtype against the float64 NumPy reference over many
steps, on the serial and the threaded path, plus read-only gradients, dtype errors, agreement
with Numba, and builds that cannot go stale.

The extension must be built: a missing extension FAILS here (CI has a compiler), so a silent
fallback to Numba/NumPy cannot pass.  Only ``FASTOPT_NO_CYTHON=1`` turns this module off.
"""
import importlib
import os
import platform

import numpy as np
import pytest

from fastopt import config
from fastopt.kernels import _codegen, get_backend
from fastopt.specs import SPECS
from _support import TOL, kernel_group, run_kernel

NO_CYTHON = os.environ.get("FASTOPT_NO_CYTHON") == "1"
pytestmark = pytest.mark.skipif(NO_CYTHON, reason="FASTOPT_NO_CYTHON=1")

STEPS = 20
SIZES = [0, 1, 7, 4097]
LARGE = config.PARALLEL_THRESHOLD + 5       # above the default threshold: the threaded path
DTYPES = [np.float32, np.float64]

#: every spec's option cases (the same table that drives the optimizer tests)
PARAMS = [pytest.param(s, kw, id=f"{s.name.lower()}-{k}" if k else s.name.lower())
          for s in SPECS if not s.own_step for k, kw in s.cases.items()]


def _wrapper():
    """The wrapper module; importing the compiled extension must work (no skip)."""
    try:
        importlib.import_module("fastopt.kernels._cython")
    except ImportError as exc:  # pragma: no cover - this is the failure the test exists for
        pytest.fail(f"fastopt.kernels._cython is not built ({exc}); build it with "
                    "`make setup` or `pip install -e . --no-build-isolation`, or set "
                    "FASTOPT_NO_CYTHON=1")
    return importlib.import_module("fastopt.kernels.cython")


@pytest.fixture(scope="module", params=["baseline", "avx2", "avx512"])
def cy(request):
    """The backend bound to each extension build (the portable one and, where built and this
    CPU has them, the AVX2 and AVX-512 ones); restored afterwards."""
    mod = _wrapper()
    if request.param not in mod.variants():
        pytest.skip(f"no {request.param} build usable here")
    before = mod.ISA
    mod._use(request.param)
    yield get_backend("cython")
    mod._use(before)


@pytest.fixture
def threshold(monkeypatch):
    """Set fastopt.config.PARALLEL_THRESHOLD (read by the bound calls at call time)."""
    def set_(value):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", value)
    return set_


def _problem(n, dtype, seed=0):
    rng = np.random.default_rng(seed + n)
    param = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(5)]
    return param, grads


def _run(backend, spec, kw, param, grads, steps=STEPS, readonly=False):
    return run_kernel(backend, spec, kernel_group(spec, kw), param, grads, steps, readonly)


def _reference64(spec, kw, param, grads, steps=STEPS):
    return _run(get_backend("numpy"), spec, kw, param.astype(np.float64),
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


def test_every_build_matches_its_sources():
    """Each compiled build records the hash of the rules and generator it was generated from;
    this fails when an extension is older than its source (an edited rule not rebuilt)."""
    mod = _wrapper()
    for name, ext in mod.variants().items():
        assert ext.SOURCE_HASH == _codegen.source_hash(), (
            f"the {name} build is stale: rebuild with `make setup`")
    if (platform.machine().lower() in ("x86_64", "amd64") and mod._cpu_has("AVX2")
            and os.environ.get("FASTOPT_NO_AVX2") != "1"):
        assert "avx2" in mod.variants(), "the AVX2 build is missing on an AVX2 machine"
    if (platform.machine().lower() in ("x86_64", "amd64")
            and all(mod._cpu_has(f) for f in ("AVX512F", "AVX512DQ", "AVX512BW", "AVX512VL"))
            and os.environ.get("FASTOPT_NO_AVX512") != "1"):
        assert "avx512" in mod.variants(), "the AVX-512 build is missing on an AVX-512 machine"
        assert mod.ISA == "avx512" or os.environ.get("FASTOPT_CYTHON_ISA")


def test_a_stale_build_is_refused(monkeypatch):
    """A build whose hash is not the sources' makes the backend unavailable, with the rebuild
    command in the message (and backend=None then moves on to Numba)."""
    mod = _wrapper()
    monkeypatch.setattr(_codegen, "source_hash", lambda: "0" * 16)
    with pytest.raises(RuntimeError, match="compiled from other sources.*make setup"):
        mod._import_builds()


def test_every_variant_is_in_the_extension():
    mod = _wrapper()
    rules = _codegen.signatures(_codegen.load_rules())
    for ext in mod.variants().values():
        for sig in rules.values():
            for tag in _codegen.DTYPES:
                for flags in _codegen.flag_variants(sig):
                    assert hasattr(ext, _codegen.variant_name(sig, tag, flags))


@pytest.mark.skipif(os.environ.get("FASTOPT_NO_OPENMP") == "1", reason="FASTOPT_NO_OPENMP=1")
def test_built_with_openmp(cy):
    from fastopt.kernels import backend_status
    mod = _wrapper()
    assert mod.OPENMP, "the extension was built without OpenMP on a machine whose gcc has it"
    ok, detail = backend_status()["cython"]
    assert ok and detail.startswith("built with OpenMP")


# -- against the float64 reference ------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, kw", PARAMS)
def test_matches_float64_reference(cy, spec, kw, dtype):
    for n in SIZES + [LARGE]:
        param, grads = _problem(n, dtype)
        want = _reference64(spec, kw, param, grads)
        got = _run(cy, spec, kw, param, grads)
        _assert_close(got, want, dtype, f"n={n}")
        if n > 1:
            assert not np.allclose(got[0], _problem(n, dtype)[0])   # it really moved


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, kw", PARAMS)
def test_threaded_path_matches_reference(cy, spec, kw, dtype, threshold):
    threshold(1)            # every size takes the prange/OpenMP path
    for n in SIZES + [1000]:
        param, grads = _problem(n, dtype, seed=1)
        want = _reference64(spec, kw, param, grads)
        got = _run(cy, spec, kw, param, grads)
        _assert_close(got, want, dtype, f"n={n}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, kw", PARAMS)
def test_serial_and_threaded_are_bitwise_equal(cy, spec, kw, dtype, threshold):
    param, grads = _problem(4097, dtype, seed=2)
    threshold(1)
    threaded = _run(cy, spec, kw, param.copy(), grads, steps=5)
    threshold(10**12)
    serial = _run(cy, spec, kw, param.copy(), grads, steps=5)
    for a, b in zip(threaded, serial):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="other targets may contract a*b+c into FMA")
@pytest.mark.parametrize("spec, kw", PARAMS)
def test_float32_math_stays_float32(cy, spec, kw):
    """Same operations in the same order (torch's), all in float32 (sqrtf, no promotion to
    double): on x86-64 (SSE/AVX2, no FMA contraction) the result equals NumPy's float32
    reference bit for bit (LAMB too: its trust ratio's float64 sums are added in the same
    order there, 64 lanes per block of 4096)."""
    param, grads = _problem(4097, np.float32, seed=3)
    want = _run(get_backend("numpy"), spec, kw, param.copy(), grads)
    got = _run(cy, spec, kw, param.copy(), grads)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec, kw", PARAMS)
def test_readonly_gradient(cy, spec, kw, dtype):
    param, grads = _problem(33, dtype, seed=4)
    want = _run(cy, spec, kw, param.copy(), grads, steps=3)
    got = _run(cy, spec, kw, param.copy(), grads, steps=3, readonly=True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# -- dtype errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("spec, kw", PARAMS)
def test_mixed_dtype_raises_type_error_naming_the_argument(cy, spec, kw):
    group = kernel_group(spec, kw)
    param, grads = _problem(8, np.float32)
    from _support import kernel_state
    state = kernel_state(spec, group, 8, np.float32)
    scalars = spec.scalars(group, 1, group["lr"])
    flags = spec.flags(group)
    before = [param.copy()] + [s.copy() for s in state if s is not None]
    with pytest.raises(TypeError, match=r"^grad: dtype float64 does not match"):
        cy.run(spec.rule, np.float32, flags, [param, grads[0].astype(np.float64), *state],
               scalars)
    # A float64 state buffer next to float32 param/grad: named too.
    used = [i for i, s in enumerate(state) if s is not None]
    for k in used[:1]:
        bad = [s.astype(np.float64) if i == k else s for i, s in enumerate(state)]
        with pytest.raises(TypeError, match=rf"^{spec.state_names[k]}: dtype float64 does not "
                                            rf"match the kernel's float32"):
            cy.run(spec.rule, np.float32, flags, [param, grads[0], *bad], scalars)
    for a, b in zip([param] + [s for s in state if s is not None], before):
        np.testing.assert_array_equal(a, b)


def test_unsupported_dtype_raises_type_error(cy):
    p = np.zeros(3, np.float16)
    with pytest.raises(TypeError, match=r"^compute dtype float16: kernels compute in float32 "
                                        r"or float64"):
        cy.run("sgd", np.float16, (False, False, False), [p, p.copy(), None],
               (-0.1, 1.0, 0.0, 0.0, 1.0, 0.0))
    with pytest.raises(TypeError, match=r"int64"):
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
@pytest.mark.parametrize("spec, kw", PARAMS)
def test_agrees_with_numba(cy, spec, kw, dtype):
    numba_be = get_backend("numba")
    for n in (7, LARGE):
        param, grads = _problem(n, dtype, seed=5)
        got = _run(cy, spec, kw, param.copy(), grads)
        want = _run(numba_be, spec, kw, param.copy(), grads)
        _assert_close(got, want, dtype, f"n={n}")
