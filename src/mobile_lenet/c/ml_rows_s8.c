/* ml_rows_s8.c - the int8 network row by row (see ml_rows_s8.h). */
#include "ml_rows_s8.h"

#include <stddef.h>
#include <string.h>

#include "ml_flash.h"
#include "ml_kernels_s8.h"

#define ML_ROWS_MAX_KERNEL 7    /* larger kernels: not supported by the schedule (the generator checks) */
#define ML_ROWS_MAX_CHANNELS 64 /* a pointwise filter's weights copied out of flash; more: read in place */

/* Called each time an AVR assembly row loop runs (kind: dw, dw_regs, pw, pw_regs); the AVR unit test
 * (tests/c/test_rows_s8.c) counts them. */
#ifndef ML_ROWS_FAST_RAN
#define ML_ROWS_FAST_RAN(kind) ((void)0)
#endif

/* n bytes out of flash (on the AVR memcpy_P; the AVR unit test, whose data are in RAM, makes it memcpy). */
#ifndef ML_ROWS_FLASH_BYTES
#if defined(__AVR__)
#define ML_ROWS_FLASH_BYTES(to, from, n) memcpy_P((to), (from), (n))
#else
#define ML_ROWS_FLASH_BYTES(to, from, n) memcpy((to), (from), (n))
#endif
#endif

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

#if defined(__AVR__)
/* The parameters of the assembly row loops below, in RAM at a fixed address: read with LDS, so that no
 * pointer register holds them and the filter's taps (or the pointwise weights) can stay in registers. */
static struct {
    const int8_t *r0, *r1, *r2; /* 3x3: the three input rows; pointwise: r0 = the input */
    int8_t *out;
    uint8_t width, step; /* outputs, and out's step between two (3x3) */
    int8_t zp, low;
    uint8_t first[3]; /* the sum's first term - n * 2^15 */
    ml_rows_rq q;          /* lo, hi: their low three bytes, copied from *rq by the loops */
    const int8_t *taps;    /* in flash: the 3x3 taps, or the 8 pointwise weights */
    const ml_rows_rq *rq;  /* in flash: the channel's requantization */
} ml_rows_k;

/* How the loops read flash: LPM; the AVR unit test (data in RAM) makes it LD. */
#ifndef ML_ROWS_LPM
#define ML_ROWS_LPM "lpm"
#endif

#define ML_K_OPERANDS                                                                                            \
    [r0] "i"(&ml_rows_k.r0), [r1] "i"(&ml_rows_k.r1), [r2] "i"(&ml_rows_k.r2), [out] "i"(&ml_rows_k.out),      \
        [width] "i"(&ml_rows_k.width), [step] "i"(&ml_rows_k.step), [zp] "i"(&ml_rows_k.zp),                    \
        [low] "i"(&ml_rows_k.low), [first] "i"(ml_rows_k.first), [lo] "i"(&ml_rows_k.q.lo),                       \
        [hi] "i"(&ml_rows_k.q.hi), [taps] "i"(&ml_rows_k.taps), [rq] "i"(&ml_rows_k.rq)

/* Registers of both loops: r2-r4 the sum, r5 0x80, r6 zero, r7-r9 the scale, r10 the outputs left, r11 the
 * value, r14-r15 requantization bytes; MULS takes only r16-r31, and X, Y, Z are the pointers, so the taps (or
 * weights) are r16-r24 and the input byte r25. Each multiply-add: MULS, the product's sign bit flipped (EOR
 * with 0x80: + 2^15, as in ML_ROWS_MAC) and a three-byte unsigned add. */
#define ML_K_MAC(reg) "muls r25, " reg "\n\t" "eor r1, r5\n\t" "add r2, r0\n\t" "adc r3, r1\n\t" "adc r4, r6\n\t"
/* lo / hi: r11 = low or 127 (branch to 14f), else zp + byte 3 of acc * scale + 2^23 in r11 */
#define ML_K_LO_RAM                                                                                              \
    "lds r0, %[lo]\n\t" "cp r2, r0\n\t" "lds r0, %[lo]+1\n\t" "cpc r3, r0\n\t" "lds r0, %[lo]+2\n\t"            \
    "cpc r4, r0\n\t"
#define ML_K_LO_REGS "cp r2, r12\n\t" "cpc r3, r13\n\t" "cpc r4, r24\n\t" /* lo in r12, r13, r24 (pointwise) */
#define ML_K_REQUANT(lo_compare)                                                                                 \
    lo_compare "brge 12f\n\t" "lds r11, %[low]\n\t" "rjmp 14f\n"                                                 \
    "12:\n\t"                                                                                                    \
    "lds r0, %[hi]\n\t" "cp r2, r0\n\t" "lds r0, %[hi]+1\n\t" "cpc r3, r0\n\t" "lds r0, %[hi]+2\n\t"            \
    "cpc r4, r0\n\t" "brlt 13f\n\t" "mov r11, r5\n\t" "dec r11\n\t" "rjmp 14f\n"                                 \
    "13:\n\t"                                                                                                    \
    "mul r2, r7\n\t" "mov r14, r1\n\t" "mov r15, r5\n\t" "clr r11\n\t"                                           \
    "mul r2, r8\n\t" "add r14, r0\n\t" "adc r15, r1\n\t" "adc r11, r6\n\t"                                       \
    "mul r3, r7\n\t" "add r14, r0\n\t" "adc r15, r1\n\t" "adc r11, r6\n\t"                                       \
    "mul r2, r9\n\t" "add r15, r0\n\t" "adc r11, r1\n\t"                                                         \
    "mul r3, r8\n\t" "add r15, r0\n\t" "adc r11, r1\n\t"                                                         \
    "mul r4, r7\n\t" "add r15, r0\n\t" "adc r11, r1\n\t" "sbrc r4, 7\n\t" "sub r11, r7\n\t"                      \
    "mul r3, r9\n\t" "add r11, r0\n\t"                                                                           \
    "mul r4, r8\n\t" "add r11, r0\n\t"                                                                           \
    "lds r0, %[zp]\n\t" "add r11, r0\n"                                                                          \
    "14:\n\t"
/* The setup, out of flash (Z): the taps (or weights) into r16-r23 (and r24: ML_K_TAP9), the scale into r7-r9,
 * the thresholds' low three bytes into ml_rows_k.q (ml_rows_rq: scale, lo, hi, four bytes each). */
#define ML_K_LPM(reg) ML_ROWS_LPM " " reg ", Z+\n\t"
#define ML_K_TAP9 ML_K_LPM("r24")
#define ML_K_SETUP(tap9)                                                                                         \
    "lds r30, %[taps]\n\t" "lds r31, %[taps]+1\n\t" ML_K_LPM("r16") ML_K_LPM("r17") ML_K_LPM("r18")             \
    ML_K_LPM("r19") ML_K_LPM("r20") ML_K_LPM("r21") ML_K_LPM("r22") ML_K_LPM("r23") tap9                         \
    "lds r30, %[rq]\n\t" "lds r31, %[rq]+1\n\t" ML_K_LPM("r7") ML_K_LPM("r8") ML_K_LPM("r9") "adiw r30, 1\n\t"  \
    ML_K_LPM("r0") "sts %[lo], r0\n\t" ML_K_LPM("r0") "sts %[lo]+1, r0\n\t" ML_K_LPM("r0")                      \
    "sts %[lo]+2, r0\n\t" "adiw r30, 1\n\t" ML_K_LPM("r0") "sts %[hi], r0\n\t" ML_K_LPM("r0")                  \
    "sts %[hi]+1, r0\n\t" ML_K_LPM("r0") "sts %[hi]+2, r0\n\t"                                                   \
    "lds r10, %[width]\n\t" "ldi r25, 0x80\n\t" "mov r5, r25\n\t" "clr r6\n\t"
#define ML_K_CLOBBERS                                                                                            \
    "r0", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "r16", "r17", \
        "r18", "r19", "r20", "r21", "r22", "r23", "r24", "r25", "r26", "r27", "r30", "r31", "memory"

/* One row of a 3x3 filter of stride S (1 or 2) from ml_rows_k: the taps in r16-r24, rows in X, Y, Z (Y saved
 * and restored), out in r12:r13; eight cycles a multiply-add. */
#define ML_K_DW_ROW(S)                                                                                           \
    __asm__ volatile("push r28\n\t" "push r29\n\t" ML_K_SETUP(ML_K_TAP9)                                        \
                     "lds r26, %[r0]\n\t" "lds r27, %[r0]+1\n\t" "lds r28, %[r1]\n\t" "lds r29, %[r1]+1\n\t"     \
                     "lds r30, %[r2]\n\t" "lds r31, %[r2]+1\n\t" "lds r12, %[out]\n\t" "lds r13, %[out]+1\n"     \
                     "10:\n\t"                                                                                   \
                     "lds r2, %[first]\n\t" "lds r3, %[first]+1\n\t" "lds r4, %[first]+2\n\t"                    \
                     "ld r25, X+\n\t" ML_K_MAC("r16") "ld r25, X+\n\t" ML_K_MAC("r17")                           \
                     "ld r25, X+\n\t" ML_K_MAC("r18") "sbiw r26, 3 - " #S "\n\t"                                 \
                     "ldd r25, Y+0\n\t" ML_K_MAC("r19") "ldd r25, Y+1\n\t" ML_K_MAC("r20")                       \
                     "ldd r25, Y+2\n\t" ML_K_MAC("r21") "adiw r28, " #S "\n\t"                                   \
                     "ldd r25, Z+0\n\t" ML_K_MAC("r22") "ldd r25, Z+1\n\t" ML_K_MAC("r23")                       \
                     "ldd r25, Z+2\n\t" ML_K_MAC("r24") "adiw r30, " #S "\n\t"                                   \
                     ML_K_REQUANT(ML_K_LO_RAM)                                                                   \
                     "movw r14, r30\n\t" "movw r30, r12\n\t" "st Z, r11\n\t" "movw r30, r14\n\t"                 \
                     "lds r0, %[step]\n\t" "add r12, r0\n\t" "adc r13, r6\n\t"                                   \
                     "dec r10\n\t" "breq 15f\n\t" "rjmp 10b\n"                                                   \
                     "15:\n\t"                                                                                   \
                     "pop r29\n\t" "pop r28\n\t" "clr __zero_reg__"                                              \
                     :                                                                                           \
                     : ML_K_OPERANDS                                                                             \
                     : ML_K_CLOBBERS)

/* One output channel of a 1x1 convolution with 8 input channels from ml_rows_k: the weights in r16-r23, the
 * pixel-major input in X, out in Z, lo in r12, r13, r24 and the first two bytes of the sum's start in Y (saved
 * and restored); eight cycles a multiply-add. */
static void ml_rows_pw8_row_k(void)
{
    __asm__ volatile("push r28\n\t" "push r29\n\t" ML_K_SETUP("") "lds r26, %[r0]\n\t" "lds r27, %[r0]+1\n\t"
                     "lds r30, %[out]\n\t" "lds r31, %[out]+1\n\t" "lds r12, %[lo]\n\t" "lds r13, %[lo]+1\n\t"
                     "lds r24, %[lo]+2\n\t" "lds r28, %[first]\n\t" "lds r29, %[first]+1\n"
                     "10:\n\t"
                     "movw r2, r28\n\t" "lds r4, %[first]+2\n\t"
                     "ld r25, X+\n\t" ML_K_MAC("r16") "ld r25, X+\n\t" ML_K_MAC("r17")
                     "ld r25, X+\n\t" ML_K_MAC("r18") "ld r25, X+\n\t" ML_K_MAC("r19")
                     "ld r25, X+\n\t" ML_K_MAC("r20") "ld r25, X+\n\t" ML_K_MAC("r21")
                     "ld r25, X+\n\t" ML_K_MAC("r22") "ld r25, X+\n\t" ML_K_MAC("r23")
                     ML_K_REQUANT(ML_K_LO_REGS)
                     "st Z+, r11\n\t"
                     "dec r10\n\t" "breq 15f\n\t" "rjmp 10b\n"
                     "15:\n\t"
                     "pop r29\n\t" "pop r28\n\t" "clr __zero_reg__"
                     :
                     : ML_K_OPERANDS
                     : ML_K_CLOBBERS);
}

/* Whether a 3x3 filter row takes ml_rows_filter_k: the fast path's requantization, strides 1 and 2, widths and
 * steps in a byte. */
static int ml_rows_k_applies(int kernel, int stride, int out_w, int out_step, const ml_rows_rq *rq)
{
    return kernel == 3 && rq != NULL && (stride == 1 || stride == 2) && out_w >= 1 && out_w <= 255 && out_step >= 1
           && out_step <= 255;
}

/* A layer's constants for ml_rows_filter_k. */
static void ml_rows_k_layer(uint8_t out_w, uint8_t out_step, int8_t zp, int8_t low)
{
    ml_rows_k.width = out_w;
    ml_rows_k.step = out_step;
    ml_rows_k.zp = zp;
    ml_rows_k.low = low;
}

/* One row of one channel's 3x3 filter (taps and rq in flash; first: ML_ROWS_START24(bias, 9)), after
 * ml_rows_k_layer. Inlined where it is used, so that the registers the assembly takes are saved once per
 * layer row, not per channel. */
static inline __attribute__((always_inline)) void ml_rows_filter_k(const int8_t *r0, const int8_t *r1,
                                                                   const int8_t *r2, uint8_t stride,
                                                                   int32_t first, const int8_t *taps,
                                                                   const ml_rows_rq *rq, int8_t *out)
{
    ml_rows_k.taps = taps;
    ml_rows_k.rq = rq;
    memcpy(ml_rows_k.first, &first, 3);
    ml_rows_k.r0 = r0;
    ml_rows_k.r1 = r1;
    ml_rows_k.r2 = r2;
    ml_rows_k.out = out;
    if (stride == 1) ML_K_DW_ROW(1);
    else ML_K_DW_ROW(2);
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
#if defined(__AVR__)
    if (ml_rows_k_applies(kernel, stride, out_w, out_step, rq)) {
        /* the fast path with the taps in registers */
        ml_rows_k_layer((uint8_t)out_w, (uint8_t)out_step, (int8_t)out_zp, (int8_t)low);
        ML_ROWS_FAST_RAN(dw_regs);
        ml_rows_filter_k(in[0], in[1], in[2], (uint8_t)stride, ML_ROWS_START24(bias, 9), taps, rq, out);
        return;
    }
#endif
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
            ML_ROWS_FAST_RAN(dw);
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

#if defined(__AVR__)
/* The pointwise fast paths on the AVR (in_c = 8, 16, ..., 64; rq), a function of their own so that the channel
 * loop has a small frame: every output channel's row in assembly, with the weights in registers where in_c is
 * 8 (ml_rows_pw8_row_k), else from a record in RAM (rec: 3 + in_c + 6 bytes; ml_rows_pw_row_avr). With
 * gap_sums (out NULL) each row goes through row (width bytes) into the pooling sums. */
__attribute__((noinline)) static void ml_rows_pw_k(const int8_t *in, uint8_t width, uint8_t in_c,
                                                   const ml_layer_s8 *layer, uint8_t out_c, int8_t *out,
                                                   int out_stride, int8_t *rec, int8_t *row, int32_t *gap_sums,
                                                   int32_t gap_in_zp)
{
    const int8_t zp = (int8_t)layer->out_zp, low = (int8_t)layer->low;
    const int8_t *weight = layer->weight;
    ml_rows_k.r0 = in;
    ml_rows_k.width = width;
    ml_rows_k.zp = zp;
    ml_rows_k.low = low;
    for (uint8_t co = 0; co < out_c; ++co) {
        const int32_t first = ML_ROWS_START24(ML_FLASH_S32(&layer->bias[co]), in_c);
        int8_t *o = out != NULL ? out + co * out_stride : row;
        if (in_c == 8) {
            ml_rows_k.taps = weight;
            ml_rows_k.rq = &layer->rq[co];
            memcpy(ml_rows_k.first, &first, 3);
            ml_rows_k.out = o;
            ML_ROWS_FAST_RAN(pw_regs);
            ml_rows_pw8_row_k();
        } else {
            ML_FLASH_COPY(&ml_rows_k.q, &layer->rq[co]);
            memcpy(rec, &first, 3);
            ML_ROWS_FLASH_BYTES(rec + 3, weight, in_c);
            memcpy(rec + 3 + in_c, &ml_rows_k.q.lo, 3);
            memcpy(rec + 6 + in_c, &ml_rows_k.q.hi, 3);
            ML_ROWS_FAST_RAN(pw);
            ml_rows_pw_row_avr(in, o, rec, width, (uint8_t)(in_c >> 3), &ml_rows_k.q, zp, low);
        }
        weight += in_c;
        if (out == NULL) {
            int32_t sum = gap_sums[co];
            for (uint8_t x = 0; x < width; ++x) sum += row[x];
            gap_sums[co] = sum - (int32_t)width * gap_in_zp;
        }
    }
}
#endif

void ml_rows_pointwise_s8(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                          int8_t *out, int out_stride, int32_t *gap_sums, int32_t gap_in_zp)
{
    int8_t copy[ML_ROWS_MAX_CHANNELS]; /* one filter's weights, out of flash */
#if defined(__AVR__)
    if (layer->rq != NULL && (in_c & 7) == 0 && in_c >= 8 && in_c <= ML_ROWS_MAX_CHANNELS && width >= 1
        && width <= ML_ROWS_MAX_CHANNELS && out_c >= 1 && out_c <= 255) {
        int8_t rec[3 + ML_ROWS_MAX_CHANNELS + 6]; /* (copy: the row for the pooling sums) */
        ml_rows_pw_k(in, (uint8_t)width, (uint8_t)in_c, layer, (uint8_t)out_c, out, out_stride, rec, copy, gap_sums,
                     gap_in_zp);
        return;
    }
#endif
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
#if defined(__AVR__)
    if (ml_rows_k_applies(k, p->stride, p->out_w, p->channels, p->dw.rq)) {
        /* the fast path with the taps in registers, channel after channel */
        const int8_t *r0 = base[0] != NULL ? base[0] : net->pad_row, *r1 = base[1] != NULL ? base[1] : net->pad_row;
        const int8_t *r2 = base[2] != NULL ? base[2] : net->pad_row;
        const int step0 = base[0] != NULL ? padded : 0, step1 = base[1] != NULL ? padded : 0;
        const int step2 = base[2] != NULL ? padded : 0;
        ml_rows_k_layer(p->out_w, p->channels, (int8_t)p->dw.out_zp, (int8_t)p->dw.low);
        for (int c = 0; c < p->channels; ++c) {
            ML_ROWS_FAST_RAN(dw_regs);
            ml_rows_filter_k(r0, r1, r2, p->stride, ML_ROWS_START24(ML_FLASH_S32(&p->dw.bias[c]), 9),
                             p->dw.weight + 9 * c, &p->dw.rq[c], net->dw_row + c);
            r0 += step0;
            r1 += step1;
            r2 += step2;
        }
    } else
#endif
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
#if defined(__AVR__)
            if (ml_rows_k_applies(k, 1, s.w, 1, s.conv.rq)) {
                /* the fast path with the taps in registers, channel after channel */
                ml_rows_k_layer(s.w, 1, (int8_t)s.conv.out_zp, (int8_t)s.conv.low);
                for (int co = 0; co < s.out_channels; ++co) {
                    ML_ROWS_FAST_RAN(dw_regs);
                    ml_rows_filter_k(in[0], in[1], in[2], 1, ML_ROWS_START24(ML_FLASH_S32(&s.conv.bias[co]), 9),
                                     s.conv.weight + 9 * co, &s.conv.rq[co], out + co * channel_stride);
                }
                push(net, 0);
                continue;
            }
#endif
            for (int co = 0; co < s.out_channels; ++co) {
                ml_rows_filter_s8(in, k, 1, s.w, s.conv.weight + co * k * k, ML_FLASH_S32(&s.conv.bias[co]),
                                  ML_FLASH_S16(&s.conv.multiplier[co]), s.conv.shift, s.conv.out_zp, s.conv.low,
                                  s.conv.rq != NULL ? &s.conv.rq[co] : NULL, out + co * channel_stride, 1);
            }
            push(net, 0); /* row y of the stem flows through the blocks */
        }
    }
}
