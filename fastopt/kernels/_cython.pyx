# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, embedsignature=True
"""Cython fallback kernels: one fused, in-place pass per buffer, float32 or float64.

The same update rules as :mod:`fastopt.kernels.cpu` (Numba) and, operation for operation, as the
NumPy reference :mod:`fastopt.kernels.reference`.  Every function is a fused ``floating``
(``float``/``double``) kernel: float32 buffers are updated in float32 arithmetic (``sqrtf`` for
float), float64 ones in float64.  The gradient is ``const floating[::1]`` so read-only arrays are
accepted; the other buffers are written in place.  A state buffer the options do not use is a
zero-length array and is never indexed.

Flags (``nesterov``, ``first_step``, ``has_momentum``, ``centered``, ``amsgrad``) are tested
outside the element loops, so each loop body is branch-free apart from the loop-invariant weight
decay test (which gcc unswitches at -O3).  Loops are ``prange(..., schedule='static')`` with
``use_threads_if=n >= threshold``: buffers shorter than ``threshold`` (the caller passes
``fastopt.config.PARALLEL_THRESHOLD``, read at call time) run on the calling thread.  Built without
OpenMP (see ``_omp_shim.h``) every loop is serial and :data:`OPENMP` is False.

setup.py builds this file twice on x86-64: ``_cython`` for the baseline ISA and, from a copy,
``_cython_avx2`` with ``-mavx2`` (no FMA; ``-ffp-contract=off`` everywhere), which the wrapper
module uses where the CPU has AVX2.  Both round exactly like the NumPy reference in the same dtype.

Call these through :mod:`fastopt.kernels.cython`, which unpacks the ``scalars`` tuple, checks
dtypes and picks the specialization.  Short names: ``p`` param, ``g`` grad, ``b`` momentum buffer,
``v`` velocity / exp_avg_sq, ``s`` square_avg, ``a`` grad_avg, ``h`` sum, ``m`` exp_avg,
``vmax`` max_exp_avg_sq.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf

cdef extern from "_omp_shim.h":
    int FASTOPT_OPENMP
    int fastopt_omp_max_threads() noexcept nogil

#: True when this extension was compiled with OpenMP (multi-threaded prange loops).
OPENMP = bool(FASTOPT_OPENMP)


def max_threads():
    """Threads a parallel loop uses (OpenMP's ``omp_get_max_threads()``; 1 without OpenMP)."""
    return fastopt_omp_max_threads()


# -- scalar helpers -----------------------------------------------------------------------------

cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _effective_grad(floating g, floating p, floating grad_sign,
                                     floating weight_decay) noexcept nogil:
    # SPEC: maximize first (g = -g), then L2 weight decay (only when weight_decay != 0).
    g = grad_sign * g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


cdef inline bint _finite(floating x) noexcept nogil:
    # x - x is 0 for finite x and NaN for +-Inf or NaN (exact without -ffast-math); stays in
    # the array's precision, unlike libc isfinite(long double).
    return x - x == 0


cdef inline floating _nan_max(floating a, floating b) noexcept nogil:
    # np.maximum semantics: NaN in either operand propagates.
    return a if (a > b or a != a) else b


# -- kernels ------------------------------------------------------------------------------------

def sgd(floating[::1] p, const floating[::1] g, floating[::1] b,
        floating lr, floating momentum, floating one_minus_dampening, floating weight_decay,
        floating grad_sign, bint nesterov, bint first_step, bint has_momentum,
        Py_ssize_t threshold):
    """torch.optim.SGD: ``b = g`` (first step) or ``b = momentum*b + (1-dampening)*g``;
    ``d = g + momentum*b`` (nesterov) or ``b``; without momentum ``d = g``; ``p -= lr*d``."""
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating gi, bi
    if n == 0:
        return
    if not has_momentum:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
            p[i] = p[i] - lr * gi
    elif first_step:
        if nesterov:
            for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
                gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
                b[i] = gi
                p[i] = p[i] - lr * (gi + momentum * gi)
        else:
            for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
                gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
                b[i] = gi
                p[i] = p[i] - lr * gi
    elif nesterov:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
            bi = momentum * b[i] + one_minus_dampening * gi
            b[i] = bi
            p[i] = p[i] - lr * (gi + momentum * bi)
    else:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
            bi = momentum * b[i] + one_minus_dampening * gi
            b[i] = bi
            p[i] = p[i] - lr * bi


def momentum(floating[::1] p, const floating[::1] g, floating[::1] v,
             floating lr_over_bc, floating beta, floating one_minus_beta, floating weight_decay,
             Py_ssize_t threshold):
    """The course's momentum: ``v = beta*v + (1-beta)*g``; ``p -= lr/bc * v``."""
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating gi, vi
    if n == 0:
        return
    for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
        gi = g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        vi = beta * v[i] + one_minus_beta * gi
        v[i] = vi
        p[i] = p[i] - lr_over_bc * vi


def rmsprop(floating[::1] p, const floating[::1] g, floating[::1] s, floating[::1] a,
            floating[::1] b, floating lr, floating alpha, floating one_minus_alpha, floating eps,
            floating weight_decay, floating grad_sign, floating momentum, bint centered,
            bint has_momentum, Py_ssize_t threshold):
    """torch.optim.RMSprop: ``s = alpha*s + (1-alpha)*g*g``; ``den = sqrt(s - a*a) + eps``
    (centered, ``a = alpha*a + (1-alpha)*g``) or ``sqrt(s) + eps``; with momentum
    ``b = momentum*b + g/den; p -= lr*b``, else ``p -= lr*g/den``."""
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating gi, si, ai, bi, den
    if n == 0:
        return
    if centered and has_momentum:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
            si = alpha * s[i] + one_minus_alpha * gi * gi
            s[i] = si
            ai = alpha * a[i] + one_minus_alpha * gi
            a[i] = ai
            den = _sqrt(si - ai * ai) + eps
            bi = momentum * b[i] + gi / den
            b[i] = bi
            p[i] = p[i] - lr * bi
    elif centered:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
            si = alpha * s[i] + one_minus_alpha * gi * gi
            s[i] = si
            ai = alpha * a[i] + one_minus_alpha * gi
            a[i] = ai
            den = _sqrt(si - ai * ai) + eps
            p[i] = p[i] - lr * gi / den
    elif has_momentum:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
            si = alpha * s[i] + one_minus_alpha * gi * gi
            s[i] = si
            den = _sqrt(si) + eps
            bi = momentum * b[i] + gi / den
            b[i] = bi
            p[i] = p[i] - lr * bi
    else:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
            si = alpha * s[i] + one_minus_alpha * gi * gi
            s[i] = si
            den = _sqrt(si) + eps
            p[i] = p[i] - lr * gi / den


def adagrad(floating[::1] p, const floating[::1] g, floating[::1] h,
            floating clr, floating eps, floating weight_decay, floating grad_sign,
            Py_ssize_t threshold):
    """torch.optim.Adagrad: ``h += g*g``; ``p -= clr*g/(sqrt(h)+eps)``."""
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating gi, hi
    if n == 0:
        return
    for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
        gi = _effective_grad(g[i], p[i], grad_sign, weight_decay)
        hi = h[i] + gi * gi
        h[i] = hi
        p[i] = p[i] - clr * gi / (_sqrt(hi) + eps)


def adam(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
         floating[::1] vmax, floating beta1, floating one_minus_beta1, floating beta2,
         floating one_minus_beta2, floating eps, floating l2, floating decay,
         floating grad_sign, floating step_size, floating bc2_sqrt, bint amsgrad,
         Py_ssize_t threshold):
    """torch.optim.Adam / AdamW: ``p *= decay``; ``m = b1*m + (1-b1)*g``;
    ``v = b2*v + (1-b2)*g*g``; amsgrad ``vmax = max(vmax, v)`` used for v;
    ``p -= step_size*m/(sqrt(v)/sqrt(bc2) + eps)``."""
    cdef Py_ssize_t i, n = p.shape[0]
    cdef floating pi, gi, mi, vi, wi
    if n == 0:
        return
    if amsgrad:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            pi = p[i] * decay
            gi = _effective_grad(g[i], pi, grad_sign, l2)
            mi = beta1 * m[i] + one_minus_beta1 * gi
            vi = beta2 * v[i] + one_minus_beta2 * gi * gi
            m[i] = mi
            v[i] = vi
            wi = _nan_max(vmax[i], vi)
            vmax[i] = wi
            p[i] = pi - step_size * mi / (_sqrt(wi) / bc2_sqrt + eps)
    else:
        for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
            pi = p[i] * decay
            gi = _effective_grad(g[i], pi, grad_sign, l2)
            mi = beta1 * m[i] + one_minus_beta1 * gi
            vi = beta2 * v[i] + one_minus_beta2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = pi - step_size * mi / (_sqrt(vi) / bc2_sqrt + eps)


def all_finite(const floating[::1] x, Py_ssize_t threshold):
    """True when every element of ``x`` is finite (no NaN, no +-Inf)."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef Py_ssize_t bad = 0
    if n == 0:
        return True
    for i in prange(n, nogil=True, schedule='static', use_threads_if=n >= threshold):
        if not _finite(x[i]):
            bad += 1
    return bad == 0
