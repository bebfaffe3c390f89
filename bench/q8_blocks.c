/* The 8-bit AdamW block step (float32 parameters and gradients, int8 first and second moments)
 * on one thread in L1/L2, as the Cython extension's AVX2 path runs it, split into its phases:
 * how much of a step the code lookups cost and what decoding without a gather gains.
 *
 *   .venv/bin/python -c "import fastopt.kernels._codegen as c; print(c.c_tables())" > /tmp/q8_tables.h
 *   gcc -O3 -mavx2 -mfma -fno-math-errno -I/tmp bench/q8_blocks.c -o /tmp/q8_blocks -lm
 *   /tmp/q8_blocks [elements, default 65536]
 *
 * Prints ns per element (best of 25 rounds, the variants interleaved) for: the whole step, the
 * step without its encode (decode + rule), and the rule alone, each with the codes decoded by
 * an 8-lane gather (the extension before 2026-12-07) and by eight scalar loads from one 64-bit
 * read of the codes (after).  The encode is the extension's: a division, a bucket index and one
 * gather of the packed table (fastopt.kernels._qmaps.packed_table).
 *
 * Measured on the AMD EPYC AVX2 VM (2 cores, 2026-12-07): an 8-lane gather costs about 12.5
 * cycles, so the two decodes took 0.96 ns per element with gathers and 0.47 with scalar loads;
 * whole step 3.1 -> 2.6 ns per element; the rule alone 0.40; the two encodes 1.26 (gather-bound:
 * an encode by scalar table loads measured the same, and the arithmetic encoder of the AVX-512
 * path needs about 55 AVX2 instructions per 8 values, more than the gather it would replace).
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "q8_tables.h"

#define BLOCK 256

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline void decode_gather(const float* map, const uint8_t* c, float a, float* dst) {
    __m256 va = _mm256_set1_ps(a);
    for (int j = 0; j < BLOCK; j += 8) {
        __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(c + j)));
        _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_i32gather_ps(map, idx, 4), va));
    }
}

static inline void decode_loads(const float* map, const uint8_t* c, float a, float* dst) {
    __m256 va = _mm256_set1_ps(a);
    for (int j = 0; j < BLOCK; j += 8) {
        uint64_t w;
        memcpy(&w, c + j, 8);
        __m128 lo = _mm_setr_ps(map[w & 255], map[(w >> 8) & 255], map[(w >> 16) & 255],
                                map[(w >> 24) & 255]);
        __m128 hi = _mm_setr_ps(map[(w >> 32) & 255], map[(w >> 40) & 255],
                                map[(w >> 48) & 255], map[w >> 56]);
        _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_set_m128(hi, lo), va));
    }
}

static inline float absmax(const float* x) {
    __m256 acc = _mm256_setzero_ps();
    const __m256 mag = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    float lane[8], m = 0;
    for (int j = 0; j < BLOCK; j += 8)
        acc = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + j), mag), acc);
    _mm256_storeu_ps(lane, acc);
    for (int k = 0; k < 8; k++)
        m = lane[k] > m ? lane[k] : m;
    return m;
}

static inline void encode(int is_signed, const float* x, float m, uint8_t* c) {
    const int32_t* pk = is_signed ? QPK_S : QPK_U;
    const __m256 vm = _mm256_set1_ps(m), zero = _mm256_setzero_ps();
    const __m256i b0 = _mm256_set1_epi32(QB0), bmax = _mm256_set1_epi32(QBMAX);
    const __m256i nbk = _mm256_set1_epi32(QNB), mag = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i low15 = _mm256_set1_epi32(0x7FFF), byte = _mm256_set1_epi32(0xFF);
    for (int j = 0; j < BLOCK; j += 8) {
        __m256 y = _mm256_div_ps(_mm256_loadu_ps(x + j), vm);
        y = is_signed ? _mm256_and_ps(y, _mm256_cmp_ps(y, y, _CMP_EQ_OQ))
                      : _mm256_and_ps(y, _mm256_cmp_ps(y, zero, _CMP_GT_OQ));
        __m256i u = _mm256_castps_si256(y), a = _mm256_and_si256(u, mag);
        __m256i sgn = _mm256_srai_epi32(u, 31);
        __m256i b = _mm256_sub_epi32(_mm256_min_epi32(_mm256_max_epi32(
            _mm256_srli_epi32(a, 15), b0), bmax), b0);
        __m256i e = _mm256_i32gather_epi32(pk, _mm256_add_epi32(b, _mm256_and_si256(sgn, nbk)), 4);
        __m256i key = _mm256_xor_si256(_mm256_and_si256(a, low15), _mm256_and_si256(sgn, low15));
        __m256i lo = _mm256_sub_epi32(_mm256_and_si256(e, byte),
                                      _mm256_cmpgt_epi32(key, _mm256_srli_epi32(e, 8)));
        __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1));
        _mm_storel_epi64((__m128i*)(c + j), _mm_packus_epi16(w16, w16));
    }
}

/* phases: 0 the whole step, 1 without the encode, 2 the rule alone */
static void step(int loads, int phases, long n, float* p, const float* g, uint8_t* cm,
                 uint8_t* cv, float* am, float* av) {
    float s[2 * BLOCK] __attribute__((aligned(64)));
    float* __restrict__ m = s;
    float* __restrict__ v = s + BLOCK;
    for (long blk = 0; blk < n / BLOCK; blk++) {
        long st = blk * BLOCK;
        float* __restrict__ pp = p + st;
        const float* __restrict__ gg = g + st;
        if (phases < 2 && loads) {
            decode_loads(QMAP_S, cm + st, am[blk], m);
            decode_loads(QMAP_U, cv + st, av[blk], v);
        } else if (phases < 2) {
            decode_gather(QMAP_S, cm + st, am[blk], m);
            decode_gather(QMAP_U, cv + st, av[blk], v);
        }
        for (int j = 0; j < BLOCK; j++) {
            float gj = gg[j];
            float mj = m[j] + 0.1f * (gj - m[j]);
            float vj = 0.999f * v[j] + 0.001f * gj * gj;
            pp[j] = pp[j] * 0.9999f - 1e-3f * (mj / (sqrtf(vj) * 1.2f + 1e-8f));
            m[j] = mj;
            v[j] = vj;
        }
        if (phases > 0)
            continue;
        am[blk] = absmax(m);
        av[blk] = absmax(v);
        encode(1, m, am[blk], cm + st);
        encode(0, v, av[blk], cv + st);
    }
}

int main(int argc, char** argv) {
    long n = argc > 1 ? atol(argv[1]) : 1 << 16;
    float* p = aligned_alloc(64, n * 4);
    float* g = aligned_alloc(64, n * 4);
    uint8_t *cm = malloc(n), *cv = malloc(n);
    float *am = malloc(n / BLOCK * 4), *av = malloc(n / BLOCK * 4);
    const char* names[3] = {"whole step", "decode + rule", "rule alone"};
    double best[3][2];
    srand(1);
    for (long i = 0; i < n; i++) {
        p[i] = rand() / (float)RAND_MAX - 0.5f;
        g[i] = (rand() / (float)RAND_MAX - 0.5f) * 1e-2f;
        cm[i] = (uint8_t)rand();
        cv[i] = (uint8_t)(128 + rand() % 128);
    }
    for (long b = 0; b < n / BLOCK; b++) {
        am[b] = 1e-3f;
        av[b] = 1e-5f;
    }
    for (int k = 0; k < 6; k++)
        best[k / 2][k % 2] = 1e9;
    int rounds = n > (1 << 20) ? 5 : 25, reps = n > (1 << 20) ? 3 : 100;
    for (int round = 0; round < rounds; round++)
        for (int k = 0; k < 6; k++) {
            double t = now();
            for (int r = 0; r < reps; r++)
                step(k % 2, k / 2, n, p, g, cm, cv, am, av);
            t = (now() - t) / reps / n * 1e9;
            best[k / 2][k % 2] = t < best[k / 2][k % 2] ? t : best[k / 2][k % 2];
        }
    printf("ns per element, one thread, %ld elements     gather   scalar loads\n", n);
    for (int k = 0; k < 3; k++)
        printf("%-44s %7.3f %14.3f\n", names[k], best[k][0], best[k][1]);
    return 0;
}
