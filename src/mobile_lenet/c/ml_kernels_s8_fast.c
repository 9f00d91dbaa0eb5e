/* ml_kernels_s8_fast.c - the optimized int8 convolutions, under the public names ml_conv2d_s8 and
 * ml_depthwise_conv2d_s8 (see ml_kernels_s8.h). They give exactly the integers of the reference kernels
 * (ml_conv2d_s8_ref, ml_depthwise_conv2d_s8_ref in ml_kernels_s8.c), which they fall back to for the shapes
 * they do not cover; tests/c/test_kernels_s8.c compares the two bit for bit.
 *
 * What makes them fast (the levers of CMSIS-NN and TensorFlow Lite Micro, written for this CHW layout):
 * - The zero point leaves the inner loops. An input value q enters as u = q + 128 (an unsigned byte), so
 *   sum (q - zp) * w = sum u * w - (zp + 128) * sum w: the second term is folded into the bias, once per
 *   output channel. A convolution with padding reads a copy of its input plane with the padding made real
 *   (bytes zp + 128, i.e. real value 0), so every output is an interior one: no bounds tests per tap.
 * - 1x1 (pointwise) convolutions are small matrix products over the channels, several accumulators each.
 * - Requantization uses 32-bit products only (ml_s8_scale), exact for the shifts 17..31 that real layers
 *   have (others go to the reference kernels).
 * - On cores with the DSP extension (Cortex-M4/M7/M33, __ARM_FEATURE_DSP) the sums use SMLAD, two 16-bit
 *   multiply-accumulates per instruction, through the ACLE intrinsics of <arm_acle.h>. Elsewhere (host,
 *   Cortex-M0+) the same loops are plain C99.
 * The sums are modulo 2^32 (uint32_t), as the reference's int32 sums are in practice: same bits, no overflow
 * that a sanitizer could call undefined. Stack: a padded plane (ML_S8_PLANE_BYTES) and a few small tables.
 *
 * Built with -DML_S8_REFERENCE (the default on AVR, whose 8 KB of SRAM has no room for the tables), the
 * public names are the reference kernels. */
#include "ml_kernels_s8.h"

#include "ml_flash.h"

#if defined(__AVR__) && !defined(ML_S8_FAST)
#define ML_S8_REFERENCE 1
#endif

#if defined(ML_S8_REFERENCE)

void ml_conv2d_s8(const int8_t *in, int in_h, int in_w, int in_c, int32_t in_zp,
                  int8_t *out, int out_h, int out_w, int out_c, int kernel, int stride, int padding,
                  const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp,
                  int32_t low)
{
    ml_conv2d_s8_ref(in, in_h, in_w, in_c, in_zp, out, out_h, out_w, out_c, kernel, stride, padding, weight, bias,
                     multiplier, shift, out_zp, low);
}

void ml_depthwise_conv2d_s8(const int8_t *in, int in_h, int in_w, int channels, int32_t in_zp,
                            int8_t *out, int out_h, int out_w, int kernel, int stride, int padding,
                            const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift,
                            int32_t out_zp, int32_t low)
{
    ml_depthwise_conv2d_s8_ref(in, in_h, in_w, channels, in_zp, out, out_h, out_w, kernel, stride, padding, weight,
                               bias, multiplier, shift, out_zp, low);
}

#else

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32) && !defined(ML_S8_NO_DSP)
#define ML_S8_DSP 1
#include <arm_acle.h>
#include <string.h>
/* bytes 1 and 3 of a word, zero-extended to 16 bits each: UXTB16 with its rotation (one instruction) */
static inline uint32_t ml_s8_odd_bytes(uint32_t v)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#else
#define ML_S8_DSP 0
#endif

#define ML_S8_MAX_CHANNELS 64   /* per-channel tables on the stack; more channels: the reference kernels */
#define ML_S8_PLANE_BYTES 1024  /* a padded input plane on the stack (30 x 30 for a 28 x 28 map) */
#define ML_S8_SLACK 4           /* word loads may read up to 3 bytes past the last used one */
#define ML_S8_MIN_SHIFT 17
#define ML_S8_MAX_SHIFT 31

/* round-half-up(acc * multiplier / 2^shift) for 17 <= shift <= 31, exactly ml_requantize_s8's value before the
 * zero point and the clamp, with 32-bit products only: acc = hi * 2^16 + lo (lo in [0, 65535]), both products
 * fit in int32 (|hi * m| <= 2^30, |lo * m| < 2^31), and floor((hi * m * 2^16 + lo * m + 2^(s-1)) / 2^s) =
 * floor((hi * m + 2^(s-17) + floor(lo * m / 2^16)) / 2^(s-16)) (nested floors). The right shifts of negative
 * values are arithmetic, as in ml_requantize_s8. */
static inline int32_t ml_s8_scale32(int32_t acc, int32_t multiplier, int shift)
{
    const int32_t hi = acc >> 16, lo = (int32_t)((uint32_t)acc & 0xFFFFu);
    return (hi * multiplier + ((int32_t)1 << (shift - 17)) + ((lo * multiplier) >> 16)) >> (shift - 16);
}

/* The same with mult = multiplier * 2^(32 - shift) (|mult| <= 2^30 for shift >= 17): floor((acc * mult + 2^31) /
 * 2^32), the top word of one 32 x 32 -> 64 multiply-accumulate (SMLAL on a Cortex-M4). */
static inline int32_t ml_s8_scale64(int32_t acc, int32_t mult)
{
    return (int32_t)(((int64_t)acc * mult + 0x80000000LL) >> 32);
}

/* What the kernels keep per output channel: the bias with the zero point folded in, the multiplier as the
 * scaling function wants it. */
static inline int32_t ml_s8_mult(int16_t multiplier, int shift)
{
#if ML_S8_DSP
    return (int32_t)((uint32_t)(int32_t)multiplier << (32 - shift));
#else
    (void)shift;
    return multiplier;
#endif
}

static inline int8_t ml_s8_output(uint32_t acc, int32_t mult, int shift, int32_t out_zp, int32_t low)
{
#if ML_S8_DSP
    /* SMMULR is ml_s8_scale64 in one instruction; SSAT clamps to [-128, 127] (low >= -128: checked by callers) */
    int32_t value;
    __asm__("smmulr %0, %1, %2" : "=r"(value) : "r"(acc), "r"(mult));
    value += out_zp;
    (void)shift;
    if (value < low) value = low;
    return (int8_t)__ssat(value, 8);
#else
    int32_t value = ml_s8_scale32((int32_t)acc, mult, shift) + out_zp;
    if (value < low) value = low;
    if (value > 127) value = 127;
    return (int8_t)value;
#endif
}

/* bias - (zp + 128) * sum of the count weights (modulo 2^32): the bias for sums of u * w, u = q + 128. */
static int32_t ml_s8_folded_bias(const int8_t *weight, int count, int32_t bias, int32_t in_zp)
{
    uint32_t sum = 0;
    for (int i = 0; i < count; ++i) sum += (uint32_t)(int32_t)ML_FLASH_S8(&weight[i]);
    return (int32_t)((uint32_t)bias - (uint32_t)(in_zp + 128) * sum);
}

static inline uint8_t ml_s8_unsigned(int8_t q) { return (uint8_t)((uint8_t)q ^ 0x80u); }

/* -------------------------------------------------------------------------------- padded planes, KxK filters */
/* The plane in_h x in_w as u = q + 128, surrounded by padding rows and columns of zp + 128 (real zero):
 * (in_h + 2 padding) rows of pw = in_w + 2 padding bytes. */
static void ml_s8_pad_plane(const int8_t *in, int in_h, int in_w, int padding, int32_t in_zp, uint8_t *plane)
{
    const int pw = in_w + 2 * padding;
    const uint8_t pad = (uint8_t)(in_zp + 128);
    uint8_t *row = plane;
    for (int i = 0; i < padding * pw; ++i) *row++ = pad;
    for (int y = 0; y < in_h; ++y, in += in_w) {
        for (int i = 0; i < padding; ++i) *row++ = pad;
        int x = 0;
#if ML_S8_DSP
        for (; x + 4 <= in_w; x += 4, row += 4) { /* four at a time: flip the sign bits of a word */
            uint32_t word;
            memcpy(&word, in + x, 4);
            word ^= 0x80808080u;
            memcpy(row, &word, 4);
        }
#endif
        for (; x < in_w; ++x) *row++ = ml_s8_unsigned(in[x]);
        for (int i = 0; i < padding; ++i) *row++ = pad;
    }
    for (int i = 0; i < padding * pw; ++i) *row++ = pad;
}

/* One output plane of a kernel x kernel filter over a padded plane (row stride pw): out = requantized
 * (bias + sum of u * taps), no bounds to test. */
static void ml_s8_filter(const uint8_t *plane, int pw, int8_t *out, int out_h, int out_w, int kernel, int stride,
                         const int8_t *taps, int32_t bias, int32_t mult, int shift, int32_t out_zp, int32_t low)
{
    if (kernel == 3) {
        const int32_t w0 = ML_FLASH_S8(&taps[0]), w1 = ML_FLASH_S8(&taps[1]), w2 = ML_FLASH_S8(&taps[2]);
        const int32_t w3 = ML_FLASH_S8(&taps[3]), w4 = ML_FLASH_S8(&taps[4]), w5 = ML_FLASH_S8(&taps[5]);
        const int32_t w6 = ML_FLASH_S8(&taps[6]), w7 = ML_FLASH_S8(&taps[7]), w8 = ML_FLASH_S8(&taps[8]);
#if ML_S8_DSP
        /* (w0, w2) packed for SMLAD with (u[x], u[x + 2]), w1 alone for u[x + 1] */
        const uint32_t a02 = ((uint32_t)w0 & 0xFFFFu) | ((uint32_t)w2 << 16);
        const uint32_t a35 = ((uint32_t)w3 & 0xFFFFu) | ((uint32_t)w5 << 16);
        const uint32_t a68 = ((uint32_t)w6 & 0xFFFFu) | ((uint32_t)w8 << 16);
#endif
        for (int oy = 0; oy < out_h; ++oy, out += out_w) {
            const uint8_t *r0 = plane + oy * stride * pw, *r1 = r0 + pw, *r2 = r1 + pw;
            int ox = 0;
#if ML_S8_DSP
            if (stride == 1) {
                /* two outputs per word: bytes u[x..x+3] -> e = (u[x], u[x+2]), o = (u[x+1], u[x+3]);
                 * out[x] = e.(w0, w2) + o.lo * w1, out[x+1] = o.(w0, w2) + e.hi * w1 */
                for (; ox + 2 <= out_w; ox += 2) {
                    uint32_t v0, v1, v2;
                    memcpy(&v0, r0 + ox, 4);
                    memcpy(&v1, r1 + ox, 4);
                    memcpy(&v2, r2 + ox, 4);
                    const uint32_t e0 = __uxtb16(v0), o0 = ml_s8_odd_bytes(v0);
                    const uint32_t e1 = __uxtb16(v1), o1 = ml_s8_odd_bytes(v1);
                    const uint32_t e2 = __uxtb16(v2), o2 = ml_s8_odd_bytes(v2);
                    int32_t s0 = __smlad(e0, a02, bias), s1 = __smlad(o0, a02, bias);
                    s0 = __smlabb((int32_t)o0, w1, s0);
                    s1 = __smlatb((int32_t)e0, w1, s1);
                    s0 = __smlad(e1, a35, s0);
                    s1 = __smlad(o1, a35, s1);
                    s0 = __smlabb((int32_t)o1, w4, s0);
                    s1 = __smlatb((int32_t)e1, w4, s1);
                    s0 = __smlad(e2, a68, s0);
                    s1 = __smlad(o2, a68, s1);
                    s0 = __smlabb((int32_t)o2, w7, s0);
                    s1 = __smlatb((int32_t)e2, w7, s1);
                    out[ox] = ml_s8_output((uint32_t)s0, mult, shift, out_zp, low);
                    out[ox + 1] = ml_s8_output((uint32_t)s1, mult, shift, out_zp, low);
                }
            } else if (stride == 2) {
                /* one output per word: bytes u[2x..2x+3] -> e = (u[2x], u[2x+2]), o.lo = u[2x+1] */
                for (; ox < out_w; ++ox) {
                    uint32_t v0, v1, v2;
                    memcpy(&v0, r0 + 2 * ox, 4);
                    memcpy(&v1, r1 + 2 * ox, 4);
                    memcpy(&v2, r2 + 2 * ox, 4);
                    int32_t s = __smlad(__uxtb16(v0), a02, bias);
                    s = __smlabb((int32_t)ml_s8_odd_bytes(v0), w1, s);
                    s = __smlad(__uxtb16(v1), a35, s);
                    s = __smlabb((int32_t)ml_s8_odd_bytes(v1), w4, s);
                    s = __smlad(__uxtb16(v2), a68, s);
                    s = __smlabb((int32_t)ml_s8_odd_bytes(v2), w7, s);
                    out[ox] = ml_s8_output((uint32_t)s, mult, shift, out_zp, low);
                }
            }
#endif
            for (; ox < out_w; ++ox) {
                const int x = ox * stride;
                uint32_t acc = (uint32_t)bias;
                acc += (uint32_t)(r0[x] * w0 + r0[x + 1] * w1 + r0[x + 2] * w2);
                acc += (uint32_t)(r1[x] * w3 + r1[x + 1] * w4 + r1[x + 2] * w5);
                acc += (uint32_t)(r2[x] * w6 + r2[x + 1] * w7 + r2[x + 2] * w8);
                out[ox] = ml_s8_output(acc, mult, shift, out_zp, low);
            }
        }
        return;
    }
    for (int oy = 0; oy < out_h; ++oy, out += out_w) {
        for (int ox = 0; ox < out_w; ++ox) {
            uint32_t acc = (uint32_t)bias;
            for (int ky = 0; ky < kernel; ++ky) {
                const uint8_t *row = plane + (oy * stride + ky) * pw + ox * stride;
                const int8_t *t = taps + ky * kernel;
                for (int kx = 0; kx < kernel; ++kx) acc += (uint32_t)(row[kx] * (int32_t)ML_FLASH_S8(&t[kx]));
            }
            out[ox] = ml_s8_output(acc, mult, shift, out_zp, low);
        }
    }
}

/* Whether the fast kernels cover a layer: the shift range of ml_s8_scale32, the channel tables, the padded
 * plane on the stack, and outputs that read inside the padded plane (the shapes a convolution has). */
static int ml_s8_covered(int in_h, int in_w, int out_h, int out_w, int channels, int kernel, int stride, int padding,
                         int shift)
{
    const int ph = in_h + 2 * padding, pw = in_w + 2 * padding;
    return shift >= ML_S8_MIN_SHIFT && shift <= ML_S8_MAX_SHIFT && channels <= ML_S8_MAX_CHANNELS && kernel >= 1
           && stride >= 1 && padding >= 0 && ph * pw <= ML_S8_PLANE_BYTES && out_h >= 1 && out_w >= 1
           && (out_h - 1) * stride + kernel <= ph && (out_w - 1) * stride + kernel <= pw;
}

/* -------------------------------------------------------------------------------- pointwise (1x1) */
#if ML_S8_DSP
#define ML_S8_MAX_WEIGHT_PAIRS 512 /* the layer's weights as int16 pairs on the stack (2 KB) */

/* out[co][p] = requantized (bias'[co] + sum over ci of u[ci][p] * w[co][ci]): two pixels and two output
 * channels at a time, two channels per SMLAD. The pixels' channel pairs (u[ci][p], u[ci+1][p]) and the
 * weights' (w[co][ci], w[co][ci+1]) are first packed as 16-bit pairs. */
static int ml_s8_pointwise_dsp(const int8_t *in, int plane, int in_c, int8_t *out, int out_c, const int8_t *weight,
                               const int32_t *folded, const int32_t *mult, int shift, int32_t out_zp, int32_t low)
{
    const int pairs = (in_c + 1) / 2;
    uint32_t wpairs[ML_S8_MAX_WEIGHT_PAIRS], col_a[ML_S8_MAX_CHANNELS / 2], col_b[ML_S8_MAX_CHANNELS / 2];
    if (out_c * pairs > ML_S8_MAX_WEIGHT_PAIRS) return 0;
    for (int co = 0; co < out_c; ++co) {
        for (int k = 0; k < pairs; ++k) {
            const int ci = 2 * k;
            const int32_t lo = ML_FLASH_S8(&weight[co * in_c + ci]);
            const int32_t hi = ci + 1 < in_c ? ML_FLASH_S8(&weight[co * in_c + ci + 1]) : 0;
            wpairs[co * pairs + k] = ((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16);
        }
    }
    int p = 0;
    for (; p + 2 <= plane; p += 2) {
        for (int k = 0; k < pairs; ++k) { /* (u[ci][p], u[ci+1][p]) and the same for p + 1 */
            const int ci = 2 * k;
            uint16_t h0, h1 = 0;
            memcpy(&h0, in + ci * plane + p, 2);
            if (ci + 1 < in_c) memcpy(&h1, in + (ci + 1) * plane + p, 2);
            const uint32_t v = ((uint32_t)h0 | ((uint32_t)h1 << 16)) ^ 0x80808080u;
            col_a[k] = __uxtb16(v);
            col_b[k] = ml_s8_odd_bytes(v);
        }
        int co = 0;
        for (; co + 2 <= out_c; co += 2) {
            const uint32_t *w0 = wpairs + co * pairs, *w1 = w0 + pairs;
            int32_t s00 = folded[co], s01 = folded[co], s10 = folded[co + 1], s11 = folded[co + 1];
            for (int k = 0; k < pairs; ++k) {
                const uint32_t xa = col_a[k], xb = col_b[k], wa = w0[k], wb = w1[k];
                s00 = __smlad(xa, wa, s00);
                s01 = __smlad(xb, wa, s01);
                s10 = __smlad(xa, wb, s10);
                s11 = __smlad(xb, wb, s11);
            }
            out[co * plane + p] = ml_s8_output((uint32_t)s00, mult[co], shift, out_zp, low);
            out[co * plane + p + 1] = ml_s8_output((uint32_t)s01, mult[co], shift, out_zp, low);
            out[(co + 1) * plane + p] = ml_s8_output((uint32_t)s10, mult[co + 1], shift, out_zp, low);
            out[(co + 1) * plane + p + 1] = ml_s8_output((uint32_t)s11, mult[co + 1], shift, out_zp, low);
        }
        if (co < out_c) {
            const uint32_t *w0 = wpairs + co * pairs;
            int32_t s00 = folded[co], s01 = folded[co];
            for (int k = 0; k < pairs; ++k) {
                s00 = __smlad(col_a[k], w0[k], s00);
                s01 = __smlad(col_b[k], w0[k], s01);
            }
            out[co * plane + p] = ml_s8_output((uint32_t)s00, mult[co], shift, out_zp, low);
            out[co * plane + p + 1] = ml_s8_output((uint32_t)s01, mult[co], shift, out_zp, low);
        }
    }
    return p;
}
#endif

/* The same in plain C, one pixel at a time from pixel `first`: its channels gathered into col, then one dot
 * product per output channel. */
static void ml_s8_pointwise(const int8_t *in, int plane, int in_c, int8_t *out, int out_c, const int8_t *weight,
                            const int32_t *folded, const int32_t *mult, int shift, int32_t out_zp, int32_t low,
                            int first)
{
    uint8_t col[ML_S8_MAX_CHANNELS];
    for (int p = first; p < plane; ++p) {
        for (int ci = 0; ci < in_c; ++ci) col[ci] = ml_s8_unsigned(in[ci * plane + p]);
        const int8_t *w = weight;
        for (int co = 0; co < out_c; ++co, w += in_c) {
            uint32_t acc = (uint32_t)folded[co];
            int ci = 0;
            for (; ci + 2 <= in_c; ci += 2) {
                acc += (uint32_t)(col[ci] * (int32_t)ML_FLASH_S8(&w[ci]) + col[ci + 1] * (int32_t)ML_FLASH_S8(&w[ci + 1]));
            }
            if (ci < in_c) acc += (uint32_t)(col[ci] * (int32_t)ML_FLASH_S8(&w[ci]));
            out[co * plane + p] = ml_s8_output(acc, mult[co], shift, out_zp, low);
        }
    }
}

/* -------------------------------------------------------------------------------- the public kernels */
void ml_conv2d_s8(const int8_t *in, int in_h, int in_w, int in_c, int32_t in_zp,
                  int8_t *out, int out_h, int out_w, int out_c, int kernel, int stride, int padding,
                  const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp,
                  int32_t low)
{
    const int pointwise = kernel == 1 && stride == 1 && padding == 0 && in_h == out_h && in_w == out_w;
    const int channels = in_c > out_c ? in_c : out_c;
    if (pointwise && shift >= ML_S8_MIN_SHIFT && shift <= ML_S8_MAX_SHIFT && channels <= ML_S8_MAX_CHANNELS
        && low >= -128 && low <= 127) {
        int32_t folded[ML_S8_MAX_CHANNELS], mult[ML_S8_MAX_CHANNELS];
        const int plane = in_h * in_w;
        int first = 0;
        for (int co = 0; co < out_c; ++co) {
            folded[co] = ml_s8_folded_bias(weight + co * in_c, in_c, ML_FLASH_S32(&bias[co]), in_zp);
            mult[co] = ml_s8_mult(ML_FLASH_S16(&multiplier[co]), shift);
        }
#if ML_S8_DSP
        first = ml_s8_pointwise_dsp(in, plane, in_c, out, out_c, weight, folded, mult, shift, out_zp, low);
#endif
        ml_s8_pointwise(in, plane, in_c, out, out_c, weight, folded, mult, shift, out_zp, low, first);
        return;
    }
    if (in_c == 1 && low >= -128 && low <= 127
        && ml_s8_covered(in_h, in_w, out_h, out_w, out_c, kernel, stride, padding, shift)) {
        /* one input plane (the stem): pad it once, filter it once per output channel */
        uint8_t padded[ML_S8_PLANE_BYTES + ML_S8_SLACK];
        const int taps = kernel * kernel;
        ml_s8_pad_plane(in, in_h, in_w, padding, in_zp, padded);
        for (int co = 0; co < out_c; ++co) {
            const int32_t b = ml_s8_folded_bias(weight + co * taps, taps, ML_FLASH_S32(&bias[co]), in_zp);
            ml_s8_filter(padded, in_w + 2 * padding, out + co * out_h * out_w, out_h, out_w, kernel, stride,
                         weight + co * taps, b, ml_s8_mult(ML_FLASH_S16(&multiplier[co]), shift), shift, out_zp, low);
        }
        return;
    }
    ml_conv2d_s8_ref(in, in_h, in_w, in_c, in_zp, out, out_h, out_w, out_c, kernel, stride, padding, weight, bias,
                     multiplier, shift, out_zp, low);
}

void ml_depthwise_conv2d_s8(const int8_t *in, int in_h, int in_w, int channels, int32_t in_zp,
                            int8_t *out, int out_h, int out_w, int kernel, int stride, int padding,
                            const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift,
                            int32_t out_zp, int32_t low)
{
    if (low < -128 || low > 127 || !ml_s8_covered(in_h, in_w, out_h, out_w, 1, kernel, stride, padding, shift)) {
        ml_depthwise_conv2d_s8_ref(in, in_h, in_w, channels, in_zp, out, out_h, out_w, kernel, stride, padding,
                                   weight, bias, multiplier, shift, out_zp, low);
        return;
    }
    uint8_t padded[ML_S8_PLANE_BYTES + ML_S8_SLACK];
    const int taps = kernel * kernel;
    for (int c = 0; c < channels; ++c) {
        const int32_t b = ml_s8_folded_bias(weight + c * taps, taps, ML_FLASH_S32(&bias[c]), in_zp);
        ml_s8_pad_plane(in + c * in_h * in_w, in_h, in_w, padding, in_zp, padded);
        ml_s8_filter(padded, in_w + 2 * padding, out + c * out_h * out_w, out_h, out_w, kernel, stride,
                     weight + c * taps, b, ml_s8_mult(ML_FLASH_S16(&multiplier[c]), shift), shift, out_zp, low);
    }
}

#endif /* ML_S8_REFERENCE */
