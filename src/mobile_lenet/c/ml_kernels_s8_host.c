/* ml_kernels_s8_host.c - the int8 fast path for computers (see ml_kernels_s8_host.h). Host only: the
 * microcontroller library is ml_kernels_s8.c / ml_kernels_s8_fast.c, which this file does not replace.
 *
 * x86 with AVX2: eight outputs per vector (one channel, eight neighbouring pixels), sums of four byte products
 * per int32 lane (VPDPBUSD with VNNI; otherwise two VPMADDWD on the even and odd bytes, exact), requantization
 * eight lanes at a time (clamp, 32-bit multiply, add, shift). Elsewhere, or with -DML_S8_HOST_PORTABLE, the
 * plain C99 loops (tests build both). */
#include "ml_kernels_s8_host.h"

#include <string.h>

#if defined(__AVX2__) && !defined(ML_S8_HOST_PORTABLE)
#define ML_S8H_AVX 1
#include <immintrin.h>
#else
#define ML_S8H_AVX 0
#endif

#if defined(__GNUC__)
#define ML_S8H_INLINE static inline __attribute__((always_inline))
#else
#define ML_S8H_INLINE static inline
#endif

#define ML_S8H_MAX_GAP_ROW 1024 /* bytes of a row y of the pooled map, summed column by column on the stack */

void ml_s8h_input(const uint8_t *image, int h, int w, uint8_t *padded)
{
    for (int y = 0; y < h; ++y) memcpy(padded + (y + 1) * (w + 2) + 1, image + y * w, (size_t)w);
}

void ml_s8h_fill(uint8_t *map, unsigned long bytes, int value) { memset(map, value, (size_t)bytes); }

uint8_t ml_s8h_requantize(int32_t acc, const ml_s8h_rq *rq, int shift)
{
    /* >> of a negative int64 is an arithmetic shift on the compilers this builds with (as ml_requantize_s8) */
    int64_t v = ((int64_t)acc * rq->mult + ((int64_t)1 << (shift - 1))) >> shift;
    v += rq->zp;
    if (v < rq->low) v = rq->low;
    if (v > 255) v = 255;
    return (uint8_t)v;
}

/* ------------------------------------------------------------------------------------------------ portable */
void ml_s8h_conv3x3_c1_portable(const uint8_t *in, int in_rs, uint8_t *out, int out_rs, int out_cs, int out_h,
                                int out_w, int out_c, const int8_t *weight, const int32_t *bias,
                                const ml_s8h_rq *rq, int shift)
{
    for (int oy = 0; oy < out_h; ++oy) {
        for (int co = 0; co < out_c; ++co) {
            for (int ox = 0; ox < out_w; ++ox) {
                int32_t acc = bias[co];
                for (int ky = 0; ky < 3; ++ky) {
                    for (int kx = 0; kx < 3; ++kx) acc += in[(oy + ky) * in_rs + ox + kx] * weight[co * 12 + ky * 4 + kx];
                }
                out[oy * out_rs + co * out_cs + ox] = ml_s8h_requantize(acc, &rq[co], shift);
            }
        }
    }
}

void ml_s8h_depthwise3x3_portable(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out,
                                  int out_rs, int out_cs, int out_h, int out_w, const int8_t *weight,
                                  const int32_t *bias, const ml_s8h_rq *rq, int shift)
{
    for (int oy = 0; oy < out_h; ++oy) {
        for (int ch = 0; ch < c; ++ch) {
            for (int ox = 0; ox < out_w; ++ox) {
                int32_t acc = bias[ch];
                for (int ky = 0; ky < 3; ++ky) {
                    const uint8_t *row = in + (oy * stride + ky) * in_rs + ch * in_cs + ox * stride;
                    for (int kx = 0; kx < 3; ++kx) acc += row[kx] * weight[ch * 12 + ky * 4 + kx];
                }
                out[oy * out_rs + ch * out_cs + ox] = ml_s8h_requantize(acc, &rq[ch], shift);
            }
        }
    }
}

void ml_s8h_pointwise_portable(const uint8_t *in, int in_rs, int in_cs, int in_c, uint8_t *out, int out_rs,
                               int out_cs, int h, int w, int out_c, const int8_t *weight, const int32_t *bias,
                               const ml_s8h_rq *rq, int shift)
{
    for (int y = 0; y < h; ++y) {
        for (int co = 0; co < out_c; ++co) {
            for (int x = 0; x < w; ++x) {
                int32_t acc = bias[co];
                for (int ci = 0; ci < in_c; ++ci) acc += in[y * in_rs + ci * in_cs + x] * weight[co * in_c + ci];
                out[y * out_rs + co * out_cs + x] = ml_s8h_requantize(acc, &rq[co], shift);
            }
        }
    }
}

void ml_s8h_depthwise3x3_quads_portable(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out,
                                        int out_rs, int out_gs, int out_h, int out_w, const int8_t *weight,
                                        const int32_t *bias, const ml_s8h_rq *rq, int shift)
{
    for (int oy = 0; oy < out_h; ++oy) {
        for (int ch = 0; ch < c; ++ch) {
            for (int ox = 0; ox < out_w; ++ox) {
                int32_t acc = bias[ch];
                for (int ky = 0; ky < 3; ++ky) {
                    const uint8_t *row = in + (oy * stride + ky) * in_rs + ch * in_cs + ox * stride;
                    for (int kx = 0; kx < 3; ++kx) acc += row[kx] * weight[ch * 12 + ky * 4 + kx];
                }
                out[oy * out_rs + (ch / 4) * out_gs + ox * 4 + ch % 4] = ml_s8h_requantize(acc, &rq[ch], shift);
            }
        }
    }
}

void ml_s8h_pointwise_quads_portable(const uint8_t *in, int in_rs, int in_gs, int in_c, uint8_t *out, int out_rs,
                                     int out_cs, int h, int w, int out_c, const int8_t *weight, const int32_t *bias,
                                     const ml_s8h_rq *rq, int shift)
{
    for (int y = 0; y < h; ++y) {
        for (int co = 0; co < out_c; ++co) {
            for (int x = 0; x < w; ++x) {
                int32_t acc = bias[co];
                for (int ci = 0; ci < in_c; ++ci) {
                    acc += in[y * in_rs + (ci / 4) * in_gs + x * 4 + ci % 4] * weight[co * in_c + ci];
                }
                out[y * out_rs + co * out_cs + x] = ml_s8h_requantize(acc, &rq[co], shift);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------------ AVX2 */
#if ML_S8H_AVX
/* acc + the sums of four products u * w per int32 lane (u: unsigned bytes, w: int8) */
ML_S8H_INLINE __m256i s8h_dot4(__m256i acc, __m256i u, __m256i w)
{
#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && !defined(ML_S8_HOST_NO_VNNI)
    return _mm256_dpbusd_epi32(acc, u, w);
#elif defined(__AVXVNNI__) && !defined(ML_S8_HOST_NO_VNNI)
    return _mm256_dpbusd_avx_epi32(acc, u, w);
#else
    /* even and odd bytes widened to 16 bits (u unsigned, w signed): |u * w| < 2^15, pairs summed exactly */
    const __m256i ue = _mm256_and_si256(u, _mm256_set1_epi16(0x00FF)), uo = _mm256_srli_epi16(u, 8);
    const __m256i we = _mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8), wo = _mm256_srai_epi16(w, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ue, we), _mm256_madd_epi16(uo, wo)));
#endif
}

ML_S8H_INLINE int32_t s8h_quad(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Eight sums of one channel (without its bias: rq's lo, hi and round include it) scaled to bytes u. clamp: the sums clamped to [lo, hi] first, so that (sum * mult +
 * round) >> shift is exact in int32 and, the thresholds giving exactly low and 255, in [low, 255]. Without (the
 * layer's sums can neither overflow that int32 nor have low above 0: see ml_s8h_pointwise), the packs below
 * saturate the values to [0, 255], which is the same clamp. */
ML_S8H_INLINE __m256i s8h_scale(__m256i acc, const ml_s8h_rq *rq, __m128i shift, const int clamp)
{
    if (clamp) acc = _mm256_min_epi32(_mm256_max_epi32(acc, _mm256_set1_epi32(rq->lo)), _mm256_set1_epi32(rq->hi));
    return _mm256_sra_epi32(_mm256_add_epi32(_mm256_mullo_epi32(acc, _mm256_set1_epi32(rq->mult)),
                                             _mm256_set1_epi32(rq->round)), shift);
}

/* One scaled vector stored as n <= 8 bytes */
ML_S8H_INLINE void s8h_store1(uint8_t *out, __m256i v, int n)
{
    __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    w = _mm_packus_epi16(w, w);
    if (n == 8) {
        _mm_storel_epi64((__m128i *)(void *)out, w);
    } else {
        uint8_t bytes[16];
        _mm_storeu_si128((__m128i *)(void *)bytes, w);
        memcpy(out, bytes, (size_t)n);
    }
}

/* Two scaled vectors stored as 8 bytes each (n == 8) or n each */
ML_S8H_INLINE void s8h_store2(uint8_t *o0, uint8_t *o1, __m256i v0, __m256i v1, int n)
{
    if (n != 8) {
        s8h_store1(o0, v0, n);
        s8h_store1(o1, v1, n);
        return;
    }
    const __m256i w = _mm256_packs_epi32(v0, v1); /* v0 0-3, v1 0-3 | v0 4-7, v1 4-7 (int16) */
    const __m256i b = _mm256_permute4x64_epi64(_mm256_packus_epi16(w, w), 0x08); /* bytes: v0 0-3, v1 0-3,
                                                                                     v0 4-7, v1 4-7 */
    const __m128i r = _mm_shuffle_epi32(_mm256_castsi256_si128(b), 0xD8); /* v0 0-7, v1 0-7 */
    _mm_storel_epi64((__m128i *)(void *)o0, r);
    _mm_storel_epi64((__m128i *)(void *)o1, _mm_unpackhi_epi64(r, r));
}

/* Four scaled vectors stored as 8 bytes each (n == 8) or n each */
ML_S8H_INLINE void s8h_store4(uint8_t *o0, uint8_t *o1, uint8_t *o2, uint8_t *o3, __m256i v0, __m256i v1,
                              __m256i v2, __m256i v3, int n)
{
    if (n != 8) {
        s8h_store2(o0, o1, v0, v1, n);
        s8h_store2(o2, o3, v2, v3, n);
        return;
    }
    /* bytes: v0 0-3, v1 0-3, v2 0-3, v3 0-3 | v0 4-7, v1 4-7, v2 4-7, v3 4-7 */
    const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(v0, v1), _mm256_packs_epi32(v2, v3));
    const __m256i r = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    const __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
    _mm_storel_epi64((__m128i *)(void *)o0, lo);
    _mm_storel_epi64((__m128i *)(void *)o1, _mm_unpackhi_epi64(lo, lo));
    _mm_storel_epi64((__m128i *)(void *)o2, hi);
    _mm_storel_epi64((__m128i *)(void *)o3, _mm_unpackhi_epi64(hi, hi));
}

/* 16 bytes at p for lanes 0..3 and 16 at p + 4 * stride for lanes 4..7 (stride 1: one load, broadcast),
 * shuffled so that lane i holds bytes i * stride .. i * stride + 3 of the row (the three taps of output pixel i
 * and one more, weighted 0) */
ML_S8H_INLINE __m256i s8h_taps(const uint8_t *p, int stride, __m256i mask)
{
    if (stride == 1) {
        return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p)),
                                   mask);
    }
    const __m128i lo = _mm_loadu_si128((const __m128i *)(const void *)p);
    const __m128i hi = _mm_loadu_si128((const __m128i *)(const void *)(p + 4 * stride));
    return _mm256_shuffle_epi8(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1), mask);
}

ML_S8H_INLINE __m256i s8h_tap_mask(int stride)
{
    return stride == 1 ? _mm256_setr_epi8(0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6,
                                          4, 5, 6, 7, 5, 6, 7, 8, 6, 7, 8, 9, 7, 8, 9, 10)
                       : _mm256_setr_epi8(0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9,
                                          0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9);
}

/* Groups of eight pixels along a row of w: 0, 8, ..., the last one ending at w (overlapping the one before;
 * its outputs are the same values again), or one group of w < 8 pixels */
#define S8H_NEXT_GROUP(x0, w) ((x0) + 8 >= (w) ? (w) : ((x0) + 16 <= (w) ? (x0) + 8 : (w) - 8))

/* Every output channel of up to eight pixels whose inputs come as quads (lane i of quads[k]: pixel i's inputs
 * 4k..4k+3, channels or taps), each channel's 4 x groups weights in a row: four channels at a time (one
 * four-row store), then the last out_c % 4 */
ML_S8H_INLINE __m256i s8h_dot_quads(const __m256i *quads, const int groups, const int8_t *weight_row)
{
    __m256i acc = _mm256_setzero_si256();
    for (int k = 0; k < groups; ++k) acc = s8h_dot4(acc, quads[k], _mm256_set1_epi32(s8h_quad(weight_row + 4 * k)));
    return acc;
}

ML_S8H_INLINE void s8h_all_channels(const __m256i *quads, const int groups, const int8_t *weight, int out_c,
                                    const ml_s8h_rq *rq, __m128i sh, const int clamp, uint8_t *o, int out_cs, int n)
{
    int co = 0;
    for (; co + 4 <= out_c; co += 4) {
        __m256i v[4];
        for (int j = 0; j < 4; ++j) {
            v[j] = s8h_scale(s8h_dot_quads(quads, groups, weight + (co + j) * 4 * groups), &rq[co + j], sh, clamp);
        }
        s8h_store4(o + co * out_cs, o + (co + 1) * out_cs, o + (co + 2) * out_cs, o + (co + 3) * out_cs,
                   v[0], v[1], v[2], v[3], n);
    }
    for (int j = 0; j < 3 && co + j < out_c; ++j) { /* out_c not a multiple of 4: the last ones */
        const __m256i acc = s8h_dot_quads(quads, groups, weight + (co + j) * 4 * groups);
        s8h_store1(o + (co + j) * out_cs, s8h_scale(acc, &rq[co + j], sh, clamp), n);
    }
}

ML_S8H_INLINE void conv3x3_c1_avx(const uint8_t *in, int in_rs, uint8_t *out, int out_rs, int out_cs, int out_h,
                                  int out_w, int out_c, const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq,
                                  int shift, const int clamp)
{
    const __m128i sh = _mm_cvtsi32_si128(shift);
    (void)bias; /* in the requantization rows (ml_s8h_rq) */
    const __m256i mask = s8h_tap_mask(1);
    const int n = out_w < 8 ? out_w : 8;
    for (int oy = 0; oy < out_h; ++oy) {
        for (int x0 = 0; x0 < out_w; x0 = S8H_NEXT_GROUP(x0, out_w)) {
            const uint8_t *p = in + oy * in_rs + x0;
            const __m256i taps[3] = {s8h_taps(p, 1, mask), s8h_taps(p + in_rs, 1, mask),
                                     s8h_taps(p + 2 * in_rs, 1, mask)}; /* a row of the kernel per quad */
            s8h_all_channels(taps, 3, weight, out_c, rq, sh, clamp, out + oy * out_rs + x0, out_cs, n);
        }
    }
}

/* two output rows at a time (their input rows overlap: 4 distinct ones at stride 1, 5 at stride 2) */
ML_S8H_INLINE void depthwise3x3_avx_stride(const uint8_t *in, int in_rs, int in_cs, int c, const int stride,
                                           uint8_t *out, int out_rs, int out_cs, int out_h, int out_w,
                                           const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq, int shift,
                                           const int clamp)
{
    const __m128i sh = _mm_cvtsi32_si128(shift);
    (void)bias; /* in the requantization rows (ml_s8h_rq) */
    const __m256i mask = s8h_tap_mask(stride);
    const int n = out_w < 8 ? out_w : 8;
    for (int ch = 0; ch < c; ++ch) {
        const int8_t *wq = weight + ch * 12;
        const __m256i w0 = _mm256_set1_epi32(s8h_quad(wq)), w1 = _mm256_set1_epi32(s8h_quad(wq + 4));
        const __m256i w2 = _mm256_set1_epi32(s8h_quad(wq + 8)), b = _mm256_setzero_si256();
        const uint8_t *plane = in + ch * in_cs;
        uint8_t *o = out + ch * out_cs;
        int oy = 0;
        for (; oy + 2 <= out_h; oy += 2) {
            const uint8_t *row = plane + oy * stride * in_rs;
            for (int x0 = 0; x0 < out_w; x0 = S8H_NEXT_GROUP(x0, out_w)) {
                const uint8_t *p = row + x0 * stride;
                const __m256i t0 = s8h_taps(p, stride, mask), t1 = s8h_taps(p + in_rs, stride, mask);
                const __m256i t2 = s8h_taps(p + 2 * in_rs, stride, mask);
                const __m256i t3 = s8h_taps(p + 3 * in_rs, stride, mask);
                __m256i a0 = s8h_dot4(s8h_dot4(s8h_dot4(b, t0, w0), t1, w1), t2, w2), a1;
                if (stride == 1) {
                    a1 = s8h_dot4(s8h_dot4(s8h_dot4(b, t1, w0), t2, w1), t3, w2);
                } else {
                    a1 = s8h_dot4(s8h_dot4(s8h_dot4(b, t2, w0), t3, w1), s8h_taps(p + 4 * in_rs, stride, mask), w2);
                }
                s8h_store2(o + oy * out_rs + x0, o + (oy + 1) * out_rs + x0, s8h_scale(a0, &rq[ch], sh, clamp),
                           s8h_scale(a1, &rq[ch], sh, clamp), n);
            }
        }
        if (oy < out_h) { /* an odd number of rows: the last one */
            const uint8_t *row = plane + oy * stride * in_rs;
            for (int x0 = 0; x0 < out_w; x0 = S8H_NEXT_GROUP(x0, out_w)) {
                const uint8_t *p = row + x0 * stride;
                __m256i acc = s8h_dot4(b, s8h_taps(p, stride, mask), w0);
                acc = s8h_dot4(acc, s8h_taps(p + in_rs, stride, mask), w1);
                acc = s8h_dot4(acc, s8h_taps(p + 2 * in_rs, stride, mask), w2);
                s8h_store1(o + oy * out_rs + x0, s8h_scale(acc, &rq[ch], sh, clamp), n);
            }
        }
    }
}

/* groups = in_c / 4 (constant after inlining: the quads stay in registers); four output channels at a time */
ML_S8H_INLINE void pointwise_avx_groups(const uint8_t *in, int in_rs, int in_cs, const int groups, uint8_t *out,
                                        int out_rs, int out_cs, int h, int w, int out_c, const int8_t *weight,
                                        const int32_t *bias, const ml_s8h_rq *rq, int shift, const int clamp)
{
    const __m128i sh = _mm_cvtsi32_si128(shift);
    (void)bias; /* in the requantization rows (ml_s8h_rq) */
    const int n = w < 8 ? w : 8;
    __m256i quads[ML_S8H_MAX_IN_CHANNELS / 4];
    for (int y = 0; y < h; ++y) {
        for (int x0 = 0; x0 < w; x0 = S8H_NEXT_GROUP(x0, w)) {
            const uint8_t *p = in + y * in_rs + x0;
            for (int k = 0; k < groups; ++k) { /* pixel i's four channels 4k..4k+3 in lane i */
                const uint8_t *r = p + 4 * k * in_cs;
                const __m128i r0 = _mm_loadl_epi64((const __m128i *)(const void *)r);
                const __m128i r1 = _mm_loadl_epi64((const __m128i *)(const void *)(r + in_cs));
                const __m128i r2 = _mm_loadl_epi64((const __m128i *)(const void *)(r + 2 * in_cs));
                const __m128i r3 = _mm_loadl_epi64((const __m128i *)(const void *)(r + 3 * in_cs));
                const __m128i a = _mm_unpacklo_epi8(r0, r1), b = _mm_unpacklo_epi8(r2, r3);
                quads[k] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(a, b)),
                                                   _mm_unpackhi_epi16(a, b), 1);
            }
            s8h_all_channels(quads, groups, weight, out_c, rq, sh, clamp, out + y * out_rs + x0, out_cs, n);
        }
    }
}

ML_S8H_INLINE void pointwise_avx(const uint8_t *in, int in_rs, int in_cs, int in_c, uint8_t *out, int out_rs,
                                 int out_cs, int h, int w, int out_c, const int8_t *weight, const int32_t *bias,
                                 const ml_s8h_rq *rq, int shift, const int clamp)
{
    switch (in_c) {
    case 8: pointwise_avx_groups(in, in_rs, in_cs, 2, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, clamp);
        return;
    case 16: pointwise_avx_groups(in, in_rs, in_cs, 4, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, clamp);
        return;
    case 24: pointwise_avx_groups(in, in_rs, in_cs, 6, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, clamp);
        return;
    default:
        pointwise_avx_groups(in, in_rs, in_cs, in_c / 4, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift,
                             clamp);
    }
}

/* Four scaled vectors (channels j = 0..3, eight pixels each) stored as eight pixels of four bytes (32 bytes) */
ML_S8H_INLINE void s8h_store_quads(uint8_t *out, __m256i v0, __m256i v1, __m256i v2, __m256i v3)
{
    /* bytes: v0 0-3, v1 0-3, v2 0-3, v3 0-3 | v0 4-7, v1 4-7, v2 4-7, v3 4-7; then each 4x4 transposed */
    const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(v0, v1), _mm256_packs_epi32(v2, v3));
    const __m256i t = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                       0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm256_storeu_si256((__m256i *)(void *)out, _mm256_shuffle_epi8(b, t));
}

/* the depthwise convolution into the quad layout: four channels, two output rows at a time */
ML_S8H_INLINE void depthwise3x3_quads_avx(const uint8_t *in, int in_rs, int in_cs, int c, const int stride,
                                          uint8_t *out, int out_rs, int out_gs, int out_h, int out_w,
                                          const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq, int shift,
                                          const int clamp)
{
    const __m128i sh = _mm_cvtsi32_si128(shift);
    (void)bias; /* in the requantization rows (ml_s8h_rq) */
    const __m256i mask = s8h_tap_mask(stride);
    for (int k = 0; k < c / 4; ++k) {
        __m256i wv[4][3], b[4];
        for (int j = 0; j < 4; ++j) {
            for (int ky = 0; ky < 3; ++ky) wv[j][ky] = _mm256_set1_epi32(s8h_quad(weight + (4 * k + j) * 12 + 4 * ky));
            b[j] = _mm256_setzero_si256();
        }
        const ml_s8h_rq *q = rq + 4 * k;
        int oy = 0;
        for (; oy + 2 <= out_h; oy += 2) {
            for (int x0 = 0; x0 < out_w; x0 = S8H_NEXT_GROUP(x0, out_w)) {
                __m256i a0[4], a1[4];
                for (int j = 0; j < 4; ++j) {
                    const uint8_t *p = in + oy * stride * in_rs + (4 * k + j) * in_cs + x0 * stride;
                    const __m256i t0 = s8h_taps(p, stride, mask), t1 = s8h_taps(p + in_rs, stride, mask);
                    const __m256i t2 = s8h_taps(p + 2 * in_rs, stride, mask);
                    const __m256i t3 = s8h_taps(p + 3 * in_rs, stride, mask);
                    a0[j] = s8h_scale(s8h_dot4(s8h_dot4(s8h_dot4(b[j], t0, wv[j][0]), t1, wv[j][1]), t2, wv[j][2]),
                                      &q[j], sh, clamp);
                    if (stride == 1) {
                        a1[j] = s8h_dot4(s8h_dot4(s8h_dot4(b[j], t1, wv[j][0]), t2, wv[j][1]), t3, wv[j][2]);
                    } else {
                        a1[j] = s8h_dot4(s8h_dot4(s8h_dot4(b[j], t2, wv[j][0]), t3, wv[j][1]),
                                         s8h_taps(p + 4 * in_rs, stride, mask), wv[j][2]);
                    }
                    a1[j] = s8h_scale(a1[j], &q[j], sh, clamp);
                }
                s8h_store_quads(out + oy * out_rs + k * out_gs + 4 * x0, a0[0], a0[1], a0[2], a0[3]);
                s8h_store_quads(out + (oy + 1) * out_rs + k * out_gs + 4 * x0, a1[0], a1[1], a1[2], a1[3]);
            }
        }
        if (oy < out_h) { /* an odd number of rows: the last one */
            for (int x0 = 0; x0 < out_w; x0 = S8H_NEXT_GROUP(x0, out_w)) {
                __m256i a0[4];
                for (int j = 0; j < 4; ++j) {
                    const uint8_t *p = in + oy * stride * in_rs + (4 * k + j) * in_cs + x0 * stride;
                    __m256i acc = s8h_dot4(b[j], s8h_taps(p, stride, mask), wv[j][0]);
                    acc = s8h_dot4(acc, s8h_taps(p + in_rs, stride, mask), wv[j][1]);
                    acc = s8h_dot4(acc, s8h_taps(p + 2 * in_rs, stride, mask), wv[j][2]);
                    a0[j] = s8h_scale(acc, &q[j], sh, clamp);
                }
                s8h_store_quads(out + oy * out_rs + k * out_gs + 4 * x0, a0[0], a0[1], a0[2], a0[3]);
            }
        }
    }
}

/* the 1x1 convolution from the quad layout: each group of four channels of eight pixels is one 32-byte load */
ML_S8H_INLINE void pointwise_quads_avx_groups(const uint8_t *in, int in_rs, int in_gs, const int groups, uint8_t *out,
                                              int out_rs, int out_cs, int h, int w, int out_c, const int8_t *weight,
                                              const int32_t *bias, const ml_s8h_rq *rq, int shift, const int clamp)
{
    const __m128i sh = _mm_cvtsi32_si128(shift);
    (void)bias; /* in the requantization rows (ml_s8h_rq) */
    const int n = w < 8 ? w : 8;
    __m256i quads[ML_S8H_MAX_IN_CHANNELS / 4];
    for (int y = 0; y < h; ++y) {
        for (int x0 = 0; x0 < w; x0 = S8H_NEXT_GROUP(x0, w)) {
            const uint8_t *p = in + y * in_rs + 4 * x0;
            for (int k = 0; k < groups; ++k) quads[k] = _mm256_loadu_si256((const __m256i *)(const void *)(p + k * in_gs));
            s8h_all_channels(quads, groups, weight, out_c, rq, sh, clamp, out + y * out_rs + x0, out_cs, n);
        }
    }
}
#endif

/* ------------------------------------------------------------------------------------------------ public */
void ml_s8h_conv3x3_c1(const uint8_t *in, int in_rs, uint8_t *out, int out_rs, int out_cs, int out_h, int out_w,
                       int out_c, const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq, int shift, int clamp)
{
#if ML_S8H_AVX
    if (clamp) {
        conv3x3_c1_avx(in, in_rs, out, out_rs, out_cs, out_h, out_w, out_c, weight, bias, rq, shift, 1);
    } else {
        conv3x3_c1_avx(in, in_rs, out, out_rs, out_cs, out_h, out_w, out_c, weight, bias, rq, shift, 0);
    }
#else
    (void)clamp;
    ml_s8h_conv3x3_c1_portable(in, in_rs, out, out_rs, out_cs, out_h, out_w, out_c, weight, bias, rq, shift);
#endif
}

#if ML_S8H_AVX
static void depthwise3x3_avx(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out, int out_rs,
                             int out_cs, int out_h, int out_w, const int8_t *weight, const int32_t *bias,
                             const ml_s8h_rq *rq, int shift, int clamp)
{
#define ML_S8H_DW(s, k) depthwise3x3_avx_stride(in, in_rs, in_cs, c, s, out, out_rs, out_cs, out_h, out_w, weight, bias, \
                                                rq, shift, k)
    if (stride == 1 && clamp) ML_S8H_DW(1, 1);
    else if (stride == 1) ML_S8H_DW(1, 0);
    else if (clamp) ML_S8H_DW(2, 1);
    else ML_S8H_DW(2, 0);
#undef ML_S8H_DW
}
#endif

void ml_s8h_depthwise3x3(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out, int out_rs,
                         int out_cs, int out_h, int out_w, const int8_t *weight, const int32_t *bias,
                         const ml_s8h_rq *rq, int shift, int clamp)
{
#if ML_S8H_AVX
    if (stride == 1 || stride == 2) {
        depthwise3x3_avx(in, in_rs, in_cs, c, stride, out, out_rs, out_cs, out_h, out_w, weight, bias, rq, shift, clamp);
        return;
    }
#endif
    (void)clamp;
    ml_s8h_depthwise3x3_portable(in, in_rs, in_cs, c, stride, out, out_rs, out_cs, out_h, out_w, weight, bias, rq,
                                 shift);
}

void ml_s8h_pointwise(const uint8_t *in, int in_rs, int in_cs, int in_c, uint8_t *out, int out_rs, int out_cs,
                      int h, int w, int out_c, const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq,
                      int shift, int clamp)
{
#if ML_S8H_AVX
    if (in_c % 4 == 0 && in_c <= ML_S8H_MAX_IN_CHANNELS) {
        if (clamp) {
            pointwise_avx(in, in_rs, in_cs, in_c, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, 1);
        } else {
            pointwise_avx(in, in_rs, in_cs, in_c, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, 0);
        }
        return;
    }
#endif
    (void)clamp;
    ml_s8h_pointwise_portable(in, in_rs, in_cs, in_c, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift);
}

void ml_s8h_depthwise3x3_quads(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out, int out_rs,
                               int out_gs, int out_h, int out_w, const int8_t *weight, const int32_t *bias,
                               const ml_s8h_rq *rq, int shift, int clamp)
{
#if ML_S8H_AVX
    if (c % 4 == 0 && (stride == 1 || stride == 2)) {
#define ML_S8H_DWQ(s, k) depthwise3x3_quads_avx(in, in_rs, in_cs, c, s, out, out_rs, out_gs, out_h, out_w, weight, \
                                                bias, rq, shift, k)
        if (stride == 1 && clamp) ML_S8H_DWQ(1, 1);
        else if (stride == 1) ML_S8H_DWQ(1, 0);
        else if (clamp) ML_S8H_DWQ(2, 1);
        else ML_S8H_DWQ(2, 0);
#undef ML_S8H_DWQ
        return;
    }
#endif
    (void)clamp;
    ml_s8h_depthwise3x3_quads_portable(in, in_rs, in_cs, c, stride, out, out_rs, out_gs, out_h, out_w, weight, bias,
                                       rq, shift);
}

void ml_s8h_pointwise_quads(const uint8_t *in, int in_rs, int in_gs, int in_c, uint8_t *out, int out_rs, int out_cs,
                            int h, int w, int out_c, const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq,
                            int shift, int clamp)
{
#if ML_S8H_AVX
#define ML_S8H_PWQ(g, k) pointwise_quads_avx_groups(in, in_rs, in_gs, g, out, out_rs, out_cs, h, w, out_c, weight, bias, \
                                                    rq, shift, k)
    if (in_c % 4 == 0 && in_c <= ML_S8H_MAX_IN_CHANNELS) {
        switch (in_c * 2 + !!clamp) {
        case 16: ML_S8H_PWQ(2, 0); return;
        case 17: ML_S8H_PWQ(2, 1); return;
        case 32: ML_S8H_PWQ(4, 0); return;
        case 33: ML_S8H_PWQ(4, 1); return;
        case 48: ML_S8H_PWQ(6, 0); return;
        case 49: ML_S8H_PWQ(6, 1); return;
        default: ML_S8H_PWQ(in_c / 4, 1); return; /* the clamp is never wrong */
        }
    }
#undef ML_S8H_PWQ
#endif
    (void)clamp;
    ml_s8h_pointwise_quads_portable(in, in_rs, in_gs, in_c, out, out_rs, out_cs, h, w, out_c, weight, bias, rq, shift);
}

/* zero_point + round(acc * multiplier / 2^shift), half up, clamped to [low, 127]: int8 units */
static int8_t s8h_requantize_q(int32_t acc, int32_t multiplier, int shift, int32_t zero_point, int32_t low)
{
    int64_t v = (((int64_t)acc * multiplier + ((int64_t)1 << (shift - 1))) >> shift) + zero_point;
    if (v < low) v = low;
    if (v > 127) v = 127;
    return (int8_t)v;
}

void ml_s8h_global_average_pool(const uint8_t *in, int rs, int cs, int h, int w, int c, int32_t in_zp,
                                int8_t *out, int16_t multiplier, int shift, int32_t out_zp, int32_t low)
{
    uint16_t column[ML_S8H_MAX_GAP_ROW];
    if (rs <= ML_S8H_MAX_GAP_ROW && h <= 257) { /* the rows summed first (h * 255 fits 16 bits), a vectorizable loop */
        for (int i = 0; i < rs; ++i) column[i] = 0;
        for (int y = 0; y < h; ++y) {
            for (int i = 0; i < rs; ++i) column[i] = (uint16_t)(column[i] + in[y * rs + i]);
        }
        for (int ch = 0; ch < c; ++ch) {
            int32_t sum = 0;
            for (int x = 0; x < w; ++x) sum += column[ch * cs + x];
            out[ch] = s8h_requantize_q(sum - (in_zp + 128) * h * w, multiplier, shift, out_zp, low);
        }
        return;
    }
    for (int ch = 0; ch < c; ++ch) {
        int32_t sum = 0;
        for (int y = 0; y < h; ++y) {
            for (int x = 0; x < w; ++x) sum += in[y * rs + ch * cs + x];
        }
        out[ch] = s8h_requantize_q(sum - (in_zp + 128) * h * w, multiplier, shift, out_zp, low);
    }
}

void ml_s8h_dense(const int8_t *in, int in_size, int32_t in_zp, int8_t *out, int out_size, const int8_t *weight,
                  const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp, int32_t low)
{
    for (int o = 0; o < out_size; ++o) {
        int32_t acc = bias[o];
        for (int i = 0; i < in_size; ++i) acc += (in[i] - in_zp) * weight[o * in_size + i];
        out[o] = s8h_requantize_q(acc, multiplier[o], shift, out_zp, low);
    }
}
