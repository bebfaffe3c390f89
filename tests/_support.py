"""Shared test helpers: tolerances per dtype (one place), backends, the optimizer table.

A plain module (not conftest.py) so that tests/cuda/conftest.py cannot shadow it.  The table of
optimizers under test is derived from the specs (:mod:`fastopt.specs`): every spec's ``cases``
(every option of the family), so a new optimizer is tested by adding its spec."""
import os

import numpy as np

import fastopt
from fastopt.kernels import formats as F
from fastopt.specs import SPECS

#: Tolerances of a backend run in the given dtype against the float64 NumPy reference.
TOL = {
    np.float32: dict(rtol=3e-5, atol=3e-6),
    np.float64: dict(rtol=1e-11, atol=1e-12),
}

#: Host backends every conformance test runs on.  The Cython extension must be built (CI has a
#: compiler); only FASTOPT_NO_CYTHON=1 takes it out, so a failed build cannot pass silently.
HOST_BACKENDS = ["numba", "numpy"] + ([] if os.environ.get("FASTOPT_NO_CYTHON") == "1"
                                      else ["cython"])


def _case_id(spec, key):
    base = spec.name.lower()
    return f"{base}-{key}" if key else base


#: (id, class, kwargs): every family and option of SPEC.md, from the specs.
OPTIMIZERS_UNDER_TEST = [(_case_id(s, k), getattr(fastopt, s.name), kw)
                         for s in SPECS for k, kw in s.cases.items()]

#: The storage-format tests (bfloat16/float16/int8 layouts x roundings x backends): every option
#: of the first six families, and the first case (the defaults) of the later ones.  The decode/
#: encode around a rule is generated the same way for every rule, so the later families' options
#: are covered by the float32/float64 conformance and non-finite tests; running all of them
#: through every layout would add minutes of compilation to each CI run for no new path.
#: Adafactor (its own per-tensor step and factored state) has its own format tests
#: (tests/test_adafactor.py).
FORMAT_CASES = [(_case_id(s, k), getattr(fastopt, s.name), kw)
                for i, s in enumerate(SPECS) if not s.own_step
                for j, (k, kw) in enumerate(s.cases.items()) if i < 6 or j == 0]


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


def kernel_group(spec, kwargs):
    """The param group a spec's optimizer would hold for ``kwargs`` (validated)."""
    group = spec.defaults() | dict(kwargs)
    spec.validate(group)
    return group


def kernel_state(spec, group, n, dtype):
    """State buffers in rule order, initialised as the optimizer does; unused ones are None."""
    needed = spec.needed(group)
    return [np.full(n, spec.initial(name, group), dtype=dtype) if needed[name] else None
            for name in spec.state_names]


def run_kernel(backend, spec, group, param, grads, steps, readonly=False, state=None):
    """``steps`` updates of ``param`` (in place) through ``backend``'s compiled rule, with the
    spec's scalars and flags, as the optimizer computes them.  Returns [param, *used state]."""
    state = kernel_state(spec, group, param.size, param.dtype) if state is None else state
    flags = spec.flags(group)
    for t in range(1, steps + 1):
        g = grads[(t - 1) % len(grads)]
        if readonly:
            g = g.copy()
            g.setflags(write=False)
        sums = backend.run(spec.rule, param.dtype, flags, [param, g, *state],
                           spec.scalars(group, t, float(group["lr"])))
        if spec.apply_rule:     # LAMB's second pass, with this tensor's trust ratio
            backend.run(spec.apply_rule, param.dtype, flags, [param, *state],
                        spec.apply_scalars(group, t, float(group["lr"]), sums))
        spec.advance(group, t, float(group["lr"]))
    return [param] + [s for s in state if s is not None]


def reference_step(backend, spec, group, flags, t, arrays, formats, scalars, **layout):
    """One step of ``spec``'s rule(s) over one parameter on ``backend`` in float64 (a float64
    reference of the same format on the NumPy backend): ``arrays`` = parameter, gradient,
    state (None unused), then the absmax of each 8-bit state; ``layout``: ``rounding``,
    ``base``, ``seed``, ``step`` of :meth:`Backend.run`.  A two-pass spec (LAMB) runs its
    second pass with the tensor's sums (with 8-bit state: its ``q8_rules``)."""
    q8 = bool(spec.q8_rules) and any(f in F.QUANTIZED for f in formats)
    first, second = spec.q8_rules if q8 else (spec.rule, spec.apply_rule)
    lr = float(group["lr"])
    sums = backend.run(first, np.float64, flags, arrays, scalars, formats=formats, **layout)
    if not second:
        return
    if q8:
        backend.run(second, np.float64, flags, arrays,
                    spec.q8_apply_scalars(scalars, group, t, lr, sums), formats=formats,
                    **layout)
    else:
        backend.run(second, np.float64, flags, [arrays[0], *arrays[2:]],
                    spec.apply_scalars(group, t, lr, sums), formats=(formats[0], *formats[2:]),
                    **layout)
