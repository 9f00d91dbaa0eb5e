/* ml_rows_s8.c - the int8 network row by row (see ml_rows_s8.h). */
#include "ml_rows_s8.h"

#include <stddef.h>
#include <string.h>

#include "ml_flash.h"
#include "ml_kernels_s8.h"

#define ML_ROWS_MAX_KERNEL 7    /* larger kernels: not supported by the schedule (the generator checks) */
#define ML_ROWS_MAX_CHANNELS 64 /* a pointwise filter's weights copied out of flash (more: read in place); the
                                 * AVR fast path's in_c and width at most */

/* Called each time an AVR assembly row loop runs (kind: dw_regs: a 3x3 channel row; pw: a pointwise channel row
 * of 16, 24, ... input channels; pw_regs: of 8; pw_rest: of any other count, whose last group has 1..7); the AVR
 * unit test (tests/c/test_rows_s8.c) counts them. */
#ifndef ML_ROWS_FAST_RAN
#define ML_ROWS_FAST_RAN(kind) ((void)0)
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

#if defined(__AVR__)
/* The parameters of the assembly row loops below, in RAM at a fixed address: read with LDS, so that no
 * pointer register holds them and the filter's taps (or the pointwise weights) can stay in registers. */
static struct {
    const int8_t *in; /* 3x3: slot 0 of the window's first column (ml_rows_s8.h's ring layout); pointwise: the input */
    int8_t *out;
    uint8_t width, step; /* outputs, and out's step between two */
    int8_t zp, low;
    uint8_t start2;         /* byte 2 of the sum's start (bias - 2^15 per pair of products): the loops put it here */
    uint8_t hi[3];          /* the channel's hi (ml_rows_rq): its low three bytes, copied by the loops */
    const int8_t *taps;     /* in flash: the channel's 3x3 taps, or the next 8 pointwise weights */
    uint8_t slot0;          /* 3x3: the ring slot of the window's first row (row ky in slot (slot0 + ky) % 3) */
    const ml_rows_rq *rq;   /* in flash: the channel's requantization */
    /* (the loops move taps, rq and bias on to the next channel's, and for 3x3 in and out) */
    const int32_t *bias;    /* in flash: the channel's folded bias */
    int8_t *part;           /* pointwise: the partial sums, three bytes a pixel */
    uint8_t skip;           /* pointwise: in_c - 8, the input bytes after a pixel's eight */
    uint8_t quarter_n;      /* pointwise: in_c / 4 (the sum's start, bias - in_c / 2 * 2^15: byte 2 less in_c / 4) */
    uint8_t skip_rest;      /* pointwise, in_c not a multiple of 8: the input bytes after a pixel's last 1..7 */
    uint16_t offset;        /* pointwise, in_c not a multiple of 8: 2^15 per pair or lone product, over 2^8 (the
                             * sum's start is bias - offset * 2^8; an odd count changes byte 1 too) */
    uint16_t in_next, out_next; /* 3x3: from one channel's window (and output) to the next one's */
} ml_rows_k;

/* How the loops read flash: LPM; the AVR unit test (data in RAM) makes it LD. */
#ifndef ML_ROWS_LPM
#define ML_ROWS_LPM "lpm"
#endif

#define ML_K_OPERANDS                                                                                            \
    [in] "i"(&ml_rows_k.in), [out] "i"(&ml_rows_k.out), [width] "i"(&ml_rows_k.width),                          \
        [step] "i"(&ml_rows_k.step), [zp] "i"(&ml_rows_k.zp), [low] "i"(&ml_rows_k.low),                         \
        [start2] "i"(&ml_rows_k.start2), [hi] "i"(ml_rows_k.hi), [taps] "i"(&ml_rows_k.taps),                    \
        [slot0] "i"(&ml_rows_k.slot0), [rq] "i"(&ml_rows_k.rq),                                                  \
        [part] "i"(&ml_rows_k.part), [skip] "i"(&ml_rows_k.skip), [bias] "i"(&ml_rows_k.bias),                   \
        [quarter_n] "i"(&ml_rows_k.quarter_n), [in_next] "i"(&ml_rows_k.in_next),                                \
        [out_next] "i"(&ml_rows_k.out_next), [skip_rest] "i"(&ml_rows_k.skip_rest), [offset] "i"(&ml_rows_k.offset)

/* Registers of both loops: r2-r4 the sum, r5 0x80, r6 zero, r7-r9 the scale, r10 the outputs left, r14-r15
 * requantization bytes; MULS takes only r16-r31, and X, Y, Z are the pointers, so the taps (or weights) are
 * r16-r24 and the input byte r25, which then holds the output value. Multiply-adds go in pairs: two MULS
 * products added in r15:r14 (weights in [-127, 127], c_int8.requant_table checks it: |q * w| <= 128 * 127, so
 * the pair's sum fits 16 signed bits), its sign bit flipped (EOR with 0x80: + 2^15) and a three-byte unsigned
 * add: 7.5 cycles a multiply-add with the loads; a lone one (ML_K_MAC) the same way, 8 cycles. The sum starts
 * from bias - 2^15 per pair or lone product. */
#define ML_K_MAC(reg) "muls r25, " reg "\n\t" "eor r1, r5\n\t" "add r2, r0\n\t" "adc r3, r1\n\t" "adc r4, r6\n\t"
#define ML_K_PAIR(load_a, tap_a, load_b, tap_b)                                                                  \
    load_a "\n\t" "muls r25, " tap_a "\n\t" "movw r14, r0\n\t" load_b "\n\t" "muls r25, " tap_b "\n\t"           \
    "add r14, r0\n\t" "adc r15, r1\n\t" "eor r15, r5\n\t" "add r2, r14\n\t" "adc r3, r15\n\t" "adc r4, r6\n\t"
/* The requantization of the sum (r2-r4) into r25, labels a, b, c local to it: below lo (lo_cmp: the sum
 * compared with lo): low; at or above hi (hi_cmp): 127; else multiply: byte 3 of sum * scale + 2^23 + zp * 2^24
 * (r15:r14 its bytes 2 and 1; r25 starts from zp).
 * Two forms of each comparison and product: where a channel has 0 <= lo <= hi < 2^16 ("short"), the sums that
 * reach the product (lo <= sum < hi) have a top byte of 0, so it compares hi on two bytes and drops the
 * products of the top byte (six MULs); the others ("long") take all three (eight MULs, the top byte signed). */
#define ML_K_REQUANT(lo_cmp, hi_cmp, multiply, a, b, c)                                                          \
    lo_cmp "brge " a "f\n\t" "lds r25, %[low]\n\t" "rjmp " c "f\n" a ":\n\t" hi_cmp "brlt " b "f\n\t"          \
    "ldi r25, 127\n\t" "rjmp " c "f\n" b ":\n\t" multiply c ":\n\t"
#define ML_K_LO(lo0, lo1, lo2) "cp r2, " lo0 "\n\t" "cpc r3, " lo1 "\n\t" "cpc r4, " lo2 "\n\t"
#define ML_K_HI_LONG                                                                                             \
    "lds r0, %[hi]\n\t" "cp r2, r0\n\t" "lds r0, %[hi]+1\n\t" "cpc r3, r0\n\t" "lds r0, %[hi]+2\n\t"            \
    "cpc r4, r0\n\t"
#define ML_K_HI_SHORT(hi0) "cp r2, " hi0 "\n\t" "lds r0, %[hi]+1\n\t" "cpc r3, r0\n\t" "cpc r4, r6\n\t"
#define ML_K_MULTIPLY_SHORT                                                                                      \
    "mul r2, r7\n\t" "mov r14, r1\n\t" "mov r15, r5\n\t" "lds r25, %[zp]\n\t"                                    \
    "mul r2, r8\n\t" "add r14, r0\n\t" "adc r15, r1\n\t" "adc r25, r6\n\t"                                       \
    "mul r3, r7\n\t" "add r14, r0\n\t" "adc r15, r1\n\t" "adc r25, r6\n\t"                                       \
    "mul r2, r9\n\t" "add r15, r0\n\t" "adc r25, r1\n\t"                                                         \
    "mul r3, r8\n\t" "add r15, r0\n\t" "adc r25, r1\n\t"                                                         \
    "mul r3, r9\n\t" "add r25, r0\n\t"
#define ML_K_MULTIPLY_LONG                                                                                       \
    "mul r2, r7\n\t" "mov r14, r1\n\t" "mov r15, r5\n\t" "lds r25, %[zp]\n\t"                                    \
    "mul r2, r8\n\t" "add r14, r0\n\t" "adc r15, r1\n\t" "adc r25, r6\n\t"                                       \
    "mul r3, r7\n\t" "add r14, r0\n\t" "adc r15, r1\n\t" "adc r25, r6\n\t"                                       \
    "mul r2, r9\n\t" "add r15, r0\n\t" "adc r25, r1\n\t"                                                         \
    "mul r3, r8\n\t" "add r15, r0\n\t" "adc r25, r1\n\t"                                                         \
    "mul r4, r7\n\t" "add r15, r0\n\t" "adc r25, r1\n\t" "sbrc r4, 7\n\t" "sub r25, r7\n\t"                      \
    "mul r3, r9\n\t" "add r25, r0\n\t"                                                                           \
    "mul r4, r8\n\t" "add r25, r0\n\t"
#define ML_K_LPM(reg) ML_ROWS_LPM " " reg ", Z+\n\t"
/* Z = the flash pointer at RAM address p */
#define ML_K_Z(p) "lds r30, %[" p "]\n\t" "lds r31, %[" p "]+1\n\t"
/* The channel's scale into r7-r9, lo's low three bytes into lo0 and r14, r15 (moved to lo's registers after),
 * hi's into ml_rows_k.hi (ml_rows_rq: scale, lo, hi, four bytes each), and in r6 the OR of the top two
 * bytes of lo and hi: 0 for a short channel (ML_K_REQUANT); rq on to the next channel's; then the row's count
 * and 0x80 */
#define ML_K_RQ(lo0)                                                                                             \
    ML_K_Z("rq") ML_K_LPM("r7") ML_K_LPM("r8") ML_K_LPM("r9") "adiw r30, 1\n\t" ML_K_LPM(lo0) ML_K_LPM("r14")    \
    ML_K_LPM("r15") ML_K_LPM("r6") "or r6, r15\n\t" ML_K_LPM("r0") "sts %[hi], r0\n\t" ML_K_LPM("r0")           \
    "sts %[hi]+1, r0\n\t" ML_K_LPM("r0") "sts %[hi]+2, r0\n\t" "or r6, r0\n\t" ML_K_LPM("r0") "or r6, r0\n\t"   \
    "sts %[rq], r30\n\t" "sts %[rq]+1, r31\n\t" "lds r10, %[width]\n\t" "ldi r25, 0x80\n\t" "mov r5, r25\n\t"
/* to the long form's code at 1f where r6 is not 0 (a jump: the short form's loop is in between) */
#define ML_K_SHORT_OR_LONG "tst r6\n\t" "breq 2f\n\t" "rjmp 1f\n" "2:\n\t" "clr r6\n\t"
#define ML_K_CLOBBERS                                                                                            \
    "r0", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "r16", "r17", \
        "r18", "r19", "r20", "r21", "r22", "r23", "r24", "r25", "r26", "r27", "r30", "r31", "memory"

/* One row of a 3x3 filter of stride S (1 or 2) from ml_rows_k, then its pointers on to the next channel's. The
 * window's nine values are at Y + 3 * kx + s (column kx, ring slot s: the interleaved ring of ml_rows_s8.h), so
 * one pointer reads them all (LDD) and moves by 3 * S per output; the tap of slot s, column kx is in r16 + 3 * s
 * + kx (ML_K_TAPS). Out in X, lo in r11, r30 and r31 (short: r6, with hi's low byte in r31; Z is
 * free in the loop), the sum's first two bytes in r12, r13; 7.6 cycles a multiply-add. Y is saved and
 * restored. */
#define ML_K_DW_LOOP(S, requant, loop, end)                                                                      \
    loop ":\n\t" "movw r2, r12\n\t" "lds r4, %[start2]\n\t"                                                     \
    ML_K_PAIR("ldd r25, Y+0", "r16", "ldd r25, Y+3", "r17") ML_K_PAIR("ldd r25, Y+6", "r18", "ldd r25, Y+1", "r19") \
    ML_K_PAIR("ldd r25, Y+4", "r20", "ldd r25, Y+7", "r21") ML_K_PAIR("ldd r25, Y+2", "r22", "ldd r25, Y+5", "r23") \
    "ldd r25, Y+8\n\t" ML_K_MAC("r24")                                                                           \
    "adiw r28, 3 * " #S "\n\t" requant                                                                           \
    "st X, r25\n\t" "lds r0, %[step]\n\t" "add r26, r0\n\t" "adc r27, r6\n\t"                                    \
    "dec r10\n\t" "breq " end "f\n\t" "rjmp " loop "b\n" end ":\n\t"
/* The nine taps, window row ky into the registers of slot (slot0 + ky) % 3 (r16 + 3 * slot), and taps on to
 * the next channel's */
#define ML_K_ROW(t0, t1, t2) ML_K_LPM(t0) ML_K_LPM(t1) ML_K_LPM(t2)
#define ML_K_TAPS                                                                                                \
    ML_K_Z("taps") "lds r0, %[slot0]\n\t" "tst r0\n\t" "breq 3f\n\t" "dec r0\n\t" "breq 4f\n\t"              \
    ML_K_ROW("r22", "r23", "r24") ML_K_ROW("r16", "r17", "r18") ML_K_ROW("r19", "r20", "r21") "rjmp 5f\n"        \
    "3:\n\t" ML_K_ROW("r16", "r17", "r18") ML_K_ROW("r19", "r20", "r21") ML_K_ROW("r22", "r23", "r24")            \
    "rjmp 5f\n"                                                                                                  \
    "4:\n\t" ML_K_ROW("r19", "r20", "r21") ML_K_ROW("r22", "r23", "r24") ML_K_ROW("r16", "r17", "r18")            \
    "5:\n\t" "sts %[taps], r30\n\t" "sts %[taps]+1, r31\n\t"
/* p += its step (16 bits, in RAM), through the register pair lo:hi */
#define ML_K_NEXT(p, next, lo, hi)                                                                               \
    "lds " lo ", %[" p "]\n\t" "lds " hi ", %[" p "]+1\n\t" "lds r0, %[" next "]\n\t" "add " lo ", r0\n\t"        \
    "lds r0, %[" next "]+1\n\t" "adc " hi ", r0\n\t" "sts %[" p "], " lo "\n\t" "sts %[" p "]+1, " hi "\n\t"
#define ML_K_DW_ROW(S)                                                                                           \
    __asm__ volatile("push r28\n\t" "push r29\n\t"                                                              \
                     ML_K_TAPS                                                                                   \
                     /* the sum's start, bias - 5 * 2^15: bytes 0, 1 into r12, r13, byte 2 into start2 */       \
                     ML_K_Z("bias") ML_K_LPM("r12") ML_K_LPM("r13") ML_K_LPM("r25") "adiw r30, 1\n\t"             \
                     "sts %[bias], r30\n\t" "sts %[bias]+1, r31\n\t" "ldi r26, 0x80\n\t" "sub r13, r26\n\t"      \
                     "sbci r25, 0x02\n\t" "sts %[start2], r25\n\t"                                              \
                     ML_K_RQ("r11")                                                                              \
                     "lds r28, %[in]\n\t" "lds r29, %[in]+1\n\t" "lds r26, %[out]\n\t" "lds r27, %[out]+1\n\t"   \
                     ML_K_SHORT_OR_LONG "mov r30, r14\n\t" "lds r31, %[hi]\n\t"                                  \
                     ML_K_DW_LOOP(S, ML_K_REQUANT(ML_K_LO("r11", "r30", "r6"), ML_K_HI_SHORT("r31"),            \
                                                  ML_K_MULTIPLY_SHORT, "22", "23", "24"), "20", "25")            \
                     "rjmp 9f\n"                                                                                 \
                     "1:\n\t" "clr r6\n\t" "movw r30, r14\n\t"                                                   \
                     ML_K_DW_LOOP(S, ML_K_REQUANT(ML_K_LO("r11", "r30", "r31"), ML_K_HI_LONG,                   \
                                                  ML_K_MULTIPLY_LONG, "12", "13", "14"), "10", "15")             \
                     "9:\n\t" ML_K_NEXT("in", "in_next", "r28", "r29") ML_K_NEXT("out", "out_next", "r26", "r27") \
                     "pop r29\n\t" "pop r28\n\t" "clr __zero_reg__"                                              \
                     :                                                                                           \
                     : ML_K_OPERANDS                                                                             \
                     : ML_K_CLOBBERS)

/* A 1x1 convolution's row from ml_rows_k, eight input channels (taps: their weights, into r16-r23) of the
 * pixel-major input (X from in, moving by skip after each pixel's eight); 7.5 cycles a multiply-add. The sum
 * starts from init: the channel's start (ML_K_FIRST_Y: its first two bytes in Y) or the partial sums (three
 * bytes a pixel at part). ML_K_PW_PART stores the sums to part (Z) for the next eight channels; ML_K_PW_LAST requantizes
 * them into out (Z, moving by step, in r11; lo in r12, r13, r24; short: r6, with hi's low byte in r24). Y is
 * saved and restored. ML_K_PW_LAST_N is ML_K_PW_LAST for another group: its weights' loads and its
 * multiply-adds (the 1..7 channels left over: ML_K_PW_REST). */
#define ML_K_PW_SETUP_N(loads)                                                                                   \
    "push r28\n\t" "push r29\n\t" ML_K_Z("taps") loads "sts %[taps], r30\n\t" "sts %[taps]+1, r31\n\t"
#define ML_K_PW_LOADS                                                                                            \
    ML_K_LPM("r16") ML_K_LPM("r17") ML_K_LPM("r18") ML_K_LPM("r19") ML_K_LPM("r20") ML_K_LPM("r21")             \
    ML_K_LPM("r22") ML_K_LPM("r23")
#define ML_K_PW_SETUP ML_K_PW_SETUP_N(ML_K_PW_LOADS)
#define ML_K_PW_MACS                                                                                             \
    ML_K_PAIR("ld r25, X+", "r16", "ld r25, X+", "r17") ML_K_PAIR("ld r25, X+", "r18", "ld r25, X+", "r19")       \
    ML_K_PAIR("ld r25, X+", "r20", "ld r25, X+", "r21") ML_K_PAIR("ld r25, X+", "r22", "ld r25, X+", "r23")
#define ML_K_PW_END "pop r29\n\t" "pop r28\n\t" "clr __zero_reg__"
#define ML_K_PW_NEXT(loop, end) "dec r10\n\t" "breq " end "f\n\t" "rjmp " loop "b\n" end ":\n\t"
/* the sum's start: from the channel's bias (bias - in_c / 2 * 2^15: bytes 0, 1 into Y, byte 2 into b2 and
 * start2; bias on to the next channel's) or from the partial sums (at Z or Y) */
#define ML_K_FIRST_Y(b2)                                                                                         \
    ML_K_Z("bias") ML_K_LPM("r28") ML_K_LPM("r29") ML_K_LPM(b2) "adiw r30, 1\n\t" "sts %[bias], r30\n\t"        \
    "sts %[bias]+1, r31\n\t" "lds r0, %[quarter_n]\n\t" "sub " b2 ", r0\n\t" "sts %[start2], " b2 "\n\t"
/* the same where in_c is not a multiple of 8: the pairs and lone products may be odd in number, so the start,
 * bias - offset * 2^8, changes bytes 1 and 2 (after ADIW, which sets the carry) */
#define ML_K_FIRST_Y_ODD(b2)                                                                                     \
    ML_K_Z("bias") ML_K_LPM("r28") ML_K_LPM("r29") ML_K_LPM(b2) "adiw r30, 1\n\t" "sts %[bias], r30\n\t"        \
    "sts %[bias]+1, r31\n\t" "lds r0, %[offset]\n\t" "sub r29, r0\n\t" "lds r0, %[offset]+1\n\t"               \
    "sbc " b2 ", r0\n\t" "sts %[start2], " b2 "\n\t"
#define ML_K_PART_Y "lds r28, %[part]\n\t" "lds r29, %[part]+1\n\t"
#define ML_K_PW_PART(start, init)                                                                                \
    __asm__ volatile(ML_K_PW_SETUP                                                                               \
                     "lds r10, %[width]\n\t" "ldi r25, 0x80\n\t" "mov r5, r25\n\t" "clr r6\n\t"                  \
                     start "lds r11, %[skip]\n\t" "lds r26, %[in]\n\t" "lds r27, %[in]+1\n\t"                    \
                     "lds r30, %[part]\n\t" "lds r31, %[part]+1\n"                                             \
                     "10:\n\t" init ML_K_PW_MACS "add r26, r11\n\t" "adc r27, r6\n\t"                             \
                     "st Z+, r2\n\t" "st Z+, r3\n\t" "st Z+, r4\n\t" ML_K_PW_NEXT("10", "15") ML_K_PW_END        \
                     :                                                                                           \
                     : ML_K_OPERANDS                                                                             \
                     : ML_K_CLOBBERS)
#define ML_K_PW_LOOP(macs, init, skip, requant, loop, end)                                                       \
    loop ":\n\t" init macs skip requant "st Z, r25\n\t" "add r30, r11\n\t" "adc r31, r6\n\t"                     \
    ML_K_PW_NEXT(loop, end)
#define ML_K_PW_LAST_N(loads, macs, start, init, skip)                                                           \
    __asm__ volatile(ML_K_PW_SETUP_N(loads) ML_K_RQ("r12") start                                                 \
                     "mov r13, r14\n\t" "lds r11, %[step]\n\t"                                                   \
                     "lds r26, %[in]\n\t" "lds r27, %[in]+1\n\t" "lds r30, %[out]\n\t" "lds r31, %[out]+1\n\t"   \
                     ML_K_SHORT_OR_LONG "lds r24, %[hi]\n\t"                                                     \
                     ML_K_PW_LOOP(macs, init, skip, ML_K_REQUANT(ML_K_LO("r12", "r13", "r6"),                   \
                                  ML_K_HI_SHORT("r24"), ML_K_MULTIPLY_SHORT, "22", "23", "24"), "20", "25")       \
                     "rjmp 9f\n"                                                                                 \
                     "1:\n\t" "clr r6\n\t" "mov r24, r15\n\t"                                                    \
                     ML_K_PW_LOOP(macs, init, skip, ML_K_REQUANT(ML_K_LO("r12", "r13", "r24"), ML_K_HI_LONG,    \
                                                                 ML_K_MULTIPLY_LONG, "12", "13", "14"), "10", "15") \
                     "9:\n\t" ML_K_PW_END                                                                        \
                     :                                                                                           \
                     : ML_K_OPERANDS                                                                             \
                     : ML_K_CLOBBERS)
#define ML_K_PW_LAST(start, init, skip) ML_K_PW_LAST_N(ML_K_PW_LOADS, ML_K_PW_MACS, start, init, skip)

/* The 1..7 input channels left over where in_c is not a multiple of 8 (the last ones of each pixel): their
 * weights into r16 on (ML_K_PW_W<n>), and their multiply-adds in pairs with a lone one last where n is odd
 * (ML_K_PW_MACS<n>; a code of its own for each n: a loop over them would cost more than the products). */
#define ML_K_PW_W1 ML_K_LPM("r16")
#define ML_K_PW_W2 ML_K_PW_W1 ML_K_LPM("r17")
#define ML_K_PW_W3 ML_K_PW_W2 ML_K_LPM("r18")
#define ML_K_PW_W4 ML_K_PW_W3 ML_K_LPM("r19")
#define ML_K_PW_W5 ML_K_PW_W4 ML_K_LPM("r20")
#define ML_K_PW_W6 ML_K_PW_W5 ML_K_LPM("r21")
#define ML_K_PW_W7 ML_K_PW_W6 ML_K_LPM("r22")
#define ML_K_PW_MACS1 "ld r25, X+\n\t" ML_K_MAC("r16")
#define ML_K_PW_MACS2 ML_K_PAIR("ld r25, X+", "r16", "ld r25, X+", "r17")
#define ML_K_PW_MACS3 ML_K_PW_MACS2 "ld r25, X+\n\t" ML_K_MAC("r18")
#define ML_K_PW_MACS4 ML_K_PW_MACS2 ML_K_PAIR("ld r25, X+", "r18", "ld r25, X+", "r19")
#define ML_K_PW_MACS5 ML_K_PW_MACS4 "ld r25, X+\n\t" ML_K_MAC("r20")
#define ML_K_PW_MACS6 ML_K_PW_MACS4 ML_K_PAIR("ld r25, X+", "r20", "ld r25, X+", "r21")
#define ML_K_PW_MACS7 ML_K_PW_MACS6 "ld r25, X+\n\t" ML_K_MAC("r22")
/* Those n channels, requantizing: alone (in_c = n: the sum starts from the bias, no input to skip) or after
 * the groups of eight (from their partial sums at part; X moves on by skip_rest, in_c - n, after each pixel) */
#define ML_K_PW_REST(n, alone)                                                                                   \
    do {                                                                                                         \
        if (alone) {                                                                                             \
            ML_K_PW_LAST_N(ML_K_PW_W##n, ML_K_PW_MACS##n, ML_K_FIRST_Y_ODD("r25"),                               \
                           "movw r2, r28\n\t" "lds r4, %[start2]\n\t", "");                                      \
        } else {                                                                                                 \
            ML_K_PW_LAST_N(ML_K_PW_W##n, ML_K_PW_MACS##n, ML_K_PART_Y,                                           \
                           "ld r2, Y+\n\t" "ld r3, Y+\n\t" "ld r4, Y+\n\t",                                       \
                           "lds r0, %[skip_rest]\n\t" "add r26, r0\n\t" "adc r27, r6\n\t");                      \
        }                                                                                                        \
    } while (0)

/* Whether a layer row of 3x3 filters takes ml_rows_channels_k: the fast path's requantization, strides 1 and 2,
 * widths and steps in a byte. */
static int ml_rows_k_applies(int kernel, int stride, int out_w, int out_step, const ml_rows_rq *rq)
{
    return kernel == 3 && rq != NULL && (stride == 1 || stride == 2) && out_w >= 1 && out_w <= 255 && out_step >= 1
           && out_step <= 255;
}

/* A layer's constants for ml_rows_channels_k (and the pointwise loops). */
static void ml_rows_k_layer(uint8_t out_w, uint8_t out_step, int8_t zp, int8_t low)
{
    ml_rows_k.width = out_w;
    ml_rows_k.step = out_step;
    ml_rows_k.zp = zp;
    ml_rows_k.low = low;
}

/* A layer row of 3x3 filters (taps, folded biases and rq in flash), channel after channel, after
 * ml_rows_k_layer: channel c reads the interleaved window at in + c * in_next (in: slot 0 of its first column;
 * the window's row ky in slot (slot0 + ky) % 3) and writes from out + c * out_next. A function of its own, so
 * that the registers the assembly takes are saved once per layer row. */
__attribute__((noinline)) static void ml_rows_channels_k(const int8_t *in, uint8_t slot0, uint16_t in_next,
                                                         uint8_t stride, uint8_t channels, const int32_t *bias,
                                                         const int8_t *taps, const ml_rows_rq *rq, int8_t *out,
                                                         uint16_t out_next)
{
    ml_rows_k.taps = taps;
    ml_rows_k.slot0 = slot0;
    ml_rows_k.bias = bias;
    ml_rows_k.rq = rq;
    ml_rows_k.in = in;
    ml_rows_k.in_next = in_next;
    ml_rows_k.out = out;
    ml_rows_k.out_next = out_next;
    for (uint8_t c = channels; c != 0; --c) {
        ML_ROWS_FAST_RAN(dw_regs);
        if (stride == 1) ML_K_DW_ROW(1);
        else ML_K_DW_ROW(2);
    }
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

void ml_rows_filter_s8(const int8_t *const *in, int kernel, int stride, int in_step, int out_w,
                       const int8_t *taps, int32_t bias, int16_t multiplier, int shift, int32_t out_zp, int32_t low,
                       const ml_rows_rq *rq, int8_t *out, int out_step)
{
    const int step = stride * in_step; /* between two outputs' windows */
    if (kernel == 3) {
        /* the nine taps in locals; each product q * w fits in 16 bits (int on the AVR: one MULS); with rq the
         * fast path's three-byte sums and shift-free requantization */
        int8_t t[9];
        ml_rows_rq q = {0, 0, 0};
        const int8_t *r0 = in[0], *r1 = in[1], *r2 = in[2];
        const int8_t zp = (int8_t)out_zp, lo = (int8_t)low;
        const int a = in_step, b = 2 * in_step;
        for (int i = 0; i < 9; ++i) t[i] = ML_FLASH_S8(&taps[i]);
        if (rq != NULL) ML_FLASH_COPY(&q, rq);
        for (int x = 0; x < out_w; ++x) {
            const int32_t sum = (int32_t)(r0[0] * t[0]) + r0[a] * t[1] + r0[b] * t[2] + (int32_t)(r1[0] * t[3])
                                + r1[a] * t[4] + r1[b] * t[5] + (int32_t)(r2[0] * t[6]) + r2[a] * t[7] + r2[b] * t[8];
            *out = rq != NULL ? ml_rows_requantize_rq_s8(bias + sum, &q, zp, lo)
                              : ml_rows_requantize_s8(bias + sum, multiplier, shift, out_zp, low);
            out += out_step;
            r0 += step;
            r1 += step;
            r2 += step;
        }
        return;
    }
    for (int x = 0; x < out_w; ++x) {
        int32_t acc = bias;
        for (int ky = 0; ky < kernel; ++ky) {
            const int8_t *row = in[ky] + x * step;
            for (int kx = 0; kx < kernel; ++kx) acc += row[kx * in_step] * ML_FLASH_S8(&taps[ky * kernel + kx]);
        }
        out[x * out_step] = ml_rows_requantize_s8(acc, multiplier, shift, out_zp, low);
    }
}

#if defined(__AVR__)
/* What both pointwise loops below set before their first output channel: the layer's requantization, the input
 * bytes to skip after a pixel's last group of eight, the partial sums and the weights, biases and thresholds
 * (which the loops move on). Inlined: the loops' code stays as one function each. */
__attribute__((always_inline)) static inline void ml_rows_pw_k_start(uint8_t width, uint8_t in_c,
                                                                     const ml_layer_s8 *layer, int8_t *out,
                                                                     uint8_t out_step, int8_t *part)
{
    ml_rows_k_layer(width, out != NULL ? out_step : 1, (int8_t)layer->out_zp, (int8_t)layer->low);
    ml_rows_k.skip = (uint8_t)(in_c - 8);
    ml_rows_k.part = part;
    ml_rows_k.taps = layer->weight;
    ml_rows_k.bias = layer->bias;
    ml_rows_k.rq = layer->rq;
}

/* After an output channel's row: its values into the pooling sum (out NULL: the row went to row), else the
 * next channel's output. */
__attribute__((always_inline)) static inline int8_t *ml_rows_pw_k_done(int8_t *out, uint16_t out_stride,
                                                                       const int8_t *row, uint8_t width,
                                                                       int32_t *gap_sum, int32_t gap_zero)
{
    if (out == NULL) {
        int32_t sum = *gap_sum;
        for (uint8_t x = 0; x < width; ++x) sum += row[x];
        *gap_sum = sum - gap_zero;
        return NULL;
    }
    return out + out_stride;
}

/* The pointwise fast path on the AVR (in_c = 8, 16, ..., 64): each output channel's row in assembly, eight
 * input channels at a time with their weights in registers (ML_K_PW_PART, ML_K_PW_LAST), the sums in between
 * in part (three bytes a pixel); into out + co * out_stride, or with gap_sums (out NULL) through row (width
 * bytes) into the pooling sums. A function of its own, so that the registers the assembly takes are saved
 * once per layer row and the loop's variables stay in a small stack frame. */
__attribute__((noinline)) static void ml_rows_pw_k(const int8_t *in, uint8_t width, uint8_t in_c,
                                                   const ml_layer_s8 *layer, uint8_t out_c, int8_t *out,
                                                   uint16_t out_stride, uint8_t out_step, int8_t *part, int8_t *row,
                                                   int32_t *gap_sums, int32_t gap_in_zp)
{
    const int32_t gap_zero = (int32_t)width * gap_in_zp;
    ml_rows_pw_k_start(width, in_c, layer, out, out_step, part);
    ml_rows_k.quarter_n = (uint8_t)(in_c >> 2);
    for (uint8_t co = 0; co < out_c; ++co) {
        ml_rows_k.out = out != NULL ? out : row;
        ml_rows_k.in = in;
        if (in_c == 8) {
            ML_ROWS_FAST_RAN(pw_regs);
            ML_K_PW_LAST(ML_K_FIRST_Y("r25"), "movw r2, r28\n\t" "lds r4, %[start2]\n\t", "");
        } else {
            ML_ROWS_FAST_RAN(pw);
            ML_K_PW_PART(ML_K_FIRST_Y("r12"), "movw r2, r28\n\t" "mov r4, r12\n\t");
            for (uint8_t g = 8; g < in_c; g += 8) {
                ml_rows_k.in = in + g;
                if (g + 8 < in_c) ML_K_PW_PART("", "ld r2, Z\n\t" "ldd r3, Z+1\n\t" "ldd r4, Z+2\n\t");
                else ML_K_PW_LAST(ML_K_PART_Y, "ld r2, Y+\n\t" "ld r3, Y+\n\t" "ld r4, Y+\n\t",
                                  "lds r0, %[skip]\n\t" "add r26, r0\n\t" "adc r27, r6\n\t");
            }
        }
        out = ml_rows_pw_k_done(out, out_stride, row, width, &gap_sums[co], gap_zero);
    }
}

/* ml_rows_pw_k for the other channel counts (1..63, not a multiple of 8: e.g. the family's narrower members):
 * each output channel's row from its groups of eight as there (ML_K_PW_PART), then the 1..7 channels left over
 * (ML_K_PW_REST), which requantize. Its own function (the same frame around the loop), so that ml_rows_pw_k's
 * code, the default network's, stays as it was. */
__attribute__((noinline)) static void ml_rows_pw_rest_k(const int8_t *in, uint8_t width, uint8_t in_c,
                                                        const ml_layer_s8 *layer, uint8_t out_c, int8_t *out,
                                                        uint16_t out_stride, uint8_t out_step, int8_t *part,
                                                        int8_t *row, int32_t *gap_sums, int32_t gap_in_zp)
{
    const int32_t gap_zero = (int32_t)width * gap_in_zp;
    const uint8_t full = in_c & 0xF8, rest = in_c & 7; /* in groups of eight; left over */
    ml_rows_pw_k_start(width, in_c, layer, out, out_step, part);
    ml_rows_k.skip_rest = full;
    ml_rows_k.offset = (uint16_t)((full / 2 + (rest + 1) / 2) << 7); /* pairs and lone products, times 2^15 / 2^8 */
    for (uint8_t co = 0; co < out_c; ++co) {
        ml_rows_k.out = out != NULL ? out : row;
        ml_rows_k.in = in;
        ML_ROWS_FAST_RAN(pw_rest);
        if (full != 0) { /* the groups of eight into part; the rest then starts from there, else from the bias */
            ML_K_PW_PART(ML_K_FIRST_Y_ODD("r12"), "movw r2, r28\n\t" "mov r4, r12\n\t");
            for (uint8_t g = 8; g < full; g += 8) {
                ml_rows_k.in = in + g;
                ML_K_PW_PART("", "ld r2, Z\n\t" "ldd r3, Z+1\n\t" "ldd r4, Z+2\n\t");
            }
            ml_rows_k.in = in + full;
        }
        switch (rest) {
        case 1: ML_K_PW_REST(1, full == 0); break;
        case 2: ML_K_PW_REST(2, full == 0); break;
        case 3: ML_K_PW_REST(3, full == 0); break;
        case 4: ML_K_PW_REST(4, full == 0); break;
        case 5: ML_K_PW_REST(5, full == 0); break;
        case 6: ML_K_PW_REST(6, full == 0); break;
        default: ML_K_PW_REST(7, full == 0); break;
        }
        out = ml_rows_pw_k_done(out, out_stride, row, width, &gap_sums[co], gap_zero);
    }
}
#endif

/* ml_rows_pointwise_s8 in plain C (on the AVR a function of its own: the registers it takes are not saved on
 * the fast path's way) */
#if defined(__AVR__)
__attribute__((noinline))
#endif
static void ml_rows_pointwise_c(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                                int8_t *out, int out_stride, int out_step, int32_t *gap_sums, int32_t gap_in_zp)
{
    int8_t copy[ML_ROWS_MAX_CHANNELS]; /* one filter's weights, out of flash */
    for (int co = 0; co < out_c; ++co) {
        const int8_t *w = layer->weight + co * in_c;
        const int32_t bias = ML_FLASH_S32(&layer->bias[co]);
        const int16_t multiplier = ML_FLASH_S16(&layer->multiplier[co]);
        ml_rows_rq q = {0, 0, 0}; /* with rq: the fast path's requantization (the same values) */
        if (layer->rq != NULL) ML_FLASH_COPY(&q, &layer->rq[co]);
        if (in_c >= 1 && in_c <= ML_ROWS_MAX_CHANNELS) {
            for (int ci = 0; ci < in_c; ++ci) copy[ci] = ML_FLASH_S8(&w[ci]);
            w = copy;
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
                const int8_t value = layer->rq != NULL
                                         ? ml_rows_requantize_rq_s8(acc, &q, layer->out_zp, layer->low)
                                         : ml_rows_requantize_s8(acc, multiplier, layer->shift, layer->out_zp,
                                                                 layer->low);
                if (out != NULL) {
                    out[co * out_stride + x * out_step] = value;
                } else {
                    gap_sums[co] += (int32_t)value - gap_in_zp;
                }
            }
        }
    }
}

#if defined(__AVR__)
/* Whether the AVR assembly can take this pointwise row (rq thresholds; counts within its byte-sized loops). */
static int ml_rows_pw_fits_k(int width, int in_c, const ml_layer_s8 *layer, int out_c, int out_step)
{
    return layer->rq != NULL && in_c >= 1 && in_c <= ML_ROWS_MAX_CHANNELS && width >= 1
           && width <= ML_ROWS_MAX_CHANNELS && out_c >= 1 && out_c <= 255 && out_step >= 1 && out_step <= 255;
}
#endif

void ml_rows_pointwise_s8(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                          int8_t *out, int out_stride, int out_step, int32_t *gap_sums, int32_t gap_in_zp)
{
#if defined(__AVR__)
    if (ml_rows_pw_fits_k(width, in_c, layer, out_c, out_step)) {
        int8_t part[3 * ML_ROWS_MAX_CHANNELS], row[ML_ROWS_MAX_CHANNELS]; /* the partial sums; a row for the
                                                                            * pooling sums */
        if ((in_c & 7) == 0) {
            ml_rows_pw_k(in, (uint8_t)width, (uint8_t)in_c, layer, (uint8_t)out_c, out, (uint16_t)out_stride,
                         (uint8_t)out_step, part, row, gap_sums, gap_in_zp);
        } else {
            ml_rows_pw_rest_k(in, (uint8_t)width, (uint8_t)in_c, layer, (uint8_t)out_c, out, (uint16_t)out_stride,
                              (uint8_t)out_step, part, row, gap_sums, gap_in_zp);
        }
        return;
    }
#endif
    ml_rows_pointwise_c(in, width, in_c, layer, out_c, out, out_stride, out_step, gap_sums, gap_in_zp);
}

void ml_rows_pointwise_by8_s8(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                              int8_t *out, int out_stride, int out_step, int32_t *gap_sums, int32_t gap_in_zp)
{
#if defined(__AVR__)
    if ((in_c & 7) == 0 && ml_rows_pw_fits_k(width, in_c, layer, out_c, out_step)) {
        int8_t part[3 * ML_ROWS_MAX_CHANNELS], row[ML_ROWS_MAX_CHANNELS];
        ml_rows_pw_k(in, (uint8_t)width, (uint8_t)in_c, layer, (uint8_t)out_c, out, (uint16_t)out_stride,
                     (uint8_t)out_step, part, row, gap_sums, gap_in_zp);
        return;
    }
#endif
    ml_rows_pointwise_c(in, width, in_c, layer, out_c, out, out_stride, out_step, gap_sums, gap_in_zp);
}

/* Row r's slot (r mod kernel; r >= -kernel) in a ring of `kernel` rows, without a division (a library call on
 * the AVR): the row's values are at ring + slot + kernel * (padded position) (ml_rows_s8.h). */
static uint8_t slot(int r, int kernel)
{
    uint8_t i = (uint8_t)(r < 0 ? r + kernel : r); /* r < 256 */
    while (i >= (uint8_t)kernel) i -= (uint8_t)kernel;
    return i;
}

/* A row of zero-point bytes in slot s of a ring of `kernel` rows, `values` (channels x padded) each: the rows
 * above and below the plane, which the window reads (the slot's own row is no longer needed: see block_row). */
static void fill_slot(int8_t *ring, int values, int kernel, uint8_t s, int8_t zero_point)
{
    for (int8_t *p = ring + s; values != 0; --values, p += kernel) *p = zero_point;
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

/* Where the producer of block b's next input row writes it: channel 0's first value; the channel stride and
 * the step between two values in *channel_stride and *step. */
static int8_t *next_row(const ml_rows_network *net, int b, int *channel_stride, int *step)
{
    const ml_block_s8 *block = &net->blocks[b]; /* in flash: only the three bytes read here */
    const int padding = (uint8_t)ML_FLASH_S8(&block->padding), kernel = (uint8_t)ML_FLASH_S8(&block->kernel);
    *channel_stride = ((uint8_t)ML_FLASH_S8(&block->in_w) + 2 * padding) * kernel;
    *step = kernel;
    return net->rows[b + 1].ring + slot(net->rows[b + 1].received, kernel) + padding * kernel;
}

/* The window of output row y (first input row first_row, `kernel` rows) in a ring of `values` (channels x
 * padded) per slot: the slot of each window row in slots[], the rows below the plane (>= h) filled with the
 * zero point (their slot's own row is above the window: no longer needed). The rows above it (< 0) are zero
 * points already: their slots belong to rows below the window, not received yet (an output row is computed as
 * soon as its last row is in), which ml_rows_start_s8 filled. */
static void window(int8_t *ring, int values, int kernel, int first_row, int h, int8_t zero_point, uint8_t *slots)
{
    for (int ky = 0; ky < kernel; ++ky) {
        const int iy = first_row + ky;
        slots[ky] = slot(iy, kernel);
        if (iy >= h) fill_slot(ring, values, kernel, slots[ky], zero_point);
    }
}

/* Output row y of block p (its ring: rows): the depthwise layer into dw_row, the pointwise one into block
 * b + 1's ring (or the pooling sums). */
static void block_row(const ml_rows_network *net, int b, const ml_block_s8 *p, const ml_block_rows *rows, int y)
{
    const int k = p->kernel, channel_bytes = (p->in_w + 2 * p->padding) * k;
    uint8_t slots[ML_ROWS_MAX_KERNEL];
    int8_t *out = NULL;
    int out_stride = 0, out_step = 1;
    window(rows->ring, p->channels * (p->in_w + 2 * p->padding), k, y * p->stride - p->padding, p->in_h,
           (int8_t)p->dw.in_zp, slots);
#if defined(__AVR__)
    if (ml_rows_k_applies(k, p->stride, p->out_w, p->channels, p->dw.rq)) {
        /* the fast path with the taps in registers, channel after channel */
        ml_rows_k_layer(p->out_w, p->channels, (int8_t)p->dw.out_zp, (int8_t)p->dw.low);
        ml_rows_channels_k(rows->ring, slots[0], (uint16_t)channel_bytes, p->stride, p->channels, p->dw.bias,
                           p->dw.weight, p->dw.rq, net->dw_row, 1);
    } else
#endif
    for (int c = 0; c < p->channels; ++c) {
        const int8_t *in[ML_ROWS_MAX_KERNEL];
        for (int ky = 0; ky < k; ++ky) in[ky] = rows->ring + c * channel_bytes + slots[ky];
        ml_rows_filter_s8(in, k, p->stride, k, p->out_w, p->dw.weight + c * k * k, ML_FLASH_S32(&p->dw.bias[c]),
                          ML_FLASH_S16(&p->dw.multiplier[c]), p->dw.shift, p->dw.out_zp, p->dw.low,
                          p->dw.rq != NULL ? &p->dw.rq[c] : NULL, net->dw_row + c, p->channels);
    }
    if (b + 1 < net->count) out = next_row(net, b + 1, &out_stride, &out_step);
#if defined(__AVR__)
    /* through the network's pointer: a network that never needs the assembly for other channel counts links
     * without it */
    net->pointwise(net->dw_row, p->out_w, p->channels, &p->pw, p->out_channels, out, out_stride, out_step,
                   net->gap_sums, net->gap_in_zp);
#else
    /* the same plain C either way (and LLVM 22's Xtensa backend fails to allocate registers for the indirect
     * call here) */
    ml_rows_pointwise_s8(net->dw_row, p->out_w, p->channels, &p->pw, p->out_channels, out, out_stride, out_step,
                         net->gap_sums, net->gap_in_zp);
#endif
}

/* Whether block p (its ring: rows) has the input rows of its next output row (and has one left to emit). */
static int can_emit(const ml_block_s8 *p, const ml_block_rows *rows)
{
    int last = rows->emitted * p->stride - p->padding + p->kernel - 1; /* the last input row it reads */
    if (rows->emitted >= p->out_h) return 0;
    if (last > p->in_h - 1) last = p->in_h - 1; /* (below: zero padding) */
    return rows->received > last;
}

/* Block first's ring has received its next row: compute (and hand on) every output row that has become
 * computable, depth first: a block's new row goes down the network as far as it can before the block's next
 * one. A loop rather than a recursion over the blocks, so that one block description is on the stack at a time
 * (a recursion holds one per block in flight: 121 bytes a block on the AVR, where RAM is 8 KB). */
static void push(const ml_rows_network *net, int first)
{
    ml_block_s8 p; /* block b's description, copied out of flash */
    int b = first;
    net->rows[b + 1].received++;
    ML_FLASH_COPY(&p, &net->blocks[b]);
    for (;;) {
        ml_block_rows *rows = &net->rows[b + 1];
        if (can_emit(&p, rows)) {
            block_row(net, b, &p, rows, rows->emitted);
            rows->emitted++;
            if (b + 1 == net->count) continue; /* the last block: its rows went to the pooling sums */
            b++;                               /* down: the next block has received that row */
            net->rows[b + 1].received++;
        } else if (b == first) {
            return;
        } else {
            --b; /* up: the block before goes on with its next row */
        }
        ML_FLASH_COPY(&p, &net->blocks[b]);
    }
}

void ml_rows_run_s8(const ml_rows_network *net, const uint8_t *image)
{
    ml_stem_s8 s;
    ml_block_rows *rows = &net->rows[0];
    ML_FLASH_COPY(&s, net->stem);
    {
        const int k = s.kernel, padded = s.w + 2 * s.padding;
        for (int y = 0; y < s.h; ++y) {
            int last = y - s.padding + k - 1, channel_stride, out_step;
            uint8_t slots[ML_ROWS_MAX_KERNEL];
            int8_t *out;
            if (last > s.h - 1) last = s.h - 1;
            while (rows->received <= last) { /* the image rows it reads, as int8 (q = pixel - 128) */
                int8_t *row = rows->ring + slot(rows->received, k) + s.padding * k;
                const uint8_t *pixels = image + rows->received * s.w;
                for (int x = 0; x < s.w; ++x) row[x * k] = (int8_t)((int)pixels[x] - 128);
                rows->received++;
            }
            window(rows->ring, padded, k, y - s.padding, s.h, (int8_t)s.conv.in_zp, slots);
            out = next_row(net, 0, &channel_stride, &out_step);
#if defined(__AVR__)
            if (ml_rows_k_applies(k, 1, s.w, out_step, s.conv.rq)) {
                /* the fast path with the taps in registers, channel after channel (the same window) */
                ml_rows_k_layer(s.w, (uint8_t)out_step, (int8_t)s.conv.out_zp, (int8_t)s.conv.low);
                ml_rows_channels_k(rows->ring, slots[0], 0, 1, s.out_channels, s.conv.bias, s.conv.weight,
                                   s.conv.rq, out, (uint16_t)channel_stride);
                push(net, 0);
                continue;
            }
#endif
            for (int co = 0; co < s.out_channels; ++co) {
                const int8_t *in[ML_ROWS_MAX_KERNEL];
                for (int ky = 0; ky < k; ++ky) in[ky] = rows->ring + slots[ky];
                ml_rows_filter_s8(in, k, 1, k, s.w, s.conv.weight + co * k * k, ML_FLASH_S32(&s.conv.bias[co]),
                                  ML_FLASH_S16(&s.conv.multiplier[co]), s.conv.shift, s.conv.out_zp, s.conv.low,
                                  s.conv.rq != NULL ? &s.conv.rq[co] : NULL, out + co * channel_stride, out_step);
            }
            push(net, 0); /* row y of the stem flows through the blocks */
        }
    }
}
