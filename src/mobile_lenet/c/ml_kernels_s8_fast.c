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
 * - 1x1 (pointwise) convolutions are small matrix products over the channels: four pixels at a time, gathered
 *   into a small tile, four accumulators in registers, the weights read once per four pixels straight from
 *   flash (no repacked copy).
 * - Requantization without 64-bit products (ml_s8_requant, ml_s8_out): SMMLAR (zero point included) and SSAT on
 *   the DSP cores (shifts 17..31; 3x3 filters with shifts 10..16 take their taps times 2^(17 - shift) instead,
 *   ml_s8_filters_prescaled); in plain C, per-channel thresholds for the two clamps and one 32-bit multiply
 *   and shift in between (multipliers > 0, shifts up to 23, as real layers have). Other layers go to the
 *   reference kernels.
 * - On cores with the DSP extension (Cortex-M4/M7/M33, __ARM_FEATURE_DSP) the sums use SMLAD, two 16-bit
 *   multiply-accumulates per instruction, through the ACLE intrinsics of <arm_acle.h>. Elsewhere (host,
 *   Cortex-M0+) the same loops are plain C99, except the pointwise inner loop on Thumb-1 cores (inline assembly:
 *   GCC spills its four sums there; -DML_S8_NO_ASM keeps the C).
 * - On the ESP32 (Xtensa with the MAC16 option, __XTENSA__), the multiply-accumulates go to MAC16's 40-bit
 *   accumulator, one per instruction: a 3x3 filter keeps eight of its taps in the four MAC16 registers (m0-m3,
 *   two 16-bit taps each) and the ninth in an address register, over a 16-bit padded plane where one 32-bit load
 *   brings two columns (two outputs a turn); a 1x1 convolution widens a tile of pixels to 16 bits, channels last,
 *   and its weights once per layer, and runs each dot product as MULA.DD.*.LDINC (multiply-accumulate and load
 *   the next pair, in a zero-overhead loop). The requantization clamps the sum with MIN/MAX (ml_s8_out_clamped);
 *   where a channel's scale is below 1 that clamp alone is exact (ml_s8_rq_steps_by_one). Other channels take
 *   the plain C 3x3 path or a plain C requantization of the MAC16 sums. -DML_S8_NO_XTENSA keeps the plain C.
 * - On x86 with AVX2 (the host program is built with -march=native; not on ARM), the 3x3 filters and the 1x1
 *   convolutions use VPMADDWD: pairs of 16-bit values (inputs widened from bytes) times pairs of weights, summed
 *   into eight int32 lanes exactly (|u * w| < 2^15); with VNNI as well (AVX512-VNNI + AVX512VL, or AVX-VNNI),
 *   VPDPBUSD: quads of bytes u = q + 128 times quads of int8 weights into each int32 lane (no saturation). The
 *   plain C requantization (thresholds, one 32-bit multiply and shift) runs eight lanes at a time, the
 *   thresholds as a clamp of the sums and the final clamp as saturating packs. -DML_S8_NO_X86 keeps the plain
 *   C, -DML_S8_NO_VNNI the AVX2 one.
 * The sums are modulo 2^32 (uint32_t), as the reference's int32 sums are in practice: same bits, no overflow
 * that a sanitizer could call undefined. Stack: a padded plane (ML_S8_PLANE_BYTES) or a pixel tile, and
 * per-channel tables (ML_S8_MAX_CHANNELS entries).
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
/* the same, sign-extended (SXTB16 with its rotation) */
static inline uint32_t ml_s8_odd_bytes_signed(uint32_t v)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}
#else
#define ML_S8_DSP 0
#endif

/* Thumb-1 only cores (ARMv6-M: Cortex-M0/M0+; ARMv8-M Baseline): a few inner loops in assembly */
#if (defined(__ARM_ARCH_6M__) || defined(__ARM_ARCH_8M_BASE__)) && !defined(ML_S8_NO_ASM)
#define ML_S8_THUMB1 1
#else
#define ML_S8_THUMB1 0
#endif

/* Xtensa with MAC16 (the ESP32): the multiply-accumulate paths below */
#if defined(__XTENSA__) && !defined(ML_S8_NO_XTENSA)
#define ML_S8_XTENSA 1
#else
#define ML_S8_XTENSA 0
#endif

/* x86 with AVX2 (e.g. -march=native on the host): the VPMADDWD paths below */
#if !ML_S8_DSP && defined(__AVX2__) && !defined(ML_S8_NO_X86)
#define ML_S8_X86 1
#include <immintrin.h>
#else
#define ML_S8_X86 0
#endif

/* ... and with VNNI (VPDPBUSD: four u8 x s8 products summed into each int32 lane, no saturation), when the
 * compiler targets AVX512-VNNI with AVX512VL or AVX-VNNI */
#if ML_S8_X86 && ((defined(__AVX512VNNI__) && defined(__AVX512VL__)) || defined(__AVXVNNI__)) && !defined(ML_S8_NO_VNNI)
#define ML_S8_VNNI 1
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define ml_s8_dpbusd(acc, u, w) _mm256_dpbusd_epi32(acc, u, w)
#else
#define ml_s8_dpbusd(acc, u, w) _mm256_dpbusd_avx_epi32(acc, u, w)
#endif
#else
#define ML_S8_VNNI 0
#endif

#define ML_S8_MAX_CHANNELS 64   /* per-channel tables on the stack; more channels: the reference kernels */
#define ML_S8_PLANE_BYTES 1024  /* a padded input plane on the stack (30 x 30 for a 28 x 28 map) */
#if ML_S8_X86
#define ML_S8_SLACK 16          /* 16-byte loads may read up to 15 bytes past the last used one */
#else
#define ML_S8_SLACK 4           /* word loads may read up to 3 bytes past the last used one */
#endif
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

#if defined(__GNUC__)
#define ML_S8_INLINE static inline __attribute__((always_inline))
#else
#define ML_S8_INLINE static inline
#endif

/* What the kernels keep per output channel to requantize a sum: see ml_s8_requant and ml_s8_out. */
typedef struct {
    int32_t mult;  /* DSP: multiplier * 2^(32 - shift); plain C: the multiplier (> 0) */
    int32_t hi;    /* plain C: sums >= hi give 127 */
    int32_t lo;    /* plain C: sums <= lo give low */
    int32_t round; /* plain C: 2^(shift-1) + out_zp * 2^shift; DSP: out_zp */
    int32_t low;   /* the lower clamp */
} ml_s8_rq;

#if !ML_S8_DSP
/* ceil(n / d) for d > 0 (C's division truncates toward zero) */
static int32_t ml_s8_ceil_div(int32_t n, int32_t d) { return n / d + (n % d > 0); }
#endif

/* Whether ml_s8_out is exact for these multipliers and this shift. DSP: SMMLAR needs 17 <= shift <= 31 (|mult|
 * < 2^31). Plain C: every multiplier > 0 and shift <= 23 (see ml_s8_requant); real layers are so. */
static int ml_s8_rq_covered(const int16_t *multiplier, int count, int shift)
{
#if ML_S8_DSP
    (void)multiplier;
    (void)count;
    return shift >= ML_S8_MIN_SHIFT && shift <= ML_S8_MAX_SHIFT;
#else
    if (shift < 1 || shift > 23) return 0;
    for (int c = 0; c < count; ++c) {
        if (ML_FLASH_S16(&multiplier[c]) <= 0) return 0;
    }
    return 1;
#endif
}

/* Plain C: with m > 0 the output clamp(floor((acc * m + 2^(s-1)) / 2^s) + zp, low, 127) grows with acc; it is 127
 * from hi = ceil(((127 - zp) 2^s - 2^(s-1)) / m) up, low from lo = ceil(((low - zp + 1) 2^s - 2^(s-1)) / m) - 1
 * down, and in between (low + 1 .. 126) acc * m + 2^(s-1) + zp 2^s lies in [(low + 1) 2^s, 127 * 2^s), inside
 * int32: computed modulo 2^32 it is exact, and one arithmetic shift gives the value, zero point included. The
 * numerators (at most 255 * 2^23 in magnitude) fit in int32 for s <= 23. */
static ml_s8_rq ml_s8_requant(int16_t multiplier, int shift, int32_t out_zp, int32_t low)
{
    ml_s8_rq q;
#if ML_S8_DSP
    q.mult = (int32_t)((uint32_t)(int32_t)multiplier << (32 - shift));
    q.hi = q.lo = 0;
    q.round = out_zp;
#else
    const int32_t m = multiplier, unit = (int32_t)1 << shift, half = unit >> 1;
    q.mult = m;
    q.hi = ml_s8_ceil_div((127 - out_zp) * unit - half, m);
    q.lo = ml_s8_ceil_div((low - out_zp + 1) * unit - half, m) - 1;
    q.round = (int32_t)((uint32_t)half + (uint32_t)out_zp * (uint32_t)unit);
#endif
    q.low = low;
    return q;
}

/* The int8 output of a sum: exactly ml_requantize_s8(acc, multiplier, shift, out_zp, low). relu: whether low can
 * be above -128 (0 lets the DSP version skip that clamp; the plain C one has it in its thresholds). */
ML_S8_INLINE int8_t ml_s8_out(uint32_t acc, const ml_s8_rq *q, int shift, int relu)
{
#if ML_S8_DSP
    /* SMMLAR: out_zp + round(acc * mult / 2^32), i.e. ml_s8_scale64 plus the zero point, in one instruction; SSAT
     * clamps to [-128, 127] */
    int32_t value;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(value) : "r"(acc), "r"(q->mult), "r"(q->round));
    (void)shift;
    value = __ssat(value, 8);
    if (relu && value < q->low) value = q->low;
    return (int8_t)value;
#else
    (void)relu;
    if ((int32_t)acc >= q->hi) return 127;
    if ((int32_t)acc <= q->lo) return (int8_t)q->low;
    return (int8_t)((int32_t)(acc * (uint32_t)q->mult + (uint32_t)q->round) >> shift);
#endif
}

#if ML_S8_XTENSA
/* ml_s8_out without branches (plain C thresholds): the sum clamped to [lo, hi] first, so that (acc * mult + round)
 * >> shift is exact in int32 (at hi the value is 127 or a little more, at lo low or less: see ml_s8_requant), then
 * the value clamped to [low, 127]: 127 for sums >= hi, low for sums <= lo, as ml_s8_out. MIN and MAX are single
 * instructions on the ESP32. */
ML_S8_INLINE int8_t ml_s8_out_clamped(int32_t acc, const ml_s8_rq *q, int shift)
{
    acc = acc < q->lo ? q->lo : acc;
    acc = acc > q->hi ? q->hi : acc;
    int32_t value = (int32_t)((uint32_t)acc * (uint32_t)q->mult + (uint32_t)q->round) >> shift;
    value = value < q->low ? q->low : value;
    return (int8_t)(value > 127 ? 127 : value);
}

/* The requantization of bias + acc as one of acc alone: clamp(bias + acc, lo, hi) = bias + clamp(acc, lo - bias,
 * hi - bias), and (bias + a) mult + round = a mult + (round + bias mult) modulo 2^32. Returns 0 (and the
 * kernel keeps the bias apart) where lo - bias or hi - bias would leave int32. */
static int ml_s8_rq_biased(const ml_s8_rq *q, int32_t bias, ml_s8_rq *biased)
{
    const int64_t lo = (int64_t)q->lo - bias, hi = (int64_t)q->hi - bias;
    if (lo < INT32_MIN || hi > INT32_MAX || lo > INT32_MAX || hi < INT32_MIN) return 0;
    *biased = *q;
    biased->lo = (int32_t)lo;
    biased->hi = (int32_t)hi;
    biased->round = (int32_t)((uint32_t)q->round + (uint32_t)bias * (uint32_t)q->mult);
    return 1;
}
#endif

/* bias - (zp + 128) * sum of the count weights (modulo 2^32): the bias for sums of u * w, u = q + 128. */
static int32_t ml_s8_folded_bias(const int8_t *weight, int count, int32_t bias, int32_t in_zp)
{
    uint32_t sum = 0;
    for (int i = 0; i < count; ++i) sum += (uint32_t)(int32_t)ML_FLASH_S8(&weight[i]);
    return (int32_t)((uint32_t)bias - (uint32_t)(in_zp + 128) * sum);
}

static inline uint8_t ml_s8_unsigned(int8_t q) { return (uint8_t)((uint8_t)q ^ 0x80u); }

#if ML_S8_X86
/* Eight int32 sums, scaled as ml_s8_out does but eight at a time: the sums clamped to [lo, hi] first, so that
 * (acc * mult + round) >> shift is exact in int32 (see ml_s8_requant: at hi the value is 127 or a little more,
 * at lo it is low or less); the stores below then saturate to [-128, 127] (packs) and raise to low (max), which
 * gives 127 for sums >= hi and low for sums <= lo, as ml_s8_out. */
static inline __m256i ml_s8_scale8_x86(__m256i acc, const ml_s8_rq *q, __m128i shift)
{
    acc = _mm256_max_epi32(_mm256_min_epi32(acc, _mm256_set1_epi32(q->hi)), _mm256_set1_epi32(q->lo));
    return _mm256_sra_epi32(_mm256_add_epi32(_mm256_mullo_epi32(acc, _mm256_set1_epi32(q->mult)),
                                             _mm256_set1_epi32(q->round)), shift);
}

/* Eight scaled values stored as eight int8: saturated to [-128, 127], then at least low */
static inline void ml_s8_store8_x86(int8_t *out, __m256i v, int32_t low)
{
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64((__m128i *)(void *)out, _mm_max_epi8(_mm_packs_epi16(w, w), _mm_set1_epi8((char)low)));
}

/* Sixteen scaled values (v0: the first eight, v1: the next eight) stored as sixteen int8, the same way */
static inline void ml_s8_store16_x86(int8_t *out, __m256i v0, __m256i v1, int32_t low)
{
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(v0, v1), 0xD8); /* in-lane packs: reorder */
    const __m128i b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128((__m128i *)(void *)out, _mm_max_epi8(b, _mm_set1_epi8((char)low)));
}

/* Two weights as the int32 whose low 16 bits are a and high 16 bits are b (VPMADDWD: x_even * a + x_odd * b) */
static inline int32_t ml_s8_pair(int32_t a, int32_t b)
{
    return (int32_t)(((uint32_t)a & 0xFFFFu) | ((uint32_t)b << 16));
}

/* Four weights as the int32 of bytes (a, b, c, d), lowest first (VPDPBUSD: u0 * a + u1 * b + u2 * c + u3 * d) */
static inline int32_t ml_s8_quad(int32_t a, int32_t b, int32_t c, int32_t d)
{
    return (int32_t)(((uint32_t)a & 0xFFu) | (((uint32_t)b & 0xFFu) << 8) | (((uint32_t)c & 0xFFu) << 16)
                     | ((uint32_t)d << 24));
}

static inline __m128i ml_s8_load8(const uint8_t *p) { return _mm_loadl_epi64((const __m128i *)(const void *)p); }
static inline __m128i ml_s8_load16(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)(const void *)p); }

/* The sums of eight outputs ox..ox+7 of a 3x3 filter, stride 1 or 2, over padded rows r0..r2 (u = q + 128).
 * w[0..5]: the weight pairs (w0, w1), (w3, w4), (w6, w7), then stride 1: (w2, w5), (w8, 0); stride 2: (w2, 0),
 * (w5, 0), (w8, 0). Stride 1 reads 16 bytes from r + ox (uses 9) and 8 from r + ox + 2, stride 2 16 bytes from
 * r + 2 ox and r + 2 ox + 2. */
ML_S8_INLINE __m256i ml_s8_block3_x86(const uint8_t *r0, const uint8_t *r1, const uint8_t *r2, int ox,
                                      const int stride, const __m256i *w, __m256i bias)
{
    __m256i acc;
#if ML_S8_VNNI
    /* VNNI: w[6..8] are the rows' weight quads (w_r0, w_r1, w_r2, 0); output j takes the quad of bytes
     * (u[s j], u[s j + 1], u[s j + 2], any) of each row, gathered by one in-lane shuffle */
    if (stride == 1) {
        const __m256i quads = _mm256_setr_epi8(0, 1, 2, 3, 1, 2, 3, 4, 2, 3, 4, 5, 3, 4, 5, 6,
                                               4, 5, 6, 7, 5, 6, 7, 8, 6, 7, 8, 9, 7, 8, 9, 10);
        acc = ml_s8_dpbusd(bias, _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(ml_s8_load16(r0 + ox)), quads), w[6]);
        acc = ml_s8_dpbusd(acc, _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(ml_s8_load16(r1 + ox)), quads), w[7]);
        return ml_s8_dpbusd(acc, _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(ml_s8_load16(r2 + ox)), quads), w[8]);
    } else {
        const __m256i quads = _mm256_setr_epi8(0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9,
                                               0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9);
        const int x = 2 * ox;
        acc = ml_s8_dpbusd(bias, _mm256_shuffle_epi8(_mm256_setr_m128i(ml_s8_load16(r0 + x), ml_s8_load16(r0 + x + 8)), quads), w[6]);
        acc = ml_s8_dpbusd(acc, _mm256_shuffle_epi8(_mm256_setr_m128i(ml_s8_load16(r1 + x), ml_s8_load16(r1 + x + 8)), quads), w[7]);
        return ml_s8_dpbusd(acc, _mm256_shuffle_epi8(_mm256_setr_m128i(ml_s8_load16(r2 + x), ml_s8_load16(r2 + x + 8)), quads), w[8]);
    }
#endif
    if (stride == 1) {
        const __m128i pairs = _mm_setr_epi8(0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8);
        acc = _mm256_add_epi32(bias, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_shuffle_epi8(ml_s8_load16(r0 + ox), pairs)), w[0]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_shuffle_epi8(ml_s8_load16(r1 + ox), pairs)), w[1]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_shuffle_epi8(ml_s8_load16(r2 + ox), pairs)), w[2]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(
            _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(ml_s8_load8(r0 + ox + 2), ml_s8_load8(r1 + ox + 2))), w[3]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi32(ml_s8_load8(r2 + ox + 2)), w[4]));
    } else {
        const int x = 2 * ox;
        acc = _mm256_add_epi32(bias, _mm256_madd_epi16(_mm256_cvtepu8_epi16(ml_s8_load16(r0 + x)), w[0]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(ml_s8_load16(r1 + x)), w[1]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(ml_s8_load16(r2 + x)), w[2]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(ml_s8_load16(r0 + x + 2)), w[3]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(ml_s8_load16(r1 + x + 2)), w[4]));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_cvtepu8_epi16(ml_s8_load16(r2 + x + 2)), w[5]));
    }
    return acc;
}

/* One output row of a 3x3 filter: sixteen outputs at a time (eight when out_w < 16); the last block overlaps the
 * previous one when out_w is not a multiple of its size (the same values are written twice); a row shorter than
 * eight is one block, stored whole when the plane has eight bytes from this row on (row_follows: out[out_w..7]
 * then belong to the rows after it, written later), else only its first out_w values. Loads may read up to 15 bytes past the last row
 * (ML_S8_SLACK), into lanes that are not stored. */
ML_S8_INLINE void ml_s8_row3_x86(const uint8_t *r0, const uint8_t *r1, const uint8_t *r2, int8_t *out, int out_w,
                                 const int stride, const __m256i *w, __m256i bias, const ml_s8_rq *q, __m128i shift,
                                 int row_follows)
{
    if (out_w >= 16) {
        for (int ox = 0;; ox += 16) {
            if (ox > out_w - 16) ox = out_w - 16;
            const __m256i a = ml_s8_block3_x86(r0, r1, r2, ox, stride, w, bias);
            const __m256i b = ml_s8_block3_x86(r0, r1, r2, ox + 8, stride, w, bias);
            ml_s8_store16_x86(out + ox, ml_s8_scale8_x86(a, q, shift), ml_s8_scale8_x86(b, q, shift), q->low);
            if (ox == out_w - 16) break;
        }
    } else if (out_w >= 8) {
        for (int ox = 0;; ox += 8) {
            if (ox > out_w - 8) ox = out_w - 8;
            ml_s8_store8_x86(out + ox, ml_s8_scale8_x86(ml_s8_block3_x86(r0, r1, r2, ox, stride, w, bias), q, shift),
                             q->low);
            if (ox == out_w - 8) break;
        }
    } else if (row_follows) { /* a short row with another after it: its eight bytes, the extra ones rewritten next */
        ml_s8_store8_x86(out, ml_s8_scale8_x86(ml_s8_block3_x86(r0, r1, r2, 0, stride, w, bias), q, shift), q->low);
    } else { /* a short last row: the first out_w of eight (the others read past the row and are not stored) */
        int8_t last[8];
        ml_s8_store8_x86(last, ml_s8_scale8_x86(ml_s8_block3_x86(r0, r1, r2, 0, stride, w, bias), q, shift), q->low);
        for (int i = 0; i < out_w; ++i) out[i] = last[i];
    }
}
#endif

/* -------------------------------------------------------------------------------- padded planes, KxK filters */
#if ML_S8_XTENSA
#define ML_S8_XT_PITCH 32 /* the row pitch of the 16-bit padded planes on Xtensa (see ml_s8_pad_plane16) */
#endif
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
#if ML_S8_X86
        if (in_w >= 16) { /* sixteen at a time (the last sixteen overlap when in_w % 16 != 0) */
            const __m128i flip = _mm_set1_epi8((char)0x80);
            for (x = 0;; x += 16) {
                if (x > in_w - 16) x = in_w - 16;
                _mm_storeu_si128((__m128i *)(void *)(row + x),
                                 _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(in + x)), flip));
                if (x == in_w - 16) break;
            }
            x = in_w;
            row += in_w;
        } else if (in_w >= 8) {
            const __m128i flip = _mm_set1_epi8((char)0x80);
            for (x = 0;; x += 8) {
                if (x > in_w - 8) x = in_w - 8;
                _mm_storel_epi64((__m128i *)(void *)(row + x),
                                 _mm_xor_si128(_mm_loadl_epi64((const __m128i *)(const void *)(in + x)), flip));
                if (x == in_w - 8) break;
            }
            x = in_w;
            row += in_w;
        }
#endif
        for (; x < in_w; ++x) *row++ = ml_s8_unsigned(in[x]);
        for (int i = 0; i < padding; ++i) *row++ = pad;
    }
    for (int i = 0; i < padding * pw; ++i) *row++ = pad;
}

#if ML_S8_X86
/* The inside of a plane padded by ml_s8_pad_plane, for another plane of the same shape and zero point: the
 * border is already there. */
static void ml_s8_fill_interior(const int8_t *in, int in_h, int in_w, int padding, uint8_t *plane)
{
    const int pw = in_w + 2 * padding;
    const __m128i flip = _mm_set1_epi8((char)0x80);
    for (int y = 0; y < in_h; ++y, in += in_w) {
        uint8_t *row = plane + (y + padding) * pw + padding;
        if (in_w >= 16) {
            for (int x = 0;; x += 16) {
                if (x > in_w - 16) x = in_w - 16;
                _mm_storeu_si128((__m128i *)(void *)(row + x),
                                 _mm_xor_si128(_mm_loadu_si128((const __m128i *)(const void *)(in + x)), flip));
                if (x == in_w - 16) break;
            }
        } else if (in_w >= 8) {
            for (int x = 0;; x += 8) {
                if (x > in_w - 8) x = in_w - 8;
                _mm_storel_epi64((__m128i *)(void *)(row + x),
                                 _mm_xor_si128(_mm_loadl_epi64((const __m128i *)(const void *)(in + x)), flip));
                if (x == in_w - 8) break;
            }
        } else {
            for (int x = 0; x < in_w; ++x) row[x] = ml_s8_unsigned(in[x]);
        }
    }
}
#endif

#if ML_S8_XTENSA
/* out[i] = the int8 of bias + sums[i], i < n. A function of its own (not inlined), so that the requantization's
 * constants stay in registers in its loop rather than on the stack of a kernel with many values live. */
__attribute__((noinline)) static void ml_s8_requant_row_xtensa(const int32_t *sums, int n, int32_t bias,
                                                              const ml_s8_rq *rq, int shift, int8_t *out)
{
    const ml_s8_rq q = *rq;
    for (int i = 0; i < n; ++i) out[i] = ml_s8_out_clamped((int32_t)((uint32_t)sums[i] + (uint32_t)bias), &q, shift);
}

/* Taps 0-7 of a 3x3 filter into MAC16's m0-m3, two 16-bit taps a register (low half first): m0 = (w0, w1),
 * m1 = (w2, w3), m2 = (w4, w5), m3 = (w6, w7). */
static inline void ml_s8_taps_xtensa(int32_t w0, int32_t w1, int32_t w2, int32_t w3, int32_t w4, int32_t w5,
                                     int32_t w6, int32_t w7)
{
    const uint32_t m0 = ((uint32_t)w0 & 0xFFFFu) | ((uint32_t)w1 << 16), m1 = ((uint32_t)w2 & 0xFFFFu) | ((uint32_t)w3 << 16);
    const uint32_t m2 = ((uint32_t)w4 & 0xFFFFu) | ((uint32_t)w5 << 16), m3 = ((uint32_t)w6 & 0xFFFFu) | ((uint32_t)w7 << 16);
    __asm__ volatile("wsr %0, m0\n\twsr %1, m1\n\twsr %2, m2\n\twsr %3, m3" : : "r"(m0), "r"(m1), "r"(m2), "r"(m3));
}

#endif

/* One output plane of a kernel x kernel filter over a padded plane (row stride pw): out = requantized
 * (bias + sum of u * taps), no bounds to test. */
ML_S8_INLINE void ml_s8_filter(const uint8_t *plane, int pw, int8_t *out, int out_h, int out_w, int kernel,
                              int stride, const int8_t *taps, int32_t bias, const ml_s8_rq *q, int shift, int relu,
                              int pre)
{
    if (kernel == 3) {
        /* the taps times 2^pre (ml_s8_filters_prescaled; pre is the constant 0 everywhere else) */
        const int32_t unit = (int32_t)1 << pre;
        const int32_t w0 = ML_FLASH_S8(&taps[0]) * unit, w1 = ML_FLASH_S8(&taps[1]) * unit;
        const int32_t w2 = ML_FLASH_S8(&taps[2]) * unit, w3 = ML_FLASH_S8(&taps[3]) * unit;
        const int32_t w4 = ML_FLASH_S8(&taps[4]) * unit, w5 = ML_FLASH_S8(&taps[5]) * unit;
        const int32_t w6 = ML_FLASH_S8(&taps[6]) * unit, w7 = ML_FLASH_S8(&taps[7]) * unit;
        const int32_t w8 = ML_FLASH_S8(&taps[8]) * unit;
#if ML_S8_X86
        const __m256i wx[9] = {
            _mm256_set1_epi32(ml_s8_pair(w0, w1)), _mm256_set1_epi32(ml_s8_pair(w3, w4)),
            _mm256_set1_epi32(ml_s8_pair(w6, w7)),
            _mm256_set1_epi32(stride == 1 ? ml_s8_pair(w2, w5) : ml_s8_pair(w2, 0)),
            _mm256_set1_epi32(stride == 1 ? ml_s8_pair(w8, 0) : ml_s8_pair(w5, 0)), _mm256_set1_epi32(ml_s8_pair(w8, 0)),
            _mm256_set1_epi32(ml_s8_quad(w0, w1, w2, 0)), _mm256_set1_epi32(ml_s8_quad(w3, w4, w5, 0)),
            _mm256_set1_epi32(ml_s8_quad(w6, w7, w8, 0))};
        const __m256i bias_x = _mm256_set1_epi32(bias);
        const __m128i shift_x = _mm_cvtsi32_si128(shift);
#endif
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
                    out[ox] = ml_s8_out((uint32_t)s0, q, shift, relu);
                    out[ox + 1] = ml_s8_out((uint32_t)s1, q, shift, relu);
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
                    out[ox] = ml_s8_out((uint32_t)s, q, shift, relu);
                }
            }
#endif
#if ML_S8_X86
            if (stride == 1) {
                ml_s8_row3_x86(r0, r1, r2, out, out_w, 1, wx, bias_x, q, shift_x, (out_h - oy) * out_w >= 8);
                ox = out_w;
            } else if (stride == 2) {
                ml_s8_row3_x86(r0, r1, r2, out, out_w, 2, wx, bias_x, q, shift_x, (out_h - oy) * out_w >= 8);
                ox = out_w;
            }
#endif
            for (; ox < out_w; ++ox) {
                const int x = ox * stride;
                uint32_t acc = (uint32_t)bias;
                acc += (uint32_t)(r0[x] * w0 + r0[x + 1] * w1 + r0[x + 2] * w2);
                acc += (uint32_t)(r1[x] * w3 + r1[x + 1] * w4 + r1[x + 2] * w5);
                acc += (uint32_t)(r2[x] * w6 + r2[x + 1] * w7 + r2[x + 2] * w8);
                out[ox] = ml_s8_out(acc, q, shift, relu);
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
            out[ox] = ml_s8_out(acc, q, shift, relu);
        }
    }
}

/* Whether the fast kernels cover a layer: the requantization (ml_s8_rq_covered), the channel tables, the padded
 * plane on the stack, and outputs that read inside the padded plane (the shapes a convolution has). */
static int ml_s8_covered(int in_h, int in_w, int out_h, int out_w, int channels, int kernel, int stride, int padding,
                         const int16_t *multiplier, int shift, int32_t low)
{
    const int ph = in_h + 2 * padding, pw = in_w + 2 * padding;
    return channels <= ML_S8_MAX_CHANNELS && kernel >= 1 && stride >= 1 && padding >= 0 && low >= -128 && low <= 127
           && ph * pw <= ML_S8_PLANE_BYTES && out_h >= 1 && out_w >= 1 && (out_h - 1) * stride + kernel <= ph
           && (out_w - 1) * stride + kernel <= pw && ml_s8_rq_covered(multiplier, channels, shift);
}

/* The output planes of out_c filters over one padded plane (the stem: in_c == 1; a depthwise channel: out_c ==
 * 1): filter co has taps weight[co * kernel^2 ...], bias and requantization of channel first + co; with taps and
 * bias times 2^pre (ml_s8_filters_prescaled; the constant 0 in the public kernels, so their code is as without). */
ML_S8_INLINE void ml_s8_filters(const uint8_t *padded, int pw, int8_t *out, int out_h, int out_w, int out_c,
                                int kernel, int stride, const int8_t *weight, const int32_t *bias,
                                const int16_t *multiplier, int first, int shift, int32_t in_zp, int32_t out_zp,
                                int32_t low, int relu, int pre)
{
    const int taps = kernel * kernel;
    for (int co = 0; co < out_c; ++co) {
        const int c = first + co;
        const int32_t b = ml_s8_folded_bias(weight + c * taps, taps, ML_FLASH_S32(&bias[c]), in_zp);
        const ml_s8_rq q = ml_s8_requant(ML_FLASH_S16(&multiplier[c]), shift + pre, out_zp, low);
        ml_s8_filter(padded, pw, out + co * out_h * out_w, out_h, out_w, kernel, stride, weight + c * taps,
                     (int32_t)((uint32_t)b << pre), &q, shift + pre, relu, pre);
    }
}

#if ML_S8_DSP
/* Shifts below ML_S8_MIN_SHIFT in 3x3 filters (the stem, depthwise layers) on the DSP path. SMMLAR's multiplier
 * m * 2^(32 - shift) no longer fits 32 bits there, and such shifts are common: a depthwise layer whose scale is
 * near 1 (shifts 14-16 in models trained on all of MNIST). Such a filter takes its taps and its bias times 2^pre,
 * pre = ML_S8_MIN_SHIFT - shift, so that its sums are exactly 2^pre times larger and the requantization is that
 * of shift ML_S8_MIN_SHIFT (multiplier m * 2^15: it fits); the taps stay 16-bit (|w| 2^pre <= 2^14, pre <= 7),
 * and every sum must stay inside int32, which is checked once per layer from its weights and biases. Kept out
 * of the public kernels' common path (called where they would fall back), so that its code is unchanged. */
#define ML_S8_MAX_PRESCALE 7

/* Whether every sum of each of the channels' 3x3 filters (its bias less (zp + 128) * sum w, plus u * w with u in
 * 0..255) times 2^pre is inside int32: |folded bias| + 255 * sum |w| < 2^(31 - pre). */
static int ml_s8_prescale_fits(const int8_t *weight, const int32_t *bias, int32_t in_zp, int channels, int pre)
{
    for (int c = 0; c < channels; ++c) {
        int32_t sum = 0, magnitude = 0;
        for (int i = 0; i < 9; ++i) {
            const int32_t w = ML_FLASH_S8(&weight[c * 9 + i]);
            sum += w;
            magnitude += w < 0 ? -w : w;
        }
        const int64_t folded = (int64_t)ML_FLASH_S32(&bias[c]) - (int64_t)(in_zp + 128) * sum;
        if ((folded < 0 ? -folded : folded) + 255 * (int64_t)magnitude >= ((int64_t)1 << (31 - pre))) return 0;
    }
    return 1;
}

/* The stem (planes 1, out_c filters) or a depthwise layer (planes = its channels, out_c 1) with a 3x3 kernel and
 * a shift below ML_S8_MIN_SHIFT, prescaled; 0 (nothing written) where that does not apply: the reference then. */
__attribute__((noinline)) static int ml_s8_filters_prescaled(const int8_t *in, int in_h, int in_w, int planes,
                                                            int32_t in_zp, int8_t *out, int out_h, int out_w,
                                                            int out_c, int kernel, int stride, int padding,
                                                            const int8_t *weight, const int32_t *bias,
                                                            const int16_t *multiplier, int shift, int32_t out_zp,
                                                            int32_t low)
{
    const int pre = ML_S8_MIN_SHIFT - shift;
    if (kernel != 3 || pre <= 0 || pre > ML_S8_MAX_PRESCALE
        || !ml_s8_covered(in_h, in_w, out_h, out_w, out_c, kernel, stride, padding, multiplier, shift + pre, low)
        || !ml_s8_prescale_fits(weight, bias, in_zp, planes * out_c, pre)) {
        return 0;
    }
    uint8_t padded[ML_S8_PLANE_BYTES + ML_S8_SLACK];
    const int pw = in_w + 2 * padding;
    for (int p = 0; p < planes; ++p) { /* plane p's filters: the stem's out_c, or a depthwise channel's one */
        ml_s8_pad_plane(in + p * in_h * in_w, in_h, in_w, padding, in_zp, padded);
        ml_s8_filters(padded, pw, out + p * out_c * out_h * out_w, out_h, out_w, out_c, 3, stride, weight, bias,
                      multiplier, p * out_c, shift, in_zp, out_zp, low, low > -128, pre);
    }
    return 1;
}
#endif

#if ML_S8_XTENSA
/* to[i * step] = u = from[i] + 128 as 16 bits, i < n: two values a turn of a zero-overhead loop (the stores at
 * constant offsets where the values are contiguous), then the odd one. */
static void ml_s8_widen_xtensa(const int8_t *from, int16_t *to, int n, int step)
{
    uint32_t t, v;
    const uint32_t flip = 0x80u, stride = 2u * (uint32_t)step;
    if (step == 1) {
        __asm__ volatile("loopnez %[pairs], 1f\n\t"
                         "l8ui %[t], %[from], 0\n\t"
                         "l8ui %[v], %[from], 1\n\t"
                         "addi %[from], %[from], 2\n\t"
                         "xor %[t], %[t], %[flip]\n\t"
                         "xor %[v], %[v], %[flip]\n\t"
                         "s16i %[t], %[to], 0\n\t"
                         "s16i %[v], %[to], 2\n\t"
                         "addi %[to], %[to], 4\n"
                         "1:"
                         : [from] "+r"(from), [to] "+r"(to), [t] "=&r"(t), [v] "=&r"(v)
                         : [pairs] "r"(n / 2), [flip] "r"(flip)
                         : "memory");
    } else {
        __asm__ volatile("loopnez %[pairs], 1f\n\t"
                         "l8ui %[t], %[from], 0\n\t"
                         "l8ui %[v], %[from], 1\n\t"
                         "addi %[from], %[from], 2\n\t"
                         "xor %[t], %[t], %[flip]\n\t"
                         "xor %[v], %[v], %[flip]\n\t"
                         "s16i %[t], %[to], 0\n\t"
                         "add %[to], %[to], %[stride]\n\t"
                         "s16i %[v], %[to], 0\n\t"
                         "add %[to], %[to], %[stride]\n"
                         "1:"
                         : [from] "+r"(from), [to] "+r"(to), [t] "=&r"(t), [v] "=&r"(v)
                         : [pairs] "r"(n / 2), [flip] "r"(flip), [stride] "r"(stride)
                         : "memory");
    }
    if (n % 2) *to = (int16_t)ml_s8_unsigned(*from);
}

/* -------------------------------------------------------------------------------- 3x3 filters on Xtensa, 16-bit planes */
/* The input plane padded as above, but as 16-bit values u = q + 128, ML_S8_XT_PITCH values a row (64 bytes): a
 * 32-bit load then brings two neighbouring columns, whose halves MAC16's DA/AD/AA forms take one at a time, so
 * a 3x3 window costs six loads for one output (stride 2) or for two neighbours (stride 1). */
#define ML_S8_XT_PLANE16 (ML_S8_XT_PITCH * ML_S8_XT_PITCH + 8)
/* The 16-bit planes and tiles (6.4 KB) are static scratch, not stack: the Arduino-ESP32 core runs loop() on an
 * 8 KB stack. The kernels are therefore not reentrant on Xtensa (one inference at a time, as everywhere here). */

static int ml_s8_plane16_fits(int in_h, int in_w, int padding)
{
    return in_h + 2 * padding <= ML_S8_XT_PITCH && in_w + 2 * padding + 2 <= ML_S8_XT_PITCH;
}

static void ml_s8_pad_plane16(const int8_t *in, int in_h, int in_w, int padding, int32_t in_zp, int16_t *plane)
{
    const int pw = in_w + 2 * padding;
    const int16_t pad = (int16_t)(in_zp + 128);
    int16_t *row = plane;
    for (int y = 0; y < in_h + 2 * padding; ++y, row += ML_S8_XT_PITCH) {
        if (y < padding || y >= in_h + padding) {
            for (int x = 0; x < pw + 2; ++x) row[x] = pad; /* + 2: the columns the pair loads read past a row */
            continue;
        }
        for (int x = 0; x < padding; ++x) row[x] = pad, row[in_w + padding + x] = pad;
        row[pw] = row[pw + 1] = pad;
        ml_s8_widen_xtensa(in + (y - padding) * in_w, row + padding, in_w, 1);
    }
}

/* Whether ml_s8_rows16_xtensa's requantization is exact for this channel: a scale m / 2^s below 1 makes the
 * value floor((acc m + 2^(s-1)) / 2^s) + zp grow by at most 1 per unit of acc, so it is exactly 127 at hi (the
 * first sum that gives 127) and exactly low at lo (the last that gives low): clamping the sum to [lo, hi] alone
 * gives ml_s8_out's value, no clamp of the value after it. */
static int ml_s8_rq_steps_by_one(int16_t multiplier, int shift) { return (int32_t)multiplier < ((int32_t)1 << shift); }

/* MAC16 sequences over the pair registers a, b (columns 0-1 and 2-3 of rows 0 or 2) and c, d (of row 1), taps
 * 0-7 in m0-m3 (ml_s8_taps_xtensa) and tap 8 in w8. Four pair registers are all the address registers allow
 * (with the pointers, the count and the requantization's constants), so rows 0 and 2 take turns in a and b:
 * the first output (columns 0-2) goes row 0, 1, 2, the second (columns 1-3) row 2, 1, 0; each starts with a
 * MUL, which replaces the accumulator. */
#define ML_S8_XT_ROW(r, a, b) "l32i %[" #a "], %[p], " #r " * 64\n\t" "l32i %[" #b "], %[p], " #r " * 64 + 4\n\t"
#define ML_S8_XT_FIRST \
    ML_S8_XT_ROW(0, a, b) ML_S8_XT_ROW(1, c, d) \
    "mul.da.ll m0, %[a]\n\t" "mula.da.hh m0, %[a]\n\t" "mula.da.ll m1, %[b]\n\t" \
    "mula.da.hl m1, %[c]\n\t" "mula.ad.hl %[c], m2\n\t" "mula.ad.lh %[d], m2\n\t" \
    ML_S8_XT_ROW(2, a, b) \
    "mula.ad.ll %[a], m3\n\t" "mula.ad.hh %[a], m3\n\t" "mula.aa.ll %[b], %[w8]\n\t"
#define ML_S8_XT_SECOND \
    "mul.ad.hl %[a], m3\n\t" "mula.ad.lh %[b], m3\n\t" "mula.aa.hl %[b], %[w8]\n\t" \
    "mula.da.hh m1, %[c]\n\t" "mula.ad.ll %[d], m2\n\t" "mula.ad.hh %[d], m2\n\t" \
    ML_S8_XT_ROW(0, a, b) \
    "mula.da.lh m0, %[a]\n\t" "mula.da.hl m0, %[b]\n\t" "mula.da.lh m1, %[b]\n\t"
/* the accumulator to an int8 stored at offset k of out (the bias is in the constants: ml_s8_rq_biased) */
#define ML_S8_XT_STORE(k) \
    "rsr %[t], acclo\n\t" "max %[t], %[t], %[lo]\n\t" "min %[t], %[t], %[hi]\n\t" \
    "mull %[t], %[t], %[mult]\n\t" "add %[t], %[t], %[round]\n\t" "sra %[t], %[t]\n\t" \
    "s8i %[t], %[out], " #k "\n\t"
/* t holds the count until LOOPNEZ has read it */
#define ML_S8_XT_OPERANDS \
    : [p] "+r"(p), [out] "+r"(out), [t] "+r"(t), [a] "=&r"(a), [b] "=&r"(b), [c] "=&r"(c), [d] "=&r"(d) \
    : [w8] "r"(w8), [lo] "r"(q->lo), [hi] "r"(q->hi), [mult] "r"(q->mult), [round] "r"(q->round) \
    : "memory"

/* One output plane of a 3x3 filter over a 16-bit padded plane: stride 1 two outputs per turn of a zero-overhead
 * loop (eight loads, eighteen multiply-accumulates), the last one alone when out_w is odd; stride 2 one per turn
 * (six loads). */
static void ml_s8_plane3_xtensa(const int16_t *plane, int8_t *out, int out_h, int out_w, int stride, int32_t w8,
                                const ml_s8_rq *q, int shift)
{
    uint32_t t, a, b, c, d;
    __asm__ volatile("ssr %0" : : "r"(shift));
    for (int oy = 0; oy < out_h; ++oy) {
        const int16_t *p = plane + oy * stride * ML_S8_XT_PITCH;
        t = (uint32_t)(stride == 1 ? out_w / 2 : out_w);
        if (stride == 1) {
            __asm__ volatile("loopnez %[t], 1f\n\t" ML_S8_XT_FIRST ML_S8_XT_STORE(0) ML_S8_XT_SECOND
                             ML_S8_XT_STORE(1) "addi %[p], %[p], 4\n\t" "addi %[out], %[out], 2\n"
                             "1:" ML_S8_XT_OPERANDS);
            t = (uint32_t)(out_w % 2);
        }
        __asm__ volatile("loopnez %[t], 1f\n\t" ML_S8_XT_FIRST ML_S8_XT_STORE(0)
                         "addi %[p], %[p], 4\n\t" "addi %[out], %[out], 1\n"
                         "1:" ML_S8_XT_OPERANDS);
    }
}

/* The 3x3 filters of out_c channels (first + co) over one 16-bit padded plane, when every channel's
 * requantization allows it (ml_s8_rq_steps_by_one, ml_s8_rq_biased); returns 0, having done nothing, if not. */
static int ml_s8_filters16_xtensa(const int16_t *plane, int8_t *out, int out_h, int out_w, int out_c, int stride,
                                  const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int first,
                                  int shift, int32_t in_zp, int32_t out_zp, int32_t low)
{
    ml_s8_rq biased[ML_S8_MAX_CHANNELS];
    for (int co = 0; co < out_c; ++co) {
        const int c = first + co;
        const int16_t m = ML_FLASH_S16(&multiplier[c]);
        const ml_s8_rq q = ml_s8_requant(m, shift, out_zp, low);
        const int32_t b = ml_s8_folded_bias(weight + c * 9, 9, ML_FLASH_S32(&bias[c]), in_zp);
        if (!ml_s8_rq_steps_by_one(m, shift) || !ml_s8_rq_biased(&q, b, &biased[co])) return 0;
    }
    for (int co = 0; co < out_c; ++co) {
        const int8_t *taps = weight + (first + co) * 9;
        ml_s8_taps_xtensa(ML_FLASH_S8(&taps[0]), ML_FLASH_S8(&taps[1]), ML_FLASH_S8(&taps[2]), ML_FLASH_S8(&taps[3]),
                          ML_FLASH_S8(&taps[4]), ML_FLASH_S8(&taps[5]), ML_FLASH_S8(&taps[6]), ML_FLASH_S8(&taps[7]));
        ml_s8_plane3_xtensa(plane, out + co * out_h * out_w, out_h, out_w, stride, ML_FLASH_S8(&taps[8]), &biased[co],
                            shift);
    }
    return 1;
}
#endif

/* -------------------------------------------------------------------------------- pointwise (1x1) */
/* Four pixels p..p+3 at a time: their in_c channels are first gathered into a small tile (a few hundred bytes
 * on the stack), then each output channel's weights are read once for the four pixels, straight from flash,
 * with four accumulators in registers. */
#define ML_S8_PIXELS 4

#if ML_S8_DSP
static inline uint32_t ml_s8_pkhbt(uint32_t low_half, uint32_t high_half) /* (low_half.lo, high_half.lo) */
{
    uint32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(low_half), "r"(high_half));
    return r;
}

static inline uint32_t ml_s8_pkhtb(uint32_t high_half, uint32_t low_half) /* (low_half.hi, high_half.hi) */
{
    uint32_t r;
    __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(high_half), "r"(low_half));
    return r;
}

/* The Cortex-M4 version, on the signed values q themselves (SMLAD multiplies signed halfwords): bias[co] is
 * bias - zp * sum w. Channels go by quads c..c+3: a word of weights w[co][c..c+3] gives (w0, w2) and (w1, w3)
 * with SXTB16 (rotated by 8 for the odd ones), so the tile holds, for each quad and pixel, the halfword pairs
 * (q_c, q_c+2) and (q_c+1, q_c+3): two SMLADs per pixel and quad, no weight table. in_c % 4 == 0. Returns the
 * pixels done. */
ML_S8_INLINE int ml_s8_pointwise_dsp(const int8_t *in, int plane, int in_c, int8_t *out, int out_c,
                                     const int8_t *weight, const int32_t *bias, const ml_s8_rq *rq, int relu)
{
    const int quads = in_c / 4;
    uint32_t tile[ML_S8_MAX_CHANNELS / 4 * 2 * ML_S8_PIXELS];
    int p = 0;
    for (; p + ML_S8_PIXELS <= plane; p += ML_S8_PIXELS) {
        const int8_t *x = in + p;
        uint32_t *t = tile;
        for (int k = 0; k < quads; ++k, x += 4 * plane, t += 2 * ML_S8_PIXELS) {
            uint32_t a0, a1, a2, a3;
            memcpy(&a0, x, 4); /* q[c][p..p+3] */
            memcpy(&a1, x + plane, 4);
            memcpy(&a2, x + 2 * plane, 4);
            memcpy(&a3, x + 3 * plane, 4);
            const uint32_t e0 = __sxtb16(a0), e1 = __sxtb16(a1), e2 = __sxtb16(a2), e3 = __sxtb16(a3);
            const uint32_t o0 = ml_s8_odd_bytes_signed(a0), o1 = ml_s8_odd_bytes_signed(a1);
            const uint32_t o2 = ml_s8_odd_bytes_signed(a2), o3 = ml_s8_odd_bytes_signed(a3);
            /* pixel j: t[2j] = (q_c, q_c+2), t[2j + 1] = (q_c+1, q_c+3) */
            t[0] = ml_s8_pkhbt(e0, e2);
            t[1] = ml_s8_pkhbt(e1, e3);
            t[2] = ml_s8_pkhbt(o0, o2);
            t[3] = ml_s8_pkhbt(o1, o3);
            t[4] = ml_s8_pkhtb(e2, e0);
            t[5] = ml_s8_pkhtb(e3, e1);
            t[6] = ml_s8_pkhtb(o2, o0);
            t[7] = ml_s8_pkhtb(o3, o1);
        }
        const int8_t *w = weight;
        int8_t *o = out + p;
        for (int co = 0; co < out_c; ++co, o += plane) {
            int32_t s0 = bias[co], s1 = s0, s2 = s0, s3 = s0;
            const uint32_t *tt = tile;
            const int8_t *w_end = w + in_c;
            for (; w < w_end; w += 4, tt += 2 * ML_S8_PIXELS) {
                uint32_t wq;
                memcpy(&wq, w, 4);
                const uint32_t w02 = __sxtb16(wq), w13 = ml_s8_odd_bytes_signed(wq);
                s0 = __smlad(tt[0], w02, s0);
                s0 = __smlad(tt[1], w13, s0);
                s1 = __smlad(tt[2], w02, s1);
                s1 = __smlad(tt[3], w13, s1);
                s2 = __smlad(tt[4], w02, s2);
                s2 = __smlad(tt[5], w13, s2);
                s3 = __smlad(tt[6], w02, s3);
                s3 = __smlad(tt[7], w13, s3);
            }
            const ml_s8_rq q = rq[co]; /* a copy: the int8 stores below could alias rq[co] */
            o[0] = ml_s8_out((uint32_t)s0, &q, 0, relu);
            o[1] = ml_s8_out((uint32_t)s1, &q, 0, relu);
            o[2] = ml_s8_out((uint32_t)s2, &q, 0, relu);
            o[3] = ml_s8_out((uint32_t)s3, &q, 0, relu);
        }
    }
    return p;
}
#endif

#if ML_S8_X86
/* x86 (AVX2): sixteen pixels at a time (eight when the plane is smaller), on the signed values q (bias[co] is
 * bias - zp * sum w): the tiles hold, per channel pair (c, c + 1), the 16-bit pairs (q[c][p + j], q[c + 1][p + j])
 * of eight pixels each, and each output channel sums in_c / 2 VPMADDWDs of a tile with its broadcast weight pairs.
 * in_c even, plane >= 8 (the last block overlaps the previous one when the plane is not a multiple of its size).
 * Returns the pixels done (all, or 0). */
static int ml_s8_pointwise_x86(const int8_t *in, int plane, int in_c, int8_t *out, int out_c, const int8_t *weight,
                               const int32_t *bias, const ml_s8_rq *rq, int shift)
{
    int32_t pairs[ML_S8_MAX_CHANNELS * ML_S8_MAX_CHANNELS / 2];
    __m256i tile0[ML_S8_MAX_CHANNELS / 2], tile1[ML_S8_MAX_CHANNELS / 2];
    const __m128i shift_x = _mm_cvtsi32_si128(shift);
    const int half = in_c / 2, block = plane >= 16 ? 16 : 8;
    if (in_c % 2 != 0 || plane < 8) return 0;
    for (int co = 0; co < out_c; ++co) {
        for (int k = 0; k < half; ++k) {
            pairs[co * half + k] = ml_s8_pair(ML_FLASH_S8(&weight[co * in_c + 2 * k]),
                                              ML_FLASH_S8(&weight[co * in_c + 2 * k + 1]));
        }
    }
    for (int p = 0;; p += block) {
        if (p > plane - block) p = plane - block;
        if (block == 16) {
            for (int k = 0; k < half; ++k) {
                const uint8_t *x = (const uint8_t *)(const void *)(in + 2 * k * plane + p);
                const __m128i a = ml_s8_load16(x), b = ml_s8_load16(x + plane);
                tile0[k] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(a, b));
                tile1[k] = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(a, b));
            }
            for (int co = 0; co < out_c; ++co) {
                const int32_t *wp = pairs + co * half;
                __m256i acc0 = _mm256_set1_epi32(bias[co]), acc1 = acc0;
                for (int k = 0; k < half; ++k) {
                    const __m256i wv = _mm256_set1_epi32(wp[k]);
                    acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(tile0[k], wv));
                    acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(tile1[k], wv));
                }
                ml_s8_store16_x86(out + co * plane + p, ml_s8_scale8_x86(acc0, &rq[co], shift_x),
                                  ml_s8_scale8_x86(acc1, &rq[co], shift_x), rq[co].low);
            }
        } else {
            for (int k = 0; k < half; ++k) {
                const uint8_t *x = (const uint8_t *)(const void *)(in + 2 * k * plane + p);
                tile0[k] = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(ml_s8_load8(x), ml_s8_load8(x + plane)));
            }
            for (int co = 0; co < out_c; ++co) {
                const int32_t *wp = pairs + co * half;
                __m256i acc = _mm256_set1_epi32(bias[co]);
                for (int k = 0; k < half; ++k) acc = _mm256_add_epi32(acc, _mm256_madd_epi16(tile0[k], _mm256_set1_epi32(wp[k])));
                ml_s8_store8_x86(out + co * plane + p, ml_s8_scale8_x86(acc, &rq[co], shift_x), rq[co].low);
            }
        }
        if (p == plane - block) break;
    }
    return plane;
}
#endif

#if ML_S8_VNNI
/* x86 with VNNI: eight or sixteen pixels at a time, on u = q + 128 with the folded biases (ml_s8_folded_bias): the
 * tiles hold, per channel quad c..c+3, the bytes (u[c][p + j], .., u[c + 3][p + j]) of eight pixels each, and each
 * output channel sums in_c / 4 VPDPBUSDs of a tile with its broadcast weight quads. in_c % 4 == 0, plane >= 8.
 * Returns the pixels done (all, or 0). */
static int ml_s8_pointwise_vnni(const int8_t *in, int plane, int in_c, int8_t *out, int out_c, const int8_t *weight,
                                const int32_t *folded, const ml_s8_rq *rq, int shift)
{
    int32_t quads[ML_S8_MAX_CHANNELS * ML_S8_MAX_CHANNELS / 4];
    __m256i tile0[ML_S8_MAX_CHANNELS / 4], tile1[ML_S8_MAX_CHANNELS / 4];
    const __m128i shift_x = _mm_cvtsi32_si128(shift), flip = _mm_set1_epi8((char)0x80);
    const int n = in_c / 4, block = plane >= 16 ? 16 : 8;
    if (in_c % 4 != 0 || plane < 8) return 0;
    for (int co = 0; co < out_c; ++co) {
        const int8_t *w = weight + co * in_c;
        for (int k = 0; k < n; ++k) {
            quads[co * n + k] = ml_s8_quad(ML_FLASH_S8(&w[4 * k]), ML_FLASH_S8(&w[4 * k + 1]),
                                           ML_FLASH_S8(&w[4 * k + 2]), ML_FLASH_S8(&w[4 * k + 3]));
        }
    }
    for (int p = 0;; p += block) {
        if (p > plane - block) p = plane - block;
        for (int k = 0; k < n; ++k) {
            const uint8_t *x = (const uint8_t *)(const void *)(in + 4 * k * plane + p);
            if (block == 16) {
                const __m128i a0 = ml_s8_load16(x), a1 = ml_s8_load16(x + plane);
                const __m128i a2 = ml_s8_load16(x + 2 * plane), a3 = ml_s8_load16(x + 3 * plane);
                const __m128i lo01 = _mm_unpacklo_epi8(a0, a1), lo23 = _mm_unpacklo_epi8(a2, a3);
                const __m128i hi01 = _mm_unpackhi_epi8(a0, a1), hi23 = _mm_unpackhi_epi8(a2, a3);
                tile0[k] = _mm256_setr_m128i(_mm_xor_si128(_mm_unpacklo_epi16(lo01, lo23), flip),
                                             _mm_xor_si128(_mm_unpackhi_epi16(lo01, lo23), flip));
                tile1[k] = _mm256_setr_m128i(_mm_xor_si128(_mm_unpacklo_epi16(hi01, hi23), flip),
                                             _mm_xor_si128(_mm_unpackhi_epi16(hi01, hi23), flip));
            } else {
                const __m128i lo01 = _mm_unpacklo_epi8(ml_s8_load8(x), ml_s8_load8(x + plane));
                const __m128i lo23 = _mm_unpacklo_epi8(ml_s8_load8(x + 2 * plane), ml_s8_load8(x + 3 * plane));
                tile0[k] = _mm256_setr_m128i(_mm_xor_si128(_mm_unpacklo_epi16(lo01, lo23), flip),
                                             _mm_xor_si128(_mm_unpackhi_epi16(lo01, lo23), flip));
            }
        }
        for (int co = 0; co < out_c; ++co) {
            const int32_t *wq = quads + co * n;
            __m256i acc0 = _mm256_set1_epi32(folded[co]), acc1 = acc0;
            if (block == 16) {
                for (int k = 0; k < n; ++k) {
                    const __m256i wv = _mm256_set1_epi32(wq[k]);
                    acc0 = ml_s8_dpbusd(acc0, tile0[k], wv);
                    acc1 = ml_s8_dpbusd(acc1, tile1[k], wv);
                }
                ml_s8_store16_x86(out + co * plane + p, ml_s8_scale8_x86(acc0, &rq[co], shift_x),
                                  ml_s8_scale8_x86(acc1, &rq[co], shift_x), rq[co].low);
            } else {
                for (int k = 0; k < n; ++k) acc0 = ml_s8_dpbusd(acc0, tile0[k], _mm256_set1_epi32(wq[k]));
                ml_s8_store8_x86(out + co * plane + p, ml_s8_scale8_x86(acc0, &rq[co], shift_x), rq[co].low);
            }
        }
        if (p == plane - block) break;
    }
    return plane;
}
#endif

/* The plain C version (Cortex-M0+, host), on u = q + 128 with the folded biases, from pixel `first`: the tile
 * holds u[c][p + j] at tile[4c + j]; the pixels left over (plane % 4) go one at a time. */
#if ML_S8_XTENSA
#define ML_S8_XT_PIXELS 16      /* pixels widened at a time (channels last, 16 bits) */
#define ML_S8_XT_WEIGHTS 1152   /* 16-bit weights on the stack: out_c x in_c rounded up to 4 (24 x 24 fits) */

/* bias + the dot product of n4 * 4 16-bit pairs x[] and w[] (both 4-byte aligned), by MAC16: the accumulator
 * starts at the bias (its low word: sums are modulo 2^32), LDINC preloads the first pairs, and each turn of the
 * zero-overhead loop does four multiply-accumulates, each loading the pair two steps ahead (so the last turn
 * reads up to 8 bytes past both vectors). n4 >= 1. */
static inline uint32_t ml_s8_dot_xtensa(const int16_t *x, const int16_t *w, int n4, int32_t bias)
{
    const int16_t *px = x - 2, *pw = w - 2; /* LDINC adds 4 before it loads */
    uint32_t acc;
    __asm__ volatile("wsr %[bias], acclo\n\t"
                     "ldinc m0, %[px]\n\t"
                     "ldinc m2, %[pw]\n\t"
                     "loopnez %[n4], 1f\n\t"
                     "mula.dd.ll.ldinc m1, %[px], m0, m2\n\t"
                     "mula.dd.hh.ldinc m3, %[pw], m0, m2\n\t"
                     "mula.dd.ll.ldinc m0, %[px], m1, m3\n\t"
                     "mula.dd.hh.ldinc m2, %[pw], m1, m3\n"
                     "1:\n\t"
                     "rsr %[acc], acclo"
                     : [acc] "=r"(acc), [px] "+r"(px), [pw] "+r"(pw)
                     : [bias] "r"(bias), [n4] "r"(n4)
                     : "memory");
    return acc;
}

/* The int8 outputs of n dot products, row j of x (16-bit, c4 values a row, c4 % 4 == 0, rows contiguous) with w,
 * into out[0..n-1]: ml_s8_dot_xtensa's loop for each, the accumulator starting at the bias, and a requantization
 * that steps by one (ml_s8_rq_steps_by_one: the sum clamped to [lo, hi], no clamp of the value after it). The four multiply-accumulates stay
 * in their own zero-overhead loop even where the channel count is known: QEMU 7.2 computes a run of MAC16
 * LDINC instructions within one translated block wrongly (a jump between two runs, or the loop's return, gives
 * the right sums), and the count must be of code that QEMU runs right. */
static void ml_s8_dots_stepping_xtensa(const int16_t *x, const int16_t *w, int c4, int n, const ml_s8_rq *q,
                                       int32_t bias, int shift, int8_t *out)
{
    const int16_t *px = x - 2, *pw;
    uint32_t t;
    int count = n;
    __asm__ volatile("ssr %[shift]\n"
                     "1:\n\t"
                     "wsr %[bias], acclo\n\t"
                     "addi %[pw], %[w], -4\n\t"
                     "ldinc m0, %[px]\n\t"
                     "ldinc m2, %[pw]\n\t"
                     "loopnez %[n4], 2f\n\t"
                     "mula.dd.ll.ldinc m1, %[px], m0, m2\n\t"
                     "mula.dd.hh.ldinc m3, %[pw], m0, m2\n\t"
                     "mula.dd.ll.ldinc m0, %[px], m1, m3\n\t"
                     "mula.dd.hh.ldinc m2, %[pw], m1, m3\n"
                     "2:\n\t"
                     "rsr %[t], acclo\n\t"
                     "max %[t], %[t], %[lo]\n\t"
                     "min %[t], %[t], %[hi]\n\t"
                     "mull %[t], %[t], %[mult]\n\t"
                     "add %[t], %[t], %[round]\n\t"
                     "sra %[t], %[t]\n\t"
                     "s8i %[t], %[out], 0\n\t"
                     "addi %[out], %[out], 1\n\t"
                     "addi %[px], %[px], -4\n\t"
                     "addi %[count], %[count], -1\n\t"
                     "bnez %[count], 1b"
                     : [px] "+r"(px), [pw] "=&r"(pw), [out] "+r"(out), [t] "=&r"(t), [count] "+r"(count)
                     : [w] "r"(w), [n4] "r"(c4 / 4), [bias] "r"(bias), [lo] "r"(q->lo), [hi] "r"(q->hi),
                       [mult] "r"(q->mult), [round] "r"(q->round), [shift] "r"(shift)
                     : "memory");
}

/* The pointwise convolution with MAC16 dot products: the weights widened to 16 bits once (zeros up to a multiple
 * of four channels), then per tile of pixels the inputs u = q + 128 widened and put channels last, then one dot
 * product per pixel and output channel. Returns the pixels done (0 when the weights do not fit the table). */
static int ml_s8_pointwise_xtensa(const int8_t *in, int plane, int in_c, int8_t *out, int out_c, const int8_t *weight,
                                  const int16_t *multiplier, const int32_t *folded, const ml_s8_rq *rq, int shift)
{
    const int c4 = (in_c + 3) & ~3;
    if (out_c * c4 + 4 > ML_S8_XT_WEIGHTS) return 0;
    static int16_t w16[ML_S8_XT_WEIGHTS] __attribute__((aligned(4))); /* scratch: see ML_S8_XT_PLANE16 */
    static int16_t x16[ML_S8_XT_PIXELS * ML_S8_MAX_CHANNELS + 4] __attribute__((aligned(4)));
    if (in_c == c4) { /* the common case: a plain copy, sign-extended */
        for (int i = 0; i < out_c * c4; ++i) w16[i] = ML_FLASH_S8(&weight[i]);
    } else {
        for (int co = 0; co < out_c; ++co) {
            for (int ci = 0; ci < c4; ++ci) w16[co * c4 + ci] = (int16_t)(ci < in_c ? ML_FLASH_S8(&weight[co * in_c + ci]) : 0);
        }
    }
    for (int p0 = 0; p0 < plane; p0 += ML_S8_XT_PIXELS) {
        const int n = plane - p0 < ML_S8_XT_PIXELS ? plane - p0 : ML_S8_XT_PIXELS;
        for (int ci = 0; ci < c4; ++ci) {
            const int8_t *x = in + ci * plane + p0;
            int16_t *column = x16 + ci;
            if (ci < in_c) {
                ml_s8_widen_xtensa(x, column, n, c4);
            } else {
                for (int j = 0; j < n; ++j, column += c4) *column = 0;
            }
        }
        for (int co = 0; co < out_c; ++co) {
            const int16_t *w = w16 + co * c4;
            if (ml_s8_rq_steps_by_one(ML_FLASH_S16(&multiplier[co]), shift)) {
                ml_s8_dots_stepping_xtensa(x16, w, c4, n, &rq[co], folded[co], shift, out + co * plane + p0);
                continue;
            }
            int32_t sums[ML_S8_XT_PIXELS];
            const int16_t *x = x16;
            for (int j = 0; j < n; ++j, x += c4) sums[j] = (int32_t)ml_s8_dot_xtensa(x, w, c4 / 4, 0);
            ml_s8_requant_row_xtensa(sums, n, folded[co], &rq[co], shift, out + co * plane + p0);
        }
    }
    return plane;
}
#endif

static void ml_s8_pointwise(const int8_t *in, int plane, int in_c, int8_t *out, int out_c, const int8_t *weight,
                            const int32_t *folded, const ml_s8_rq *rq, int shift, int first)
{
    uint8_t tile[ML_S8_MAX_CHANNELS * ML_S8_PIXELS];
    int p = first;
    for (; p + ML_S8_PIXELS <= plane; p += ML_S8_PIXELS) {
        const int8_t *x = in + p;
        for (int ci = 0; ci < in_c; ++ci, x += plane) {
            tile[4 * ci] = ml_s8_unsigned(x[0]);
            tile[4 * ci + 1] = ml_s8_unsigned(x[1]);
            tile[4 * ci + 2] = ml_s8_unsigned(x[2]);
            tile[4 * ci + 3] = ml_s8_unsigned(x[3]);
        }
        const int8_t *w = weight;
        int8_t *o = out + p;
        for (int co = 0; co < out_c; ++co, o += plane) {
            uint32_t a0 = (uint32_t)folded[co], a1 = a0, a2 = a0, a3 = a0;
            const int8_t *w_end = w + in_c;
#if ML_S8_THUMB1
            if (in_c % 2 == 0) {
                /* Thumb-1 (Cortex-M0+): GCC spills the four sums of the C loop below; here they stay in registers
                 * (the last two may be high ones: 7 low registers, r7 stays free for a frame pointer), the index runs
                 * from -in_c up to 0, two channels per turn. GCC reads
                 * Thumb-1 inline assembly in divided syntax (mul, add: the flag-setting 16-bit forms). */
                const uint8_t *tp = tile;
                int32_t i = -in_c, t, wv;
                __asm__("1:\n\t"
                        "ldrsb %[wv], [%[w_end], %[i]]\n\t"
                        "ldrb %[t], [%[tp], #0]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a0], %[t]\n\t"
                        "ldrb %[t], [%[tp], #1]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a1], %[t]\n\t"
                        "ldrb %[t], [%[tp], #2]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a2], %[t]\n\t"
                        "ldrb %[t], [%[tp], #3]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a3], %[t]\n\t"
                        "add %[i], #1\n\t"
                        "ldrsb %[wv], [%[w_end], %[i]]\n\t"
                        "ldrb %[t], [%[tp], #4]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a0], %[t]\n\t"
                        "ldrb %[t], [%[tp], #5]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a1], %[t]\n\t"
                        "ldrb %[t], [%[tp], #6]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a2], %[t]\n\t"
                        "ldrb %[t], [%[tp], #7]\n\t"
                        "mul %[t], %[wv]\n\t"
                        "add %[a3], %[t]\n\t"
                        "add %[tp], #8\n\t"
                        "add %[i], #1\n\t"
                        "bne 1b"
                        : [a0] "+l"(a0), [a1] "+l"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [tp] "+l"(tp), [i] "+l"(i),
                          [t] "=&l"(t), [wv] "=&l"(wv)
                        : [w_end] "l"(w_end)
                        : "cc", "memory");
                w = w_end;
            }
#endif
            const uint8_t *t = tile;
            for (; w < w_end; ++w, t += 4) {
                const int32_t wv = ML_FLASH_S8(w);
                a0 += (uint32_t)(t[0] * wv);
                a1 += (uint32_t)(t[1] * wv);
                a2 += (uint32_t)(t[2] * wv);
                a3 += (uint32_t)(t[3] * wv);
            }
            const ml_s8_rq q = rq[co]; /* a copy: the int8 stores below could alias rq[co] */
            o[0] = ml_s8_out(a0, &q, shift, 1);
            o[1] = ml_s8_out(a1, &q, shift, 1);
            o[2] = ml_s8_out(a2, &q, shift, 1);
            o[3] = ml_s8_out(a3, &q, shift, 1);
        }
    }
    /* the pixels left over (plane % 4; stated so that a compiler that knows plane sees the loop is dead: GCC's
     * LTO otherwise reports the dead loop's reads as undefined behaviour) */
    for (; plane % ML_S8_PIXELS != 0 && p < plane; ++p) {
        for (int ci = 0; ci < in_c; ++ci) tile[ci] = ml_s8_unsigned(in[ci * plane + p]);
        const int8_t *w = weight;
        for (int co = 0; co < out_c; ++co, w += in_c) {
            uint32_t acc = (uint32_t)folded[co];
            for (int ci = 0; ci < in_c; ++ci) acc += (uint32_t)(tile[ci] * (int32_t)ML_FLASH_S8(&w[ci]));
            out[co * plane + p] = ml_s8_out(acc, &rq[co], shift, 1);
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
    if (pointwise && channels <= ML_S8_MAX_CHANNELS && low >= -128 && low <= 127
        && ml_s8_rq_covered(multiplier, out_c, shift)) {
#if ML_S8_X86
        int32_t folded[ML_S8_MAX_CHANNELS] = {0}; /* GCC's -flto cannot see that the branches below fill it */
#else
        int32_t folded[ML_S8_MAX_CHANNELS];
#endif
        ml_s8_rq rq[ML_S8_MAX_CHANNELS];
        const int plane = in_h * in_w;
        int first = 0;
        for (int co = 0; co < out_c; ++co) {
            rq[co] = ml_s8_requant(ML_FLASH_S16(&multiplier[co]), shift, out_zp, low);
        }
#if ML_S8_DSP
        if (in_c % 4 == 0) {
            for (int co = 0; co < out_c; ++co) { /* bias - zp * sum w, for the signed values */
                folded[co] = ml_s8_folded_bias(weight + co * in_c, in_c, ML_FLASH_S32(&bias[co]), in_zp - 128);
            }
            if (low == -128) first = ml_s8_pointwise_dsp(in, plane, in_c, out, out_c, weight, folded, rq, 0);
            else first = ml_s8_pointwise_dsp(in, plane, in_c, out, out_c, weight, folded, rq, 1);
        }
#endif
#if ML_S8_XTENSA
        for (int co = 0; co < out_c; ++co) { /* bias - (zp + 128) * sum w, for u = q + 128 */
            folded[co] = ml_s8_folded_bias(weight + co * in_c, in_c, ML_FLASH_S32(&bias[co]), in_zp);
        }
        first = ml_s8_pointwise_xtensa(in, plane, in_c, out, out_c, weight, multiplier, folded, rq, shift);
#endif
#if ML_S8_VNNI
        if (in_c % 4 == 0 && plane >= 8) {
            for (int co = 0; co < out_c; ++co) { /* bias - (zp + 128) * sum w, for u = q + 128 */
                folded[co] = ml_s8_folded_bias(weight + co * in_c, in_c, ML_FLASH_S32(&bias[co]), in_zp);
            }
            first = ml_s8_pointwise_vnni(in, plane, in_c, out, out_c, weight, folded, rq, shift);
        }
#endif
#if ML_S8_X86
        if (first < plane && in_c % 2 == 0 && plane >= 8) {
            for (int co = 0; co < out_c; ++co) { /* bias - zp * sum w, for the signed values */
                folded[co] = ml_s8_folded_bias(weight + co * in_c, in_c, ML_FLASH_S32(&bias[co]), in_zp - 128);
            }
            first = ml_s8_pointwise_x86(in, plane, in_c, out, out_c, weight, folded, rq, shift);
        }
#endif
        if (first < plane) {
            for (int co = 0; co < out_c; ++co) {
                folded[co] = ml_s8_folded_bias(weight + co * in_c, in_c, ML_FLASH_S32(&bias[co]), in_zp);
            }
            ml_s8_pointwise(in, plane, in_c, out, out_c, weight, folded, rq, shift, first);
        }
        return;
    }
    if (in_c == 1 && ml_s8_covered(in_h, in_w, out_h, out_w, out_c, kernel, stride, padding, multiplier, shift, low)) {
#if ML_S8_XTENSA
        if (kernel == 3 && (stride == 1 || stride == 2) && ml_s8_plane16_fits(in_h, in_w, padding)) {
            static int16_t plane16[ML_S8_XT_PLANE16] __attribute__((aligned(4)));
            ml_s8_pad_plane16(in, in_h, in_w, padding, in_zp, plane16);
            if (ml_s8_filters16_xtensa(plane16, out, out_h, out_w, out_c, stride, weight, bias, multiplier, 0, shift,
                                       in_zp, out_zp, low)) {
                return;
            }
        }
#endif
        /* one input plane (the stem): pad it once, filter it once per output channel */
        uint8_t padded[ML_S8_PLANE_BYTES + ML_S8_SLACK];
        const int pw = in_w + 2 * padding;
        ml_s8_pad_plane(in, in_h, in_w, padding, in_zp, padded);
        if (low == -128) {
            ml_s8_filters(padded, pw, out, out_h, out_w, out_c, kernel, stride, weight, bias, multiplier, 0, shift,
                          in_zp, out_zp, low, 0, 0);
        } else {
            ml_s8_filters(padded, pw, out, out_h, out_w, out_c, kernel, stride, weight, bias, multiplier, 0, shift,
                          in_zp, out_zp, low, 1, 0);
        }
        return;
    }
#if ML_S8_DSP
    if (in_c == 1 && ml_s8_filters_prescaled(in, in_h, in_w, 1, in_zp, out, out_h, out_w, out_c, kernel, stride,
                                             padding, weight, bias, multiplier, shift, out_zp, low)) {
        return;
    }
#endif
    ml_conv2d_s8_ref(in, in_h, in_w, in_c, in_zp, out, out_h, out_w, out_c, kernel, stride, padding, weight, bias,
                     multiplier, shift, out_zp, low);
}

void ml_depthwise_conv2d_s8(const int8_t *in, int in_h, int in_w, int channels, int32_t in_zp,
                            int8_t *out, int out_h, int out_w, int kernel, int stride, int padding,
                            const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift,
                            int32_t out_zp, int32_t low)
{
    if (!ml_s8_covered(in_h, in_w, out_h, out_w, 1, kernel, stride, padding, multiplier, shift, low)
        || !ml_s8_rq_covered(multiplier, channels, shift)) {
#if ML_S8_DSP
        if (ml_s8_filters_prescaled(in, in_h, in_w, channels, in_zp, out, out_h, out_w, 1, kernel, stride, padding,
                                    weight, bias, multiplier, shift, out_zp, low)) {
            return;
        }
#endif
        ml_depthwise_conv2d_s8_ref(in, in_h, in_w, channels, in_zp, out, out_h, out_w, kernel, stride, padding,
                                   weight, bias, multiplier, shift, out_zp, low);
        return;
    }
#if ML_S8_XTENSA
    if (kernel == 3 && (stride == 1 || stride == 2) && ml_s8_plane16_fits(in_h, in_w, padding)) {
        static int16_t plane16[ML_S8_XT_PLANE16] __attribute__((aligned(4)));
        int c = 0;
        for (; c < channels; ++c) {
            ml_s8_pad_plane16(in + c * in_h * in_w, in_h, in_w, padding, in_zp, plane16);
            if (!ml_s8_filters16_xtensa(plane16, out + c * out_h * out_w, out_h, out_w, 1, stride, weight, bias,
                                        multiplier, c, shift, in_zp, out_zp, low)) {
                break;
            }
        }
        if (c == channels) return;
    }
#endif
    uint8_t padded[ML_S8_PLANE_BYTES + ML_S8_SLACK];
    const int pw = in_w + 2 * padding;
    for (int c = 0; c < channels; ++c) {
#if ML_S8_X86
        if (c > 0) ml_s8_fill_interior(in + c * in_h * in_w, in_h, in_w, padding, padded); /* same border */
        else ml_s8_pad_plane(in, in_h, in_w, padding, in_zp, padded);
#else
        ml_s8_pad_plane(in + c * in_h * in_w, in_h, in_w, padding, in_zp, padded);
#endif
        if (low == -128) {
            ml_s8_filters(padded, pw, out + c * out_h * out_w, out_h, out_w, 1, kernel, stride, weight, bias,
                          multiplier, c, shift, in_zp, out_zp, low, 0, 0);
        } else {
            ml_s8_filters(padded, pw, out + c * out_h * out_w, out_h, out_w, 1, kernel, stride, weight, bias,
                          multiplier, c, shift, in_zp, out_zp, low, 1, 0);
        }
    }
}

#endif /* ML_S8_REFERENCE */
