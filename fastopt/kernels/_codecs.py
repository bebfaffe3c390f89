"""Scalar storage codecs of the compiled backends, written once.

Numba and numba.cuda compile these functions as they are (with ``u32``/``u64``/``f32`` the
NumPy scalar types, and ``f32_bits``/``f32_from_bits`` a bit cast each backend provides);
:mod:`fastopt.kernels._codegen` translates them to C for the Cython extension (the annotations
give the C types).  The NumPy oracle (:mod:`fastopt.kernels.formats`) is written independently:
float16 and bfloat16 rounding to nearest there is NumPy's and ml_dtypes' own conversion.

Conventions: every integer constant is wrapped in its type (``u32(0x7FFF)``: a bare literal
would make Numba compute in int64 or float64), and so is every integer result that must wrap
at 32 bits (Numba does integer arithmetic in 64 bits: ``u32(h << 16)``); products that wrap go
through :func:`mul32` and :func:`add32` (64-bit, masked: NumPy scalars, as the CUDA simulator
runs them, would warn on a 32-bit overflow; the C translation uses 32-bit unsigned arithmetic,
which wraps by definition, so that gcc vectorizes the hash in 32-bit lanes); every local is
annotated with its type.
"""


def mul32(a: "u32", b: "u32") -> "u32":
    """``a * b`` modulo 2**32 (computed in 64 bits: no overflow, in C or in NumPy scalars)."""
    return u32((u64(a) * u64(b)) & u64(0xFFFFFFFF))  # noqa: F821


def add32(a: "u32", b: "u32") -> "u32":
    """``a + b`` modulo 2**32 (as :func:`mul32`)."""
    return u32((u64(a) + u64(b)) & u64(0xFFFFFFFF))  # noqa: F821


def lowbias32(x: "u32") -> "u32":
    """murmur3's 32-bit finalizer (a bijection with good avalanche)."""
    x = u32(x ^ (x >> u32(16)))  # noqa: F821 - u32 is provided by each backend
    x = mul32(x, u32(0x7FEB352D))  # noqa: F821
    x = u32(x ^ (x >> u32(15)))  # noqa: F821
    x = mul32(x, u32(0x846CA68B))  # noqa: F821
    x = u32(x ^ (x >> u32(16)))  # noqa: F821
    return x


def key_offset(hi: "u32", step: "u32", seed: "u32", salt: "u32") -> "u32":
    """The part of an element's hash key that does not depend on the low 32 bits of its index
    (one per block of elements: the loops hoist it)."""
    k: "u64" = (u64(mul32(hi, u32(0x85EBCA77))) + u64(mul32(step, u32(0xC2B2AE3D)))  # noqa: F821
                + u64(mul32(seed, u32(0x27D4EB2F)))  # noqa: F821
                + u64(mul32(salt, u32(0x165667B1))))  # noqa: F821
    return u32(k & u64(0xFFFFFFFF))  # noqa: F821


def keyed_bits(lo: "u32", offset: "u32") -> "u32":
    """32 random bits of the element whose index has low bits ``lo``, given its block's
    :func:`key_offset`."""
    return lowbias32(add32(mul32(lo, u32(0x9E3779B1)), offset))  # noqa: F821


def random_bits(index: "u64", step: "u32", seed: "u32", salt: "u32") -> "u32":
    """32 random bits for one element of one written array (see formats.random_bits)."""
    return keyed_bits(u32(index & u64(0xFFFFFFFF)),  # noqa: F821
                      key_offset(u32(index >> u64(32)), step, seed, salt))  # noqa: F821


def bf16_decode(h: "u32") -> "f32":
    """bfloat16 bits -> float32 (exact)."""
    return f32_from_bits(u32(h << u32(16)))  # noqa: F821


def bf16_encode(x: "f32", stochastic: "bool", r: "u32") -> "u32":
    """float32 -> bfloat16 bits: round half to even, or stochastically with the random bits
    ``r`` (add 16 of them to the float32 pattern, truncate); infinities are kept (the carry
    cannot leave the exponent), NaN stays a quiet NaN.  Branch-free, so the loops vectorize:
    the magnitude is rounded (it cannot overflow 32 bits) and the sign put back."""
    u: "u32" = f32_bits(x)  # noqa: F821
    a: "u32" = u32(u & u32(0x7FFFFFFF))  # noqa: F821
    add: "u32" = u32(r & u32(0xFFFF)) if stochastic else u32(  # noqa: F821
        u32(0x7FFF) + ((a >> u32(16)) & u32(1)))  # noqa: F821
    h: "u32" = u32(((a + add) >> u32(16)) | ((u >> u32(16)) & u32(0x8000)))  # noqa: F821
    return u32((u >> u32(16)) | u32(0x0040)) if a > u32(0x7F800000) else h  # noqa: F821


def f16_decode(h: "u32") -> "f32":
    """float16 bits -> float32 (exact, subnormals included)."""
    sign: "u32" = u32((h & u32(0x8000)) << u32(16))  # noqa: F821
    e: "u32" = u32((h >> u32(10)) & u32(0x1F))  # noqa: F821
    m: "u32" = u32(h & u32(0x3FF))  # noqa: F821
    if e == u32(0):  # noqa: F821
        # zero or subnormal: m * 2**-24, with the sign
        return f32_from_bits(u32(sign | u32(0x3F800000))) * (  # noqa: F821
            f32(m) * f32(5.9604644775390625e-08))  # noqa: F821
    if e == u32(31):  # noqa: F821
        return f32_from_bits(u32(sign | u32(0x7F800000) | (m << u32(13))))  # noqa: F821
    return f32_from_bits(u32(sign | ((e + u32(112)) << u32(23)) | (m << u32(13))))  # noqa: F821


def f16_encode(x: "f32", stochastic: "bool", r: "u32") -> "u32":
    """float32 -> float16 bits: round half to even, or stochastically with the random bits
    ``r`` added below float16's last kept bit; overflow gives infinity, NaN stays NaN."""
    u: "u32" = f32_bits(x)  # noqa: F821
    sign: "u32" = u32((u >> u32(16)) & u32(0x8000))  # noqa: F821
    a: "u32" = u32(u & u32(0x7FFFFFFF))  # noqa: F821
    t: "u32" = a
    h: "u32" = a
    shift: "u32" = a
    m: "u32" = a
    if a >= u32(0x7F800000):  # noqa: F821 - infinity or NaN
        if a > u32(0x7F800000):  # noqa: F821
            return u32(sign | u32(0x7E00) | ((a >> u32(13)) & u32(0x3FF)))  # noqa: F821
        return u32(sign | u32(0x7C00))  # noqa: F821
    if a >= u32(0x38800000):  # noqa: F821 - |x| >= 2**-14: a normal float16 before rounding
        t = u32(a - u32(0x38000000))  # noqa: F821 - the exponent rebiased by 112
        if stochastic:
            t = u32(t + (r & u32(0x1FFF)))  # noqa: F821
        else:
            t = u32(t + u32(0x0FFF) + ((t >> u32(13)) & u32(1)))  # noqa: F821
        h = u32(t >> u32(13))  # noqa: F821
        if h >= u32(0x7C00):  # noqa: F821
            return u32(sign | u32(0x7C00))  # noqa: F821
        return u32(sign | h)  # noqa: F821
    # a float16 subnormal (or zero): the 24-bit significand in units of 2**-24
    shift = u32(u32(126) - (a >> u32(23)))  # noqa: F821
    if shift > u32(31):  # noqa: F821
        return sign
    m = u32((a & u32(0x7FFFFF)) | u32(0x800000))  # noqa: F821
    if stochastic:
        return u32(sign | ((m + (r & u32((u32(1) << shift) - u32(1)))) >> shift))  # noqa: F821
    return u32(sign | ((m + u32((u32(1) << u32(shift - u32(1))) - u32(1))  # noqa: F821
                        + ((m >> shift) & u32(1))) >> shift))  # noqa: F821


def q8s_encode(x: "f32", absmax: "f32") -> "u32":
    """The nearest code of ``x / absmax`` in bitsandbytes' signed dynamic map (exact: a bucket
    table on the value's float32 bits and one comparison, :func:`fastopt.kernels._qmaps.tables`).
    A zero or NaN absmax, or a NaN ratio, gives the code of 0."""
    y: "f32" = x / absmax if absmax > f32(0.0) else f32(0.0)  # noqa: F821
    if not (y == y):
        y = f32(0.0)  # noqa: F821
    u: "u32" = f32_bits(y)  # noqa: F821
    b: "u32" = u32(min(max(u32(u & u32(0x7FFFFFFF)) >> u32(15), u32(QB0)), u32(QBMAX))  # noqa: F821
                   - u32(QB0))  # noqa: F821
    lo: "u32" = u32(QLO_S[b + (u >> u32(31)) * u32(QNB)])  # noqa: F821
    return u32(lo + u32(1)) if y > QMID_S[lo] else lo  # noqa: F821


def q8u_encode(x: "f32", absmax: "f32") -> "u32":
    """As :func:`q8s_encode` in the unsigned map (for non-negative state: anything not above
    zero, NaN included, gives the code of 0)."""
    y: "f32" = x / absmax if absmax > f32(0.0) else f32(0.0)  # noqa: F821
    if not (y > f32(0.0)):  # noqa: F821
        y = f32(0.0)  # noqa: F821
    u: "u32" = f32_bits(y)  # noqa: F821
    b: "u32" = u32(min(max(u >> u32(15), u32(QB0)), u32(QBMAX)) - u32(QB0))  # noqa: F821
    lo: "u32" = u32(QLO_U[b])  # noqa: F821
    return u32(lo + u32(1)) if y > QMID_U[lo] else lo  # noqa: F821
