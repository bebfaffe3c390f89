"""Loop generator: every backend's kernels, written from the one source, :mod:`.rules`.

A *rule* (see :mod:`fastopt.kernels.rules`) is the per-element arithmetic of a kernel family.
This module reads the rules (their signatures, and their source through :mod:`ast`) and writes,
for each backend, one loop per family, dtype and flag combination around a call of the rule:

``numba_source()``
    Python source for Numba: the rules and helpers verbatim under ``njit(inline="always")``,
    and per variant a ``prange`` loop (``*_par``, compiled ``parallel=True``) and its serial
    twin (``*_ser``).  Written to a file named by the source hash (so Numba's on-disk cache
    can never serve a loop compiled from an older rule) and imported by
    :mod:`fastopt.kernels.cpu`.
``cuda_source()``
    The same for numba.cuda: the rules as ``cuda.jit(device=True, forceinline=True)`` device
    functions and one grid-stride ``cuda.jit`` kernel per variant.
``cython_source()``
    A complete ``.pyx``: the helpers translated to ``cdef inline ... noexcept nogil`` functions
    per dtype, and per variant a ``nogil`` loop over ``__restrict__`` pointers whose body is the
    rule's own Python source (flags replaced by their constant values, ``sqrt`` mapped to
    ``sqrtf`` for float32, helper calls to their typed twins), serial below the threshold and
    ``prange(schedule='static')`` above it, plus a ``def`` entry point that walks a table of
    buffers: one Python call steps every buffer of a (group, dtype).
    setup.py writes it into ``build/`` at build time and cythonizes it.

Why this design (and not, e.g., Cython's pure-Python mode or a Tempita template): the rule is
ordinary Python that Numba and numba.cuda compile as it is, so for two of the three backends
nothing is translated at all; for Cython the translation is mechanical (``cdef`` declarations
for the locals, flags made constants, two name substitutions: the body is valid Cython as it
stands), and generating whole loops lets each flag combination be its own function, so no flag
is tested per element on any backend.  The Cython loop inlines the rule's body rather than
calling a ``cdef inline`` function returning a ctuple: gcc kept that struct in memory in the
serial loop and did not vectorize it (amsgrad: 4x slower below the threshold).
Cython's pure-Python mode would need a ``.pxd`` with the types of every rule written by hand
(a second copy of each signature) and cannot inline functions across modules; a Tempita
template would still need the rule body spelled in Cython.  Measured on the Cython backend
(AVX2 build): 0.15 us for a 6-buffer call through the table, against about 2.5 us when every
buffer went through its own ``prange(use_threads_if=...)`` region (libgomp starts a team of
one even when the condition is false).

Flags are compile-time: each combination is a variant named ``<rule>_<f32|f64>_<bits>`` (one
bit per flag, in the rule's flag order).  The per-step scalars are passed as doubles and cast
to the arrays' dtype once before the loop; the arrays of a variant's unused optional state are
never touched.

This module imports nothing but the standard library, so setup.py can load it by path in an
isolated build.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import itertools
import os
import re
import textwrap

__all__ = ["Signature", "load_rules", "signatures", "helpers", "source_hash", "variant_name",
           "flag_variants", "numba_source", "cuda_source", "cython_source", "DTYPES"]

HERE = os.path.dirname(os.path.abspath(__file__))
RULES_FILE = os.path.join(HERE, "rules.py")
CODECS_FILE = os.path.join(HERE, "_codecs.py")
QMAPS_FILE = os.path.join(HERE, "_qmaps.py")

#: dtype tag -> (NumPy name, C type, sqrt in C)
DTYPES = {"f32": ("float32", "float", "sqrtf"), "f64": ("float64", "double", "sqrt")}


def _read(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def source_hash():
    """Hash of everything the generated loops depend on (the rules, the storage codecs and
    this generator)."""
    h = hashlib.sha256()
    for path in (RULES_FILE, CODECS_FILE, QMAPS_FILE, os.path.abspath(__file__)):
        h.update(_read(path).encode())
    return h.hexdigest()[:16]


def load_codecs(path=CODECS_FILE):
    """The scalar codec functions of :mod:`fastopt.kernels._codecs`, in file order."""
    spec = importlib.util.spec_from_file_location("_fastopt_codecs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [v for v in vars(mod).values()
            if inspect.isfunction(v) and v.__module__ == "_fastopt_codecs"]


def load_qmaps(path=QMAPS_FILE):
    """The 8-bit maps and their lookup tables (:mod:`fastopt.kernels._qmaps`), from the file."""
    spec = importlib.util.spec_from_file_location("_fastopt_qmaps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _qtables():
    """``{name: (C type, values)}`` of the tables the 8-bit codecs read."""
    q = load_qmaps()
    out = {"QB0": q.B0, "QBMAX": q.BMAX, "QNB": q.NB}
    for tag, signed in (("S", True), ("U", False)):
        mid, lo = q.tables(signed)
        out[f"QMAP_{tag}"] = ("float", q.qmap(signed))
        out[f"QMID_{tag}"] = ("float", mid)
        out[f"QLO_{tag}"] = ("uint8_t", lo)
    return out


def _c_float(x):
    x = float(x)
    return "INFINITY" if x == float("inf") else repr(x) + "f"


def c_tables():
    """The 8-bit tables as C source (``static const`` arrays and macros), as the extension
    has them: ``bench/q8_blocks.c`` includes this text."""
    return _cython_tables(declare=False)


def _cython_tables(declare=True):
    """The tables as C ``static const`` arrays (and macros), declared to Cython."""
    c, decl = [], []
    for name, v in _qtables().items():
        if isinstance(v, int):
            c.append(f"#define {name} {v}")
            decl.append(f"    int {name}")
            continue
        ctype, values = v
        items = ", ".join(_c_float(x) if ctype == "float" else str(int(x)) for x in values)
        c.append(f"static const {ctype} {name}[{len(values)}] = {{{items}}};")
        decl.append(f"    const {ctype} {name}[{len(values)}]")
    q = load_qmaps()
    for tag, signed in (("S", True), ("U", False)):   # the AVX2 loops' one-gather table
        items = ", ".join(str(int(x)) for x in q.packed_table(signed))
        c.append(f"static const int32_t QPK_{tag}[{q.NB * (2 if signed else 1)}] = {{{items}}};")
        # and the AVX-512 encoder's
        for name, values in zip(("QAE", "QAS", "QAO", "QALH"), q.level_tables(signed)):
            ctype = "float" if str(values.dtype) == "float32" else "int32_t"
            items = ", ".join(_c_float(x) if ctype == "float" else str(int(x)) for x in values)
            c.append(f"static const {ctype} {name}_{tag}[{len(values)}] = {{{items}}};")
    c += [f"#define QEOFF {q.EOFF}", f"#define QEPS {q.EPS!r}"]
    if not declare:
        return "\n".join(["#include <math.h>", "#include <stdint.h>"] + c) + "\n"
    body = "\n".join("    " + line for line in ["#include <math.h>", "#include <stdint.h>"] + c)
    simd = textwrap.indent(_Q8_SIMD, "    ")
    return ('\n\ncdef extern from *:\n    """\n' + body + "\n" + simd + '\n    """\n'
            + "\n".join(decl) + "\n" + _Q8_SIMD_DECL)


# The 8-bit block loops' SIMD paths (C, in the generated extension; absent from the baseline
# build): AVX2, 8 elements at a time, the same arithmetic as the scalar codecs of _codecs.py,
# which finish each block's tail; and, chosen at run time on a CPU with AVX-512 (F and DQ), 16
# at a time without gathers: decoding by register permutes (64 at a time by byte permutes where
# the CPU has VBMI as well), encoding by arithmetic checked against the exact path
# (_qmaps.level_tables).  tests/test_int8.py checks every backend and
# both SIMD paths give the NumPy reference's bits.  GCC does not vectorize the table lookups
# (gathers) by itself.
_Q8_SIMD = r"""
#if defined(__AVX2__)
#include <immintrin.h>
#define FASTOPT_Q8_SIMD 1
/* 1: the AVX-512 paths below run (the CPU has AVX-512F and DQ; set at import, and by
   q8_avx512()); 0: the AVX2 paths only */
static int fastopt_q8_avx512 = 0;
static int fastopt_q8_avx512_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}
/* Eight codes read as one 64-bit word, each entry loaded on its own and the vector built by
   inserts: half the time of an 8-lane gather on AMD Zen (bench/q8_blocks.c: 0.47 against
   0.96 ns per element for two states). */
static inline Py_ssize_t fastopt_q8_decode_avx2(const float* map, const uint8_t* c, float a,
                                                float* dst, Py_ssize_t nb) {
    Py_ssize_t j = 0;
    __m256 va = _mm256_set1_ps(a);
    for (; j + 8 <= nb; j += 8) {
        uint64_t w;
        memcpy(&w, c + j, 8);
        __m128 lo = _mm_setr_ps(map[w & 255], map[(w >> 8) & 255], map[(w >> 16) & 255],
                                map[(w >> 24) & 255]);
        __m128 hi = _mm_setr_ps(map[(w >> 32) & 255], map[(w >> 40) & 255],
                                map[(w >> 48) & 255], map[w >> 56]);
        _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_set_m128(hi, lo), va));
    }
    return j;
}
/* The 256-entry map held in 16 registers: eight two-register permutes (the low 5 bits of the
   code) and a blend tree on bits 5, 6 and 7 -- a gather costs 3-4 times as much. */
__attribute__((target("avx512f")))
static Py_ssize_t fastopt_q8_decode_512(const float* map, const uint8_t* c, float a,
                                        float* dst, Py_ssize_t nb) {
    Py_ssize_t j = 0;
    __m512 t[16];
    int k;
    const __m512 va = _mm512_set1_ps(a);
    const __m512i b5 = _mm512_set1_epi32(32), b6 = _mm512_set1_epi32(64);
    const __m512i b7 = _mm512_set1_epi32(128);
    for (k = 0; k < 16; k++)
        t[k] = _mm512_loadu_ps(map + 16 * k);
    for (; j + 16 <= nb; j += 16) {
        __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(c + j)));
        __mmask16 m5 = _mm512_test_epi32_mask(idx, b5), m6 = _mm512_test_epi32_mask(idx, b6);
        __mmask16 m7 = _mm512_test_epi32_mask(idx, b7);
        __m512 r0 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(t[0], idx, t[1]),
                                         _mm512_permutex2var_ps(t[2], idx, t[3]));
        __m512 r1 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(t[4], idx, t[5]),
                                         _mm512_permutex2var_ps(t[6], idx, t[7]));
        __m512 r2 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(t[8], idx, t[9]),
                                         _mm512_permutex2var_ps(t[10], idx, t[11]));
        __m512 r3 = _mm512_mask_blend_ps(m5, _mm512_permutex2var_ps(t[12], idx, t[13]),
                                         _mm512_permutex2var_ps(t[14], idx, t[15]));
        r0 = _mm512_mask_blend_ps(m7, _mm512_mask_blend_ps(m6, r0, r1),
                                  _mm512_mask_blend_ps(m6, r2, r3));
        _mm512_storeu_ps(dst + j, _mm512_mul_ps(r0, va));
    }
    return j;
}
/* 1: the decoder below runs (the CPU has AVX-512 VBMI as well; set at import, and by
   q8_vbmi()); 0: fastopt_q8_decode_512 does all */
static int fastopt_q8_vbmi = 0;
static int fastopt_q8_vbmi_supported(void) {
    return fastopt_q8_avx512_supported() && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vbmi");
}
/* the maps' byte planes (byte k of every entry of QMAP_S, then of QMAP_U), and the order the
   codes are permuted into; filled once, at import */
static uint8_t fastopt_q8_planes[2][4][256] __attribute__((aligned(64)));
static uint8_t fastopt_q8_order[64] __attribute__((aligned(64)));
static int fastopt_q8_planes_init(void) {
    int s, k, q, L, i;
    for (s = 0; s < 2; s++)
        for (q = 0; q < 256; q++) {
            uint32_t u;
            memcpy(&u, (s ? QMAP_U : QMAP_S) + q, 4);
            for (k = 0; k < 4; k++)
                fastopt_q8_planes[s][k][q] = (uint8_t)(u >> (8 * k));
        }
    /* position 16L + 4q + i (lane L of unpacked register q) takes code 16q + 4L + i */
    for (L = 0; L < 4; L++)
        for (q = 0; q < 4; q++)
            for (i = 0; i < 4; i++)
                fastopt_q8_order[16 * L + 4 * q + i] = (uint8_t)(16 * q + 4 * L + i);
    return fastopt_q8_vbmi_supported();
}
/* 64 codes at a time, the map as four byte planes (byte k of every entry: 256 bytes, four
   registers each): per plane two 128-entry byte permutes and a blend on bit 7 of the code,
   then the planes interleaved into 64 float32 by two rounds of unpacks, the codes first
   permuted so that the unpacks' lane order comes out in order -- 31 instructions for what
   takes the 16-register path 88. */
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static Py_ssize_t fastopt_q8_decode_vbmi(const float* map, const uint8_t* c, float a,
                                         float* dst, Py_ssize_t nb) {
    Py_ssize_t j = 0;
    __m512i t[4][4];
    int k, q;
    const __m512 va = _mm512_set1_ps(a);
    const __m512i perm = _mm512_load_si512(fastopt_q8_order);
    uint8_t (*planes)[256] = fastopt_q8_planes[map == QMAP_S ? 0 : 1];
    if (nb < 64)
        return 0;
    for (k = 0; k < 4; k++)
        for (q = 0; q < 4; q++)
            t[k][q] = _mm512_load_si512(planes[k] + 64 * q);
    for (; j + 64 <= nb; j += 64) {
        __m512i idx = _mm512_permutexvar_epi8(perm, _mm512_loadu_si512(c + j));
        __mmask64 hi = _mm512_movepi8_mask(idx);
        __m512i b[4], w0, w1, w2, w3;
        for (k = 0; k < 4; k++)
            b[k] = _mm512_mask_blend_epi8(hi, _mm512_permutex2var_epi8(t[k][0], idx, t[k][1]),
                                          _mm512_permutex2var_epi8(t[k][2], idx, t[k][3]));
        w0 = _mm512_unpacklo_epi8(b[0], b[1]);
        w1 = _mm512_unpackhi_epi8(b[0], b[1]);
        w2 = _mm512_unpacklo_epi8(b[2], b[3]);
        w3 = _mm512_unpackhi_epi8(b[2], b[3]);
        _mm512_storeu_ps(dst + j, _mm512_mul_ps(_mm512_castsi512_ps(
            _mm512_unpacklo_epi16(w0, w2)), va));
        _mm512_storeu_ps(dst + j + 16, _mm512_mul_ps(_mm512_castsi512_ps(
            _mm512_unpackhi_epi16(w0, w2)), va));
        _mm512_storeu_ps(dst + j + 32, _mm512_mul_ps(_mm512_castsi512_ps(
            _mm512_unpacklo_epi16(w1, w3)), va));
        _mm512_storeu_ps(dst + j + 48, _mm512_mul_ps(_mm512_castsi512_ps(
            _mm512_unpackhi_epi16(w1, w3)), va));
    }
    return j;
}
static inline Py_ssize_t fastopt_q8_decode_simd(const float* map, const uint8_t* c, float a,
                                                float* dst, Py_ssize_t nb) {
    Py_ssize_t j = fastopt_q8_vbmi && fastopt_q8_avx512 ?
        fastopt_q8_decode_vbmi(map, c, a, dst, nb) : 0;
    j += fastopt_q8_avx512 ? fastopt_q8_decode_512(map, c + j, a, dst + j, nb - j) : 0;
    return j + fastopt_q8_decode_avx2(map, c + j, a, dst + j, nb - j);
}
__attribute__((target("avx512f")))
static Py_ssize_t fastopt_absmax_512(const float* x, Py_ssize_t nb, float* m, int* bad) {
    Py_ssize_t j = 0;
    __m512 acc = _mm512_setzero_ps();
    __mmask16 nan = 0;
    float r;
    for (; j + 16 <= nb; j += 16) {
        __m512 v = _mm512_loadu_ps(x + j);
        acc = _mm512_max_ps(_mm512_abs_ps(v), acc);     /* a NaN lane keeps acc */
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    }
    r = _mm512_reduce_max_ps(acc);
    *m = r > *m ? r : *m;
    *bad |= nan != 0;
    return j;
}
static inline Py_ssize_t fastopt_absmax_simd(const float* x, Py_ssize_t nb, float* m,
                                             int* bad) {
    Py_ssize_t j0 = fastopt_q8_avx512 ? fastopt_absmax_512(x, nb, m, bad) : 0, j = 0;
    __m256 acc = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
    const __m256 mag = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    float lanes[8];
    int k;
    x += j0;
    nb -= j0;
    for (; j + 8 <= nb; j += 8) {
        __m256 v = _mm256_loadu_ps(x + j);
        acc = _mm256_max_ps(_mm256_and_ps(v, mag), acc);     /* a NaN lane keeps acc */
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    _mm256_storeu_ps(lanes, acc);
    for (k = 0; k < 8; k++) *m = lanes[k] > *m ? lanes[k] : *m;
    *bad |= _mm256_movemask_ps(nan) != 0;
    return j0 + j;
}
static inline Py_ssize_t fastopt_q8_encode_avx2(int is_signed, const float* x, float m,
                                                uint8_t* c, Py_ssize_t nb) {
    Py_ssize_t j = 0;
    const int32_t* pk = is_signed ? QPK_S : QPK_U;
    const __m256 vm = _mm256_set1_ps(m);
    const __m256 zero = _mm256_setzero_ps();
    const __m256i b0 = _mm256_set1_epi32(QB0), bmax = _mm256_set1_epi32(QBMAX);
    const __m256i nbk = _mm256_set1_epi32(QNB), mag = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i low15 = _mm256_set1_epi32(0x7FFF), byte = _mm256_set1_epi32(0xFF);
    const int positive = m > 0.0f;
    for (; j + 8 <= nb; j += 8) {
        __m256 y = positive ? _mm256_div_ps(_mm256_loadu_ps(x + j), vm) : zero;
        __m256i u, a, sgn, b, e, key, lo;
        if (is_signed)      /* NaN: 0 */
            y = _mm256_and_ps(y, _mm256_cmp_ps(y, y, _CMP_EQ_OQ));
        else                /* anything not above 0: 0 */
            y = _mm256_and_ps(y, _mm256_cmp_ps(y, zero, _CMP_GT_OQ));
        /* bucket -> (lo, t) in one gather (_qmaps.packed_table); code = lo + (key > t) */
        u = _mm256_castps_si256(y);
        a = _mm256_and_si256(u, mag);
        sgn = _mm256_srai_epi32(u, 31);
        b = _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(_mm256_srli_epi32(a, 15), b0),
                                              bmax), b0);
        e = _mm256_i32gather_epi32(pk, _mm256_add_epi32(b, _mm256_and_si256(sgn, nbk)), 4);
        key = _mm256_xor_si256(_mm256_and_si256(a, low15), _mm256_and_si256(sgn, low15));
        lo = _mm256_sub_epi32(_mm256_and_si256(e, byte),
                              _mm256_cmpgt_epi32(key, _mm256_srli_epi32(e, 8)));
        /* 8 x int32 in [0, 255] -> 8 bytes */
        __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(lo),
                                       _mm256_extracti128_si256(lo, 1));
        _mm_storel_epi64((__m128i*)(c + j), _mm_packus_epi16(w16, w16));
    }
    return j;
}
/* Keeps a broadcast constant in its register (GCC would otherwise rebuild it from a general
   register in every iteration, on the port the permutes need). */
#define FASTOPT_KEEP(v) __asm__("" : "+v"(v))
/* The code computed instead of looked up (_qmaps.level_tables: the level from the binade and
   one comparison, the position within the level from one multiply and subtract); the vectors
   with a value too near a code boundary for that arithmetic are encoded again by the exact
   AVX2 path, after each 64 vectors (a call inside the loop would cost its registers).
   With ``recip`` (a normal m) the value is x * (1/m) instead of x / m: a division per vector
   was a fifth to a third of the encoder's time.  Exact still: x * RN(1/m) is within 3 units
   in 2^24 of RN(x/m), which moves the position t = a*scale - offset (a*scale at most 142, the
   unsigned map's top decade) by under 2.6e-5, a ninth of the 1.8e-4 (EPS - D) by which a
   value judged sure stands from a code boundary, and the value by at most 3 units in the last
   place: those within 8 of their binade's level boundary are unsure as well (level_tables
   keeps every boundary 16 units from its binade's ends).  Every unsure value is encoded again
   by the exact path (with the division). */
__attribute__((target("avx512f,avx512dq"), always_inline))
static inline Py_ssize_t fastopt_q8_encode_512_body(const int is_signed, const int recip,
                                                    const float* x, float m, uint8_t* c,
                                                    Py_ssize_t nb) {
    Py_ssize_t j = 0, k;
    uint64_t redo = 0;
    const int32_t* et = is_signed ? QAE_S : QAE_U;
    const __m512i e0 = _mm512_loadu_si512(et), e1 = _mm512_loadu_si512(et + 16);
    const __m512 vs = _mm512_loadu_ps(is_signed ? QAS_S : QAS_U);
    const __m512 vo = _mm512_loadu_ps(is_signed ? QAO_S : QAO_U);
    const __m512i vlh = _mm512_loadu_si512(is_signed ? QALH_S : QALH_U);
    const __m512 vm = _mm512_set1_ps(recip ? 1.0f / m : m);
    __m512 half = _mm512_set1_ps(0.5f), lim = _mm512_set1_ps(0.5f - (float)QEPS);
    __m512i izero = _mm512_setzero_si512(), ione = _mm512_set1_epi32(1);
    __m512i mag = _mm512_set1_epi32(0x7FFFFFFF), e31 = _mm512_set1_epi32(31);
    __m512i eoff = _mm512_set1_epi32(QEOFF), c127 = _mm512_set1_epi32(127);
    __m512i mant = _mm512_set1_epi32(0x7FFFFF), f24 = _mm512_set1_epi32(0xFFFFFF);
    __m512i byte = _mm512_set1_epi32(0xFF), near8 = _mm512_set1_epi32(8);
    __m512 one = _mm512_set1_ps(1.0f);
    if (!(m > 0.0f))
        return 0;                   /* every code is the code of 0: the AVX2 path */
    FASTOPT_KEEP(half); FASTOPT_KEEP(lim); FASTOPT_KEEP(izero); FASTOPT_KEEP(ione);
    FASTOPT_KEEP(mag); FASTOPT_KEEP(e31); FASTOPT_KEEP(eoff); FASTOPT_KEEP(c127);
    FASTOPT_KEEP(mant); FASTOPT_KEEP(f24); FASTOPT_KEEP(byte); FASTOPT_KEEP(one);
    FASTOPT_KEEP(near8);
    for (; j + 16 <= nb; j += 16) {
        __m512 y = recip ? _mm512_mul_ps(_mm512_loadu_ps(x + j), vm)
                         : _mm512_div_ps(_mm512_loadu_ps(x + j), vm);
        __m512i u = _mm512_castps_si512(y), au, e, ent, lv, lh, p;
        __m512 t, fr;
        __mmask16 neg = _mm512_movepi32_mask(u), up, unsure;
        /* |y| above 1 (never, from a block's own absmax) is taken as 1; NaN stays NaN */
        au = _mm512_castps_si512(_mm512_min_ps(one, _mm512_castsi512_ps(
            _mm512_and_si512(u, mag))));
        e = _mm512_min_epi32(_mm512_max_epi32(_mm512_sub_epi32(_mm512_srli_epi32(au, 23),
                                                               eoff), izero), e31);
        ent = _mm512_permutex2var_epi32(e0, e, e1);
        /* past the binade's level boundary (a negative value: at or past it) */
        up = _mm512_cmpgt_epi32_mask(_mm512_add_epi32(_mm512_and_si512(au, mant),
                                                      _mm512_srli_epi32(u, 31)),
                                     _mm512_and_si512(ent, f24));
        lv = _mm512_srli_epi32(ent, 24);
        lv = _mm512_mask_add_epi32(lv, up, lv, ione);
        t = _mm512_sub_ps(_mm512_mul_ps(_mm512_castsi512_ps(au), _mm512_permutexvar_ps(lv, vs)),
                          _mm512_permutexvar_ps(lv, vo));
        fr = _mm512_sub_ps(t, _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
        /* |fr - 1/2| > 1/2 - EPS, or NaN (a NaN or infinite value) */
        unsure = _mm512_cmp_ps_mask(_mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(_mm512_sub_ps(fr, half)), mag)), lim, _CMP_NLE_UQ);
        if (recip)          /* within 8 units in the last place of its binade's level boundary:
                               x * (1/m) may sit on the other side of it than x / m (the
                               one-code levels, 0 and 1, have no position to be near) */
            unsure |= _mm512_cmple_epu32_mask(_mm512_abs_epi32(_mm512_sub_epi32(
                _mm512_and_si512(au, mant), _mm512_and_si512(ent, f24))), near8);
        lh = _mm512_permutexvar_epi32(lv, vlh);
        p = _mm512_cvt_roundps_epi32(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        p = _mm512_min_epi32(_mm512_max_epi32(p, _mm512_and_si512(lh, byte)),
                             _mm512_srli_epi32(lh, 8));
        if (is_signed)      /* -v has the code 254 - code(v); -1 has none: the lowest, 0 */
            p = _mm512_mask_blend_epi32(neg, _mm512_add_epi32(p, c127),
                                        _mm512_max_epi32(_mm512_sub_epi32(c127, p), izero));
        else                /* not above 0: the code of 0 */
            p = _mm512_maskz_mov_epi32(~neg, p);
        _mm_storeu_si128((__m128i*)(c + j), _mm512_cvtepi32_epi8(p));
        redo |= (uint64_t)(unsure != 0) << ((j >> 4) & 63);
        if (((j >> 4) & 63) == 63 || j + 32 > nb) {
            for (; redo; redo &= redo - 1) {
                k = (j & ~(Py_ssize_t)1023) + 16 * __builtin_ctzll(redo);
                fastopt_q8_encode_avx2(is_signed, x + k, m, c + k, 16);
            }
        }
    }
    return j;
}
__attribute__((target("avx512f,avx512dq")))
static Py_ssize_t fastopt_q8_encode_512(int is_signed, const float* x, float m, uint8_t* c,
                                        Py_ssize_t nb) {
    /* (1/m of a subnormal m can overflow: the division there) */
    if (m >= 1.17549435e-38f)
        return is_signed ? fastopt_q8_encode_512_body(1, 1, x, m, c, nb)
                         : fastopt_q8_encode_512_body(0, 1, x, m, c, nb);
    return is_signed ? fastopt_q8_encode_512_body(1, 0, x, m, c, nb)
                     : fastopt_q8_encode_512_body(0, 0, x, m, c, nb);
}
static inline Py_ssize_t fastopt_q8_encode_simd(int is_signed, const float* x, float m,
                                                uint8_t* c, Py_ssize_t nb) {
    Py_ssize_t j = fastopt_q8_avx512 ? fastopt_q8_encode_512(is_signed, x, m, c, nb) : 0;
    return j + fastopt_q8_encode_avx2(is_signed, x + j, m, c + j, nb - j);
}
#else
#define FASTOPT_Q8_SIMD 0
static int fastopt_q8_avx512 = 0;
static int fastopt_q8_avx512_supported(void) { return 0; }
static int fastopt_q8_vbmi = 0;
static int fastopt_q8_vbmi_supported(void) { return 0; }
static int fastopt_q8_planes_init(void) { return 0; }
static inline Py_ssize_t fastopt_q8_decode_simd(const float* map, const uint8_t* c, float a,
                                                float* dst, Py_ssize_t nb) { return 0; }
static inline Py_ssize_t fastopt_absmax_simd(const float* x, Py_ssize_t nb, float* m,
                                             int* bad) { return 0; }
static inline Py_ssize_t fastopt_q8_encode_simd(int is_signed, const float* x, float m,
                                                uint8_t* c, Py_ssize_t nb) { return 0; }
#endif
"""

_Q8_SIMD_DECL = """    int FASTOPT_Q8_SIMD
    int fastopt_q8_avx512
    int fastopt_q8_avx512_supported() noexcept nogil
    int fastopt_q8_vbmi
    int fastopt_q8_vbmi_supported() noexcept nogil
    int fastopt_q8_planes_init() noexcept nogil
    Py_ssize_t fastopt_q8_decode_simd(const float* map, const uint8_t* c, float a, float* dst,
                                      Py_ssize_t nb) noexcept nogil
    Py_ssize_t fastopt_absmax_simd(const float* x, Py_ssize_t nb, float* m,
                                   int* bad) noexcept nogil
    Py_ssize_t fastopt_q8_encode_simd(int is_signed, const float* x, float m, uint8_t* c,
                                      Py_ssize_t nb) noexcept nogil
"""


def _python_tables():
    """The tables as module-level NumPy arrays (Numba and numba.cuda read them as constants)."""
    out = []
    for name, v in _qtables().items():
        if isinstance(v, int):
            out.append(f"{name} = {v}")
            continue
        ctype, values = v
        dt = "np.float32" if ctype == "float" else "np.uint8"
        vals = ", ".join("np.inf" if float(x) == float("inf") else repr(float(x))
                         if ctype == "float" else str(int(x)) for x in values)
        out.append(f"{name} = np.array([{vals}], dtype={dt})")
    return "\n".join(out) + "\n"


def load_rules(path=RULES_FILE):
    """The rules module, loaded from its file (no package import needed)."""
    spec = importlib.util.spec_from_file_location("_fastopt_rules", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Signature:
    """What a loop needs to know about a rule: its arrays, scalars and flags."""

    def __init__(self, fn, check=True):
        meta = fn.fastopt_rule
        self.fn = fn
        self.name = fn.__name__
        params = inspect.signature(fn).parameters.values()
        kinds = inspect.Parameter
        self.arrays = tuple(p.name for p in params if p.kind == kinds.POSITIONAL_ONLY)
        self.scalars = tuple(p.name for p in params if p.kind == kinds.POSITIONAL_OR_KEYWORD)
        self.flags = tuple(p.name for p in params if p.kind == kinds.KEYWORD_ONLY)
        self.readonly = meta["readonly"]
        self.optional = meta["optional"]
        self.sums = meta.get("sums", ())
        self.grid = meta.get("grid", False)
        self.rows = meta.get("rows", ())
        self.cols = meta.get("cols", ())
        self.col_sums = meta.get("col_sums", ())
        #: the arrays with one value per element (a grid rule's rows/cols arrays are not)
        self.elements = tuple(a for a in self.arrays if a not in self.rows + self.cols)
        self.written = tuple(a for a in self.elements if a not in self.readonly)
        if not self.grid and (self.rows or self.cols or self.col_sums):
            raise ValueError(f"rule {self.name}: rows, cols and col_sums need grid=True")
        for name in self.rows + self.cols:
            if name not in self.arrays:
                raise ValueError(f"rule {self.name}: {name!r} is not one of its arrays")
        for name in self.col_sums:
            if name not in self.sums:
                raise ValueError(f"rule {self.name}: col_sums {name!r} is not one of its sums")
        if self.grid and self.optional:
            raise ValueError(f"rule {self.name}: a grid rule has no optional arrays")
        for name in self.readonly:
            if name not in self.arrays:
                raise ValueError(f"rule {self.name}: readonly {name!r} is not one of its arrays")
        for name, flag in self.optional.items():
            if name not in self.arrays or flag not in self.flags:
                raise ValueError(f"rule {self.name}: optional {name!r} -> {flag!r} must name "
                                 f"an array and a flag")
        if check:
            _check_body(self)

    def used(self, flags):
        """Arrays the variant with these flag values reads or writes."""
        on = dict(zip(self.flags, flags))
        return tuple(a for a in self.arrays if a not in self.optional or on[self.optional[a]])

    def __repr__(self):
        return (f"Signature({self.name}: arrays={self.arrays}, scalars={self.scalars}, "
                f"flags={self.flags}, written={self.written})")


def signatures(mod, check=True):
    """``{name: Signature}`` of every rule in ``mod``, in file order (``check``: also check each
    rule's body against the conventions, which reads its source)."""
    return {name: Signature(obj, check) for name, obj in vars(mod).items()
            if callable(obj) and hasattr(obj, "fastopt_rule")}


def helpers(mod):
    """The helper functions of ``mod``, in file order."""
    return [obj for obj in vars(mod).values() if callable(obj) and hasattr(obj, "fastopt_helper")]


def flag_variants(sig):
    """Every combination of the rule's flags, as tuples of bools."""
    return list(itertools.product((False, True), repeat=len(sig.flags)))


def variant_name(sig, dtype, flags):
    tag = dtype if dtype in DTYPES else {"float32": "f32", "float64": "f64"}[str(dtype)]
    return f"{sig.name}_{tag}_{''.join('1' if f else '0' for f in flags)}"


# -- reading rule source ---------------------------------------------------------------------

def _fn_ast(fn):
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    node.decorator_list = []
    return node


def _body(node):
    """The statements of a function without its docstring."""
    body = list(node.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return body


def _check_body(sig):
    node = _fn_ast(sig.fn)
    body = _body(node)
    for sub in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, (int, float, complex)) \
                and not isinstance(sub.value, bool):
            raise ValueError(f"rule {sig.name}: numeric literal {sub.value!r} (line "
                             f"{sub.lineno}); pass constants as scalars so float32 stays "
                             f"float32")
        if isinstance(sub, ast.Return) and sub is not body[-1]:
            raise ValueError(f"rule {sig.name}: the only return must be the last statement")
    last = body[-1] if body else None
    n = len(sig.written) + len(sig.sums)
    if not (isinstance(last, ast.Return) and isinstance(last.value, ast.Tuple)
            and len(last.value.elts) == n):
        raise ValueError(f"rule {sig.name}: must end with `return <{n} values>` "
                         f"(the new {', '.join(sig.written + sig.sums)})")


def _python_def(fn):
    """The function's source without decorators, every parameter plain positional (Numba's
    inliner mis-binds keyword arguments, and the CUDA simulator takes none)."""
    node = _fn_ast(fn)
    a = node.args
    a.args, a.posonlyargs, a.kwonlyargs, a.kw_defaults = a.posonlyargs + a.args + a.kwonlyargs, \
        [], [], []
    for arg in a.args:
        arg.annotation = None
    node.returns = None
    return ast.unparse(node)


# -- Numba -----------------------------------------------------------------------------------

_NUMBA_HEAD = '''\
"""Numba loops generated by fastopt.kernels._codegen from rules.py: do not edit.

Source hash {hash}.  Rules and helpers are compiled inline into one loop per variant;
``*_par`` loops run under ``parallel=True``, ``*_ser`` ones on the calling thread.
"""
import numpy as np
from numba import njit, prange

SOURCE_HASH = "{hash}"
# fastmath "nsz" only (fastopt.config.FASTMATH_FLAGS): NaN and Inf propagate as in NumPy,
# isfinite checks stay, and every element rounds the same wherever it falls in the loop.
_FM = {{"nsz"}}
sqrt = np.sqrt
#: reductions (rules with ``sums``) add up blocks of this many elements, then the blocks in order
SUM_BLOCK = {sum_block}
#: grid rules split the rows into blocks of this many rows (within a matrix)
GRID_ROWS = {grid_rows}
_inline = njit(inline="always", fastmath=_FM, error_model="numpy", nogil=True)
_par = njit(parallel=True, fastmath=_FM, error_model="numpy", nogil=True, cache=True)
_ser = njit(fastmath=_FM, error_model="numpy", nogil=True, cache=True)
'''

#: The block of a reduction's sums (every backend: the sums do not depend on the threads).
SUM_BLOCK = 4096
#: Within a block, the element loop stores each element's terms in a buffer (that loop has no
#: reduction in it, so it vectorizes like every other loop); then element ``i`` (counted from
#: the block's start) is added to float64 lane ``i % SUM_LANES``, and the lanes in order.  A
#: fixed order, so the same bits on every host backend and thread count.  A single running sum
#: is a serial chain of float64 additions that no compiler may reorder, and it kept the whole
#: element loop scalar (LAMB's first pass ran at 8 GB/s so); 64 lanes are 64 independent chains
#: (tests/test_codegen.py checks what each compiler makes of them).
SUM_LANES = 64


#: A grid rule's rows are split into blocks of this many rows within each matrix; the
#: blocks run in parallel, each adds its column sums over its rows in order (float64), and the
#: blocks' column sums are added in order afterwards (:func:`fastopt.kernels.grid_columns`).
#: 64 rows: the per-block column sums are 1/32 of a float32 matrix's bytes.
GRID_ROWS = 64
#: A grid rule's row sums: each chunk of SUM_LANES terms is first folded into GRID_FOLD partial
#: sums in the compute dtype (partial ``l`` adds terms ``l, l + 8, l + 16, ...`` in that order),
#: which are added into GRID_FOLD float64 lanes; a row's remainder (``m % 64`` terms) goes
#: straight into lane ``l % 8``; the lanes in order.  Column sums: in the compute dtype over a
#: block's rows (in row order), then float64 over the blocks.  Converting and adding every term
#: in float64 (LAMB's reductions) kept these read-only passes at half the triad's bandwidth.
GRID_FOLD = 8
#: how far ahead (bytes) the Cython loops prefetch every cache line of their arrays: 4 KiB,
#: 1024 float32 or 512 float64 elements (2 KiB of float32 left LAMB's first pass and Adafactor's
#: row and column sums 7-12% slower; a C replica of the sums ran 2.8, 2.6, 2.8 ms at 2, 4 and
#: 8 KiB; 8 KiB of float64 made the element-wise float64 loops 5-20% slower than none)
PREFETCH_BYTES = 4096


def _prefetch_ahead(tag):
    """The prefetch distance in elements of the compute dtype ``tag``."""
    return PREFETCH_BYTES // (4 if tag == "f32" else 8)


def _grid_access(sig, np_name, layout, elem="v_{a}[j]"):
    """A grid loop's element load and store: ``load(a)`` the expression of element ``j`` of
    row ``i`` (``elem``: its storage expression, ``v_<a>[j]`` in the row's view) in the compute
    dtype, ``store(a, value)`` the statement writing it; with a storage ``layout``
    (``(formats, stochastic)``) decoded and encoded, the element's index in stochastic
    rounding's counter ``lo + j`` (from ``ubase``)."""
    if layout is None:
        return (lambda a: elem.format(a=a)), (lambda a, v: f"{elem.format(a=a)} = {v}")
    formats, stochastic = layout
    fmt = dict(zip(sig.arrays, formats))
    ctag = "f32" if np_name == "float32" else "f64"
    return ((lambda a: _load(fmt[a], ctag, a, elem.format(a=a))),
            (lambda a, v: _store(fmt[a], ctag, a, v, sig.arrays.index(a), stochastic,
                                 elem.format(a=a), "lo + j")))


def _numba_grid(sig, np_name, name, flags, kind, rng, layout=None):
    """A grid rule's loop: blocks of GRID_ROWS rows (``rng``: prange or range over the
    blocks); per row the element loop in chunks of SUM_LANES elements (row values loaded once,
    column values at ``b*m + j``): each chunk's sum terms go to a buffer, then into the row's
    float64 lanes and, for the ``col_sums``, into the block's column sums ``o_cols[k]``; the
    lanes are added in order into ``o_rows[i]``.  (Chunks, not whole rows, so the memory streams
    never stop for long: a row's separate loops over its buffered terms halved the first
    pass's bandwidth.)  The additions are in the same order as Cython's.  ``layout``:
    ``(formats, stochastic)`` of a storage layout (:func:`_grid_access`; the loop then also
    takes stochastic rounding's ``base``, ``step`` and ``seed``)."""
    ns, nw, L = len(sig.sums), len(sig.written), SUM_LANES
    first = sig.elements[0]
    args = _loop_args(sig) + ["n", "m", "o_rows", "o_cols"]
    if layout is not None:
        args += ["base", "step", "seed"]
    lines = [f"\n@_{kind}", f"def {name}_{kind}({', '.join(args)}):"]
    lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
    if layout is not None:
        lines += ["    ubase = np.uint64(base)", "    ustep = np.uint32(step)",
                  "    useed = np.uint32(seed)"]
    element, store = _grid_access(sig, np_name, layout)
    lines += [f"    R = a_{first}.size // m if m > 0 else 0",
              "    nb = (n + GRID_ROWS - 1) // GRID_ROWS",
              "    nblk = (R // n) * nb if n > 0 else 0",
              f"    mL = m - m % {L}",
              f"    for k in {rng}(nblk):",
              "        b = k // nb",
              "        r0 = b * n + (k - b * nb) * GRID_ROWS",
              "        r1 = min(b * n + n, r0 + GRID_ROWS)"]
    lines += [f"        t{j} = np.empty({L}, dtype=np.{np_name})" for j in range(ns)]
    lines += [f"        lane{j} = np.empty({GRID_FOLD})" for j in range(ns)]
    lines += [f"        cp{c} = o_cols[k, {c}]" for c in range(len(sig.col_sums))]
    lines += [f"        cf{c} = np.zeros(m, dtype=np.{np_name})" for c in range(len(sig.col_sums))]
    lines += ["        for i in range(r0, r1):", "            lo = i * m"]
    lines += [f"            v_{a} = a_{a}[lo:lo + m]" for a in sig.elements]
    lines += [f"            x_{a} = a_{a}[i]" for a in sig.rows]
    lines += [f"            v_{a} = a_{a}[b * m:b * m + m]" for a in sig.cols]
    load = (lambda a: f"x_{a}" if a in sig.rows else
            f"v_{a}[j]" if a in sig.cols else element(a))
    body = [f"r = {_call(sig, flags, load)}"]
    body += _stores(sig, flags, store)
    if not ns:
        lines.append("            for j in range(m):")
        lines += ["                " + x for x in body]
        return "\n".join(lines) + "\n"
    cols = [(c, sig.sums.index(cname)) for c, cname in enumerate(sig.col_sums)]
    G = GRID_FOLD
    lines += [f"            for l in range({G}):"] + \
        [f"                lane{j}[l] = 0.0" for j in range(ns)]
    lines += [f"            for c in range(0, mL, {L}):", f"                for jj in range({L}):",
              "                    j = c + jj"]
    lines += ["                    " + x for x in body]
    lines += [f"                    t{j}[jj] = r[{nw + j}]" for j in range(ns)]
    lines += [f"                for l in range({G}):"]
    for j in range(ns):
        lines += [f"                    x = t{j}[l]", f"                    for q in range(1, {L // G}):",
                  f"                        x += t{j}[q * {G} + l]",
                  f"                    lane{j}[l] += np.float64(x)"]
    lines += [f"                for l in range({L}):"] if cols else []
    lines += [f"                    cf{c}[c + l] += t{j}[l]" for c, j in cols]
    lines += ["            for j in range(mL, m):"] + ["                " + x for x in body]
    lines += [f"                t{j}[j - mL] = r[{nw + j}]" for j in range(ns)]
    lines += ["            for l in range(m - mL):"]
    lines += [f"                lane{j}[l % {G}] += np.float64(t{j}[l])" for j in range(ns)]
    lines += [f"                cf{c}[mL + l] += t{j}[l]" for c, j in cols]
    for j in range(ns):
        lines += ["            acc = 0.0", f"            for l in range({G}):",
                  f"                acc += lane{j}[l]", f"            o_rows[i, {j}] = acc"]
    for c, _ in cols:
        lines += ["        for j in range(m):", f"            cp{c}[j] = np.float64(cf{c}[j])"]
    return "\n".join(lines) + "\n"


def _call(sig, flags, load):
    """``rule(elements..., scalars..., flags...)`` for a Numba or CUDA loop body;
    ``load(array)`` gives the element expression of a used array (an unused optional array gets
    the first array's element as a placeholder the rule never reads).  Everything is passed
    positionally, flags as ``True``/``False`` constants."""
    used = sig.used(flags)
    first = load(sig.arrays[0])
    args = [load(a) if a in used else first for a in sig.arrays] + list(sig.scalars)
    args += [str(v) for v in flags]
    return f"{sig.name}({', '.join(args)})"


def _stores(sig, flags, store, result="r"):
    used = sig.used(flags)
    return [store(a, f"{result}[{k}]") for k, a in enumerate(sig.written) if a in used]


def _loop_args(sig):
    return [f"a_{a}" for a in sig.arrays] + [f"s_{s}" for s in sig.scalars]


def numba_source(mod=None):
    """The Numba module (text) for every rule, dtype and flag combination."""
    mod = mod or load_rules()
    out = [_NUMBA_HEAD.format(hash=source_hash(), sum_block=SUM_BLOCK, grid_rows=GRID_ROWS)]
    for fn in helpers(mod):
        out.append("\n@_inline\n" + _python_def(fn) + "\n")
    sigs = signatures(mod)
    for sig in sigs.values():
        out.append("\n@_inline\n" + _python_def(sig.fn) + "\n")
    for sig in sigs.values():
        for tag, (np_name, _, _) in DTYPES.items():
            for flags in flag_variants(sig):
                name = variant_name(sig, tag, flags)
                nw, ns = len(sig.written), len(sig.sums)
                if sig.grid:
                    for kind, rng in (("par", "prange"), ("ser", "range")):
                        out.append(_numba_grid(sig, np_name, name, flags, kind, rng))
                    continue
                for kind, rng in (("par", "prange"), ("ser", "range")):
                    lines = [f"\n@_{kind}", f"def {name}_{kind}({', '.join(_loop_args(sig))}):"]
                    lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
                    call = f"        r = {_call(sig, flags, lambda a: f'a_{a}[i]')}"
                    stores = ["        " + s for s in _stores(sig, flags,
                                                             lambda a, v: f"a_{a}[i] = {v}")]
                    if not ns:
                        lines.append(f"    for i in {rng}(a_{sig.arrays[0]}.size):")
                        lines += [call] + stores
                        out.append("\n".join(lines) + "\n")
                        continue
                    # a reduction: float64 sums per block of SUM_BLOCK elements (the blocks
                    # split over threads), then the blocks' sums in order: the same bits on
                    # any thread count, serial or parallel
                    # (within a block: each element's terms into a buffer, then added in
                    # SUM_LANES float64 lanes, the lanes in order: as the Cython loops)
                    L = SUM_LANES
                    lines += [f"    n = a_{sig.arrays[0]}.size",
                              "    nb = (n + SUM_BLOCK - 1) // SUM_BLOCK",
                              f"    part = np.zeros((nb, {ns}))",
                              f"    for b in {rng}(nb):",
                              "        lo = b * SUM_BLOCK",
                              "        hi = min(n, lo + SUM_BLOCK)",
                              "        m = hi - lo",
                              f"        mL = m - m % {L}"]
                    lines += [f"        t{j} = np.empty(SUM_BLOCK, dtype=np.{np_name})"
                              for j in range(ns)]
                    # the element loop on views of the block (LLVM vectorizes it only so)
                    lines += [f"        v_{a} = a_{a}[lo:hi]" for a in sig.arrays
                              if a in sig.used(flags)]
                    lines.append("        for i in range(m):")
                    vcall = f"            r = {_call(sig, flags, lambda a: f'v_{a}[i]')}"
                    vstores = ["            " + x for x in _stores(
                        sig, flags, lambda a, v: f"v_{a}[i] = {v}")]
                    lines += [vcall] + vstores
                    lines += [f"            t{j}[i] = r[{nw + j}]" for j in range(ns)]
                    inner, after = _numba_sum_tail(ns)
                    out.append("\n".join(lines + inner + after) + "\n")
    return "".join(out)


# -- numba.cuda --------------------------------------------------------------------------------

_CUDA_HEAD = '''\
"""numba.cuda kernels generated by fastopt.kernels._codegen from rules.py: do not edit.

Source hash {hash}.  Rules and helpers are device functions (force-inlined on a GPU); one
grid-stride kernel per variant.  Under NUMBA_ENABLE_CUDASIM=1 the same code runs in numba's
simulator (NumPy scalars: float32 arithmetic stays float32, NaN instead of exceptions).
"""
import math

import numpy as np
from numba import config as _numba_config
from numba import cuda

SOURCE_HASH = "{hash}"
SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)
sqrt = np.sqrt if SIMULATOR else math.sqrt
_device = cuda.jit(device=True) if SIMULATOR else cuda.jit(device=True, forceinline=True)
'''


def cuda_source(mod=None):
    """The numba.cuda module (text) for every rule, dtype and flag combination."""
    mod = mod or load_rules()
    out = [_CUDA_HEAD.format(hash=source_hash())]
    for fn in helpers(mod):
        out.append("\n@_device\n" + _python_def(fn) + "\n")
    sigs = signatures(mod)
    for sig in sigs.values():
        out.append("\n@_device\n" + _python_def(sig.fn) + "\n")
    for sig in sigs.values():
        for tag, (np_name, _, _) in DTYPES.items():
            for flags in flag_variants(sig):
                name = variant_name(sig, tag, flags)
                nw, ns = len(sig.written), len(sig.sums)
                if sig.grid:
                    out.append(_cuda_grid(sig, np_name, name, flags))
                    continue
                # a reduction: each thread sums its elements in float64, then adds its totals
                # to `out` (float64, one entry per sum) atomically
                args = _loop_args(sig) + (["out"] if ns else [])
                lines = ["\n@cuda.jit", f"def {name}({', '.join(args)}):"]
                lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
                lines += [f"    acc{j} = np.float64(0.0)" for j in range(ns)]
                lines += ["    start = cuda.grid(1)", "    stride = cuda.gridsize(1)",
                          f"    for i in range(start, a_{sig.arrays[0]}.shape[0], stride):",
                          f"        r = {_call(sig, flags, lambda a: f'a_{a}[i]')}"]
                lines += ["        " + s for s in _stores(sig, flags,
                                                          lambda a, v: f"a_{a}[i] = {v}")]
                lines += [f"        acc{j} += np.float64(r[{nw + j}])" for j in range(ns)]
                lines += [f"    cuda.atomic.add(out, {j}, acc{j})" for j in range(ns)]
                out.append("\n".join(lines) + "\n")
    return "".join(out)


def _cuda_grid(sig, np_name, name, flags, layout=None):
    """A grid rule's kernel: blocks stride over the rows, a block's threads over the row's
    columns; each thread adds its row sums in float64 and then atomically into ``o_rows[i]``,
    and each element's column terms atomically into ``o_cols[b, c, j]`` (float64).
    ``layout``: as :func:`_numba_grid`'s."""
    ns, nw = len(sig.sums), len(sig.written)
    first = sig.elements[0]
    args = _loop_args(sig) + ["n", "m", "o_rows", "o_cols"]
    if layout is not None:
        args += ["base", "step", "seed"]
    lines = ["\n@cuda.jit", f"def {name}({', '.join(args)}):"]
    lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
    if layout is not None:
        lines += ["    ubase = np.uint64(base)", "    ustep = np.uint32(step)",
                  "    useed = np.uint32(seed)"]
    element, store = _grid_access(sig, np_name, layout, "a_{a}[lo + j]")
    lines += [f"    R = a_{first}.shape[0] // m if m > 0 else 0",
              "    for i in range(cuda.blockIdx.x, R, cuda.gridDim.x):",
              "        b = i // n", "        lo = i * m"]
    lines += [f"        acc{j} = np.float64(0.0)" for j in range(ns)]
    lines += [f"        x_{a} = a_{a}[i]" for a in sig.rows]
    lines.append("        for j in range(cuda.threadIdx.x, m, cuda.blockDim.x):")
    load = (lambda a: f"x_{a}" if a in sig.rows else
            (f"a_{a}[b * m + j]" if a in sig.cols else element(a)))
    lines.append(f"            r = {_call(sig, flags, load)}")
    lines += ["            " + x for x in _stores(sig, flags, store)]
    lines += [f"            acc{j} += np.float64(r[{nw + j}])" for j in range(ns)]
    for c, cname in enumerate(sig.col_sums):
        j = sig.sums.index(cname)
        lines.append(f"            cuda.atomic.add(o_cols, (b, {c}, j), np.float64(r[{nw + j}]))")
    lines += [f"        cuda.atomic.add(o_rows, (i, {j}), acc{j})" for j in range(ns)]
    return "\n".join(lines) + "\n"


# -- storage layouts (Numba and CUDA): one module per variant, generated when first used -------

#: how a compiled loop reads an element of each format, as ``(expression, compute tag)``
def _load(fmt, ctag, a, elem=None):
    """The expression of an element of array ``a`` (format ``fmt``) in the compute dtype;
    ``elem`` is the element's storage expression (default ``a_<a>[i]``)."""
    elem = elem or f"a_{a}[i]"
    c = "np.float32" if ctag == "f32" else "np.float64"
    if fmt in ("q8s", "q8u"):   # map[code] * the block's (old) absmax, in float32
        expr = f"QMAP_{fmt[-1].upper()}[{elem}] * o_{a}"
        return expr if ctag == "f32" else f"np.float64({expr})"
    if fmt in ("f32", "f64"):
        return elem if fmt == ctag else f"{c}({elem})"
    decode = {"bf16": "bf16_decode", "f16": "f16_decode"}[fmt]
    expr = f"{decode}(np.uint32({elem}))"
    return expr if ctag == "f32" else f"np.float64({expr})"


def _store(fmt, ctag, a, value, k, stochastic, elem=None, index="i"):
    """The statement storing ``value`` into array ``a`` (format ``fmt``, not 8-bit): ``elem``
    the element's storage expression (default ``a_<a>[i]``), ``index`` its position in the
    row (stochastic rounding's element index, counted from ``ubase``)."""
    elem = elem or f"a_{a}[i]"
    if fmt in ("f32", "f64"):
        return f"{elem} = {value}" if fmt == ctag else \
            f"{elem} = np.{'float32' if fmt == 'f32' else 'float64'}({value})"
    encode = {"bf16": "bf16_encode", "f16": "f16_encode"}[fmt]
    x = value if ctag == "f32" else f"np.float32({value})"
    r = f"random_bits(ubase + np.uint64({index}), ustep, useed, np.uint32({k}))" if stochastic \
        else "np.uint32(0)"
    return f"{elem} = np.uint16({encode}({x}, {stochastic}, {r}))"


def _layout_parts(sig, ctag, flags, formats, rounding):
    """What every layout loop of a variant needs: the formats by array, the used 8-bit arrays
    (all, and those the rule writes), the rule's call (``r = rule(...)``, elements decoded),
    the stores of the written arrays (8-bit ones as the nearest code of value / ``m_<a>``,
    the block's new absmax) and the sums' terms."""
    stochastic = rounding == "stochastic"
    fmt = dict(zip(sig.arrays, formats))
    used = sig.used(flags)
    qs = [a for a in sig.arrays if a in used and fmt[a] in ("q8s", "q8u")]
    qw = [a for a in qs if a in sig.written]
    call = f"r = {_call(sig, flags, lambda a: _load(fmt[a], ctag, a))}"
    stores = []
    for k, a in enumerate(sig.arrays):
        if a in sig.written and a in used:
            w = sig.written.index(a)
            if a in qw:
                stores.append(f"a_{a}[i] = np.uint8({fmt[a]}_encode(np.float32(r[{w}]), m_{a}))")
            else:
                stores.append(_store(fmt[a], ctag, a, f"r[{w}]", k, stochastic))
    return fmt, qs, qw, call, stores


#: elements per thread chunk of the threaded Numba layout loops
LAYOUT_CHUNK = 4096


def _numba_layout_loop(sig, ctag, flags, formats, rounding, head, rng):
    """A Numba loop of one storage layout (``rng``: ``prange`` or ``range``): each element
    decoded, updated by the rule in the compute dtype and encoded.

    * Written 8-bit state: blocks of 256; per block the rule runs twice over its elements,
      first to find each 8-bit array's new absmax (nothing written), then to store every array
      -- the 8-bit ones as the nearest code of value / new absmax -- and the new absmax last
      (the second pass decodes with the old one).  Both passes compute the same values, so no
      block buffer is needed.  8-bit state only read is decoded with its block's absmax.
    * A reduction (``sums``): the same blocks of SUM_BLOCK elements, SUM_LANES float64 lanes
      and order of additions as the native loops (:func:`numba_source`), so the totals do not
      depend on the threads; the 8-bit blocks of 256 nest in them."""
    np_name = DTYPES[ctag][0]
    fmt, qs, qw, call, stores = _layout_parts(sig, ctag, flags, formats, rounding)
    ns, nw, L = len(sig.sums), len(sig.written), SUM_LANES
    terms = [f"t{j}[i - lo] = r[{nw + j}]" for j in range(ns)]
    lines = [head]
    lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
    lines += ["    ubase = np.uint64(base)", "    ustep = np.uint32(step)",
              "    useed = np.uint32(seed)", f"    n = a_{sig.arrays[0]}.size"]

    used = [a for a in sig.arrays if a in sig.used(flags)]

    def on_views(lines_, p, c0, c1):
        """``lines_`` (a loop body over ``i``) on views of [c0, c1): LLVM vectorizes an element
        loop inside a ``prange`` (or a block) only when it indexes views with the loop's own
        counter -- on ``a[i]`` the threaded bfloat16 AdamW loop was 10x slower per element than
        the serial one.  ``i`` stays the element's position (stochastic rounding's counter,
        the 8-bit block, the sums' lanes); the same operations in the same order."""
        out = [f"{p}v_{a} = a_{a}[{c0}:{c1}]" for a in used]
        out += [f"{p}for j in range({c1} - {c0}):", f"{p}    i = {c0} + j"]
        return out + [re.sub(r"\ba_(\w+)\[i\]", r"v_\1[j]", x) for x in lines_]

    def elements(ind, i0, i1, rng_="range"):
        """The elements [i0, i1) (with written 8-bit state: one block of 256)."""
        p = " " * ind
        out = []
        if qw:
            for a in qw:
                out += [f"{p}m_{a} = np.float32(0.0)", f"{p}b_{a} = False"]
            first = [f"{p}    {call}"]
            for a in qw:
                w = sig.written.index(a)
                first += [f"{p}    v = np.float32(r[{w}])", f"{p}    av = abs(v)",
                          f"{p}    if av > m_{a}:", f"{p}        m_{a} = av",
                          f"{p}    if v != v:", f"{p}        b_{a} = True"]
            out += on_views(first, p, i0, i1)
            for a in qw:
                out += [f"{p}if b_{a}:", f"{p}    m_{a} = np.float32(np.nan)"]
            return out + on_views([f"{p}    {x}" for x in [call] + stores + terms], p, i0, i1)
        body = [f"{p}    o_{a} = x_{a}[i // 256]" for a in qs] + [f"{p}    {call}"]
        body += [f"{p}    {x}" for x in stores + terms]
        if rng_ == "prange":    # chunks of LAYOUT_CHUNK elements over the threads
            out += [f"{p}for ch in prange(({i1} - {i0} + {LAYOUT_CHUNK - 1}) // {LAYOUT_CHUNK}):",
                    f"{p}    c0 = {i0} + ch * {LAYOUT_CHUNK}",
                    f"{p}    c1 = min({i1}, c0 + {LAYOUT_CHUNK})"]
            return out + on_views(["    " + x for x in body], p + "    ", "c0", "c1")
        if rng_ == "range" and ind > 4:     # (inside a reduction's prange over its blocks)
            return out + on_views(body, p, i0, i1)
        return out + [f"{p}for i in {rng_}({i0}, {i1}):"] + body

    def blocks(ind, b0, b1, rng_):
        p = " " * ind
        out = [f"{p}for blk in {rng_}({b0}, {b1}):", f"{p}    i0 = blk * 256",
               f"{p}    i1 = min(i0 + 256, n)"]
        out += [f"{p}    o_{a} = x_{a}[blk]" for a in qs]
        out += elements(ind + 4, "i0", "i1")
        out += [f"{p}    x_{a}[blk] = m_{a}" for a in qw]
        return out

    if not ns:
        if qw:
            lines += blocks(4, "0", "(n + 255) // 256", rng)
        else:
            lines += elements(4, "0", "n", rng)
        return "\n".join(lines) + "\n"
    lines += ["    nb = (n + SUM_BLOCK - 1) // SUM_BLOCK", f"    part = np.zeros((nb, {ns}))",
              f"    for b in {rng}(nb):", "        lo = b * SUM_BLOCK",
              "        hi = min(n, lo + SUM_BLOCK)", "        m = hi - lo", f"        mL = m - m % {L}"]
    lines += [f"        t{j} = np.empty(SUM_BLOCK, dtype=np.{np_name})" for j in range(ns)]
    lines += blocks(8, "lo // 256", "(hi + 255) // 256", "range") if qw else \
        elements(8, "lo", "hi")
    inner, after = _numba_sum_tail(ns)
    return "\n".join(lines + inner + after) + "\n"


def _numba_sum_tail(ns):
    """A Numba reduction's end (every element of block ``b`` has put its terms in ``t<j>[0:m]``):
    the terms into SUM_LANES float64 lanes (element ``i`` into lane ``i % SUM_LANES``, in order),
    the lanes in order into ``part[b]``; after the blocks' loop, the blocks in order, returned.
    Returns (the lines inside the blocks' loop, the lines after it), indented for them."""
    L = SUM_LANES
    inner = [f"        lane{j} = np.zeros({L})" for j in range(ns)]
    inner.append(f"        for c in range(0, mL, {L}):")
    for j in range(ns):
        inner += [f"            for l in range({L}):",
                  f"                lane{j}[l] += np.float64(t{j}[c + l])"]
    inner += ["        for i in range(mL, m):"]
    inner += [f"            lane{j}[i - mL] += np.float64(t{j}[i])" for j in range(ns)]
    inner += [f"        acc{j} = 0.0" for j in range(ns)]
    inner += [f"        for l in range({L}):"]
    inner += [f"            acc{j} += lane{j}[l]" for j in range(ns)]
    inner += [f"        part[b, {j}] = acc{j}" for j in range(ns)]
    after = [f"    tot{j} = 0.0" for j in range(ns)]
    after.append("    for b in range(nb):")
    after += [f"        tot{j} += part[b, {j}]" for j in range(ns)]
    after.append(f"    return ({''.join(f'tot{j}, ' for j in range(ns))})")
    return inner, after


def _cuda_layout_kernel(sig, ctag, flags, formats, rounding, head):
    """The CUDA kernel of one storage layout.  Without written 8-bit state: a grid-stride loop
    (8-bit state only read is decoded with its block's absmax).  With it: one thread block of
    256 threads per block of 256 elements (grid-stride over blocks); each thread updates one
    element, the block's new absmax is a shared-memory reduction (NaN propagates), then each
    thread stores its code.  A reduction: each thread's terms summed in float64, added to
    ``out`` atomically at the end (so the last bits may vary between runs)."""
    np_name = DTYPES[ctag][0]
    fmt, qs, qw, call, stores = _layout_parts(sig, ctag, flags, formats, rounding)
    ns, nw = len(sig.sums), len(sig.written)
    acc = [f"acc{j} += np.float64(r[{nw + j}])" for j in range(ns)]
    lines = [head]
    lines += [f"    {s} = np.{np_name}(s_{s})" for s in sig.scalars]
    lines += ["    ubase = np.uint64(base)", "    ustep = np.uint32(step)",
              "    useed = np.uint32(seed)", f"    n = a_{sig.arrays[0]}.shape[0]"]
    lines += [f"    acc{j} = np.float64(0.0)" for j in range(ns)]
    if not qw:
        lines += ["    start = cuda.grid(1)", "    stride = cuda.gridsize(1)",
                  "    for i in range(start, n, stride):"]
        lines += [f"        o_{a} = x_{a}[i // 256]" for a in qs]
        lines += ["        " + x for x in [call] + stores + acc]
    else:
        lines += ["    nblk = (n + 255) // 256", "    t = cuda.threadIdx.x"]
        lines += [f"    sm_{a} = cuda.shared.array(256, np.float32)" for a in qw]
        lines += ["    for blk in range(cuda.blockIdx.x, nblk, cuda.gridDim.x):",
                  "        i = blk * 256 + t"]
        lines += [f"        o_{a} = x_{a}[blk]" for a in qs]
        lines += ["        if i < n:", "            " + call]
        for a in qw:
            lines.append(f"            sm_{a}[t] = abs(np.float32(r[{sig.written.index(a)}]))")
        lines += ["        else:"] + [f"            sm_{a}[t] = np.float32(0.0)" for a in qw]
        lines += ["        cuda.syncthreads()", "        h = 128", "        while h > 0:",
                  "            if t < h:"]
        for a in qw:
            lines += [f"                p = sm_{a}[t]", f"                q = sm_{a}[t + h]",
                      f"                sm_{a}[t] = p if (p > q or p != p) else q"]
        lines += ["            cuda.syncthreads()", "            h //= 2"]
        lines += [f"        m_{a} = sm_{a}[0]" for a in qw]
        lines += ["        if i < n:"] + ["            " + x for x in [call] + stores + acc]
        lines.append("        cuda.syncthreads()")
        lines += ["        if t == 0:"] + [f"            x_{a}[blk] = m_{a}" for a in qw]
    lines += [f"    cuda.atomic.add(out, {j}, acc{j})" for j in range(ns)]
    return "\n".join(lines) + "\n"


_LAYOUT_HEAD = {
    "numba": '''"""Numba loops of one storage layout, generated by fastopt.kernels._codegen: do not edit.

Source hash {hash}.
"""
import numpy as np
from numba import njit, prange

from fastopt.kernels._numba_bits import f32_bits, f32_from_bits

SOURCE_HASH = "{hash}"
u32, u64, f32 = np.uint32, np.uint64, np.float32
SUM_BLOCK = {sum_block}
GRID_ROWS = {grid_rows}
# no fastmath at all: IEEE arithmetic (no contraction into FMA, no reciprocal approximation),
# so the value a 16-bit store rounds -- and so the stored bits -- are the same on every backend
_FM = False
sqrt = np.sqrt
_inline = njit(inline="always", fastmath=_FM, error_model="numpy", nogil=True)
_par = njit(parallel=True, fastmath=_FM, error_model="numpy", nogil=True, cache=True)
_ser = njit(fastmath=_FM, error_model="numpy", nogil=True, cache=True)
''',
    "cuda": '''"""numba.cuda kernel of one storage layout, generated by fastopt.kernels._codegen: do not edit.

Source hash {hash}.
"""
import math

import numpy as np
from numba import config as _numba_config
from numba import cuda

SOURCE_HASH = "{hash}"
SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)
u32, u64, f32 = np.uint32, np.uint64, np.float32
sqrt = np.sqrt if SIMULATOR else math.sqrt
_device = cuda.jit(device=True) if SIMULATOR else cuda.jit(device=True, forceinline=True)
if SIMULATOR:
    def f32_bits(x):
        return np.array(x, np.float32).view(np.uint32)[()]

    def f32_from_bits(u):
        return np.array(u, np.uint32).view(np.float32)[()]
else:
    from numba.cuda import libdevice

    @_device
    def f32_bits(x):
        return np.uint32(libdevice.float_as_int(x))

    @_device
    def f32_from_bits(u):
        return libdevice.int_as_float(np.int32(u))
'''}


def layout_source(kind, sig, ctag, flags, formats, rounding, name, mod=None):
    """The module (text) holding one layout variant: ``kind`` is ``"numba"`` (a ``prange``
    loop and its serial twin, ``<name>_par`` / ``<name>_ser``) or ``"cuda"`` (a grid-stride
    kernel ``<name>``).  Each element is decoded from its storage format, updated by the rule
    in the compute dtype and encoded back (stochastic rounding: the counter-based bits of
    ``(seed, step, base + i, array)``).  A grid rule's loop is :func:`_numba_grid` /
    :func:`_cuda_grid` with its element arrays decoded and encoded the same way."""
    mod = mod or load_rules()
    deco = "@_inline" if kind == "numba" else "@_device"
    out = [_LAYOUT_HEAD[kind].format(hash=source_hash(), sum_block=SUM_BLOCK,
                                     grid_rows=GRID_ROWS), _python_tables()]
    for fn in load_codecs():
        out.append(f"\n{deco}\n" + _python_def(fn) + "\n")
    for fn in helpers(mod):
        out.append(f"\n{deco}\n" + _python_def(fn) + "\n")
    out.append(f"\n{deco}\n" + _python_def(getattr(mod, sig.name)) + "\n")
    np_name = DTYPES[ctag][0]
    if sig.grid:
        layout = (formats, rounding == "stochastic")
        if kind == "numba":
            out += [_numba_grid(sig, np_name, name, flags, k, rng, layout)
                    for k, rng in (("par", "prange"), ("ser", "range"))]
        else:
            out.append(_cuda_grid(sig, np_name, name, flags, layout))
        return "".join(out)
    qs = [a for a, f in zip(sig.arrays, formats) if f in ("q8s", "q8u")]
    loop = _loop_args(sig)
    args = ", ".join(loop[:len(sig.arrays)] + [f"x_{a}" for a in qs] + loop[len(sig.arrays):]
                     + ["base", "step", "seed"] + (["out"] if sig.sums and kind == "cuda"
                                                   else []))
    if kind == "numba":
        for kind_, rng in (("par", "prange"), ("ser", "range")):
            out.append("\n" + _numba_layout_loop(sig, ctag, flags, formats, rounding,
                                                  f"@_{kind_}\ndef {name}_{kind_}({args}):",
                                                  rng))
    else:
        out.append("\n" + _cuda_layout_kernel(sig, ctag, flags, formats, rounding,
                                               f"@cuda.jit\ndef {name}({args}):"))
    return "".join(out)


# -- Cython ------------------------------------------------------------------------------------

_CYTHON_HEAD = '''\
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, infer_types=False
"""Cython kernels generated by fastopt.kernels._codegen from rules.py: do not edit.

Source hash {hash}.  Every rule and helper is a ``cdef inline ... noexcept nogil`` function per
dtype; every (rule, dtype, flags) variant is a ``nogil`` loop over ``__restrict__`` pointers
(serial below ``threshold`` elements, ``prange(schedule='static')`` above) and a ``def`` entry
point that steps each row of a table of buffers: ``table`` is the address of ``count`` rows of
``1 + len(arrays)`` machine words, ``(n, address of each array)``, 0 for an unused array;
``scalars`` is the tuple of the step's scalars; the thread threshold is read from
``fastopt.config.PARALLEL_THRESHOLD`` at every call.
"""
from cython.parallel cimport parallel, prange
from libc.math cimport sqrt, sqrtf
from libc.math cimport fabs, fabsf, NAN, INFINITY
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc

from fastopt import config as _config

cdef extern from "_omp_shim.h":
    int FASTOPT_OPENMP
    int fastopt_omp_max_threads() noexcept nogil

cdef extern from *:
    ctypedef float* f32_p "float * __restrict__"
    ctypedef const float* f32_cp "const float * __restrict__"
    ctypedef double* f64_p "double * __restrict__"
    ctypedef const double* f64_cp "const double * __restrict__"

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    static inline uint32_t fastopt_f32_bits(float x) {{ uint32_t u; memcpy(&u, &x, 4); return u; }}
    static inline float fastopt_f32_from_bits(uint32_t u) {{ float x; memcpy(&x, &u, 4); return x; }}
    #if defined(__GNUC__) || defined(__clang__)
    #define fastopt_prefetch(p) __builtin_prefetch((const void*)(p))
    #else
    #define fastopt_prefetch(p) ((void)0)
    #endif
    /* A grid rule's fold of a chunk's 64 terms t into its row's 8 float64 lanes: x[l] = t[l] +
     * t[8 + l] + ... + t[56 + l] in the compute dtype (that order), then lane[l] += x[l] in
     * double.  Written on whole vectors: gcc scalarized the same loops in the generated C
     * (56 dependent scalar additions a chunk kept the read-only passes at 0.65 of the
     * bandwidth); every lane is added in the same order, so the bits are the loops'. */
    #if defined(__GNUC__) || defined(__clang__)
    typedef float fastopt_v8f __attribute__((vector_size(32)));
    typedef double fastopt_v8d __attribute__((vector_size(64)));
    /* (8 lanes a vector: one 256-bit add per 8 terms and one 512-bit conversion and add
       where the build has them, pairs or quadruples of narrower ones elsewhere -- the
       same additions per lane either way; 4-lane halves cost the AVX-512 build a third
       of the read-only passes' time in shuffles) */
    static inline void fastopt_fold8_f32(const float* t, double* lane) {{
        fastopt_v8f a, c;
        fastopt_v8d la;
        memcpy(&a, t, 32);
        for (int q = 1; q < 8; q++) {{
            memcpy(&c, t + 8 * q, 32);
            a = a + c;
        }}
        memcpy(&la, lane, 64);
        la = la + __builtin_convertvector(a, fastopt_v8d);
        memcpy(lane, &la, 64);
    }}
    static inline void fastopt_fold8_f64(const double* t, double* lane) {{
        fastopt_v8d a, c, la;
        memcpy(&a, t, 64);
        for (int q = 1; q < 8; q++) {{
            memcpy(&c, t + 8 * q, 64);
            a = a + c;
        }}
        memcpy(&la, lane, 64);
        la = la + a;
        memcpy(lane, &la, 64);
    }}
    #else
    static inline void fastopt_fold8_f32(const float* t, double* lane) {{
        for (int l = 0; l < 8; l++) {{
            float x = t[l];
            for (int q = 1; q < 8; q++) x = x + t[8 * q + l];
            lane[l] += (double)x;
        }}
    }}
    static inline void fastopt_fold8_f64(const double* t, double* lane) {{
        for (int l = 0; l < 8; l++) {{
            double x = t[l];
            for (int q = 1; q < 8; q++) x = x + t[8 * q + l];
            lane[l] += x;
        }}
    }}
    #endif
    """
    void fastopt_prefetch(const void* p) noexcept nogil
    void fastopt_fold8_f32(const float* t, double* lane) noexcept nogil
    void fastopt_fold8_f64(const double* t, double* lane) noexcept nogil
    uint32_t f32_bits "fastopt_f32_bits"(float x) noexcept nogil
    float f32_from_bits "fastopt_f32_from_bits"(uint32_t u) noexcept nogil

# storage format codes (fastopt.kernels.formats.CODES) and the block size of layout loops
DEF FMT_F64 = 0
DEF FMT_F32 = 1
DEF FMT_BF16 = 2
DEF FMT_F16 = 3
DEF FMT_Q8S = 4
DEF FMT_Q8U = 5
DEF BLOCK = 256

#: Hash of the rules and generator this extension was built from (fastopt.kernels.cython
#: refuses a build whose hash differs from the installed sources).
SOURCE_HASH = "{hash}"
#: True when this extension was compiled with OpenMP (multi-threaded prange loops).
OPENMP = bool(FASTOPT_OPENMP)


def max_threads():
    """Threads a parallel loop uses (OpenMP's ``omp_get_max_threads()``; 1 without OpenMP)."""
    return fastopt_omp_max_threads()


cdef inline bint _finite_f32(float x) noexcept nogil:
    # x - x is 0 for finite x and NaN for +-Inf or NaN (exact without -ffast-math)
    return x - x == 0


cdef inline bint _finite_f64(double x) noexcept nogil:
    return x - x == 0


def all_finite_f32(uintptr_t address, Py_ssize_t n, Py_ssize_t threshold):
    """True when every element of the float32 buffer is finite."""
    cdef const float* x = <const float*>address
    cdef Py_ssize_t i, bad = 0
    if n < threshold:
        for i in range(n):
            if not _finite_f32(x[i]):
                return False
        return True
    for i in prange(n, nogil=True, schedule='static'):
        if not _finite_f32(x[i]):
            bad += 1
    return bad == 0


def all_finite_f64(uintptr_t address, Py_ssize_t n, Py_ssize_t threshold):
    """True when every element of the float64 buffer is finite."""
    cdef const double* x = <const double*>address
    cdef Py_ssize_t i, bad = 0
    if n < threshold:
        for i in range(n):
            if not _finite_f64(x[i]):
                return False
        return True
    for i in prange(n, nogil=True, schedule='static'):
        if not _finite_f64(x[i]):
            bad += 1
    return bad == 0


def all_finite_u16(uintptr_t address, Py_ssize_t n, unsigned int exponent,
                   Py_ssize_t threshold):
    """True when no element of the 16-bit float buffer has all ``exponent`` bits set (an
    Inf or NaN of bfloat16: 0x7F80, of float16: 0x7C00)."""
    cdef const unsigned short* x = <const unsigned short*>address
    cdef Py_ssize_t i, bad = 0
    cdef unsigned short e = <unsigned short>exponent
    if n < threshold:
        for i in range(n):
            if (x[i] & e) == e:
                return False
        return True
    for i in prange(n, nogil=True, schedule='static'):
        if (x[i] & e) == e:
            bad += 1
    return bad == 0
'''


class _CythonNames(ast.NodeTransformer):
    """Calls of helpers -> their typed twin; ``sqrt`` -> the C function of the dtype."""

    def __init__(self, tag, helper_names):
        self.tag, self.helper_names = tag, helper_names

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name):
            if node.func.id == "sqrt":
                node.func = ast.Name(DTYPES[self.tag][2], ast.Load())
            elif node.func.id in self.helper_names:
                node.func = ast.Name(f"{node.func.id}_{self.tag}", ast.Load())
            else:
                raise ValueError(f"unknown function {node.func.id!r} in a rule")
        return node


def _assigned(body, params):
    names = []
    for sub in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(sub, (ast.Assign, ast.AugAssign)):
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id not in params and n.id not in names:
                        names.append(n.id)
    return names


class _Constants(ast.NodeTransformer):
    """Flag names -> their values: each variant's C has constant conditions gcc folds away."""

    def __init__(self, values):
        self.values = values

    def visit_Name(self, node):
        if node.id in self.values:
            return ast.copy_location(ast.Constant(self.values[node.id]), node)
        return node


def _cython_helper(fn, tag, helper_names):
    """``cdef inline`` twin of a helper (one scalar result; ``x: bool`` parameters bint)."""
    ctype = DTYPES[tag][1]
    node = _fn_ast(fn)
    body = [_CythonNames(tag, helper_names).visit(s) for s in _body(node)]
    params = []
    for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
        flag = a.annotation is not None and ast.unparse(a.annotation) == "bool"
        params.append(("bint " if flag else f"{ctype} ") + a.arg)
    locals_ = _assigned(body, {p.split()[-1] for p in params})
    lines = [f"cdef inline {ctype} {fn.__name__}_{tag}({', '.join(params)}) noexcept nogil:"]
    if locals_:
        lines.append(f"    cdef {ctype} {', '.join(locals_)}")
    for stmt in body:
        lines.append(textwrap.indent(ast.unparse(stmt), "    "))
    return "\n".join(lines) + "\n"


_LOOP_NAMES = {"i", "n", "threshold", "r", "pk", "plo", "phi", "c", "l", "m", "lo", "hi",
               "part"}


def _cython_rule_body(sig, tag, flags, helper_names):
    """The rule's own body for one variant, to be inlined into the loop: (declared locals,
    statements computing the new values from the element locals, stores).

    The rule is not called as a function returning a ctuple: gcc keeps such a struct in memory
    in the serial loop and then does not vectorize it (seen with amsgrad's five arrays)."""
    node = _fn_ast(sig.fn)
    body = [_Constants(dict(zip(sig.flags, flags))).visit(
        _CythonNames(tag, helper_names).visit(st)) for st in _body(node)]
    ret, body = body[-1], body[:-1]
    used = sig.used(flags)
    locals_ = list(sig.arrays) + [v for v in _assigned(body, set(sig.arrays) | set(sig.scalars))]
    clash = _LOOP_NAMES & set(locals_) or {v for v in locals_ if v.startswith(("a_", "s_"))}
    if clash:
        raise ValueError(f"rule {sig.name}: local names {sorted(clash)} are reserved for loops")
    first = sig.arrays[0]
    loads = [f"{a} = a_{a}[i]" if a in used else f"{a} = a_{first}[i]  # unused: placeholder"
             for a in sig.arrays]
    stmts = [ast.unparse(st) for st in body]
    stores = [f"a_{a}[i] = {ast.unparse(v)}"
              for a, v in zip(sig.written, ret.value.elts) if a in used]
    # a reduction: each element's terms into the buffers of SUM_LANES elements from ``c`` (in
    # the compute dtype; _cython_reduction adds them up in float64 lanes)
    sums = [f"t{j}[i - c] = {ast.unparse(v)}"
            for j, v in enumerate(ret.value.elts[len(sig.written):])]
    return locals_, loads + stmts + stores + sums


_C_TYPES = {"u32": "uint32_t", "u64": "uint64_t", "f32": "float", "bool": "bint"}


class _CodecCalls(ast.NodeTransformer):
    """``u32(x)`` -> a C cast; other calls (codecs, the bit casts) keep their names."""

    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in _C_TYPES:
            return ast.copy_location(ast.Name(f"<{_C_TYPES[node.func.id]}>({ast.unparse(node.args[0])})",
                                              ast.Load()), node)
        return node


# codecs whose C body is the plain unsigned 32-bit operation (which wraps modulo 2**32 by the
# C standard: the Python bodies compute the same in 64 bits and mask); gcc vectorizes these in
# 32-bit lanes, where the masked 64-bit sums it kept in 64-bit lanes (stochastic rounding's
# hash, twice as slow)
_C_NATIVE = {"mul32": "a * b", "add32": "a + b"}


def _cython_codec(fn):
    """A storage codec of :mod:`fastopt.kernels._codecs` as a ``cdef inline`` C function (the
    annotations give the C types)."""
    node = _fn_ast(fn)
    ret = _C_TYPES[node.returns.value]
    params = [f"{_C_TYPES[a.annotation.value]} {a.arg}" for a in node.args.args]
    if fn.__name__ in _C_NATIVE:
        return (f"cdef inline {ret} {fn.__name__}({', '.join(params)}) noexcept nogil:\n"
                f"    return <{ret}>({_C_NATIVE[fn.__name__]})\n")
    decls, body = [], []
    for st in _body(node):
        if isinstance(st, ast.AnnAssign):
            decls.append(f"    cdef {_C_TYPES[st.annotation.value]} {st.target.id}")
            st = ast.Assign(targets=[st.target], value=st.value, lineno=st.lineno)
        body.append(textwrap.indent(ast.unparse(_CodecCalls().visit(st)), "    "))
    head = f"cdef inline {ret} {fn.__name__}({', '.join(params)}) noexcept nogil:"
    return "\n".join([head] + decls + body) + "\n"


_CYTHON_BLOCK_CODECS = '''

cdef inline void _decode_q8_f32(int fmt, uintptr_t codes, uintptr_t absmax, Py_ssize_t blk,
                                Py_ssize_t start, Py_ssize_t nb, float* dst) noexcept nogil:
    """Block ``blk`` of 8-bit codes, as float32 (``map[code] * absmax``), into ``dst``."""
    cdef Py_ssize_t j
    cdef const uint8_t* c = (<const uint8_t*>codes) + start
    cdef float a = (<const float*>absmax)[blk]
    cdef const float* q = &QMAP_S[0] if fmt == FMT_Q8S else &QMAP_U[0]
    for j in range(fastopt_q8_decode_simd(q, c, a, dst, nb), nb):
        dst[j] = q[c[j]] * a


cdef inline void _decode_q8_f64(int fmt, uintptr_t codes, uintptr_t absmax, Py_ssize_t blk,
                                Py_ssize_t start, Py_ssize_t nb, double* dst) noexcept nogil:
    cdef Py_ssize_t j
    cdef const uint8_t* c = (<const uint8_t*>codes) + start
    cdef float a = (<const float*>absmax)[blk]
    cdef const float* q = &QMAP_S[0] if fmt == FMT_Q8S else &QMAP_U[0]
    for j in range(nb):
        dst[j] = q[c[j]] * a


cdef inline void _q8_codes_f32(int fmt, const float* src, float m, uint8_t* c,
                               Py_ssize_t nb) noexcept nogil:
    """The nearest codes of ``src[j] / m``, ``j < nb`` (the SIMD path, then the tail)."""
    cdef Py_ssize_t j
    if fmt == FMT_Q8S:
        for j in range(fastopt_q8_encode_simd(1, src, m, c, nb), nb):
            c[j] = <uint8_t>q8s_encode(src[j], m)
    else:
        for j in range(fastopt_q8_encode_simd(0, src, m, c, nb), nb):
            c[j] = <uint8_t>q8u_encode(src[j], m)


cdef inline void _encode_q8_f32(int fmt, const float* src, uintptr_t codes, uintptr_t absmax,
                                Py_ssize_t blk, Py_ssize_t start, Py_ssize_t nb) noexcept nogil:
    """Requantize a block: its absmax (NaN if any value is NaN), then each value's nearest
    code of value / absmax."""
    cdef Py_ssize_t j
    cdef uint8_t* c = (<uint8_t*>codes) + start
    cdef float m = 0, a
    cdef int bad = 0
    for j in range(fastopt_absmax_simd(src, nb, &m, &bad), nb):
        a = fabsf(src[j])
        m = a if a > m else m
        bad = bad | (src[j] != src[j])
    if bad:
        m = NAN
    (<float*>absmax)[blk] = m
    _q8_codes_f32(fmt, src, m, c, nb)


cdef inline void _encode_q8_f64(int fmt, const double* src, uintptr_t codes, uintptr_t absmax,
                                Py_ssize_t blk, Py_ssize_t start, Py_ssize_t nb) noexcept nogil:
    cdef Py_ssize_t j
    cdef uint8_t* c = (<uint8_t*>codes) + start
    cdef float m = 0, a
    cdef bint bad = 0
    for j in range(nb):
        a = fabsf(<float>src[j])
        m = a if a > m else m
        bad = bad | (src[j] != src[j])
    if bad:
        m = NAN
    (<float*>absmax)[blk] = m
    if fmt == FMT_Q8S:
        for j in range(nb):
            c[j] = <uint8_t>q8s_encode(<float>src[j], m)
    else:
        for j in range(nb):
            c[j] = <uint8_t>q8u_encode(<float>src[j], m)


cdef inline void _decode_f32(int fmt, uintptr_t src, Py_ssize_t start, Py_ssize_t nb,
                             float* dst) noexcept nogil:
    """Elements [start, start + nb) of a stored array, as float32, into ``dst``."""
    cdef Py_ssize_t j
    cdef const uint16_t* h = (<const uint16_t*>src) + start
    if fmt == FMT_BF16:
        for j in range(nb):
            dst[j] = bf16_decode(h[j])
    elif fmt == FMT_F16:
        for j in range(nb):
            dst[j] = f16_decode(h[j])
    elif fmt == FMT_F64:
        for j in range(nb):
            dst[j] = <float>(<const double*>src)[start + j]
    else:
        for j in range(nb):
            dst[j] = (<const float*>src)[start + j]


cdef inline void _decode_f64(int fmt, uintptr_t src, Py_ssize_t start, Py_ssize_t nb,
                             double* dst) noexcept nogil:
    cdef Py_ssize_t j
    cdef const uint16_t* h = (<const uint16_t*>src) + start
    if fmt == FMT_BF16:
        for j in range(nb):
            dst[j] = bf16_decode(h[j])
    elif fmt == FMT_F16:
        for j in range(nb):
            dst[j] = f16_decode(h[j])
    elif fmt == FMT_F32:
        for j in range(nb):
            dst[j] = (<const float*>src)[start + j]
    else:
        for j in range(nb):
            dst[j] = (<const double*>src)[start + j]


cdef inline void _encode_f32(int fmt, const float* src, uintptr_t dst, Py_ssize_t start,
                             Py_ssize_t nb, bint stochastic, uint64_t index, uint32_t step,
                             uint32_t seed, uint32_t salt) noexcept nogil:
    """float32 values into elements [start, start + nb) of a stored array; ``index`` is the
    counter of the first of them (stochastic rounding's random bits)."""
    cdef Py_ssize_t j
    cdef uint16_t* h = (<uint16_t*>dst) + start
    cdef uint32_t lo = <uint32_t>(index & 0xFFFFFFFFULL)
    cdef uint32_t offset = key_offset(<uint32_t>(index >> 32), step, seed, salt)
    if stochastic and <uint64_t>lo + <uint64_t>nb > 0xFFFFFFFFULL:
        # the block crosses a multiple of 2**32 elements: the general hash, element by element
        for j in range(nb):
            if fmt == FMT_BF16:
                h[j] = <uint16_t>bf16_encode(src[j], 1, random_bits(index + <uint64_t>j, step,
                                                                    seed, salt))
            elif fmt == FMT_F16:
                h[j] = <uint16_t>f16_encode(src[j], 1, random_bits(index + <uint64_t>j, step,
                                                                   seed, salt))
        if fmt == FMT_BF16 or fmt == FMT_F16:
            return
    # stochastic: the key's high part hoisted, and the low part its own 32-bit counter (from
    # ``lo + <uint32_t>j`` gcc built 64-bit lanes of j and narrowed them in every iteration)
    if fmt == FMT_BF16:
        if stochastic:
            for j in range(nb):
                h[j] = <uint16_t>bf16_encode(src[j], 1, keyed_bits(lo, offset))
                lo = lo + 1
        else:
            for j in range(nb):
                h[j] = <uint16_t>bf16_encode(src[j], 0, 0)
    elif fmt == FMT_F16:
        if stochastic:
            for j in range(nb):
                h[j] = <uint16_t>f16_encode(src[j], 1, keyed_bits(lo, offset))
                lo = lo + 1
        else:
            for j in range(nb):
                h[j] = <uint16_t>f16_encode(src[j], 0, 0)
    elif fmt == FMT_F64:
        for j in range(nb):
            (<double*>dst)[start + j] = src[j]
    else:
        for j in range(nb):
            (<float*>dst)[start + j] = src[j]


cdef inline void _encode_f64(int fmt, const double* src, uintptr_t dst, Py_ssize_t start,
                             Py_ssize_t nb, bint stochastic, uint64_t index, uint32_t step,
                             uint32_t seed, uint32_t salt) noexcept nogil:
    cdef Py_ssize_t j
    cdef uint16_t* h = (<uint16_t*>dst) + start
    if fmt == FMT_BF16:
        for j in range(nb):
            h[j] = <uint16_t>bf16_encode(<float>src[j], stochastic,
                                         random_bits(index + <uint64_t>j, step, seed, salt)
                                         if stochastic else 0)
    elif fmt == FMT_F16:
        for j in range(nb):
            h[j] = <uint16_t>f16_encode(<float>src[j], stochastic,
                                        random_bits(index + <uint64_t>j, step, seed, salt)
                                        if stochastic else 0)
    elif fmt == FMT_F32:
        for j in range(nb):
            (<float*>dst)[start + j] = <float>src[j]
    else:
        for j in range(nb):
            (<double*>dst)[start + j] = src[j]


fastopt_q8_avx512 = fastopt_q8_avx512_supported()
fastopt_q8_vbmi = fastopt_q8_planes_init()


def q8_avx512(on=None):
    """Whether the 8-bit codecs run their AVX-512 paths (the default where the CPU has
    AVX-512F and DQ and this is the AVX2 build); ``on=False`` / ``True`` switches them (tests
    run both), ``True`` raising ValueError where they cannot run.  Returns the previous
    setting."""
    global fastopt_q8_avx512
    before = bool(fastopt_q8_avx512)
    if on is not None:
        if on and not fastopt_q8_avx512_supported():
            raise ValueError("q8_avx512: this build or CPU has no AVX-512 8-bit codecs")
        fastopt_q8_avx512 = 1 if on else 0
    return before


def q8_vbmi(on=None):
    """Whether the 8-bit decoder runs its AVX-512 VBMI path (byte permutes; the default where
    the CPU has VBMI and the AVX-512 paths run); ``on=False`` / ``True`` switches it (tests
    run both), ``True`` raising ValueError where it cannot run.  Returns the previous
    setting."""
    global fastopt_q8_vbmi
    before = bool(fastopt_q8_vbmi)
    if on is not None:
        if on and not fastopt_q8_vbmi_supported():
            raise ValueError("q8_vbmi: this build or CPU has no AVX-512 VBMI decoder")
        fastopt_q8_vbmi = 1 if on else 0
    return before


def decode_q8(uintptr_t codes, Py_ssize_t n, uintptr_t absmax, uintptr_t dst, bint signed):
    """The ``n`` codes at ``codes`` as float32 (``map[code] * absmax[block]``) into ``dst``,
    in blocks of BLOCK as the layout loops decode (for tests)."""
    cdef Py_ssize_t start
    cdef int fmt = FMT_Q8S if signed else FMT_Q8U
    with nogil:
        for start in range(0, n, BLOCK):
            _decode_q8_f32(fmt, codes, absmax, start // BLOCK, start,
                           BLOCK if n - start > BLOCK else n - start, (<float*>dst) + start)


def encode_q8(uintptr_t src, Py_ssize_t n, float m, uintptr_t codes, bint signed):
    """The nearest codes of the ``n`` float32 at ``src`` divided by ``m`` into the ``n`` bytes
    at ``codes``, in blocks of BLOCK as the layout loops encode (for tests)."""
    cdef Py_ssize_t start
    cdef int fmt = FMT_Q8S if signed else FMT_Q8U
    with nogil:
        for start in range(0, n, BLOCK):
            _q8_codes_f32(fmt, (<const float*>src) + start, m, (<uint8_t*>codes) + start,
                          BLOCK if n - start > BLOCK else n - start)
'''


# Adafactor's factors: the host arithmetic between a matrix's passes
# (fastopt.optimizers._adafactor), one call each instead of some twenty NumPy operations on
# vectors of rows and columns; the NumPy twin there (_factors_numpy, _scales_numpy) does the
# same operations in the same order, so the bits are the same with or without this extension.
_CYTHON_ADAFACTOR = """

cdef inline {c} _af_lerp_{t}({c} start, {c} end, {c} wt, bint small) noexcept nogil:
    # torch's lerp_ in the parameter's dtype (the weight and 1 - weight in it)
    if small:
        return start + wt * (end - start)
    return end - (end - start) * (<{c}>1 - wt)


def adafactor_factors_{t}(uintptr_t g_rows, uintptr_t g_cols, uintptr_t row_var,
                          uintptr_t col_var, Py_ssize_t B, Py_ssize_t n, Py_ssize_t m,
                          double w, double row_count, double col_count, uintptr_t row_sums):
    \"\"\"Adafactor's factors of ``B`` matrices of ``n x m``, in place: ``row_var[i] =
    lerp(row_var[i], sqrt(g_rows[i])**2 / row_count, w)`` (the norm rounded to {c} first, as
    torch's ``norm(...).square_().div_(...)``), ``col_var`` likewise from ``g_cols`` (float64
    sums); ``row_sums[b]`` (float64) is the sum of matrix ``b``'s new ``row_var``, added in
    order.\"\"\"
    cdef const double* gr = <const double*>g_rows
    cdef const double* gc = <const double*>g_cols
    cdef {c}* rv = <{c}*>row_var
    cdef {c}* cv = <{c}*>col_var
    cdef double* out = <double*>row_sums
    cdef {c} wt = <{c}>w
    cdef {c} rc = <{c}>row_count
    cdef {c} cc = <{c}>col_count
    cdef {c} norm
    cdef bint small = fabs(w) < 0.5
    cdef Py_ssize_t b, i, j
    cdef double s
    with nogil:
        for b in range(B):
            s = 0
            for i in range(b * n, b * n + n):
                norm = <{c}>sqrt(gr[i])
                rv[i] = _af_lerp_{t}(rv[i], norm * norm / rc, wt, small)
                s = s + <double>rv[i]
            out[b] = s
        for j in range(B * m):
            norm = <{c}>sqrt(gc[j])
            cv[j] = _af_lerp_{t}(cv[j], norm * norm / cc, wt, small)


def adafactor_scales_{t}(uintptr_t row_var, uintptr_t col_var, uintptr_t mean, Py_ssize_t B,
                         Py_ssize_t n, Py_ssize_t m, double eps1_sq, double grad_sign,
                         uintptr_t row_mean, uintptr_t row_scale, uintptr_t col_scale):
    \"\"\"Whether the update of these factors is separable (torch's clamp ``max(r*c/mean,
    eps1**2)`` active nowhere, every value finite: see ``fastopt.optimizers._adafactor``);
    then ``row_scale[i] = grad_sign * (1/sqrt(row_var[i]/mean[b]))`` and ``col_scale[j] =
    1/sqrt(col_var[j])``, else ``row_mean[i] = mean[b]`` (``mean``: one per matrix).\"\"\"
    cdef const {c}* rv = <const {c}*>row_var
    cdef const {c}* cv = <const {c}*>col_var
    cdef const {c}* mn = <const {c}*>mean
    cdef {c}* rm = <{c}*>row_mean
    cdef {c}* rs = <{c}*>row_scale
    cdef {c}* cs = <{c}*>col_scale
    cdef {c} r, gs = <{c}>grad_sign
    cdef {c} lo_r = INFINITY
    cdef {c} lo_c = INFINITY
    cdef {c} hi_r = 0
    cdef {c} hi_c = 0
    cdef bint finite = 1, separable
    cdef Py_ssize_t b, i, j
    cdef double lo, hi
    with nogil:
        for b in range(B):
            finite = finite & _finite_{t}(mn[b])
            for i in range(b * n, b * n + n):
                r = rv[i] / mn[b]
                finite = finite & _finite_{t}(rv[i]) & _finite_{t}(r)
                lo_r = r if r < lo_r else lo_r
                hi_r = r if r > hi_r else hi_r
                rs[i] = r
        for j in range(B * m):
            finite = finite & _finite_{t}(cv[j])
            lo_c = cv[j] if cv[j] < lo_c else lo_c
            hi_c = cv[j] if cv[j] > hi_c else hi_c
        lo = <double>lo_r * <double>lo_c
        hi = <double>hi_r * <double>hi_c
        separable = finite and lo > eps1_sq * 1.001 and lo > 0.0 and hi < {fmax} / 4
        if separable:
            for i in range(B * n):
                rs[i] = gs * (<{c}>1 / {sqrt}(rs[i]))
            for j in range(B * m):
                cs[j] = <{c}>1 / {sqrt}(cv[j])
        else:
            for b in range(B):
                for i in range(b * n, b * n + n):
                    rm[i] = mn[b]
    return separable
"""


def _cython_adafactor():
    """The Adafactor host helpers of :data:`_CYTHON_ADAFACTOR` for float32 and float64."""
    import numpy as np
    return "".join(_CYTHON_ADAFACTOR.format(
        t=t, c=c, sqrt=sq, fmax=repr(float(np.finfo(d).max)))
        for t, c, sq, d in (("f32", "float", "sqrtf", np.float32),
                            ("f64", "double", "sqrt", np.float64)))


def _cython_layout_variant(sig, tag, ctype, flags, helper_names):
    """The storage-layout loop of one (rule, compute dtype, flags) variant: blocks of 256
    elements; per block each array of another format is decoded into a per-thread scratch
    buffer (an array already in the compute dtype is used in place), the rule runs over the
    block, and the written arrays are encoded back (rounding to nearest or stochastically;
    8-bit state requantized to the block's new absmax; 8-bit state only read is just decoded).
    The formats are runtime codes, tested once per block and array, so one compiled loop
    serves every layout.

    A reduction: each block's terms are added into SUM_LANES float64 lanes per sum, the lanes
    of each SUM_BLOCK elements in order, then those blocks in order -- the order of the native
    loops (:func:`_cython_reduction`), so the totals do not depend on the threads."""
    name = variant_name(sig, tag, flags)
    used = sig.used(flags)
    own = "FMT_F32" if tag == "f32" else "FMT_F64"
    A = len(sig.arrays)
    ns, L = len(sig.sums), SUM_LANES
    locals_, body = _cython_rule_body(sig, tag, flags, helper_names)
    body = [b.replace("[i]", "[j]").replace("[i - c]", "[j]") for b in body]
    scal = [f"{ctype} {s}" for s in sig.scalars]
    ptrs = [f"{tag}_{'cp' if a in sig.readonly else 'p'} a_{a}" for a in sig.arrays if a in used]
    lanes = "double* lanes, " if ns else ""
    lines = [f"cdef void _{name}_lyblock(Py_ssize_t blk, Py_ssize_t n, const uintptr_t* addr, "
             f"const int* fmt, const uintptr_t* amax, {ctype}* scratch, {lanes}"
             f"{', '.join(scal + [''])}uint64_t base, "
             f"uint32_t step, uint32_t seed, bint stochastic) noexcept nogil:",
             "    cdef Py_ssize_t j",
             "    cdef Py_ssize_t start = blk * BLOCK",
             "    cdef Py_ssize_t nb = n - start if n - start < BLOCK else BLOCK",
             f"    cdef {ctype} {', '.join(locals_)}"]
    lines += [f"    cdef {ctype} t{j}[BLOCK]" for j in range(ns)]
    lines += [f"    cdef {p}" for p in ptrs]
    for k, a in enumerate(sig.arrays):
        if a not in used:
            continue
        lines += [f"    if fmt[{k}] == {own}:",
                  f"        a_{a} = (<{ctype}*>addr[{k}]) + start",
                  f"    elif fmt[{k}] >= FMT_Q8S:",
                  f"        _decode_q8_{tag}(fmt[{k}], addr[{k}], amax[{k}], blk, start, nb, "
                  f"scratch + {k} * BLOCK)",
                  f"        a_{a} = scratch + {k} * BLOCK",
                  "    else:",
                  f"        _decode_{tag}(fmt[{k}], addr[{k}], start, nb, scratch + {k} * BLOCK)",
                  f"        a_{a} = scratch + {k} * BLOCK"]
    lines.append("    for j in range(nb):")
    lines += [textwrap.indent(b, " " * 8) for b in body]
    # (a block starts at a multiple of SUM_LANES within its SUM_BLOCK: element j of the block
    # goes to lane j % SUM_LANES, as in the native loops; SUM_LANES at a time, so the lanes'
    # additions are vectors: one element at a time, they were half of LAMB's first pass)
    if ns:
        lines[1] = "    cdef Py_ssize_t j, c, l, cl"
        lines += [f"    for c in range(0, nb, {L}):", f"        cl = nb - c if nb - c < {L} else {L}",
                  "        for l in range(cl):"]
        lines += [f"            lanes[{j * L} + l] += <double>t{j}[c + l]" for j in range(ns)]
    for k, a in enumerate(sig.arrays):
        if a in used and a in sig.written:
            lines += [f"    if fmt[{k}] >= FMT_Q8S:",
                      f"        _encode_q8_{tag}(fmt[{k}], scratch + {k} * BLOCK, addr[{k}], "
                      f"amax[{k}], blk, start, nb)",
                      f"    elif fmt[{k}] != {own}:",
                      f"        _encode_{tag}(fmt[{k}], scratch + {k} * BLOCK, addr[{k}], start, "
                      f"nb, stochastic, base + <uint64_t>start, step, seed, {k})"]
    args = ", ".join(sig.scalars)
    rest = f"{args + ', ' if args else ''}base, step, seed, stochastic"
    head = (f"Py_ssize_t n, const uintptr_t* addr, const int* fmt, const uintptr_t* amax, "
            f"{', '.join(scal + [''])}uint64_t base, uint32_t step, uint32_t seed, "
            f"bint stochastic, Py_ssize_t threshold")
    if not ns:
        # the row driver: serial below the threshold, blocks over OpenMP threads above it
        call = f"_{name}_lyblock(blk, n, addr, fmt, amax, scratch, {rest})"
        lines += ["", "", f"cdef void _{name}_layout({head}) noexcept nogil:",
                  "    cdef Py_ssize_t blk, nblocks = (n + BLOCK - 1) // BLOCK",
                  f"    cdef {ctype}* scratch",
                  "    if n < threshold:",
                  f"        scratch = <{ctype}*>malloc({A} * BLOCK * sizeof({ctype}))",
                  "        for blk in range(nblocks):",
                  f"            {call}",
                  "        free(scratch)",
                  "        return",
                  "    with parallel():",
                  f"        scratch = <{ctype}*>malloc({A} * BLOCK * sizeof({ctype}))",
                  "        for blk in prange(nblocks, schedule='static'):",
                  f"            {call}",
                  "        free(scratch)"]
    else:
        # a reduction's row driver: SUM_BLOCKs (of SUM_BLOCK // BLOCK blocks each) serially or
        # over the threads, each with its lanes; then the SUM_BLOCKs' sums in order
        per = SUM_BLOCK // 256
        call = f"_{name}_lyblock(blk, n, addr, fmt, amax, scratch, lanes, {rest})"
        lines += ["", "", f"cdef void _{name}_lysum(Py_ssize_t sb, Py_ssize_t n, "
                  f"const uintptr_t* addr, const int* fmt, const uintptr_t* amax, "
                  f"{ctype}* scratch, double* lanes, double* part, "
                  f"{', '.join(scal + [''])}uint64_t base, uint32_t step, uint32_t seed, "
                  f"bint stochastic) noexcept nogil:",
                  "    cdef Py_ssize_t blk, l, b1 = (n + BLOCK - 1) // BLOCK",
                  "    cdef double acc",
                  f"    if b1 > (sb + 1) * {per}:", f"        b1 = (sb + 1) * {per}",
                  f"    for l in range({ns * L}):", "        lanes[l] = 0",
                  f"    for blk in range(sb * {per}, b1):", f"        {call}"]
        for j in range(ns):
            lines += ["    acc = 0", f"    for l in range({L}):",
                      f"        acc = acc + lanes[{j * L} + l]", f"    part[sb * {ns} + {j}] = acc"]
        scall = f"_{name}_lysum(sb, n, addr, fmt, amax, scratch, lanes, part, {rest})"
        lines += ["", "", f"cdef void _{name}_layout({head}, double* out) noexcept nogil:",
                  f"    cdef Py_ssize_t sb, nsb = (n + {SUM_BLOCK - 1}) // {SUM_BLOCK}",
                  f"    cdef {ctype}* scratch",
                  "    cdef double* lanes",
                  f"    cdef double* part = <double*>malloc((nsb if nsb else 1) * {ns} * "
                  f"sizeof(double))",
                  f"    cdef double {', '.join(f'tot{j} = 0' for j in range(ns))}",
                  "    if n < threshold:",
                  f"        scratch = <{ctype}*>malloc({A} * BLOCK * sizeof({ctype}))",
                  f"        lanes = <double*>malloc({ns * L} * sizeof(double))",
                  "        for sb in range(nsb):",
                  f"            {scall}",
                  "        free(scratch)", "        free(lanes)",
                  "    else:",
                  "        with parallel():",
                  f"            scratch = <{ctype}*>malloc({A} * BLOCK * sizeof({ctype}))",
                  f"            lanes = <double*>malloc({ns * L} * sizeof(double))",
                  "            for sb in prange(nsb, schedule='static'):",
                  f"                {scall}",
                  "            free(scratch)", "            free(lanes)",
                  "    for sb in range(nsb):"]
        lines += [f"        tot{j} += part[sb * {ns} + {j}]" for j in range(ns)]
        lines += [f"    out[{j}] = tot{j}" for j in range(ns)]
        lines.append("    free(part)")
    # the entry point: rows (n, base, address x A, format code x A, absmax address x A)
    width = 2 + 3 * A
    nsc = len(sig.scalars)
    lines += ["", "", f"def {name}_layout(uintptr_t table, Py_ssize_t count, tuple scalars, "
              "uint32_t step=0, uint32_t seed=0, bint stochastic=False"
              + (", uintptr_t out=0" if ns else "") + "):",
              f'    """{sig.name} ({tag}, flags {dict(zip(sig.flags, flags))}) over `count` rows '
              f'of (n, base, {A} addresses, {A} format codes, {A} absmax addresses)'
              + (f'; `out`: the address of count x {ns} doubles, the sums '
                 f'({", ".join(sig.sums)}) of each row' if ns else '') + '."""',
              "    cdef const uintptr_t* t = <const uintptr_t*>table",
              "    cdef Py_ssize_t k, q",
              f"    cdef int fmt[{A}]",
              f"    cdef uintptr_t addr[{A}]",
              f"    cdef uintptr_t amax[{A}]",
              "    cdef Py_ssize_t threshold = _config.PARALLEL_THRESHOLD",
              f"    if len(scalars) != {nsc}:",
              f"        raise ValueError(f'{name}_layout takes {nsc} scalars, got "
              f"{{len(scalars)}}')"]
    if ns:
        lines += ["    if count and not out:",
                  f"        raise ValueError('{name}_layout: a reduction needs `out`')"]
    lines += [f"    cdef {ctype} {s} = <{ctype}><double>scalars[{j}]"
              for j, s in enumerate(sig.scalars)]
    lines += ["    with nogil:", "        for k in range(count):",
              f"            for q in range({A}):",
              f"                addr[q] = t[k * {width} + 2 + q]",
              f"                fmt[q] = <int>t[k * {width} + 2 + {A} + q]",
              f"                amax[q] = t[k * {width} + 2 + {2 * A} + q]",
              f"            _{name}_layout(<Py_ssize_t>t[k * {width}], addr, fmt, amax, "
              f"{args + ', ' if args else ''}<uint64_t>t[k * {width} + 1], step, seed, "
              f"stochastic, threshold" + (f", (<double*>out) + k * {ns}" if ns else "") + ")"]
    return "\n".join(lines) + "\n"


def cython_source(mod=None):
    """The complete ``.pyx`` (text) for every rule, dtype and flag combination."""
    mod = mod or load_rules()
    hs = helpers(mod)
    names = {fn.__name__ for fn in hs}
    sigs = signatures(mod)
    out = [_CYTHON_HEAD.format(hash=source_hash()), _cython_tables()]
    for fn in load_codecs():
        out.append("\n\n" + _cython_codec(fn))
    out.append(_CYTHON_BLOCK_CODECS)
    out.append(_cython_adafactor())
    for tag in DTYPES:
        for fn in hs:
            out.append("\n\n" + _cython_helper(fn, tag, names))
    for sig in sigs.values():
        for tag, (_, ctype, _) in DTYPES.items():
            for flags in flag_variants(sig):
                if sig.grid:
                    out.append("\n\n" + _cython_grid(sig, tag, ctype, flags, names))
                    out.append("\n\n" + _cython_grid_layout(sig, tag, ctype, flags, names))
                    continue
                out.append("\n\n" + _cython_variant(sig, tag, ctype, flags, names))
                out.append("\n\n" + _cython_layout_variant(sig, tag, ctype, flags, names))
    return "".join(out)


def _cython_reduction(name, ptrs, scal, ctype, locals_, body, sig, used, ns):
    """A reduction's loops: ``_<name>_block`` sums one block of ``SUM_BLOCK`` elements in double;
    ``_<name>`` runs the blocks (serially, or split over threads), then adds the blocks' sums in
    order: the same bits on any thread count."""
    args = [a.split()[-1] for a in ptrs] + [x.split()[-1] for x in scal]
    L = SUM_LANES
    lines = [f"cdef void _{name}_block(Py_ssize_t lo, Py_ssize_t hi, {', '.join(ptrs + scal)}, "
             f"double* part) noexcept nogil:",
             f"    cdef Py_ssize_t i, c, l, m = hi - lo, m{L} = m - m % {L}",
             f"    cdef {ctype} {', '.join(locals_)}",
             f"    cdef {ctype} {', '.join(f't{j}[{L}]' for j in range(ns))}",
             f"    cdef double {', '.join(f'lane{j}[{L}]' for j in range(ns))}",
             f"    cdef double {', '.join(f'acc{j} = 0' for j in range(ns))}"]
    lines += [f"    for l in range({L}):"] + [f"        lane{j}[l] = 0" for j in range(ns)]
    # SUM_LANES elements at a time: the element loop (no reduction in it: vectorized like
    # every other loop) stores their terms, which are added into the lanes at once, so the
    # memory streams never wait for a block's additions (the order is SUM_LANES's: the same
    # bits as one element loop over the block, then the lanes row by row)
    lines += [f"    for c in range(lo, lo + m{L}, {L}):"]
    # (every cache line of each array prefetched PREFETCH_BYTES ahead, as the grid
    # loops: LAMB's first pass waited on memory without it)
    step = 64 // (4 if ctype == "float" else 8)
    ahead = _prefetch_ahead("f32" if ctype == "float" else "f64")
    lines += [f"        fastopt_prefetch({a.split()[-1]} + c + {ahead + off})"
              for a in ptrs for off in range(0, L, step)]
    lines += [f"        for i in range(c, c + {L}):"]
    lines += [textwrap.indent(b, " " * 12) for b in body]
    for j in range(ns):
        lines += [f"        for l in range({L}):", f"            lane{j}[l] += <double>t{j}[l]"]
    lines += [f"    c = lo + m{L}", "    for i in range(c, hi):"]
    lines += [textwrap.indent(b, " " * 8) for b in body]
    lines += [f"    for l in range(m - m{L}):"]
    lines += [f"        lane{j}[l] += <double>t{j}[l]" for j in range(ns)]
    lines += [f"    for l in range({L}):"] + [f"        acc{j} += lane{j}[l]" for j in range(ns)]
    lines += [f"    part[{j}] = acc{j}" for j in range(ns)]
    call = f"_{name}_block(b * {SUM_BLOCK}, hi, {', '.join(args)}, part + b * {ns})"
    lines += ["", "", f"cdef void _{name}(Py_ssize_t n, {', '.join(ptrs + scal)}, "
              f"Py_ssize_t threshold, double* out) noexcept nogil:",
              f"    cdef Py_ssize_t b, hi, nb = (n + {SUM_BLOCK - 1}) // {SUM_BLOCK}",
              f"    cdef double* part = <double*>malloc((nb if nb else 1) * {ns} * sizeof(double))",
              f"    cdef double {', '.join(f'tot{j} = 0' for j in range(ns))}",
              "    if n < threshold:", "        for b in range(nb):",
              f"            hi = min(n, (b + 1) * {SUM_BLOCK})", f"            {call}",
              "    else:", "        for b in prange(nb, schedule='static'):",
              f"            hi = min(n, (b + 1) * {SUM_BLOCK})", f"            {call}",
              "    for b in range(nb):"]
    lines += [f"        tot{j} += part[b * {ns} + {j}]" for j in range(ns)]
    lines += [f"    out[{j}] = tot{j}" for j in range(ns)]
    lines.append("    free(part)")
    return lines


def _grid_rule_body(sig, tag, flags, helper_names):
    """A grid rule's body for the Cython loops: ``(return statement, statements, locals)``,
    flags made constants and calls made C's; a local named like a loop variable raises."""
    node = _fn_ast(sig.fn)
    body = [_Constants(dict(zip(sig.flags, flags))).visit(
        _CythonNames(tag, helper_names).visit(st)) for st in _body(node)]
    ret, body = body[-1], body[:-1]
    locals_ = list(sig.arrays) + _assigned(body, set(sig.arrays) | set(sig.scalars))
    clash = (_LOOP_NAMES | {"j", "k", "b", "lo", "r0", "r1", "c", "cl", "l", "m", "mL", "acc"}) \
        & set(locals_)
    if clash:
        raise ValueError(f"rule {sig.name}: local names {sorted(clash)} are reserved for loops")
    return ret, body, locals_


def _cython_grid(sig, tag, ctype, flags, helper_names):
    """A grid rule's loops (as :func:`_numba_grid`, the same order of additions): a block
    function over GRID_ROWS rows, serial below the threshold or ``prange`` over the blocks, and
    a ``def`` entry point taking the arrays' addresses."""
    name = variant_name(sig, tag, flags)
    ns, nc, L = len(sig.sums), len(sig.col_sums), SUM_LANES
    ptrs = [f"{tag}_{'cp' if a not in sig.written else 'p'} a_{a}" for a in sig.arrays]
    scal = [f"{ctype} {x}" for x in sig.scalars]
    ret, body, locals_ = _grid_rule_body(sig, tag, flags, helper_names)
    inner = [f"{a} = a_{a}[b * m + j]" if a in sig.cols else f"{a} = a_{a}[lo + j]"
             for a in sig.arrays if a not in sig.rows]
    inner += [ast.unparse(st) for st in body]
    inner += [f"a_{a}[lo + j] = {ast.unparse(v)}" for a, v in zip(sig.written, ret.value.elts)]
    inner += [f"t{j}[j] = {ast.unparse(v)}"
              for j, v in enumerate(ret.value.elts[len(sig.written):])]
    args = [p.split()[-1] for p in ptrs + scal]
    lines = [f"cdef void _{name}_block(Py_ssize_t k, Py_ssize_t n, Py_ssize_t m, Py_ssize_t nb, "
             f"{', '.join(ptrs + scal)}, double* o_rows, double* o_cols) noexcept nogil:",
             f"    cdef Py_ssize_t b = k // nb, i, j, l, c, lo, mL = m - m % {L}",
             f"    cdef Py_ssize_t r0 = b * n + (k - b * nb) * {GRID_ROWS}",
             f"    cdef Py_ssize_t r1 = min(b * n + n, r0 + {GRID_ROWS})",
             f"    cdef {ctype} {', '.join(locals_)}",
             "    cdef double acc"]
    G = GRID_FOLD
    lines += [f"    cdef {ctype} t{j}[{L}]" for j in range(ns)]
    lines += [f"    cdef double lane{j}[{G}]" for j in range(ns)]
    lines += [f"    cdef double* cp{c} = o_cols + (k * {nc} + {c}) * m" for c in range(nc)]
    lines += [f"    cdef {ctype}* cf{c} = <{ctype}*>calloc(m, sizeof({ctype}))" for c in range(nc)]
    lines += ["    for i in range(r0, r1):", "        lo = i * m"]
    lines += [f"        {a} = a_{a}[i]" for a in sig.rows]
    line = 64 // (4 if tag == "f32" else 8)      # elements per cache line
    if not ns:
        # (chunks of SUM_LANES, every cache line of each element array prefetched
        # PREFETCH_BYTES ahead: Adafactor's update pass ran 3.5 -> 2.5 ms so in a C replica)
        lines += [f"        for c in range(0, mL, {L}):"]
        lines += [f"            fastopt_prefetch(a_{a} + lo + c + {_prefetch_ahead(tag) + off})"
                  for a in sig.elements for off in range(0, L, line)]
        lines += [f"            for j in range(c, c + {L}):"]
        lines += [textwrap.indent(x, " " * 16) for x in inner]
        lines += ["        for j in range(mL, m):"] + [textwrap.indent(x, " " * 12) for x in inner]
    else:
        # chunks of SUM_LANES elements (as _numba_grid: the same order of additions)
        cols = [(c, sig.sums.index(cname)) for c, cname in enumerate(sig.col_sums)]
        # (the sums' terms into the chunk's buffers: t<s>[j - c])
        nterm = len(inner) - ns
        chunk = inner[:nterm] + [x.replace("[j] = ", "[j - c] = ", 1) for x in inner[nterm:]]
        # (GRID_FOLD partial sums per chunk, as _numba_grid: the same operations in order)
        lines += [f"        for l in range({G}):"] + \
            [f"            lane{j}[l] = 0" for j in range(ns)]
        # (every cache line of each element array prefetched PREFETCH_BYTES ahead:
        # the hardware prefetcher alone left these read-mostly loops waiting on memory)
        lines += [f"        for c in range(0, mL, {L}):"]
        lines += [f"            fastopt_prefetch(a_{a} + lo + c + {_prefetch_ahead(tag) + off})"
                  for a in sig.elements for off in range(0, L, line)]
        lines += [f"            for j in range(c, c + {L}):"]
        lines += [textwrap.indent(x, " " * 16) for x in chunk]
        assert (L, G) == (64, 8), "fastopt_fold8 folds 64 terms into 8 lanes"
        lines += [f"            fastopt_fold8_{tag}(t{j}, lane{j})" for j in range(ns)]
        if cols:
            lines += [f"            for l in range({L}):"]
            lines += [f"                cf{c}[c + l] = cf{c}[c + l] + t{j}[l]" for c, j in cols]
        lines += ["        c = mL", "        for j in range(mL, m):"]
        lines += [textwrap.indent(x, " " * 12) for x in chunk]
        lines += ["        for l in range(m - mL):"]
        lines += [f"            lane{j}[l % {G}] += <double>t{j}[l]" for j in range(ns)]
        lines += [f"            cf{c}[mL + l] = cf{c}[mL + l] + t{j}[l]" for c, j in cols]
        for j in range(ns):
            lines += ["        acc = 0", f"        for l in range({G}):",
                      f"            acc = acc + lane{j}[l]", f"        o_rows[i * {ns} + {j}] = acc"]
    for c in range(nc):
        lines += ["    for j in range(m):", f"        cp{c}[j] = <double>cf{c}[j]", f"    free(cf{c})"]
    nsc = len(sig.scalars)
    lines += ["", "", f"def {name}(Py_ssize_t n, Py_ssize_t m, Py_ssize_t R, tuple addresses, "
              f"tuple scalars, uintptr_t o_rows=0, uintptr_t o_cols=0):",
              f'    """{sig.name} ({tag}) over R rows of m elements (matrices of n rows): '
              f'`addresses` of its arrays ({", ".join(sig.arrays)}), `scalars` '
              f'({", ".join(sig.scalars)})'
              + (f', `o_rows` the address of R x {ns} doubles (row sums of '
                 f'{", ".join(sig.sums)})' if ns else '')
              + (f', `o_cols` of (blocks x {nc} x m) doubles, zeroed (column sums of '
                 f'{", ".join(sig.col_sums)} per block of {GRID_ROWS} rows)' if nc else '')
              + '."""',
              f"    if len(scalars) != {nsc} or len(addresses) != {len(sig.arrays)}:",
              f"        raise ValueError('{name}: {nsc} scalars and {len(sig.arrays)} "
              f"addresses expected')",
              f"    if n <= 0 or m <= 0 or R <= 0 or R % n:", "        return",
              f"    if ({ns} and not o_rows) or ({nc} and not o_cols):",
              f"        raise ValueError('{name}: the sums need their output addresses')"]
    lines += [f"    cdef {ctype} {x} = <{ctype}><double>scalars[{j}]"
              for j, x in enumerate(sig.scalars)]
    for j, p in enumerate(ptrs):
        typ, var = p.split()
        cast = f"const {ctype}*" if typ.endswith("_cp") else f"{ctype}*"
        lines.append(f"    cdef {typ} {var} = <{cast}><uintptr_t>addresses[{j}]")
    lines += [f"    cdef Py_ssize_t k, nb = (n + {GRID_ROWS - 1}) // {GRID_ROWS}",
              "    cdef Py_ssize_t nblk = (R // n) * nb",
              "    cdef double* orow = <double*>o_rows", "    cdef double* ocol = <double*>o_cols",
              "    cdef bint serial = R * m < _config.PARALLEL_THRESHOLD"]
    call = f"_{name}_block(k, n, m, nb, {', '.join(args)}, orow, ocol)"
    lines += ["    with nogil:", "        if serial:", "            for k in range(nblk):",
              f"                {call}", "        else:",
              "            for k in prange(nblk, schedule='static'):", f"                {call}"]
    return "\n".join(lines) + "\n"


def _cython_grid_layout(sig, tag, ctype, flags, helper_names):
    """A grid rule's loops for storage layouts (the element arrays -- parameter, gradient -- in
    any float format, as runtime codes; the row and column arrays in the compute dtype): as
    :func:`_cython_grid`, each row in chunks of SUM_LANES elements, an element array not in
    the compute dtype decoded into a chunk buffer first and a written one encoded back after
    (stochastic rounding's counter ``base + lo + c``); the sums added in the same order."""
    name = variant_name(sig, tag, flags)
    own = "FMT_F32" if tag == "f32" else "FMT_F64"
    ns, nc, L, G = len(sig.sums), len(sig.col_sums), SUM_LANES, GRID_FOLD
    ret, body, locals_ = _grid_rule_body(sig, tag, flags, helper_names)
    idx = {a: q for q, a in enumerate(sig.arrays)}
    inner = [f"{a} = a_{a}[b * m + j]" if a in sig.cols else f"{a} = e_{a}[j - c]"
             for a in sig.arrays if a not in sig.rows]
    inner += [ast.unparse(st) for st in body]
    inner += [f"e_{a}[j - c] = {ast.unparse(v)}" for a, v in zip(sig.written, ret.value.elts)]
    inner += [f"t{j}[j - c] = {ast.unparse(v)}"
              for j, v in enumerate(ret.value.elts[len(sig.written):])]
    scal = [f"{ctype} {x}" for x in sig.scalars]
    cols = [(c, sig.sums.index(cname)) for c, cname in enumerate(sig.col_sums)]
    lines = [f"cdef void _{name}_lblock(Py_ssize_t k, Py_ssize_t n, Py_ssize_t m, Py_ssize_t nb, "
             f"const uintptr_t* addr, const int* fmt, {', '.join(scal + [''])}double* o_rows, "
             f"double* o_cols, uint64_t base, uint32_t step, uint32_t seed, "
             f"bint stochastic) noexcept nogil:",
             "    cdef Py_ssize_t b = k // nb, i, j, l, c, cl, lo",
             f"    cdef Py_ssize_t r0 = b * n + (k - b * nb) * {GRID_ROWS}",
             f"    cdef Py_ssize_t r1 = min(b * n + n, r0 + {GRID_ROWS})",
             f"    cdef {ctype} {', '.join(locals_)}",
             "    cdef double acc"]
    lines += [f"    cdef {ctype} t{j}[{L}]" for j in range(ns)]
    lines += [f"    cdef double lane{j}[{G}]" for j in range(ns)]
    lines += [f"    cdef {ctype} sc_{a}[{L}]" for a in sig.elements]
    lines += [f"    cdef {ctype}* e_{a}" for a in sig.elements]
    lines += [f"    cdef const {ctype}* a_{a} = <const {ctype}*>addr[{idx[a]}]"
              for a in sig.rows + sig.cols]
    lines += [f"    cdef double* cp{c} = o_cols + (k * {nc} + {c}) * m" for c in range(nc)]
    lines += [f"    cdef {ctype}* cf{c} = <{ctype}*>calloc(m, sizeof({ctype}))" for c in range(nc)]
    lines += ["    for i in range(r0, r1):", "        lo = i * m"]
    lines += [f"        {a} = a_{a}[i]" for a in sig.rows]
    if ns:
        lines += [f"        for l in range({G}):"] + \
            [f"            lane{j}[l] = 0" for j in range(ns)]
    lines += [f"        for c in range(0, m, {L}):", f"            cl = m - c if m - c < {L} else {L}"]
    for a in sig.elements:
        q = idx[a]
        lines += [f"            if fmt[{q}] == {own}:",
                  f"                e_{a} = (<{ctype}*>addr[{q}]) + lo + c",
                  "            else:",
                  f"                _decode_{tag}(fmt[{q}], addr[{q}], lo + c, cl, sc_{a})",
                  f"                e_{a} = sc_{a}"]
    lines += ["            for j in range(c, c + cl):"]
    lines += [textwrap.indent(x, " " * 16) for x in inner]
    if ns:
        lines += [f"            if cl == {L}:"]
        lines += [f"                fastopt_fold8_{tag}(t{j}, lane{j})" for j in range(ns)]
        if cols:
            lines += [f"                for l in range({L}):"]
            lines += [f"                    cf{c}[c + l] = cf{c}[c + l] + t{j}[l]" for c, j in cols]
        lines += ["            else:", "                for l in range(cl):"]
        lines += [f"                    lane{j}[l % {G}] += <double>t{j}[l]" for j in range(ns)]
        lines += [f"                    cf{c}[c + l] = cf{c}[c + l] + t{j}[l]" for c, j in cols]
    for a in sig.written:
        q = idx[a]
        lines += [f"            if fmt[{q}] != {own}:",
                  f"                _encode_{tag}(fmt[{q}], sc_{a}, addr[{q}], lo + c, cl, "
                  f"stochastic, base + <uint64_t>(lo + c), step, seed, {q})"]
    for j in range(ns):
        lines += ["        acc = 0", f"        for l in range({G}):",
                  f"            acc = acc + lane{j}[l]", f"        o_rows[i * {ns} + {j}] = acc"]
    for c in range(nc):
        lines += ["    for j in range(m):", f"        cp{c}[j] = <double>cf{c}[j]", f"    free(cf{c})"]
    nsc, A = len(sig.scalars), len(sig.arrays)
    args = ", ".join(sig.scalars)
    call = (f"_{name}_lblock(k, n, m, nb, addr, fm, {args + ', ' if args else ''}orow, ocol, "
            f"base, step, seed, stochastic)")
    lines += ["", "", f"def {name}_layout(Py_ssize_t n, Py_ssize_t m, Py_ssize_t R, "
              f"tuple addresses, tuple scalars, uintptr_t o_rows, uintptr_t o_cols, "
              f"tuple formats, uint64_t base=0, uint32_t step=0, uint32_t seed=0, "
              f"bint stochastic=False):",
              f'    """{sig.name} ({tag}) as ``{name}``, its arrays in the storage formats '
              f'``formats`` (codes; the element arrays\' any float format, the others the '
              f'compute dtype\'s)."""',
              f"    if len(scalars) != {nsc} or len(addresses) != {A} or len(formats) != {A}:",
              f"        raise ValueError('{name}_layout: {nsc} scalars, {A} addresses and "
              f"{A} formats expected')",
              "    if n <= 0 or m <= 0 or R <= 0 or R % n:", "        return",
              f"    if ({ns} and not o_rows) or ({nc} and not o_cols):",
              f"        raise ValueError('{name}_layout: the sums need their output addresses')",
              f"    cdef uintptr_t addr[{A}]", f"    cdef int fm[{A}]", "    cdef Py_ssize_t q",
              f"    for q in range({A}):", "        addr[q] = addresses[q]",
              "        fm[q] = formats[q]"]
    lines += [f"    cdef {ctype} {x} = <{ctype}><double>scalars[{j}]"
              for j, x in enumerate(sig.scalars)]
    lines += [f"    cdef Py_ssize_t k, nb = (n + {GRID_ROWS - 1}) // {GRID_ROWS}",
              "    cdef Py_ssize_t nblk = (R // n) * nb",
              "    cdef double* orow = <double*>o_rows", "    cdef double* ocol = <double*>o_cols",
              "    cdef bint serial = R * m < _config.PARALLEL_THRESHOLD",
              "    with nogil:", "        if serial:", "            for k in range(nblk):",
              f"                {call}", "        else:",
              "            for k in prange(nblk, schedule='static'):", f"                {call}"]
    return "\n".join(lines) + "\n"


def _cython_variant(sig, tag, ctype, flags, helper_names):
    name = variant_name(sig, tag, flags)
    used = sig.used(flags)
    ptrs = [f"{tag}_{'cp' if a in sig.readonly else 'p'} a_{a}" for a in sig.arrays if a in used]
    scal = [f"{ctype} {s}" for s in sig.scalars]
    locals_, body = _cython_rule_body(sig, tag, flags, helper_names)
    ns = len(sig.sums)
    if ns:
        lines = _cython_reduction(name, ptrs, scal, ctype, locals_, body, sig, used, ns)
    else:
        lines = [f"cdef void _{name}(Py_ssize_t n, {', '.join(ptrs + scal)}, "
                 f"Py_ssize_t threshold) noexcept nogil:", "    cdef Py_ssize_t i",
                 f"    cdef {ctype} {', '.join(locals_)}"]
        lines += ["    if n < threshold:", "        for i in range(n):"]
        lines += [textwrap.indent(b, " " * 12) for b in body]
        # (the threads' loop in chunks of SUM_LANES elements, every cache line of each array
        # prefetched PREFETCH_BYTES ahead, as the grid and reduction loops: a C triad
        # and an Adam-like loop ran 13% faster so on this VM; the bits are the same)
        L = SUM_LANES
        line = 64 // (4 if tag == "f32" else 8)      # elements per cache line
        lines[1] = "    cdef Py_ssize_t i, pk, plo, phi"
        lines += ["    else:", f"        for pk in prange((n + {L - 1}) // {L}, schedule='static'):",
                  f"            plo = pk * {L}", f"            phi = min(n, plo + {L})"]
        ahead = _prefetch_ahead(tag)
        lines += [f"            fastopt_prefetch({p.split()[-1]} + plo + {ahead + off})"
                  for p in ptrs for off in range(0, L, line)]
        lines += ["            for i in range(plo, phi):"]
        lines += [textwrap.indent(b, " " * 16) for b in body]
    # the entry point
    width = 1 + len(sig.arrays)
    nsc = len(sig.scalars)
    lines += ["", "", f"def {name}(uintptr_t table, Py_ssize_t count, tuple scalars, "
              f"uint32_t step=0{', uintptr_t out=0' if ns else ''}):",
              f'    """{sig.name} ({tag}, flags {dict(zip(sig.flags, flags))}) over `count` '
              f'table rows; `scalars`: the {nsc} step scalars ({", ".join(sig.scalars)}); '
              f'`step` is unused (every array is in the compute dtype)'
              + (f'; `out`: the address of count x {ns} doubles, the sums '
                 f'({", ".join(sig.sums)}) of each row' if ns else '') + '."""',
              "    cdef const uintptr_t* t = <const uintptr_t*>table",
              "    cdef Py_ssize_t k",
              "    cdef Py_ssize_t threshold = _config.PARALLEL_THRESHOLD",
              f"    if len(scalars) != {nsc}:",
              f"        raise ValueError(f'{name} takes {nsc} scalars, got {{len(scalars)}}')"]
    lines += [f"    cdef {ctype} {s} = <{ctype}><double>scalars[{j}]"
              for j, s in enumerate(sig.scalars)]
    cargs = ["<Py_ssize_t>t[k * %d]" % width]
    for j, a in enumerate(sig.arrays):
        if a in used:
            const = "const " if a in sig.readonly else ""
            cargs.append(f"<{const}{ctype}*>t[k * {width} + {j + 1}]")
    cargs += list(sig.scalars) + ["threshold"]
    if ns:
        cargs.append(f"(<double*>out) + k * {ns}")
        lines += ["    if count and not out:",
                  f"        raise ValueError('{name}: a reduction needs `out`')"]
    lines += ["    with nogil:", "        for k in range(count):",
              f"            _{name}({', '.join(cargs)})"]
    return "\n".join(lines) + "\n"
