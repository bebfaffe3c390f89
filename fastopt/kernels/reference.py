"""NumPy reference backend: the formulas of SPEC.md written plainly, in vector form.

This module is the test oracle (run in float64) and the naive baseline the benchmarks beat: it
allocates temporaries freely and makes several passes over memory.  It is written from SPEC.md
and torch.optim's documented algorithms, *not* generated from :mod:`fastopt.kernels.rules`, so
that the two can catch each other's mistakes.

Each function takes the same arguments as the rule of the same name (see
:mod:`fastopt.kernels.rules`): the arrays (1-D, one dtype, ``None`` for optional state the flags
leave unused), then the scalars, then the flags by keyword.  The scalars are cast to the arrays'
dtype first (float32 arrays are updated in float32 arithmetic), and every array is updated in
place.  Operations follow torch.optim's single-tensor code op for op (``addcmul`` is
``self + (value*t1)*t2``, ``addcdiv`` is ``self + value*(t1/t2)``), so the rounding is torch's;
non-finite values follow it too: ``lerp`` as ATen computes it, ``np.maximum`` for
``torch.maximum``, the L2 term only when ``weight_decay != 0``.
"""
from __future__ import annotations

import numpy as np

from . import HostBackend
from . import formats as F

__all__ = ["NumpyBackend", "sgd", "momentum", "rmsprop", "adagrad", "adam", "adamax", "nadam",
           "radam", "adadelta", "asgd", "rprop", "lion", "lamb", "lamb_apply", "lamb_norms",
           "lamb_update",
           "adamw_schedulefree", "lerp_to", "adafactor_vector", "adafactor_vector_apply",
           "adafactor_sq", "adafactor_factored", "adafactor_factored_apply",
           "adafactor_separable", "adafactor_separable_apply", "norm_sq", "ema", "swap",
           "assign"]


def _effective_grad(param, grad, grad_sign, weight_decay, l2):
    # SPEC: maximize first (g = -g), then L2 weight decay (g = g + weight_decay * p).
    g = grad_sign * grad
    return g + weight_decay * param if l2 else g


def _lerp(start, end, weight, weight_minus_one, small):
    """torch.lerp as ATen's vectorized CPU kernel: ``start + w*(end - start)`` for |w| < 0.5,
    else ``end + (w - 1)*(end - start)``."""
    if small:
        return start + weight * (end - start)
    return end + weight_minus_one * (end - start)


def sgd(param, grad, momentum_buffer, neg_lr, grad_sign, weight_decay, buffer_decay,
        grad_scale, momentum, *, has_momentum, nesterov, l2):
    """torch.optim.SGD: ``b = g`` (first step: buffer_decay 0, grad_scale 1) or ``b =
    momentum*b + (1-dampening)*g``; ``d = g + momentum*b`` (nesterov) or ``b``; ``p -= lr*d``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    if has_momentum:
        momentum_buffer[...] = buffer_decay * momentum_buffer + grad_scale * g
        d = g + momentum * momentum_buffer if nesterov else momentum_buffer
    else:
        d = g
    param += neg_lr * d


def momentum(param, grad, velocity, neg_step, beta, one_minus_beta, weight_decay, grad_sign, *,
             l2):
    """The course's momentum: ``v = beta*v + (1-beta)*g``; ``p -= lr/bc * v``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    velocity[...] = beta * velocity + one_minus_beta * g
    param += neg_step * velocity


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, neg_lr, grad_sign, weight_decay,
            alpha, one_minus_alpha, neg_alpha, eps, momentum, *, centered, has_momentum, l2,
            lerp_small):
    """torch.optim.RMSprop, with ``centered`` and ``momentum``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    square_avg[...] = square_avg * alpha + one_minus_alpha * g * g        # mul_, addcmul_
    if centered:
        grad_avg[...] = _lerp(grad_avg, g, one_minus_alpha, neg_alpha, lerp_small)
        den = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        den = np.sqrt(square_avg) + eps
    if has_momentum:
        momentum_buffer[...] = momentum * momentum_buffer + g / den
        param += neg_lr * momentum_buffer
    else:
        param += neg_lr * (g / den)


def adagrad(param, grad, sum, neg_clr, grad_sign, weight_decay, eps, *, l2):  # noqa: A002
    """torch.optim.Adagrad: ``h += g*g``; ``p -= clr*g/(sqrt(h)+eps)``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    sum += g * g
    param += neg_clr * (g / (np.sqrt(sum) + eps))


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, decay, grad_sign, weight_decay,
         one_minus_beta1, neg_beta1, beta2, one_minus_beta2, neg_step_size,
         inv_bias_correction2_sqrt, eps, *, amsgrad, l2, lerp_small):
    """torch.optim.Adam / AdamW, with ``amsgrad``, ``maximize`` and optional bias correction
    (``sqrt(v)/sqrt(bc2)`` as ``sqrt(v) * (1/sqrt(bc2))``, as the rule)."""
    param *= decay                                   # AdamW: p *= 1 - lr*wd
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g       # mul_, addcmul_
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)   # NaN propagates
        v = max_exp_avg_sq
    else:
        v = exp_avg_sq
    param += neg_step_size * (exp_avg / (np.sqrt(v) * inv_bias_correction2_sqrt + eps))


def adamax(param, grad, exp_avg, exp_inf, grad_sign, weight_decay, one_minus_beta1, neg_beta1,
           beta2, eps, neg_clr, *, l2, lerp_small):
    """torch.optim.Adamax: ``u = maximum(beta2*u, |g| + eps)``; ``p += -clr * m/u``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    np.maximum(exp_inf * beta2, np.abs(g) + eps, out=exp_inf)          # NaN propagates
    param += neg_clr * (exp_avg / exp_inf)                              # addcdiv_


def nadam(param, grad, exp_avg, exp_avg_sq, decay, grad_sign, weight_decay, one_minus_beta1,
          neg_beta1, beta2, one_minus_beta2, inv_bias_correction2, eps, grad_coef, avg_coef, *,
          l2, lerp_small):
    """torch.optim.NAdam (``momentum_decay``; decoupled weight decay as ``decay``): two
    ``addcdiv_`` with the same denominator ``sqrt(v/bc2) + eps``."""
    param *= decay
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    denom = np.sqrt(exp_avg_sq * inv_bias_correction2) + eps
    param += grad_coef * (g / denom)
    param += avg_coef * (exp_avg / denom)


def radam(param, grad, exp_avg, exp_avg_sq, decay, grad_sign, weight_decay, one_minus_beta1,
          neg_beta1, beta2, one_minus_beta2, bias_correction1, lr, sqrt_bias_correction2, eps,
          rect, rectified, zero, *, l2, lerp_small):
    """torch.optim.RAdam: rectified adaptive step while ``rho_t > 5`` (``rectified``), else the
    bias-corrected momentum step alone."""
    param *= decay
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    corrected = exp_avg / bias_correction1 * lr
    if rectified > zero:
        param -= corrected * (sqrt_bias_correction2 / (np.sqrt(exp_avg_sq) + eps)) * rect
    else:
        param -= corrected


def adadelta(param, grad, square_avg, acc_delta, neg_lr, grad_sign, weight_decay, rho,
             one_minus_rho, eps, *, l2):
    """torch.optim.Adadelta."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    square_avg[...] = square_avg * rho + one_minus_rho * g * g
    delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
    acc_delta[...] = acc_delta * rho + one_minus_rho * delta * delta
    param += neg_lr * delta


def asgd(param, grad, ax, grad_sign, weight_decay, decay, neg_eta, mu, averaging, zero, *, l2):
    """torch.optim.ASGD: decay, SGD step with ``eta_t``, then the average (a copy until
    averaging begins)."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    param *= decay
    param += neg_eta * g
    if averaging > zero:
        ax += (param - ax) * mu
    else:
        ax[...] = param


def _torch_sign(x):
    """``torch.sign``: ``(0 < x) - (x < 0)``, so 0 for NaN (NumPy's sign gives NaN)."""
    return (x > 0).astype(x.dtype) - (x < 0).astype(x.dtype)


def rprop(param, grad, prev, step_size, grad_sign, etaminus, etaplus, step_size_min,
          step_size_max, one, zero):
    """torch.optim.Rprop, as its single-tensor code: sign, masks, clamp, masked gradient."""
    g = grad_sign * grad
    s = _torch_sign(g * prev)
    factor = s.copy()
    factor[s > 0] = etaplus
    factor[s < 0] = etaminus
    factor[s == 0] = one
    step_size[...] = np.minimum(np.maximum(step_size * factor, step_size_min), step_size_max)
    g = g.copy()
    g[s < 0] = zero
    param -= _torch_sign(g) * step_size
    prev[...] = g


def lion(param, grad, exp_avg, neg_lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
         one_minus_beta2, one, zero, *, decay):
    """Lion, Algorithm 2 of Chen et al. (2023): ``p -= lr*(sign(b1*m + (1-b1)*g) + wd*p)``;
    ``m = b2*m + (1-b2)*g``."""
    g = grad_sign * grad
    u = _torch_sign(exp_avg * beta1 + one_minus_beta1 * g)
    if decay:
        u = u + weight_decay * param
    param += neg_lr * u
    exp_avg[...] = exp_avg * beta2 + one_minus_beta2 * g


def _ordered_sum(terms):
    """``sum(terms)`` in float64 in the order every compiled reduction adds (the rules module's
    ``sums``): the terms (each rounded to its compute dtype) in blocks of ``SUM_BLOCK``; within
    a block term ``i`` goes to float64 lane ``i % SUM_LANES`` (each lane added in order), the
    lanes in order; then the blocks in order -- so a reduction gives the same bits on every
    host backend, this one included."""
    from ._codegen import SUM_BLOCK, SUM_LANES
    t = np.asarray(terms).reshape(-1).astype(np.float64)
    nb = -(-t.size // SUM_BLOCK)
    if not nb:
        return 0.0
    pad = np.zeros(nb * SUM_BLOCK)
    pad[:t.size] = t
    blocks = pad.reshape(nb, SUM_BLOCK // SUM_LANES, SUM_LANES)
    lanes = np.zeros((nb, SUM_LANES))
    for row in range(blocks.shape[1]):           # each lane in order (not pairwise)
        lanes += blocks[:, row]
    acc = np.zeros(nb)
    for lane in range(SUM_LANES):                # the lanes in order
        acc += lanes[:, lane]
    total = 0.0
    for x in acc.tolist():                       # the blocks in order
        total += x
    return total


def _lamb_update(param, exp_avg, exp_avg_sq, inv_bias_correction1, inv_bias_correction2_sqrt,
                 eps, weight_decay, decay):
    """Adam's bias-corrected direction ``m_hat/(sqrt(v_hat) + eps)`` (+ ``weight_decay*p``)."""
    u = (exp_avg * inv_bias_correction1) / (np.sqrt(exp_avg_sq) * inv_bias_correction2_sqrt
                                            + eps)
    return u + weight_decay * param if decay else u


def lamb(param, grad, exp_avg, exp_avg_sq, grad_sign, beta1, one_minus_beta1, beta2,
         one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps, weight_decay, *,
         decay):
    """LAMB's first pass: the moments, then ``(sum(p*p), sum(u*u))`` in float64."""
    g = grad_sign * grad
    exp_avg[...] = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq[...] = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    u = _lamb_update(param, exp_avg, exp_avg_sq, inv_bias_correction1,
                     inv_bias_correction2_sqrt, eps, weight_decay, decay)
    return _ordered_sum(param * param), _ordered_sum(u * u)


def lamb_apply(param, exp_avg, exp_avg_sq, neg_step, inv_bias_correction1,
               inv_bias_correction2_sqrt, eps, weight_decay, *, decay):
    """LAMB's second pass: ``p += neg_step*u`` (``neg_step = -lr*trust_ratio``)."""
    param += neg_step * _lamb_update(param, exp_avg, exp_avg_sq, inv_bias_correction1,
                                     inv_bias_correction2_sqrt, eps, weight_decay, decay)


def lamb_norms(param, grad, exp_avg, exp_avg_sq, grad_sign, beta1, one_minus_beta1, beta2,
               one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps,
               weight_decay, *, decay):
    """LAMB's first pass on 8-bit state: the sums of :func:`lamb` without storing the moments."""
    return lamb(param, grad, exp_avg.copy(), exp_avg_sq.copy(), grad_sign, beta1,
                one_minus_beta1, beta2, one_minus_beta2, inv_bias_correction1,
                inv_bias_correction2_sqrt, eps, weight_decay, decay=decay)


def lamb_update(param, grad, exp_avg, exp_avg_sq, grad_sign, beta1, one_minus_beta1, beta2,
                one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps,
                weight_decay, neg_step, *, decay):
    """LAMB's second pass on 8-bit state: the moments, then ``p += neg_step*u``."""
    lamb(param, grad, exp_avg, exp_avg_sq, grad_sign, beta1, one_minus_beta1, beta2,
         one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps, weight_decay,
         decay=decay)
    lamb_apply(param, exp_avg, exp_avg_sq, neg_step, inv_bias_correction1,
               inv_bias_correction2_sqrt, eps, weight_decay, decay=decay)


def _lerp_select(start, end, weight, weight_minus_one, small, zero):
    return _lerp(start, end, weight, weight_minus_one, small > zero)


def adamw_schedulefree(param, grad, z, exp_avg_sq, grad_sign, beta2, one_minus_beta2,
                       inv_bias_correction2, eps, weight_decay, ckp1, ckp1_minus_one, small,
                       zero, y_coef, neg_lr, *, decay):
    """``schedulefree.AdamWScheduleFree``'s single-tensor step (without its in-place
    ``grad.div_``: the gradient is not written)."""
    g = grad_sign * grad
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g
    u = g / (np.sqrt(exp_avg_sq * inv_bias_correction2) + eps)
    if decay:
        u = u + weight_decay * param
    param[...] = _lerp_select(param, z, ckp1, ckp1_minus_one, small, zero)
    param += y_coef * u
    z += neg_lr * u


def lerp_to(param, z, weight, weight_minus_one, small, zero):
    """``param.lerp_(z, weight)``."""
    param[...] = _lerp_select(param, z, weight, weight_minus_one, small, zero)


def _clamp_min(x, lo):
    """``torch.clamp(x, min=lo)``: NaN stays NaN."""
    return np.where(x < lo, lo, x)


def _adafactor_u(grad, var, grad_sign, eps1_sq, one):
    """torch.optim.Adafactor's update: ``var.clamp_(min=eps1**2).rsqrt_().mul_(grad)``."""
    return one / np.sqrt(_clamp_min(var, eps1_sq)) * (grad_sign * grad)


def _sq64(x):
    return (x * x).astype(np.float64)


def _adafactor_variance(grad, variance, grad_sign, weight, weight_minus_one, small, zero):
    """``variance.lerp(g*g, weight)``: this step's second moment of a vector."""
    g = grad_sign * grad
    return _lerp(variance, g * g, weight, weight_minus_one, small > zero)


def adafactor_vector(param, grad, variance, grad_sign, weight, weight_minus_one, small, zero,
                     eps1_sq, one):
    """Adafactor on a vector, pass 1: the sums of p**2 and of u**2 (float64), ``u`` from
    ``variance.lerp(g*g, weight)`` (not stored)."""
    v = _adafactor_variance(grad, variance, grad_sign, weight, weight_minus_one, small, zero)
    u = _adafactor_u(grad, v, grad_sign, eps1_sq, one)
    return _ordered_sum(param * param), _ordered_sum(u * u)


def adafactor_vector_apply(param, grad, variance, grad_sign, weight, weight_minus_one, small,
                           zero, eps1_sq, one, decay, neg_step):
    """Adafactor on a vector, pass 2: ``variance.lerp_(g*g, weight)``, then ``param =
    param*decay + neg_step*u``."""
    variance[...] = _adafactor_variance(grad, variance, grad_sign, weight, weight_minus_one,
                                        small, zero)
    param[...] = param * decay + neg_step * _adafactor_u(grad, variance, grad_sign, eps1_sq, one)


def _mats(n, m, *arrays):
    return [a.reshape(-1, n, m) for a in arrays]


def adafactor_sq(param, grad, grad_sign, *, n, m):
    """Adafactor on matrices, pass 1: per row the sums of p**2 and g**2, per column of each
    matrix the sums of g**2 (float64), as ``(rows (R, 2), cols (B, 1, m))``."""
    p, g = _mats(n, m, param, grad_sign * grad)
    p2, g2 = _sq64(p), _sq64(g)
    rows = np.stack([p2.sum(axis=-1).ravel(), g2.sum(axis=-1).ravel()], axis=1)
    return rows, g2.sum(axis=1)[:, None, :]


def _factored_u(grad, row_var, row_mean, col_var, grad_sign, eps1_sq, one, n, m):
    (g,) = _mats(n, m, grad)
    r = row_var.reshape(-1, n, 1)
    rm = row_mean.reshape(-1, n, 1)
    c = col_var.reshape(-1, 1, m)
    return _adafactor_u(g, r * c / rm, grad_sign, eps1_sq, one)


def adafactor_factored(grad, row_var, row_mean, col_var, grad_sign, eps1_sq, one, *, n, m):
    """Adafactor on matrices, pass 2: per row the sum of u**2, ``u = rsqrt(clamp(r*c/rmean,
    min=eps1**2))*g``."""
    u = _factored_u(grad, row_var, row_mean, col_var, grad_sign, eps1_sq, one, n, m)
    return _sq64(u).sum(axis=-1).reshape(-1, 1), np.zeros((u.shape[0], 0, m))


def adafactor_factored_apply(param, grad, row_var, row_mean, col_var, grad_sign, eps1_sq, one,
                             decay, neg_step, *, n, m):
    """Adafactor on matrices, pass 3: ``param = param*decay + neg_step*u``."""
    u = _factored_u(grad, row_var, row_mean, col_var, grad_sign, eps1_sq, one, n, m)
    param[...] = param * decay + neg_step * u.reshape(-1)
    return np.zeros((param.size // m, 0)), np.zeros((u.shape[0], 0, m))


def _separable_u(grad, row_scale, col_scale, n, m):
    (g,) = _mats(n, m, grad)
    return g * row_scale.reshape(-1, n, 1) * col_scale.reshape(-1, 1, m)


def adafactor_separable(grad, row_scale, col_scale, *, n, m):
    """Adafactor on matrices, pass 2 without the clamp: per row the sum of ``u**2``, ``u =
    grad*row_scale*col_scale``."""
    u = _separable_u(grad, row_scale, col_scale, n, m)
    return _sq64(u).sum(axis=-1).reshape(-1, 1), np.zeros((u.shape[0], 0, m))


def adafactor_separable_apply(param, grad, row_scale, col_scale, decay, *, n, m):
    """Adafactor on matrices, pass 3 without the clamp: ``param = param*decay + u``."""
    u = _separable_u(grad, row_scale, col_scale, n, m)
    param[...] = param * decay + u.reshape(-1)
    return np.zeros((param.size // m, 0)), np.zeros((u.shape[0], 0, m))


def norm_sq(x):
    """``sum(x*x)``, the squares in the array's dtype, added in float64."""
    return (_ordered_sum(x * x),)


def ema(average, param, decay, one_minus_decay):
    """``average = decay*average + (1-decay)*param``."""
    average[...] = decay * average + one_minus_decay * param


def swap(a, b):
    """Exchange the values of ``a`` and ``b``."""
    tmp = a.copy()
    a[...] = b
    b[...] = tmp


def assign(dst, src):
    """``dst = src`` (the backend's layout machinery converts to and from storage formats)."""
    dst[...] = src


def _encode_written(kernel, row, vals, base, step, seed, absmax_of):
    """Store the rule's new values ``vals`` into the written arrays of ``row`` in their
    formats (8-bit: requantized; 16-bit: rounded as the kernel rounds, stochastic rounding's
    bits from ``(seed, step, base + element, array)``)."""
    written = kernel.sig.written
    for k, (name, a, f, v) in enumerate(zip(kernel.sig.arrays, row, kernel.formats, vals)):
        if a is None or name not in written:
            continue
        if name in absmax_of:
            F.quantize(f, v, a, row[absmax_of[name]])
            continue
        bits = None
        if kernel.rounding == "stochastic":
            n = a.shape[0]
            bits = F.random_bits(np.arange(base, base + n, dtype=np.uint64), step, seed, k)
        F.encode(f, v, a, kernel.rounding, bits)


class NumpyBackend(HostBackend):
    name = "numpy"

    def _compile(self, kernel):
        return globals()[kernel.sig.name]

    def bind(self, kernel, rows, bases=None, seed=0):
        fn, dtype = kernel.impl, kernel.dtype
        flags = dict(zip(kernel.sig.flags, kernel.flags))
        checked = self._check_rows(kernel, rows)
        bases = list(bases) if bases is not None else [0] * len(checked)
        calls = [(row, base) for (n, row), base in zip(checked, bases) if n]
        arrays = kernel.sig.arrays
        absmax_of = {a: len(arrays) + j for j, a in enumerate(kernel.quantized)}

        def run(row, base, cast, step):
            """One row: the rule itself on native arrays, else decode -> the rule in the
            compute dtype -> encode, written plainly (8-bit state: dequantize the whole buffer,
            requantize it after the update); returns what the rule returns (a reduction's
            sums)."""
            if kernel.native:
                return fn(*row, *cast, **flags)
            vals = [None if a is None else
                    F.dequantize(f, a, row[absmax_of[name]], dtype) if name in absmax_of
                    else F.decode(f, a, dtype)
                    for name, a, f in zip(arrays, row, kernel.formats)]
            vals = [v if v is None or v.dtype != dtype or v is not a else v.copy()
                    for v, a in zip(vals, row)]
            out = fn(*vals, *cast, **flags)
            _encode_written(kernel, row, vals, base, step, seed, absmax_of)
            return out

        def call(scalars, step=0):
            cast = [dtype.type(s) for s in scalars]
            with np.errstate(all="ignore"):   # NaN/Inf propagate silently, as in the kernels
                for row, base in calls:
                    run(row, base, cast, step)
        call.rows = [row[0].shape[0] for row, _ in calls]
        if kernel.sig.sums:      # a reduction: the totals of every row
            zero = (0.0,) * len(kernel.sig.sums)

            def reduce(scalars, step=0):
                cast = [dtype.type(s) for s in scalars]
                with np.errstate(all="ignore"):
                    return [tuple(run(row, base, cast, step)) if n else zero
                            for (n, row), base in zip(checked, bases)]
            reduce.rows = call.rows
            return reduce
        return call

    def _compile_grid(self, kernel):
        return globals()[kernel.sig.name]

    def _grid(self, kernel, arrays, n, m, R, scalars, rnd):
        cast = [kernel.dtype.type(x) for x in scalars]
        dtype = kernel.dtype
        with np.errstate(all="ignore"):
            if kernel.native:
                return kernel.impl(*arrays, *cast, n=n, m=m)
            vals = [F.decode(f, a, dtype) for a, f in zip(arrays, kernel.formats)]
            vals = [v.copy() if v is a else v for v, a in zip(vals, arrays)]
            out = kernel.impl(*vals, *cast, n=n, m=m)
            base, seed, step = rnd
            _encode_written(kernel, arrays, vals, base, step, seed, {})
            return out

    def all_finite(self, array):
        return F.all_finite(array)

    def detail(self):
        return f"the NumPy reference (numpy {np.__version__}): the test oracle and naive baseline"
