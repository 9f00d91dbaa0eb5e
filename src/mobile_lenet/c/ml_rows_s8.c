/* ml_rows_s8.c - the int8 network row by row (see ml_rows_s8.h). */
#include "ml_rows_s8.h"

#include <stddef.h>
#include <string.h>

#include "ml_flash.h"
#include "ml_kernels_s8.h"

#define ML_ROWS_MAX_KERNEL 7    /* larger kernels: not supported by the schedule (the generator checks) */
#define ML_ROWS_MAX_CHANNELS 64 /* a pointwise filter's weights copied out of flash; more: read in place */

/* acc + sum of a[i] * w[i], i < n (n >= 1), modulo 2^32 (the int32 sums never wrap: same bits). On the AVR a
 * loop of MULS (8 x 8 -> 16 signed, 2 cycles) and a sign-extended 32-bit add, both operands in RAM. */
static inline int32_t ml_rows_dot(int32_t acc, const int8_t *a, const int8_t *w, uint8_t n)
{
#if defined(__AVR__)
    uint8_t x, y, s;
    __asm__ volatile("1: ld %[x], X+\n\t"
                     "ld %[y], Z+\n\t"
                     "muls %[x], %[y]\n\t"
                     "mov %[s], r1\n\t"
                     "lsl %[s]\n\t"
                     "sbc %[s], %[s]\n\t"
                     "add %A[acc], r0\n\t"
                     "adc %B[acc], r1\n\t"
                     "adc %C[acc], %[s]\n\t"
                     "adc %D[acc], %[s]\n\t"
                     "dec %[n]\n\t"
                     "brne 1b\n\t"
                     "clr __zero_reg__"
                     : [acc] "+r"(acc), [a] "+x"(a), [w] "+z"(w), [n] "+r"(n), [x] "=&d"(x), [y] "=&d"(y),
                       [s] "=&r"(s)
                     :
                     : "r0", "memory");
    return acc;
#else
    for (uint8_t i = 0; i < n; ++i) acc += a[i] * w[i];
    return acc;
#endif
}

/* The fast path's sums (|sum| < 2^23, checked by the generator: ml_rows_rq). acc24 + sum of a[i] * w[i], i < n
 * (n >= 1). On the AVR only the low three bytes of acc24 are kept (the top byte is left as it was: the
 * requantization below reads three), and each product p goes in as p + 2^15 (its sign bit flipped: one EOR,
 * then a three-byte unsigned add), so the caller starts from the sum's first term minus n * 2^15
 * (ml_rows_start24); eight multiply-adds per loop turn, ten cycles each. */
#if defined(__AVR__)
#define ML_ROWS_MAC                                                                                              \
    "ld %[x], X+\n\t"                                                                                            \
    "ld %[y], Z+\n\t"                                                                                            \
    "muls %[x], %[y]\n\t"                                                                                        \
    "eor r1, %[k]\n\t"                                                                                           \
    "add %A[acc], r0\n\t"                                                                                        \
    "adc %B[acc], r1\n\t"                                                                                        \
    "adc %C[acc], %[zero]\n\t"
#define ML_ROWS_START24(first, n) ((first) - (int32_t)(n) * 32768)
#else
#define ML_ROWS_START24(first, n) (first)
#endif

static inline int32_t ml_rows_dot24(int32_t acc, const int8_t *a, const int8_t *w, uint8_t n)
{
#if defined(__AVR__)
    uint8_t x, y, eights = n >> 3, rest = n & 7;
    const uint8_t k = 0x80, zero = 0;
    __asm__ volatile("tst %[e]\n\t"
                     "breq 2f\n"
                     "1:\n\t" ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC
                     ML_ROWS_MAC
                     "dec %[e]\n\t"
                     "brne 1b\n"
                     "2:\n\t"
                     "tst %[r]\n\t"
                     "breq 4f\n"
                     "3:\n\t" ML_ROWS_MAC
                     "dec %[r]\n\t"
                     "brne 3b\n"
                     "4:\n\t"
                     "clr __zero_reg__"
                     : [acc] "+r"(acc), [a] "+x"(a), [w] "+z"(w), [e] "+r"(eights), [r] "+r"(rest),
                       [x] "=&d"(x), [y] "=&d"(y)
                     : [k] "r"(k), [zero] "r"(zero)
                     : "r0", "memory");
    return acc;
#else
    for (uint8_t i = 0; i < n; ++i) acc += a[i] * w[i];
    return acc;
#endif
}

/* Three rows of three taps (a 3x3 window): acc24 + sum of r0[i] * t[i] + r1[i] * t[3 + i] + r2[i] * t[6 + i]. */
static inline int32_t ml_rows_dot3x3(int32_t acc, const int8_t *r0, const int8_t *r1, const int8_t *r2,
                                     const int8_t *t)
{
#if defined(__AVR__)
    uint8_t x, y;
    const uint8_t k = 0x80, zero = 0;
    const int8_t *a = r0;
    __asm__ volatile(ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC
                     "movw r26, %[r1]\n\t" ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC
                     "movw r26, %[r2]\n\t" ML_ROWS_MAC ML_ROWS_MAC ML_ROWS_MAC
                     "clr __zero_reg__"
                     : [acc] "+r"(acc), [a] "+x"(a), [w] "+z"(t), [x] "=&d"(x), [y] "=&d"(y)
                     : [r1] "r"(r1), [r2] "r"(r2), [k] "r"(k), [zero] "r"(zero)
                     : "r0", "memory");
    return acc;
#else
    return acc + r0[0] * t[0] + r0[1] * t[1] + r0[2] * t[2] + r1[0] * t[3] + r1[1] * t[4] + r1[2] * t[5]
           + r2[0] * t[6] + r2[1] * t[7] + r2[2] * t[8];
#endif
}

/* ml_rows_rq's value: 127 at or above hi, low below lo, else zero_point + byte 3 of acc * scale + 2^23 (on the
 * AVR: the low three bytes of acc, eight MUL / MULSU and the carries into byte 3; no shifts, no calls). */
static inline int8_t ml_rows_rq_value(int32_t acc, const ml_rows_rq *q, int8_t zero_point, int8_t low)
{
#if defined(__AVR__)
    uint8_t s1, s2, v, z, ta, tm;
    __asm__("cp %A[acc], %A[hi]\n\t"
            "cpc %B[acc], %B[hi]\n\t"
            "cpc %C[acc], %C[hi]\n\t"
            "brlt 1f\n\t"
            "ldi %[v], 127\n\t"
            "rjmp 3f\n"
            "1:\n\t"
            "cp %A[acc], %A[lo]\n\t"
            "cpc %B[acc], %B[lo]\n\t"
            "cpc %C[acc], %C[lo]\n\t"
            "brge 2f\n\t"
            "mov %[v], %[low]\n\t"
            "rjmp 3f\n"
            "2:\n\t"
            "mov %[ta], %C[acc]\n\t"
            "mov %[tm], %A[m]\n\t"
            "clr %[z]\n\t"
            "mul %A[acc], %A[m]\n\t" /* byte 0: only its carry byte matters */
            "mov %[s1], r1\n\t"
            "ldi %[s2], 0x80\n\t" /* + 2^23: rounding */
            "clr %[v]\n\t"
            "mul %A[acc], %B[m]\n\t" /* byte 1 */
            "add %[s1], r0\n\t"
            "adc %[s2], r1\n\t"
            "adc %[v], %[z]\n\t"
            "mul %B[acc], %A[m]\n\t"
            "add %[s1], r0\n\t"
            "adc %[s2], r1\n\t"
            "adc %[v], %[z]\n\t"
            "mul %A[acc], %C[m]\n\t" /* byte 2 */
            "add %[s2], r0\n\t"
            "adc %[v], r1\n\t"
            "mul %B[acc], %B[m]\n\t"
            "add %[s2], r0\n\t"
            "adc %[v], r1\n\t"
            "mulsu %[ta], %[tm]\n\t" /* the signed top byte of acc */
            "add %[s2], r0\n\t"
            "adc %[v], r1\n\t"
            "mul %B[acc], %C[m]\n\t" /* byte 3: low bytes only */
            "add %[v], r0\n\t"
            "mul %C[acc], %B[m]\n\t"
            "add %[v], r0\n\t"
            "add %[v], %[zp]\n\t"
            "clr __zero_reg__\n"
            "3:"
            : [v] "=&d"(v), [s1] "=&r"(s1), [s2] "=&d"(s2), [z] "=&r"(z), [ta] "=&a"(ta), [tm] "=&a"(tm)
            : [acc] "r"(acc), [m] "r"(q->scale), [lo] "r"(q->lo), [hi] "r"(q->hi), [zp] "r"(zero_point),
              [low] "r"(low)
            : "r0");
    return (int8_t)v;
#else
    if (acc >= q->hi) return 127;
    if (acc < q->lo) return low;
    return (int8_t)((int32_t)(((int64_t)acc * q->scale + ((int64_t)1 << 23)) >> 24) + zero_point);
#endif
}

#if defined(__AVR__)
/* One output channel of a 1x1 convolution over a row, all in assembly (explicit registers, nothing spilled):
 * rec = [the sum's first term - n * 2^15 (three bytes), the n weights, lo (three bytes), hi (three bytes)],
 * n = 8 * eights; out[x] = ml_rows_rq_value(...) for x < width (>= 1); in is pixel-major (width x n). Per output:
 * the three bytes of the start, 8-way unrolled multiply-adds (ten cycles each), the thresholds read in turn,
 * the product's byte 3 (MUL only: the signed top byte's correction is one SBRC / SUB). */
static void ml_rows_pw_row_avr(const int8_t *in, int8_t *out, const int8_t *rec, uint8_t width, uint8_t eights,
                               const ml_rows_rq *q, int8_t zp, int8_t low)
{
    struct {
        const int8_t *in;
        int8_t *out;
        const int8_t *rec;
        uint8_t width, eights;
        int8_t zp, low;
        uint8_t s0, s1, s2;
    } b;
    b.in = in;
    b.out = out;
    b.rec = rec;
    b.width = width;
    b.eights = eights;
    b.zp = zp;
    b.low = low;
    b.s0 = (uint8_t)q->scale;
    b.s1 = (uint8_t)(q->scale >> 8);
    b.s2 = (uint8_t)(q->scale >> 16);
    __asm__ volatile(
        "ld r26, Z+\n\t" "ld r27, Z+\n\t" "ld r16, Z+\n\t" "ld r17, Z+\n\t" "ld r14, Z+\n\t" "ld r15, Z+\n\t"
        "ld r11, Z+\n\t" "ld r12, Z+\n\t" "ld r9, Z+\n\t" "ld r10, Z+\n\t" "ld r6, Z+\n\t" "ld r7, Z+\n\t"
        "ld r8, Z+\n\t"
        "ldi r23, 0x80\n\t" "mov r5, r23\n\t" "clr r25\n"
        "10:\n\t"
        "movw r30, r14\n\t" "ld r2, Z+\n\t" "ld r3, Z+\n\t" "ld r4, Z+\n\t" "mov r13, r12\n"
        "11:\n\t"
#define ML_PW_MAC "ld r18, X+\n\t" "ld r19, Z+\n\t" "muls r18, r19\n\t" "eor r1, r5\n\t" "add r2, r0\n\t" \
                  "adc r3, r1\n\t" "adc r4, r25\n\t"
        ML_PW_MAC ML_PW_MAC ML_PW_MAC ML_PW_MAC ML_PW_MAC ML_PW_MAC ML_PW_MAC ML_PW_MAC
#undef ML_PW_MAC
        "dec r13\n\t" "brne 11b\n\t"
        /* below lo: low */
        "ld r23, Z+\n\t" "cp r2, r23\n\t" "ld r23, Z+\n\t" "cpc r3, r23\n\t" "ld r23, Z+\n\t" "cpc r4, r23\n\t"
        "brge 12f\n\t" "mov r22, r10\n\t" "rjmp 14f\n"
        "12:\n\t" /* at or above hi: 127 */
        "ld r23, Z+\n\t" "cp r2, r23\n\t" "ld r23, Z+\n\t" "cpc r3, r23\n\t" "ld r23, Z+\n\t" "cpc r4, r23\n\t"
        "brlt 13f\n\t" "ldi r22, 127\n\t" "rjmp 14f\n"
        "13:\n\t" /* zp + byte 3 of acc * scale + 2^23 */
        "mul r2, r6\n\t" "mov r20, r1\n\t" "ldi r21, 0x80\n\t" "clr r22\n\t"
        "mul r2, r7\n\t" "add r20, r0\n\t" "adc r21, r1\n\t" "adc r22, r25\n\t"
        "mul r3, r6\n\t" "add r20, r0\n\t" "adc r21, r1\n\t" "adc r22, r25\n\t"
        "mul r2, r8\n\t" "add r21, r0\n\t" "adc r22, r1\n\t"
        "mul r3, r7\n\t" "add r21, r0\n\t" "adc r22, r1\n\t"
        "mul r4, r6\n\t" "add r21, r0\n\t" "adc r22, r1\n\t" "sbrc r4, 7\n\t" "sub r22, r6\n\t"
        "mul r3, r8\n\t" "add r22, r0\n\t"
        "mul r4, r7\n\t" "add r22, r0\n\t"
        "add r22, r9\n"
        "14:\n\t"
        "movw r30, r16\n\t" "st Z+, r22\n\t" "movw r16, r30\n\t"
        "dec r11\n\t" "breq 15f\n\t" "rjmp 10b\n" /* (a branch does not reach back) */
        "15:\n\t"
        "clr __zero_reg__"
        :
        : "z"(&b)
        : "r0", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "r16",
          "r17", "r18", "r19", "r20", "r21", "r22", "r23", "r25", "r26", "r27", "memory");
}
#endif

#if defined(__AVR__)
/* One row of a 3x3 filter, all in assembly: rec = [the sum's first term - 9 * 2^15 (three bytes), the 9 taps,
 * out_step, lo (three bytes), hi (three bytes)]; rows r0, r1, r2 advance by stride (1..3) per output;
 * out[x * out_step] for x < width (>= 1). Y holds the third row (saved and restored around the loop). */
static void ml_rows_dw_row_avr(const int8_t *r0, const int8_t *r1, const int8_t *r2, uint8_t stride, int8_t *out,
                               const int8_t *rec, uint8_t width, const ml_rows_rq *q, int8_t zp, int8_t low)
{
    struct {
        const int8_t *r0, *r1;
        int8_t *out;
        const int8_t *rec;
        uint8_t width, stride;
        int8_t zp, low;
        uint8_t s0, s1, s2;
        const int8_t *r2;
    } b;
    b.r0 = r0;
    b.r1 = r1;
    b.r2 = r2;
    b.out = out;
    b.rec = rec;
    b.width = width;
    b.stride = stride;
    b.zp = zp;
    b.low = low;
    b.s0 = (uint8_t)q->scale;
    b.s1 = (uint8_t)(q->scale >> 8);
    b.s2 = (uint8_t)(q->scale >> 16);
    __asm__ volatile(
        "push r28\n\t" "push r29\n\t"
        "ld r12, Z+\n\t" "ld r13, Z+\n\t" "ld r24, Z+\n\t" "ld r25, Z+\n\t" "ld r16, Z+\n\t" "ld r17, Z+\n\t"
        "ld r14, Z+\n\t" "ld r15, Z+\n\t" "ld r11, Z+\n\t" "ld r21, Z+\n\t" "ld r9, Z+\n\t" "ld r10, Z+\n\t"
        "ld r6, Z+\n\t" "ld r7, Z+\n\t" "ld r8, Z+\n\t" "ld r28, Z+\n\t" "ld r29, Z+\n\t"
        "ldi r23, 0x80\n\t" "mov r5, r23\n\t" "clr r23\n"
        "10:\n\t"
        "movw r30, r14\n\t" "ld r2, Z+\n\t" "ld r3, Z+\n\t" "ld r4, Z+\n\t"
#define ML_DW_MAC "ld r18, X+\n\t" "ld r19, Z+\n\t" "muls r18, r19\n\t" "eor r1, r5\n\t" "add r2, r0\n\t" \
                  "adc r3, r1\n\t" "adc r4, r23\n\t"
        "movw r26, r12\n\t" ML_DW_MAC ML_DW_MAC ML_DW_MAC
        "movw r26, r24\n\t" ML_DW_MAC ML_DW_MAC ML_DW_MAC
        "movw r26, r28\n\t" ML_DW_MAC ML_DW_MAC ML_DW_MAC
#undef ML_DW_MAC
        "add r12, r21\n\t" "adc r13, r23\n\t" "add r24, r21\n\t" "adc r25, r23\n\t" "add r28, r21\n\t"
        "adc r29, r23\n\t"
        "ld r20, Z+\n\t" /* out_step */
        "ld r22, Z+\n\t" "cp r2, r22\n\t" "ld r22, Z+\n\t" "cpc r3, r22\n\t" "ld r22, Z+\n\t" "cpc r4, r22\n\t"
        "brge 12f\n\t" "mov r22, r10\n\t" "rjmp 14f\n"
        "12:\n\t"
        "ld r22, Z+\n\t" "cp r2, r22\n\t" "ld r22, Z+\n\t" "cpc r3, r22\n\t" "ld r22, Z+\n\t" "cpc r4, r22\n\t"
        "brlt 13f\n\t" "ldi r22, 127\n\t" "rjmp 14f\n"
        "13:\n\t"
        "mul r2, r6\n\t" "mov r18, r1\n\t" "ldi r19, 0x80\n\t" "clr r22\n\t"
        "mul r2, r7\n\t" "add r18, r0\n\t" "adc r19, r1\n\t" "adc r22, r23\n\t"
        "mul r3, r6\n\t" "add r18, r0\n\t" "adc r19, r1\n\t" "adc r22, r23\n\t"
        "mul r2, r8\n\t" "add r19, r0\n\t" "adc r22, r1\n\t"
        "mul r3, r7\n\t" "add r19, r0\n\t" "adc r22, r1\n\t"
        "mul r4, r6\n\t" "add r19, r0\n\t" "adc r22, r1\n\t" "sbrc r4, 7\n\t" "sub r22, r6\n\t"
        "mul r3, r8\n\t" "add r22, r0\n\t"
        "mul r4, r7\n\t" "add r22, r0\n\t"
        "add r22, r9\n"
        "14:\n\t"
        "movw r30, r16\n\t" "st Z, r22\n\t" "add r16, r20\n\t" "adc r17, r23\n\t"
        "dec r11\n\t" "breq 15f\n\t" "rjmp 10b\n"
        "15:\n\t"
        "pop r29\n\t" "pop r28\n\t"
        "clr __zero_reg__"
        :
        : "z"(&b)
        : "r0", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "r16",
          "r17", "r18", "r19", "r20", "r21", "r22", "r23", "r24", "r25", "r26", "r27", "memory");
}
#endif

int8_t ml_rows_requantize_rq_s8(int32_t acc, const ml_rows_rq *rq, int32_t zero_point, int32_t low)
{
    if (acc >= rq->hi) return 127;
    if (acc < rq->lo) return (int8_t)low;
    return (int8_t)((int32_t)(((int64_t)acc * rq->scale + ((int64_t)1 << 23)) >> 24) + zero_point);
}

/* 16 x 16 -> 32-bit products, kept apart so that avr-gcc uses its widening multiplies (__mulhisi3,
 * __usmulhisi3) rather than a 32 x 32 one on operands it has widened once for both. */
#if defined(__AVR__)
__attribute__((noinline))
#endif
static int32_t ml_rows_mul(int16_t a, int16_t b)
{
    return (int32_t)a * b;
}

#if defined(__AVR__)
__attribute__((noinline))
#endif
static int32_t ml_rows_mulu(uint16_t a, int16_t b)
{
    return (int32_t)a * b;
}

int8_t ml_rows_requantize_s8(int32_t acc, int16_t multiplier, int shift, int32_t zero_point, int32_t low)
{
    int32_t value;
    if (shift < 17 || shift > 31) return ml_requantize_s8(acc, multiplier, shift, zero_point, low);
    /* acc = hi * 2^16 + lo (lo in [0, 65535]); |hi * m| <= 2^30 and lo * m fits in 32 bits, and
     * floor((hi * m * 2^16 + lo * m + 2^(s-1)) / 2^s) = floor((hi * m + 2^(s-17) + floor(lo * m / 2^16)) / 2^(s-16))
     * (nested floors; the right shifts of negative values are arithmetic, as in ml_requantize_s8). */
    {
        /* 16 x 16 -> 32 products (on the AVR: avr-gcc's widening multiplies, not a 32 x 32 library call) */
        const int16_t hi = (int16_t)(acc >> 16);
        const uint16_t lo = (uint16_t)((uint32_t)acc & 0xFFFFu);
        const int32_t high = ml_rows_mul(hi, multiplier), low_part = ml_rows_mulu(lo, multiplier);
        value = (high + ((int32_t)1 << (shift - 17)) + (low_part >> 16)) >> (shift - 16);
    }
    value += zero_point;
    if (value < low) value = low;
    if (value > 127) value = 127;
    return (int8_t)value;
}

void ml_rows_filter_s8(const int8_t *const *in, int kernel, int stride, int out_w, const int8_t *taps,
                       int32_t bias, int16_t multiplier, int shift, int32_t out_zp, int32_t low,
                       const ml_rows_rq *rq, int8_t *out, int out_step)
{
    if (kernel == 3 && rq != NULL) {
        /* the fast path: three-byte sums, ml_rows_rq's requantization; taps and constants out of flash */
        int8_t t[9];
        ml_rows_rq q;
        const int8_t *r0 = in[0], *r1 = in[1], *r2 = in[2];
        const int32_t first = ML_ROWS_START24(bias, 9);
        const int8_t zp = (int8_t)out_zp, lo = (int8_t)low;
        for (int i = 0; i < 9; ++i) t[i] = ML_FLASH_S8(&taps[i]);
        ML_FLASH_COPY(&q, rq);
#if defined(__AVR__)
        if (out_step >= 1 && out_step <= 255 && stride >= 1 && stride <= 255 && out_w >= 1 && out_w <= 255) {
            int8_t rec[3 + 9 + 1 + 6];
            memcpy(rec, &first, 3);
            memcpy(rec + 3, t, 9);
            rec[12] = (int8_t)(uint8_t)out_step;
            memcpy(rec + 13, &q.lo, 3);
            memcpy(rec + 16, &q.hi, 3);
            ml_rows_dw_row_avr(r0, r1, r2, (uint8_t)stride, out, rec, (uint8_t)out_w, &q, zp, lo);
            return;
        }
#endif
        for (uint8_t x = (uint8_t)out_w; x != 0; --x) {
            *out = ml_rows_rq_value(ml_rows_dot3x3(first, r0, r1, r2, t), &q, zp, lo);
            out += out_step;
            r0 += stride;
            r1 += stride;
            r2 += stride;
        }
        return;
    }
    if (kernel == 3) {
        /* the nine taps in locals; each product q * w fits in 16 bits (int on the AVR: one MULS) */
        int8_t t[9];
        const int8_t *r0 = in[0], *r1 = in[1], *r2 = in[2];
        for (int i = 0; i < 9; ++i) t[i] = ML_FLASH_S8(&taps[i]);
        for (int x = 0; x < out_w; ++x) {
            int32_t acc = ml_rows_dot(bias, r0, t, 3);
            acc = ml_rows_dot(acc, r1, t + 3, 3);
            acc = ml_rows_dot(acc, r2, t + 6, 3);
            *out = ml_rows_requantize_s8(acc, multiplier, shift, out_zp, low);
            out += out_step;
            r0 += stride;
            r1 += stride;
            r2 += stride;
        }
        return;
    }
    for (int x = 0; x < out_w; ++x) {
        int32_t acc = bias;
        for (int ky = 0; ky < kernel; ++ky) {
            const int8_t *row = in[ky] + x * stride;
            for (int kx = 0; kx < kernel; ++kx) acc += row[kx] * ML_FLASH_S8(&taps[ky * kernel + kx]);
        }
        out[x * out_step] = ml_rows_requantize_s8(acc, multiplier, shift, out_zp, low);
    }
}

void ml_rows_pointwise_s8(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                          int8_t *out, int out_stride, int32_t *gap_sums, int32_t gap_in_zp)
{
    int8_t copy[ML_ROWS_MAX_CHANNELS]; /* one filter's weights, out of flash */
    for (int co = 0; co < out_c; ++co) {
        const int8_t *w = layer->weight + co * in_c;
        const int32_t bias = ML_FLASH_S32(&layer->bias[co]);
        const int16_t multiplier = ML_FLASH_S16(&layer->multiplier[co]);
        if (in_c >= 1 && in_c <= ML_ROWS_MAX_CHANNELS) {
            for (int ci = 0; ci < in_c; ++ci) copy[ci] = ML_FLASH_S8(&w[ci]);
            w = copy;
            if (layer->rq != NULL) { /* the fast path: three-byte sums, ml_rows_rq's requantization */
                ml_rows_rq q;
                const int32_t first = ML_ROWS_START24(bias, in_c);
                const int8_t zp = (int8_t)layer->out_zp, lo = (int8_t)layer->low;
                const int8_t *p = in;
                ML_FLASH_COPY(&q, &layer->rq[co]);
#if defined(__AVR__)
                if ((in_c & 7) == 0 && width <= ML_ROWS_MAX_CHANNELS) {
                    /* the record: start, weights, thresholds (bytes, little-endian) */
                    int8_t rec[3 + ML_ROWS_MAX_CHANNELS + 6], row[ML_ROWS_MAX_CHANNELS];
                    int8_t *o = out != NULL ? out + co * out_stride : row;
                    memcpy(rec, &first, 3);
                    memcpy(rec + 3, copy, (size_t)in_c);
                    memcpy(rec + 3 + in_c, &q.lo, 3);
                    memcpy(rec + 6 + in_c, &q.hi, 3);
                    ml_rows_pw_row_avr(in, o, rec, (uint8_t)width, (uint8_t)(in_c >> 3), &q, zp, lo);
                    if (out == NULL) {
                        int32_t sum = gap_sums[co];
                        for (int x = 0; x < width; ++x) sum += row[x];
                        gap_sums[co] = sum - (int32_t)width * gap_in_zp;
                    }
                    continue;
                }
#endif
                if (out != NULL) {
                    int8_t *o = out + co * out_stride;
                    for (uint8_t x = (uint8_t)width; x != 0; --x) {
                        *o++ = ml_rows_rq_value(ml_rows_dot24(first, p, copy, (uint8_t)in_c), &q, zp, lo);
                        p += in_c;
                    }
                } else {
                    int32_t sum = gap_sums[co];
                    for (uint8_t x = (uint8_t)width; x != 0; --x) {
                        sum += ml_rows_rq_value(ml_rows_dot24(first, p, copy, (uint8_t)in_c), &q, zp, lo);
                        p += in_c;
                    }
                    gap_sums[co] = sum - (int32_t)width * gap_in_zp;
                }
                continue;
            }
        }
        for (int x = 0; x < width; ++x) {
            const int8_t *p = in + x * in_c;
            int32_t acc = bias;
            if (w == copy) {
                acc = ml_rows_dot(acc, p, copy, (uint8_t)in_c);
            } else {
                for (int ci = 0; ci < in_c; ++ci) acc += p[ci] * ML_FLASH_S8(&w[ci]);
            }
            {
                const int8_t value = ml_rows_requantize_s8(acc, multiplier, layer->shift, layer->out_zp, layer->low);
                if (out != NULL) {
                    out[co * out_stride + x] = value;
                } else {
                    gap_sums[co] += (int32_t)value - gap_in_zp;
                }
            }
        }
    }
}

/* Row r's slot in a ring of `kernel` rows of row_bytes each. */
static int8_t *slot(const ml_block_rows *rows, int r, int kernel, int row_bytes)
{
    return rows->ring + (r % kernel) * row_bytes;
}

void ml_rows_start_s8(const ml_rows_network *net)
{
    ml_stem_s8 stem;
    ml_block_s8 block;
    int channels = 0; /* the last block's output channels: the pooling sums */
    ML_FLASH_COPY(&stem, net->stem);
    memset(net->rows[0].ring, stem.conv.in_zp, (size_t)(stem.kernel * (stem.w + 2 * stem.padding)));
    net->rows[0].received = net->rows[0].emitted = 0;
    for (int b = 0; b < net->count; ++b) {
        ML_FLASH_COPY(&block, &net->blocks[b]);
        memset(net->rows[b + 1].ring, block.dw.in_zp,
               (size_t)(block.kernel * block.channels * (block.in_w + 2 * block.padding)));
        net->rows[b + 1].received = net->rows[b + 1].emitted = 0;
        channels = block.out_channels;
    }
    for (int c = 0; c < channels; ++c) net->gap_sums[c] = 0;
}

/* Where the producer of block b's next input row writes it: channel 0's first value, and the channel stride. */
static int8_t *next_row(const ml_rows_network *net, int b, int *channel_stride)
{
    ml_block_s8 block;
    ML_FLASH_COPY(&block, &net->blocks[b]);
    *channel_stride = block.in_w + 2 * block.padding;
    return slot(&net->rows[b + 1], net->rows[b + 1].received, block.kernel, block.channels * *channel_stride)
           + block.padding;
}

/* Output row y of block p (its ring: rows): the depthwise layer into dw_row, the pointwise one into block
 * b + 1's ring (or the pooling sums). */
static void block_row(const ml_rows_network *net, int b, const ml_block_s8 *p, const ml_block_rows *rows, int y)
{
    const int k = p->kernel, padded = p->in_w + 2 * p->padding, row_bytes = p->channels * padded;
    const int8_t *base[ML_ROWS_MAX_KERNEL], *in[ML_ROWS_MAX_KERNEL];
    int8_t *out = NULL;
    int out_stride = 0;
    for (int ky = 0; ky < k; ++ky) {
        const int iy = y * p->stride + ky - p->padding;
        base[ky] = iy >= 0 && iy < p->in_h ? slot(rows, iy, k, row_bytes) : NULL;
        if (base[ky] == NULL) memset(net->pad_row, p->dw.in_zp, (size_t)padded);
    }
    for (int c = 0; c < p->channels; ++c) {
        for (int ky = 0; ky < k; ++ky) in[ky] = base[ky] != NULL ? base[ky] + c * padded : net->pad_row;
        ml_rows_filter_s8(in, k, p->stride, p->out_w, p->dw.weight + c * k * k, ML_FLASH_S32(&p->dw.bias[c]),
                          ML_FLASH_S16(&p->dw.multiplier[c]), p->dw.shift, p->dw.out_zp, p->dw.low,
                          p->dw.rq != NULL ? &p->dw.rq[c] : NULL, net->dw_row + c, p->channels);
    }
    if (b + 1 < net->count) out = next_row(net, b + 1, &out_stride);
    ml_rows_pointwise_s8(net->dw_row, p->out_w, p->channels, &p->pw, p->out_channels, out, out_stride,
                         net->gap_sums, net->gap_in_zp);
}

/* Block b's ring has received its next row: compute (and hand on) every output row that has become computable. */
static void push(const ml_rows_network *net, int b)
{
    ml_block_s8 p; /* the block's description, copied out of flash (on the stack: one per block in flight) */
    ml_block_rows *rows = &net->rows[b + 1];
    ML_FLASH_COPY(&p, &net->blocks[b]);
    rows->received++;
    while (rows->emitted < p.out_h) {
        int last = rows->emitted * p.stride - p.padding + p.kernel - 1; /* the last input row it reads */
        if (last > p.in_h - 1) last = p.in_h - 1;                      /* (below: zero padding) */
        if (rows->received <= last) return;                              /* not in yet */
        block_row(net, b, &p, rows, rows->emitted);
        rows->emitted++;
        if (b + 1 < net->count) push(net, b + 1);
    }
}

void ml_rows_run_s8(const ml_rows_network *net, const uint8_t *image)
{
    ml_stem_s8 s;
    ml_block_rows *rows = &net->rows[0];
    const int8_t *in[ML_ROWS_MAX_KERNEL];
    ML_FLASH_COPY(&s, net->stem);
    {
        const int k = s.kernel, padded = s.w + 2 * s.padding;
        for (int y = 0; y < s.h; ++y) {
            int last = y - s.padding + k - 1, channel_stride;
            int8_t *out;
            if (last > s.h - 1) last = s.h - 1;
            while (rows->received <= last) { /* the image rows it reads, as int8 (q = pixel - 128) */
                int8_t *row = slot(rows, rows->received, k, padded) + s.padding;
                const uint8_t *pixels = image + rows->received * s.w;
                for (int x = 0; x < s.w; ++x) row[x] = (int8_t)((int)pixels[x] - 128);
                rows->received++;
            }
            for (int ky = 0; ky < k; ++ky) {
                const int iy = y + ky - s.padding;
                in[ky] = iy >= 0 && iy < s.h ? slot(rows, iy, k, padded) : NULL;
                if (in[ky] == NULL) {
                    memset(net->pad_row, s.conv.in_zp, (size_t)padded);
                    in[ky] = net->pad_row;
                }
            }
            out = next_row(net, 0, &channel_stride);
            for (int co = 0; co < s.out_channels; ++co) {
                ml_rows_filter_s8(in, k, 1, s.w, s.conv.weight + co * k * k, ML_FLASH_S32(&s.conv.bias[co]),
                                  ML_FLASH_S16(&s.conv.multiplier[co]), s.conv.shift, s.conv.out_zp, s.conv.low,
                                  s.conv.rq != NULL ? &s.conv.rq[co] : NULL, out + co * channel_stride, 1);
            }
            push(net, 0); /* row y of the stem flows through the blocks */
        }
    }
}
