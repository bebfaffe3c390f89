"""Storage formats: what an array holds in memory, and how a step reads and writes it.

Every kernel computes in float32 (float64 for float64 parameters); a *format* says how an
array stores its values:

=========  ==================================================================================
``f64``    float64
``f32``    float32
``bf16``   bfloat16 (``ml_dtypes.bfloat16``, ``torch.bfloat16``): the top 16 bits of a float32
``f16``    float16 (IEEE half)
=========  ==================================================================================

A kernel variant's *layout* is the tuple of its arrays' formats (rule order; ``None`` for an
optional array the flags leave unused) and the rounding mode of writes into 16-bit storage:

* ``"nearest"``: round half to even (what ``ml_dtypes`` and NumPy's ``astype`` do);
* ``"stochastic"``: for bfloat16, add 16 random bits to the float32 bit pattern and truncate
  to 16 bits (SPEC.md); for float16 the same with the bits below float16's last mantissa bit.
  A value is rounded up with probability equal to its distance from the lower neighbour, so
  the rounding is unbiased and small updates are not lost.  Infinities and NaN are kept.

The random bits are a counter-based hash of ``(seed, step, element, array)``
(:func:`random_bits`: murmur3's 32-bit finalizer over a mix of the four), never a stateful
generator, so a stochastic step gives the same bits on every backend, with any number of
threads, and after a resume.  ``element`` is the element's position among all the optimizer's
parameters of its dtype, in parameter order (an Arena and separate arrays give the same bits).

This module is the NumPy side (the oracle's codecs, vectorized); the compiled backends' scalar
codecs are :mod:`fastopt.kernels._codecs`, written once and compiled for each of them.
"""
from __future__ import annotations

import numpy as np

__all__ = ["F64", "F32", "BF16", "F16", "ROUNDINGS", "tag", "storage_dtype", "view_dtype",
           "compute_dtype", "exponent_bits", "all_finite", "decode", "encode", "random_bits",
           "layout_name"]

F64, F32, BF16, F16 = "f64", "f32", "bf16", "f16"
#: 8-bit block-wise state (bitsandbytes' format): signed and unsigned dynamic maps
Q8S, Q8U = "q8s", "q8u"
QUANTIZED = (Q8S, Q8U)
#: elements per absmax block
BLOCK = 256
ROUNDINGS = ("nearest", "stochastic")

_NATIVE = {np.dtype(np.float64): F64, np.dtype(np.float32): F32, np.dtype(np.float16): F16}
_VIEW = {F64: np.dtype(np.float64), F32: np.dtype(np.float32), BF16: np.dtype(np.uint16),
         F16: np.dtype(np.uint16), Q8S: np.dtype(np.uint8), Q8U: np.dtype(np.uint8)}
#: the integer code of each format inside the compiled kernels
CODES = {F64: 0, F32: 1, BF16: 2, F16: 3, Q8S: 4, Q8U: 5}


def _is_bf16(dtype):
    # ml_dtypes' bfloat16 (a NumPy "V" kind): recognised without importing ml_dtypes, whose
    # import takes half a second -- whoever holds such an array has imported it already
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def tag(dtype):
    """The format of a storage dtype (``KeyError`` for anything else)."""
    dtype = np.dtype(dtype)
    fmt = _NATIVE.get(dtype)
    if fmt is None:
        if not _is_bf16(dtype):
            raise KeyError(dtype)
        fmt = BF16
    return fmt


def storage_dtype(fmt):
    """The NumPy dtype of a format's storage (bfloat16: ``ml_dtypes.bfloat16``)."""
    if fmt == BF16:
        import ml_dtypes   # only when bfloat16 storage is asked for
        return np.dtype(ml_dtypes.bfloat16)
    return _VIEW[fmt] if fmt != F16 else np.dtype(np.float16)   # int8 state: uint8 codes


def view_dtype(fmt):
    """The dtype compiled kernels see this format's memory as (uint16 for 16-bit floats)."""
    return _VIEW[fmt]


def exponent_bits(dtype):
    """The exponent bits of a 16-bit float dtype (all set: Inf or NaN), else None."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return 0x7C00
    return 0x7F80 if _is_bf16(dtype) else None


def compute_dtype(param_fmt):
    """float64 for float64 parameters, else float32."""
    return np.dtype(np.float64) if param_fmt == F64 else np.dtype(np.float32)


def layout_name(formats, rounding):
    """A short name for a layout, e.g. ``bf16.f32.f32_s`` (formats in rule order, ``x`` for an
    unused array; ``_s`` for stochastic rounding)."""
    return ".".join(f or "x" for f in formats) + ("_s" if rounding == "stochastic" else "")


# -- the counter-based random bits -------------------------------------------------------------

_M32 = np.uint64(0xFFFFFFFF)


def _u32(x):
    return (np.asarray(x, dtype=np.uint64) & _M32).astype(np.uint32)


def _lowbias32(x):
    x = x.astype(np.uint32)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
    return x


def random_bits(index, step, seed, salt):
    """32 random bits per element: murmur3's finalizer over ``index*A + (index >> 32)*B +
    step*C + seed*D + salt*E`` (uint32 arithmetic).  ``index`` is an array of uint64 element
    positions; the rest are ints."""
    index = np.asarray(index, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = (_u32(index) * np.uint32(0x9E3779B1)
               + _u32(index >> np.uint64(32)) * np.uint32(0x85EBCA77)
               + _u32(step) * np.uint32(0xC2B2AE3D) + _u32(seed) * np.uint32(0x27D4EB2F)
               + _u32(salt) * np.uint32(0x165667B1))
    return _lowbias32(key)


# -- NumPy codecs (the oracle) ---------------------------------------------------------------------

def decode(fmt, a, dtype):
    """The values of storage array ``a`` (format ``fmt``) as ``dtype`` (float32/float64)."""
    if fmt in (F64, F32):
        return np.asarray(a).astype(dtype, copy=False)
    return np.asarray(a).astype(np.float32).astype(dtype, copy=False)


def encode(fmt, x, out, rounding="nearest", bits=None):
    """Write float values ``x`` into storage array ``out`` (format ``fmt``).

    ``nearest`` uses NumPy's and ml_dtypes' own conversions (round half to even: an
    implementation independent of the compiled codecs); ``stochastic`` needs ``bits`` (uint32
    per element, :func:`random_bits`)."""
    if fmt in (F64, F32) or rounding == "nearest":
        with np.errstate(all="ignore"):
            out[...] = np.asarray(x, dtype=np.float32 if fmt != F64 else np.float64
                                  ).astype(out.dtype)
        return
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    u = x32.view(np.uint32).astype(np.uint64)
    special = (u & np.uint64(0x7F800000)) == np.uint64(0x7F800000)     # inf, nan: as nearest
    bits = np.asarray(bits, dtype=np.uint64)
    if fmt == BF16:
        h = ((u + (bits & np.uint64(0xFFFF))) >> np.uint64(16)).astype(np.uint16)
    else:
        h = _f16_stochastic(u, bits)
    near = np.empty(x32.shape, dtype=out.dtype)
    encode(fmt, x32, near)
    h = np.where(special, near.view(np.uint16), h)
    out.view(np.uint16)[...] = h


def _f16_stochastic(u, bits):
    """float32 bit patterns (uint64 array) -> float16 bits, stochastically rounded: random bits
    are added below float16's last kept bit (13 bits for normal values, more for subnormal
    ones), then the dropped bits are cut."""
    sign = (u >> np.uint64(16)) & np.uint64(0x8000)
    a = u & np.uint64(0x7FFFFFFF)
    normal = a >= np.uint64(0x38800000)                     # |x| >= 2**-14
    t = (a - np.uint64(0x38000000)) + (bits & np.uint64(0x1FFF))
    hn = np.minimum(t >> np.uint64(13), np.uint64(0x7C00))  # carry into inf: inf
    e = a >> np.uint64(23)
    shift = np.uint64(126) - np.minimum(e, np.uint64(126))
    m = (a & np.uint64(0x7FFFFF)) | np.uint64(0x800000)
    mask = (np.uint64(1) << np.minimum(shift, np.uint64(32))) - np.uint64(1)
    hs = (m + (bits & mask)) >> np.minimum(shift, np.uint64(63))
    hs = np.where(shift > np.uint64(31), np.uint64(0), hs)
    return (sign | np.where(normal, hn, hs)).astype(np.uint16)


def all_finite(a):
    """True when every element of a host array of any storage format is finite."""
    exponent = exponent_bits(a.dtype)
    if exponent is None:
        return bool(np.isfinite(a).all())
    e = np.uint16(exponent)
    return not bool(((a.view(np.uint16) & e) == e).any())


_POOL = None
_SPLIT = 1 << 20       # arrays from this many elements are reduced in parts, one per core


def _pool():
    global _POOL
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1,
                                   thread_name_prefix="fastopt-norm")
    return _POOL


def _dot_self(a, chunk=1 << 17):
    """``sum(a*a)``: ``dot`` per chunk of 2^17 (in the array's precision: a float32 dot over
    2^24 elements is ~6e-5 off, over 2^17 ~1e-6), the chunks summed in float64."""
    total = 0.0
    with np.errstate(over="ignore"):     # an overflow is an infinite norm: the caller's
        for i in range(0, a.shape[0], chunk):
            part = a[i:i + chunk]
            total += float(np.dot(part, part))
    return total


def sumsq(a, chunk=1 << 16):
    """``sum(a*a)`` of a 1-D host array of any float storage format, as a Python float: one read
    (``dot`` in the array's precision for float32/float64, as torch's ``vector_norm``; large
    arrays in one part per core on threads, since NumPy's dot of a vector is single-threaded;
    16-bit formats decoded to float32 a chunk at a time)."""
    if exponent_bits(a.dtype) is None:
        import os
        cores = os.cpu_count() or 1
        if a.shape[0] < _SPLIT or cores == 1:
            return _dot_self(a)
        step = -(-a.shape[0] // cores)
        parts = [a[i:i + step] for i in range(0, a.shape[0], step)]
        return float(sum(_pool().map(_dot_self, parts)))
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        x = np.asarray(a[i:i + chunk], dtype=np.float32)
        total += float(np.dot(x, x))
    return total


def scale(a, factor, chunk=1 << 16):
    """``a *= factor`` in place for a host array of any float storage format (16-bit formats
    through float32, rounded to nearest)."""
    if exponent_bits(a.dtype) is None:
        np.multiply(a, a.dtype.type(factor), out=a)
        return
    for i in range(0, a.shape[0], chunk):
        part = a[i:i + chunk]
        part[...] = (np.asarray(part, dtype=np.float32) * np.float32(factor)).astype(a.dtype)


def clip_coefficient(total_norm, max_norm):
    """torch's ``clip_grad_norm_`` factor: ``min(1, max_norm/(total_norm + 1e-6))``, NaN for a
    NaN norm (``torch.clamp`` propagates it), 0 for an infinite one."""
    coef = max_norm / (total_norm + 1e-6)
    return coef if (coef < 1.0 or coef != coef) else 1.0


# -- the optimizers' options -----------------------------------------------------------------------

#: ``state_dtype`` values (``None``: the parameter's own dtype)
STATE_DTYPES = (None, "float32", "bfloat16", "int8")
_STATE_FORMAT = {"float32": F32, "bfloat16": BF16}


def check_state_dtype(name, value):
    """``None``, ``"float32"``, ``"bfloat16"`` or ``"int8"`` (NumPy and torch dtypes of those
    names are accepted and normalised to the string)."""
    if value is None:
        return None
    if not isinstance(value, str):
        text = str(value)
        if text.startswith("torch."):      # torch.float32, torch.bfloat16
            value = text[len("torch."):]
        else:
            try:
                value = np.dtype(value).name
            except TypeError:
                pass
    if value not in STATE_DTYPES:
        raise ValueError(f"{name} must be one of None, 'float32', 'bfloat16', 'int8'; got "
                         f"{value!r}")
    return value


def check_rounding(name, value):
    if value not in ROUNDINGS:
        raise ValueError(f"{name} must be 'nearest' or 'stochastic', got {value!r}")
    return value


def check_seed(name, value):
    """An integer in ``[0, 2**32)``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= int(value) < 2 ** 32:
        raise ValueError(f"{name} must be in [0, 2**32), got {value}")
    return int(value)


def check_min_8bit_size(name, value):
    """A non-negative integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def state_format(state_dtype, param_fmt):
    """The format of a float state buffer for parameters of format ``param_fmt`` (not for
    ``"int8"``, whose format depends on the state's sign and the parameter's size)."""
    if state_dtype is None:
        return param_fmt
    return _STATE_FORMAT[state_dtype]


def is_float_dtype(dtype):
    """True for the storage dtypes of the float formats (bfloat16's NumPy kind is 'V')."""
    try:
        tag(dtype)
    except KeyError:
        return False
    return True


def convert(a, dtype):
    """``a`` as ``dtype`` (any two float formats; one rounding to nearest)."""
    return np.asarray(a).astype(dtype)


# -- 8-bit block-wise state (the oracle) -------------------------------------------------------------

def nblocks(n):
    """Absmax blocks of a buffer of ``n`` elements."""
    return -(-int(n) // BLOCK)


def qmap(fmt):
    """The 256 float32 values of a quantized format's map (bitsandbytes' dynamic maps)."""
    from . import _qmaps
    return _qmaps.qmap(fmt == Q8S)


def dequantize(fmt, codes, absmax, dtype=np.float32):
    """Values of uint8 ``codes`` with one float32 ``absmax`` per block of 256: ``map[code] *
    absmax`` (float32), as ``dtype``."""
    codes = np.asarray(codes).reshape(-1)
    scale = np.repeat(np.asarray(absmax, np.float32), BLOCK)[:codes.size]
    return (qmap(fmt)[codes] * scale).astype(dtype, copy=False)


def quantize(fmt, x, codes=None, absmax=None):
    """Block-wise quantization, written plainly: per block of 256 the float32 values' largest
    magnitude (NaN if any is NaN) is the block's absmax, and each value ``x`` gets the nearest
    code of ``x / absmax`` (searchsorted on the midpoints between codes; a zero or NaN absmax or
    ratio: the code of 0; unsigned maps: anything not above 0 too).  Writes into ``codes`` and
    ``absmax`` when given; returns them."""
    from . import _qmaps
    x32 = np.asarray(x).astype(np.float32).reshape(-1)
    n = x32.size
    nb = nblocks(n)
    pad = np.zeros(nb * BLOCK, np.float32)
    pad[:n] = np.abs(x32)
    with np.errstate(invalid="ignore"):
        am = pad.reshape(nb, BLOCK).max(axis=1)          # NaN propagates (np.max)
        scale = np.repeat(am, BLOCK)[:n]
        ok = scale > 0
        y = np.where(ok, x32 / np.where(ok, scale, 1), np.float32(0)).astype(np.float32)
    y = np.where(np.isnan(y) if fmt == Q8S else ~(y > 0), np.float32(0), y)
    c = np.searchsorted(_qmaps.midpoints(fmt == Q8S)[:-1], y, side="left").astype(np.uint8)
    if codes is None:
        codes, absmax = np.empty(n, np.uint8), np.empty(nb, np.float32)
    codes.reshape(-1)[...] = c
    absmax[...] = am
    return codes, absmax
