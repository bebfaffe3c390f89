"""The update rules: the per-element arithmetic of every kernel family, written once.

Every backend's loops are generated from this file by :mod:`fastopt.kernels._codegen`:

* Numba CPU: the rules and helpers are compiled with ``njit(inline="always")`` and called from
  one generated ``prange`` loop (and its serial twin) per family, dtype and flag combination;
* numba.cuda: the same functions as ``cuda.jit(device=True, forceinline=True)`` device
  functions, called from one generated grid-stride kernel per family, dtype and flag combination;
* Cython: the same source, given C types, becomes ``cdef inline ... noexcept nogil`` functions
  called from one generated serial/``prange`` loop per family, dtype and flag combination
  (setup.py writes the ``.pyx``; nothing generated is checked in).

The NumPy reference (:mod:`fastopt.kernels.reference`) is *not* generated from here: it is the
oracle, written independently from SPEC.md in vector form.

How a rule is written (checked by ``_codegen.signature`` when the loops are generated):

* Positional-only parameters (before ``/``) are the **elements of the arrays** the kernel walks,
  in kernel-argument order: for an optimizer the parameter, its gradient, then its state buffers,
  named as the state is named in checkpoints (``exp_avg``, ``momentum_buffer``, ...).
* Parameters between ``/`` and ``*`` are the **per-step scalars** (floats the optimizer computes
  once per step and group; the loop casts them to the arrays' dtype before it starts, so float32
  buffers are updated in float32 arithmetic).
* Keyword-only parameters (after ``*``) are **flags**: compile-time constants.  Each combination
  is its own compiled loop, so a flag never costs a branch per element.
* The single ``return`` at the end gives the new values of the arrays the rule writes (all but
  those named in ``@rule(readonly=...)``), in order, as a tuple.
* ``@rule(optional={array: flag})``: the array exists only when that flag is set; otherwise the
  loop never reads or writes it (the rule receives a placeholder value and must not use it).
* ``@rule(sums=(name, ...))``: a *reduction*: the return tuple ends with one value per name,
  and the loop adds them up over each row (in float64) and returns the totals, one tuple per
  row (LAMB's per-tensor norms), in every storage layout.
* ``@rule(grid=True, rows=(...), cols=(...), sums=(...), col_sums=(...))``: a *grid* rule
  (Adafactor's factored second moment) walks a parameter seen as ``B`` matrices of ``n x m``
  (its last two dimensions; ``R = B*n`` rows of ``m`` elements).  The arrays named in ``rows``
  hold one value per row (``R``), those in ``cols`` one per column of each matrix (``B*m``,
  column ``j`` of matrix ``b`` at ``b*m + j``); both are only read.  Each ``sums`` value is
  added up per row (float64: ``R`` totals each), and those also named in ``col_sums`` per
  column of each matrix as well (``B*m`` totals); the element arrays may be stored in any
  float format (decoded, and the written ones encoded, as elsewhere).  The loops split the rows
  into blocks of
  ``GRID_ROWS`` rows within a matrix; a block's column sums are added in row order, then the
  blocks in order: the same bits on every host backend and thread count.
* No numeric literals (``1.0`` would promote float32 arithmetic to float64 in Numba): constants
  arrive as scalars.  Only arithmetic, comparisons, conditional expressions, ``sqrt`` and the
  ``@helper`` functions below are used.

Non-finite values: every rule follows torch.optim operation for operation where it matters for
NaN/Inf (``lerp`` for torch's ``lerp_``, NaN-propagating ``nan_max`` for ``torch.maximum``, the
L2 term added only when ``weight_decay != 0``), so NaN and Inf propagate to the same positions on
every backend and in torch.
"""
from math import sqrt

__all__ = ["rule", "helper", "nan_max", "nan_min", "clamp", "clamp_min", "fabs", "sign", "lerp",
           "lamb_direction", "adafactor_variance", "adafactor_update",
           "sgd", "momentum",
           "rmsprop", "adagrad", "adam", "adamax", "nadam", "radam", "adadelta", "asgd", "rprop",
           "lion", "lamb", "lamb_apply", "lamb_norms", "lamb_update", "adamw_schedulefree", "lerp_to", "adafactor_vector",
           "adafactor_vector_apply", "adafactor_sq", "adafactor_factored",
           "adafactor_factored_apply", "adafactor_separable", "adafactor_separable_apply",
           "norm_sq", "ema", "swap", "assign"]


def rule(*, readonly=(), optional=None, sums=(), grid=False, rows=(), cols=(), col_sums=()):
    """Mark a function as an update rule (see the module docstring for the conventions)."""
    def mark(fn):
        fn.fastopt_rule = {"readonly": tuple(readonly), "optional": dict(optional or {}),
                           "sums": tuple(sums), "grid": bool(grid), "rows": tuple(rows),
                           "cols": tuple(cols), "col_sums": tuple(col_sums)}
        return fn
    return mark


def helper(fn):
    """Mark a scalar helper that rules may call (one value out; ``x: bool`` marks a flag)."""
    fn.fastopt_helper = True
    return fn


# -- helpers ---------------------------------------------------------------------------------

@helper
def nan_max(a, b):
    """``max(a, b)`` that propagates NaN from either side, as ``torch.maximum`` (Python's and
    Numba's ``max`` drop a NaN in the first argument).  Written with ``|`` (no short circuit)
    so that it compiles to a compare-and-blend and the loop still vectorizes."""
    return a if (a > b) | (a != a) else b


@helper
def nan_min(a, b):
    """``min(a, b)`` that propagates NaN from either side, as ``torch.minimum``."""
    return a if (a < b) | (a != a) else b


@helper
def clamp(x, lo, hi):
    """``torch.clamp(x, lo, hi)`` for ``lo <= hi``: NaN stays NaN.  Two flat selects (not
    :func:`nan_max`/:func:`nan_min`, whose ``|`` against loop-invariant bounds gcc turns into
    branches): the loop vectorizes."""
    c = lo if x < lo else x
    return hi if c > hi else c


@helper
def fabs(x):
    """``|x|`` (NaN stays NaN, ``-0.0`` becomes ``0.0``), as ``torch.abs``."""
    return x if x > -x else -x


@helper
def sign(x, one, zero):
    """``torch.sign``: 1, -1, or 0 for 0 and for NaN (torch computes ``(0 < x) - (x < 0)``;
    NumPy's sign would give NaN).  Flat selects (no nested conditional), so that gcc
    if-converts them and the loop vectorizes."""
    s = one if x > zero else zero
    return -one if x < zero else s


@helper
def clamp_min(x, lo):
    """``torch.clamp(x, min=lo)``: NaN stays NaN (one flat select)."""
    return lo if x < lo else x


@helper
def lerp(start, end, weight, weight_minus_one, small: bool):
    """``torch.lerp(start, end, weight)`` exactly as ATen computes it: ``start + weight*(end -
    start)`` when ``|weight| < 0.5`` (``small``), else ``end + (weight - 1)*(end - start)``.

    After an infinite gradient the two forms put NaN in different places, so the average is
    NaN exactly where torch's is."""
    if small:
        return start + weight * (end - start)
    return end + weight_minus_one * (end - start)


@helper
def lamb_direction(param, exp_avg, exp_avg_sq, inv_bias_correction1, inv_bias_correction2_sqrt,
                   eps, weight_decay, decay: bool):
    """LAMB's direction: Adam's bias-corrected ``(m/bc1)/(sqrt(v)/sqrt(bc2) + eps)``, plus
    ``weight_decay*param`` where ``decay``."""
    u = (exp_avg * inv_bias_correction1) / (sqrt(exp_avg_sq) * inv_bias_correction2_sqrt + eps)
    return u + weight_decay * param if decay else u


@helper
def adafactor_variance(variance, sq, weight, weight_minus_one, small, zero):
    """Adafactor's second moment of a vector: ``lerp(variance, g*g, weight)`` (``sq = g*g``;
    lerp's branch ``small > zero`` a per-step scalar)."""
    diff = sq - variance
    return variance + weight * diff if small > zero else sq + weight_minus_one * diff


@helper
def adafactor_update(variance, g, eps1_sq, one):
    """Adafactor's update ``rsqrt(clamp(variance, min=eps1**2))*g`` (torch's operations)."""
    return one / sqrt(clamp_min(variance, eps1_sq)) * g


# -- optimizers ------------------------------------------------------------------------------

@rule(readonly=("grad",), optional={"momentum_buffer": "has_momentum"})
def sgd(param, grad, momentum_buffer, /, neg_lr, grad_sign, weight_decay, buffer_decay,
        grad_scale, momentum, *, has_momentum, nesterov, l2):
    """torch.optim.SGD.

    ``g = grad_sign*grad (+ weight_decay*param)``; ``b = buffer_decay*b + grad_scale*g``
    (first step: ``buffer_decay = 0``, ``grad_scale = 1``, so ``b = g`` as torch's clone; later
    ``momentum`` and ``1 - dampening``); ``d = g + momentum*b`` (nesterov) or ``b``;
    ``param += neg_lr*d``.
    """
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    if has_momentum:
        momentum_buffer = buffer_decay * momentum_buffer + grad_scale * g
        if nesterov:
            g = g + momentum * momentum_buffer
        else:
            g = momentum_buffer
    param = param + neg_lr * g
    return param, momentum_buffer


@rule(readonly=("grad",))
def momentum(param, grad, velocity, /, neg_step, beta, one_minus_beta, weight_decay, grad_sign,
             *, l2):
    """The course's momentum: ``v = beta*v + (1-beta)*g``; ``param += neg_step*v`` with
    ``neg_step = -lr`` or ``-lr/(1 - beta**t)`` (bias correction); ``grad_sign`` is 1 (or the
    clip factor of ``max_grad_norm``)."""
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    velocity = beta * velocity + one_minus_beta * g
    param = param + neg_step * velocity
    return param, velocity


@rule(readonly=("grad",), optional={"grad_avg": "centered", "momentum_buffer": "has_momentum"})
def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, /, neg_lr, grad_sign,
            weight_decay, alpha, one_minus_alpha, neg_alpha, eps, momentum, *, centered,
            has_momentum, l2, lerp_small):
    """torch.optim.RMSprop: ``s = alpha*s + (1-alpha)*g*g``; centered: ``a = lerp(a, g,
    1-alpha)``, ``avg = sqrt(s - a*a) + eps``, else ``avg = sqrt(s) + eps``; with momentum
    ``b = momentum*b + g/avg``, ``param += neg_lr*b``, else ``param += neg_lr*(g/avg)``."""
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    square_avg = alpha * square_avg + one_minus_alpha * g * g
    if centered:
        grad_avg = lerp(grad_avg, g, one_minus_alpha, neg_alpha, lerp_small)
        avg = sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = sqrt(square_avg) + eps
    if has_momentum:
        momentum_buffer = momentum * momentum_buffer + g / avg
        param = param + neg_lr * momentum_buffer
    else:
        param = param + neg_lr * (g / avg)
    return param, square_avg, grad_avg, momentum_buffer


@rule(readonly=("grad",))
def adagrad(param, grad, sum, /, neg_clr, grad_sign, weight_decay, eps, *, l2):  # noqa: A002
    """torch.optim.Adagrad: ``h += g*g``; ``param += neg_clr*(g/(sqrt(h) + eps))`` with
    ``neg_clr = -lr/(1 + (t-1)*lr_decay)``."""
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    sum = sum + g * g  # noqa: A001
    param = param + neg_clr * (g / (sqrt(sum) + eps))
    return param, sum


@rule(readonly=("grad",), optional={"max_exp_avg_sq": "amsgrad"})
def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, /, decay, grad_sign, weight_decay,
         one_minus_beta1, neg_beta1, beta2, one_minus_beta2, neg_step_size,
         inv_bias_correction2_sqrt, eps, *, amsgrad, l2, lerp_small):
    """torch.optim.Adam / AdamW: ``param *= decay`` (AdamW: ``1 - lr*wd``; Adam: 1);
    ``m = lerp(m, g, 1-beta1)``; ``v = beta2*v + (1-beta2)*g*g``; amsgrad ``vmax =
    max(vmax, v)`` used for v; ``param += neg_step_size*(m/(sqrt(v)/sqrt(bc2) + eps))`` with
    ``neg_step_size = -lr/bc1``.

    The division by ``sqrt(bc2)`` (loop-invariant) is a multiplication by its reciprocal (torch
    divides: the results differ by rounding only; NaN and Inf land in the same places): it
    leaves one division and one square root per element, which is what bounds this loop on
    cache-resident buffers."""
    param = param * decay
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    exp_avg = lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    if amsgrad:
        max_exp_avg_sq = nan_max(max_exp_avg_sq, exp_avg_sq)
        denom = sqrt(max_exp_avg_sq) * inv_bias_correction2_sqrt + eps
    else:
        denom = sqrt(exp_avg_sq) * inv_bias_correction2_sqrt + eps
    param = param + neg_step_size * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq, max_exp_avg_sq


@rule(readonly=("grad",))
def adamax(param, grad, exp_avg, exp_inf, /, grad_sign, weight_decay, one_minus_beta1, neg_beta1,
           beta2, eps, neg_clr, *, l2, lerp_small):
    """torch.optim.Adamax: ``m = lerp(m, g, 1-beta1)``; ``u = max(beta2*u, |g| + eps)``
    (NaN-propagating, as ``torch.maximum``); ``param += neg_clr*(m/u)`` with ``neg_clr =
    -lr/(1 - beta1**t)``."""
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    exp_avg = lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_inf = nan_max(beta2 * exp_inf, fabs(g) + eps)
    param = param + neg_clr * (exp_avg / exp_inf)
    return param, exp_avg, exp_inf


@rule(readonly=("grad",))
def nadam(param, grad, exp_avg, exp_avg_sq, /, decay, grad_sign, weight_decay, one_minus_beta1,
          neg_beta1, beta2, one_minus_beta2, inv_bias_correction2, eps, grad_coef, avg_coef, *,
          l2, lerp_small):
    """torch.optim.NAdam: ``param *= decay`` (decoupled weight decay, else 1); ``m = lerp(m, g,
    1-beta1)``; ``v = beta2*v + (1-beta2)*g*g``; ``d = sqrt(v/bc2) + eps``; ``param +=
    grad_coef*(g/d)`` then ``param += avg_coef*(m/d)`` with ``grad_coef = -lr*(1-mu_t)/(1 -
    prod mu_1..t)`` and ``avg_coef = -lr*mu_{t+1}/(1 - prod mu_1..t+1)`` (torch's two
    ``addcdiv_``)."""
    param = param * decay
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    exp_avg = lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    denom = sqrt(exp_avg_sq * inv_bias_correction2) + eps
    param = param + grad_coef * (g / denom)
    param = param + avg_coef * (exp_avg / denom)
    return param, exp_avg, exp_avg_sq


@rule(readonly=("grad",))
def radam(param, grad, exp_avg, exp_avg_sq, /, decay, grad_sign, weight_decay, one_minus_beta1,
          neg_beta1, beta2, one_minus_beta2, bias_correction1, lr, sqrt_bias_correction2, eps,
          rect, rectified, zero, *, l2, lerp_small):
    """torch.optim.RAdam: the Adam moments; then, while the variance is tractable (``rectified
    > 0``: torch's ``rho_t > 5``, a per-step scalar) ``param -= (m/bc1)*lr*(sqrt(bc2)/(sqrt(v)
    + eps))*rect``, else ``param -= (m/bc1)*lr`` (the second moment is not read)."""
    param = param * decay
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    exp_avg = lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    corrected = exp_avg / bias_correction1 * lr
    update = corrected * (sqrt_bias_correction2 / (sqrt(exp_avg_sq) + eps)) * rect \
        if rectified > zero else corrected
    param = param - update
    return param, exp_avg, exp_avg_sq


@rule(readonly=("grad",))
def adadelta(param, grad, square_avg, acc_delta, /, neg_lr, grad_sign, weight_decay, rho,
             one_minus_rho, eps, *, l2):
    """torch.optim.Adadelta: ``s = rho*s + (1-rho)*g*g``; ``d = sqrt(a + eps)/sqrt(s + eps)*g``;
    ``a = rho*a + (1-rho)*d*d``; ``param += neg_lr*d``."""
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    square_avg = rho * square_avg + one_minus_rho * g * g
    delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * g
    acc_delta = rho * acc_delta + one_minus_rho * delta * delta
    param = param + neg_lr * delta
    return param, square_avg, acc_delta


@rule(readonly=("grad",))
def asgd(param, grad, ax, /, grad_sign, weight_decay, decay, neg_eta, mu, averaging, zero, *,
         l2):
    """torch.optim.ASGD: ``param *= 1 - lambd*eta_t``; ``param += -eta_t*g``; ``ax += (param -
    ax)*mu_t`` once averaging has begun (``averaging > 0``: torch's ``mu != 1``), else ``ax =
    param``.  ``eta_t`` and ``mu_t`` are per-step scalars (torch keeps them as 0-d state)."""
    g = grad_sign * grad
    if l2:
        g = g + weight_decay * param
    param = param * decay
    param = param + neg_eta * g
    ax = ax + (param - ax) * mu if averaging > zero else param
    return param, ax


@rule(readonly=("grad",))
def rprop(param, grad, prev, step_size, /, grad_sign, etaminus, etaplus, step_size_min,
          step_size_max, one, zero):
    """torch.optim.Rprop: the sign of ``g*prev`` picks the step-size factor (``etaplus``,
    ``etaminus``, else 1: torch's sign of NaN is 0); ``step_size = clamp(step_size*factor, min,
    max)``; where the sign flipped the gradient counts as 0; ``param -= sign(g)*step_size``;
    ``prev = g``."""
    g = grad_sign * grad
    prod = g * prev
    factor = etaplus if prod > zero else one
    factor = etaminus if prod < zero else factor
    step_size = clamp(step_size * factor, step_size_min, step_size_max)
    g = zero if prod < zero else g
    param = param - sign(g, one, zero) * step_size
    return param, g, step_size


@rule(readonly=("grad",))
def lion(param, grad, exp_avg, /, neg_lr, grad_sign, weight_decay, beta1, one_minus_beta1, beta2,
         one_minus_beta2, one, zero, *, decay):
    """Lion (Chen et al. 2023, Algorithm 2): ``u = sign(beta1*m + (1-beta1)*g)``; ``param +=
    neg_lr*(u + weight_decay*param)`` (the decay term only when ``weight_decay != 0``); ``m =
    beta2*m + (1-beta2)*g``."""
    g = grad_sign * grad
    u = sign(beta1 * exp_avg + one_minus_beta1 * g, one, zero)
    if decay:
        u = u + weight_decay * param
    param = param + neg_lr * u
    exp_avg = beta2 * exp_avg + one_minus_beta2 * g
    return param, exp_avg


@rule(readonly=("param", "grad"), sums=("param_sq", "update_sq"))
def lamb(param, grad, exp_avg, exp_avg_sq, /, grad_sign, beta1, one_minus_beta1, beta2,
         one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps, weight_decay, *,
         decay):
    """LAMB (You et al. 2019), pass 1 of 2: the moments ``m = beta1*m + (1-beta1)*g``, ``v =
    beta2*v + (1-beta2)*g*g`` are updated and the sums of ``param**2`` and ``u**2`` are taken
    for the trust ratio, with Adam's bias-corrected direction ``u = (m/bc1)/(sqrt(v)/sqrt(bc2)
    + eps) (+ weight_decay*param)``.  The parameter is only read: pass 2 (:func:`lamb_apply`)
    recomputes ``u`` from the new moments and writes it."""
    g = grad_sign * grad
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    u = lamb_direction(param, exp_avg, exp_avg_sq, inv_bias_correction1,
                       inv_bias_correction2_sqrt, eps, weight_decay, decay)
    return exp_avg, exp_avg_sq, param * param, u * u


@rule(readonly=("exp_avg", "exp_avg_sq"))
def lamb_apply(param, exp_avg, exp_avg_sq, /, neg_step, inv_bias_correction1,
               inv_bias_correction2_sqrt, eps, weight_decay, *, decay):
    """LAMB, pass 2 of 2: ``param += neg_step*u`` with ``u`` as in :func:`lamb` (from the moments
    it wrote) and ``neg_step = -lr*trust_ratio`` of this tensor."""
    u = lamb_direction(param, exp_avg, exp_avg_sq, inv_bias_correction1,
                       inv_bias_correction2_sqrt, eps, weight_decay, decay)
    return (param + neg_step * u,)


@rule(readonly=("param", "grad", "exp_avg", "exp_avg_sq"), sums=("param_sq", "update_sq"))
def lamb_norms(param, grad, exp_avg, exp_avg_sq, /, grad_sign, beta1, one_minus_beta1, beta2,
               one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps,
               weight_decay, *, decay):
    """LAMB with 8-bit state, pass 1 of 2: the sums of ``param**2`` and ``u**2`` with ``u`` from
    this step's moments, computed from the stored ones and the gradient (nothing is written:
    :func:`lamb_update` computes the same moments again and stores them).  Reading back 8-bit
    moments written by pass 1 instead would give pass 2 a second moment rounded to 0 where it
    is under the block's smallest code (about 1.6e-7 of its absmax) while the first moment is
    not: ``u = m/eps`` there."""
    g = grad_sign * grad
    u = lamb_direction(param, beta1 * exp_avg + one_minus_beta1 * g,
                       beta2 * exp_avg_sq + one_minus_beta2 * g * g, inv_bias_correction1,
                       inv_bias_correction2_sqrt, eps, weight_decay, decay)
    return param * param, u * u


@rule(readonly=("grad",))
def lamb_update(param, grad, exp_avg, exp_avg_sq, /, grad_sign, beta1, one_minus_beta1, beta2,
                one_minus_beta2, inv_bias_correction1, inv_bias_correction2_sqrt, eps,
                weight_decay, neg_step, *, decay):
    """LAMB with 8-bit state, pass 2 of 2: the moments as :func:`lamb_norms` computes them,
    stored, and ``param += neg_step*u`` (``neg_step = -lr*trust_ratio``) from them in float32
    (as bitsandbytes' 8-bit steps use the new moments before they are quantized)."""
    g = grad_sign * grad
    exp_avg = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    u = lamb_direction(param, exp_avg, exp_avg_sq, inv_bias_correction1,
                       inv_bias_correction2_sqrt, eps, weight_decay, decay)
    return param + neg_step * u, exp_avg, exp_avg_sq


@rule(readonly=("grad",))
def adamw_schedulefree(param, grad, z, exp_avg_sq, /, grad_sign, beta2, one_minus_beta2,
                       inv_bias_correction2, eps, weight_decay, ckp1, ckp1_minus_one, small,
                       zero, y_coef, neg_lr, *, decay):
    """Schedule-Free AdamW (``schedulefree.AdamWScheduleFree``, its train-mode step): ``v =
    beta2*v + (1-beta2)*g*g``; ``u = g/(sqrt(v/bc2) + eps) (+ weight_decay*y)``; ``y =
    lerp(y, z, ckp1)``; ``y += lr*(beta1*(1-ckp1) - 1)*u``; ``z -= lr*u``.  ``ckp1`` changes
    every step (1, 1/2, ...), so lerp's branch (``small``: ``|ckp1| < 0.5``) is a per-step scalar
    here, not a flag."""
    g = grad_sign * grad
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    u = g / (sqrt(exp_avg_sq * inv_bias_correction2) + eps)
    if decay:
        u = u + weight_decay * param
    diff = z - param
    param = param + ckp1 * diff if small > zero else z + ckp1_minus_one * diff
    param = param + y_coef * u
    z = z + neg_lr * u
    return param, z, exp_avg_sq


@rule(readonly=("z",))
def lerp_to(param, z, /, weight, weight_minus_one, small, zero):
    """``param = lerp(param, z, weight)`` as torch's ``lerp_`` (Schedule-Free's ``train()`` and
    ``eval()``: ``weight = 1 - beta1`` and ``1 - 1/beta1``)."""
    diff = z - param
    param = param + weight * diff if small > zero else z + weight_minus_one * diff
    return (param,)


# -- Adafactor (torch.optim.Adafactor) ---------------------------------------------------------

@rule(readonly=("param", "grad", "variance"), sums=("param_sq", "update_sq"))
def adafactor_vector(param, grad, variance, /, grad_sign, weight, weight_minus_one, small, zero,
                     eps1_sq, one):
    """Adafactor on a vector (a parameter of fewer than 2 dimensions), pass 1 of 2: this
    step's second moment ``v = lerp(variance, g*g, weight)`` (``weight = t**beta2_decay``: a
    per-step scalar, so lerp's branch ``small`` is one too) and the sums of ``param**2`` (the
    parameter's RMS) and of ``u**2`` with ``u = rsqrt(clamp(v, min=eps1**2))*g`` (the update's
    RMS).  Nothing is written: :func:`adafactor_vector_apply` computes ``v`` again and stores
    it (the same bytes as storing it here and reading it back there, and the update then uses
    the moment of this step in the compute dtype whatever the state's format)."""
    g = grad_sign * grad
    u = adafactor_update(adafactor_variance(variance, g * g, weight, weight_minus_one, small,
                                            zero), g, eps1_sq, one)
    return param * param, u * u


@rule(readonly=("grad",))
def adafactor_vector_apply(param, grad, variance, /, grad_sign, weight, weight_minus_one, small,
                           zero, eps1_sq, one, decay, neg_step):
    """Adafactor on a vector, pass 2 of 2: the second moment as :func:`adafactor_vector`
    computes it, stored, and ``param = param*decay + neg_step*u`` (``decay = 1 -
    lr*weight_decay``, ``neg_step = -alpha/max(1, RMS(u)/d)``)."""
    g = grad_sign * grad
    variance = adafactor_variance(variance, g * g, weight, weight_minus_one, small, zero)
    u = adafactor_update(variance, g, eps1_sq, one)
    return param * decay + neg_step * u, variance


@rule(grid=True, readonly=("param", "grad"), sums=("param_sq", "grad_sq"), col_sums=("grad_sq",))
def adafactor_sq(param, grad, /, grad_sign):
    """Adafactor on a matrix, pass 1 of 3: per row the sums of ``param**2`` and of ``g*g``, per
    column the sums of ``g*g`` (one read of the parameter and the gradient; the row and
    column factors of the second moment are updated from them on the host: ``R + B*m``
    values)."""
    g = grad_sign * grad
    return param * param, g * g


@rule(grid=True, readonly=("grad",), rows=("row_var", "row_mean"), cols=("col_var",),
      sums=("update_sq",))
def adafactor_factored(grad, row_var, row_mean, col_var, /, grad_sign, eps1_sq, one):
    """Adafactor on a matrix, pass 2 of 3: the sum of ``u**2`` per row, ``u = rsqrt(clamp(r*c /
    rmean, min=eps1**2))*g`` with the row factor ``r``, the column factor ``c`` and the mean
    row factor of the matrix clamped to ``eps1`` (torch's ``(row_var @ col_var) /
    row_var.mean()``); nothing is written."""
    u = adafactor_update(row_var * col_var / row_mean, grad_sign * grad, eps1_sq, one)
    return (u * u,)


@rule(grid=True, readonly=("grad",), rows=("row_var", "row_mean"), cols=("col_var",))
def adafactor_factored_apply(param, grad, row_var, row_mean, col_var, /, grad_sign, eps1_sq, one,
                             decay, neg_step):
    """Adafactor on a matrix, pass 3 of 3: ``param = param*decay + neg_step*u`` with ``u`` as
    in :func:`adafactor_factored`."""
    u = adafactor_update(row_var * col_var / row_mean, grad_sign * grad, eps1_sq, one)
    return (param * decay + neg_step * u,)


@rule(grid=True, readonly=("grad",), rows=("row_scale",), cols=("col_scale",),
      sums=("update_sq",))
def adafactor_separable(grad, row_scale, col_scale, /):
    """Adafactor on a matrix, pass 2 of 3 when the ``eps1**2`` clamp is nowhere active (the
    host checks the factors; every value finite): ``u = (grad*row_scale)*col_scale`` with
    ``row_scale = grad_sign*rsqrt(r/rmean)`` and ``col_scale = rsqrt(c)``, which is
    :func:`adafactor_factored`'s ``u`` to a few units in the last place, with no division or
    square root per element; the sum of ``u**2`` per row."""
    u = grad * row_scale * col_scale
    return (u * u,)


@rule(grid=True, readonly=("grad",), rows=("row_scale",), cols=("col_scale",))
def adafactor_separable_apply(param, grad, row_scale, col_scale, /, decay):
    """Adafactor on a matrix, pass 3 of 3 when the clamp is nowhere active: ``param =
    param*decay + (grad*row_scale)*col_scale`` with the step folded into ``row_scale``
    (``neg_step*grad_sign*rsqrt(r/rmean)``)."""
    return (param * decay + grad * row_scale * col_scale,)


# -- the gradient norm (max_grad_norm, fastopt.clip_grad_norm) -------------------------------

@rule(readonly=("x",), sums=("x_sq",))
def norm_sq(x, /):
    """``sum(x*x)`` in float64 (the host backends' ``sumsq``: ``max_grad_norm``'s one read of
    the gradients, threaded in the kernels' own thread team)."""
    return (x * x,)


# -- parameter averaging (fastopt.WeightEMA) -------------------------------------------------

@rule(readonly=("param",))
def ema(average, param, /, decay, one_minus_decay):
    """Polyak averaging: ``average = decay*average + (1-decay)*param``."""
    average = decay * average + one_minus_decay * param
    return (average,)


@rule()
def swap(a, b, /):
    """Exchange two buffers' values in place (``WeightEMA.swap``)."""
    return b, a


@rule(readonly=("src",))
def assign(dst, src, /):
    """``dst = src``, in the storage formats of each (WeightEMA's float32 averages of 16-bit
    parameters: written into the parameters rounded to their format, read from them exactly)."""
    return (src,)
