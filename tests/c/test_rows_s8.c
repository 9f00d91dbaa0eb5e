/* test_rows_s8.c - unit tests of the row kernels of the int8 row schedule (src/mobile_lenet/c/ml_rows_s8.c):
 * each against the obvious loop written out here with the reference requantization (ml_requantize_s8), bit
 * for bit, on pseudo-random data over kernels 1..5, strides 1..3, widths, channel counts, zero points,
 * multipliers (negative ones too) and shifts 1..40 (17..31 take the 32-bit path, the others the int64 one).
 *
 * Build (tests/codegen/test_rows_kernels.py does it): cc -std=c99 -Wall -Wextra -Werror -pedantic
 *     -I src/mobile_lenet/c tests/c/test_rows_s8.c
 *
 * On the AVR (avr-gcc -mmcu=atmega2560 -DML_TEST_AVR; run in simavr with c/sim/simavr_runner.c --stdio) the
 * same cases, fewer and smaller (8 KB of SRAM), check the assembly row loops of ml_rows_s8.c; the program
 * prints "N passed, M failed, fast paths: E depthwise rows, P + Q + R pointwise rows" on USART0 and stops (sleep with
 * interrupts off). The test data are made at run time, so they are in RAM: here the flash macros of
 * ml_flash.h read RAM (the kernels' flash reads are plain loads; the assembly only reads RAM either way). */
#include <stdio.h>
#include <string.h>

#if defined(ML_TEST_AVR)
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <stdint.h>
#define ML_FLASH_IN_RAM /* the test's data are in RAM: ml_flash.h's macros as elsewhere */
#define ML_ROWS_LPM "ld" /* the assembly's flash reads */
/* how often the assembly row loops ran (ml_rows_s8.c's hook) */
static uint16_t fast_dw_regs = 0, fast_pw = 0, fast_pw_regs = 0, fast_pw_rest = 0;
#define ML_ROWS_FAST_RAN(kind) (++fast_##kind)
#endif

#include "ml_kernels_s8.c"
#include "ml_rows_s8.c"

static int failures = 0, checks = 0;
static uint32_t state = 12345u;

static uint32_t next_random(void)
{
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

static int32_t random_in(int32_t lo, int32_t hi)
{
    return (int32_t)((int64_t)lo + (int64_t)(next_random() % (uint32_t)((int64_t)hi - lo + 1)));
}

static void check(int ok, const char *what, int trial)
{
    ++checks;
    if (!ok) {
        ++failures;
        if (failures <= 10) printf("FAILED (trial %d): %s\n", trial, what);
    }
}

static int pick_shift(void)
{
    return next_random() % 8 == 0 ? random_in(1, 40) : random_in(17, 31);
}

static void test_requantize(int trials)
{
    static const int32_t edges[] = {0, 1, -1, 65535, 65536, -65536, -65537, 8388607, -8388608,
                                    2147483647, -2147483647 - 1, 1073741824, -1073741824};
    for (int t = 0; t < trials; ++t) {
        const int32_t near = random_in(-((int32_t)1 << 23), (int32_t)1 << 23), any = (int32_t)next_random();
        const int32_t acc = t < 13 ? edges[t] : next_random() % 2 ? near : any;
        const int16_t m = (int16_t)(next_random() % 2 ? random_in(1, 32767) : random_in(-32768, 32767));
        const int shift = random_in(1, 31);
        const int32_t zp = random_in(-128, 127), low = next_random() % 2 ? zp : -128;
        check(ml_rows_requantize_s8(acc, m, shift, zp, low) == ml_requantize_s8(acc, m, shift, zp, low),
              "requantize", t);
    }
}

/* A channel's ml_rows_rq, as c_int8.requant_table computes it (m > 0, 1 <= shift <= 24, m < 2^shift; sums
 * within +-bound): 1 where the fast path applies. */
static int make_rq(ml_rows_rq *rq, int16_t m, int shift, int32_t zp, int32_t low, int32_t bound)
{
    int64_t t[2];
    if (m <= 0 || shift < 1 || shift > 24 || m >= ((int32_t)1 << shift) || bound >= ((int32_t)1 << 23) - 1) return 0;
    for (int i = 0; i < 2; ++i) {
        const int64_t v = i == 0 ? 127 : low + 1, num = (v - zp) * ((int64_t)1 << shift) - ((int64_t)1 << (shift - 1));
        int64_t c = num >= 0 ? (num + m - 1) / m : -((-num) / m); /* ceil(num / m) */
        if (c < -bound) c = -bound;
        if (c > bound + 1) c = bound + 1;
        t[i] = c;
    }
    rq->scale = (int32_t)m << (24 - shift);
    rq->hi = (int32_t)t[0];
    rq->lo = (int32_t)t[1];
    return 1;
}

#if defined(ML_TEST_AVR)
#define MAX_W 30
#else
#define MAX_W 40
#endif
#define MAX_K 5

static void test_filter(int trials)
{
    static int8_t rows[MAX_K][MAX_W * 3 + 2 * MAX_K], taps[MAX_K * MAX_K], out[4 * MAX_W * 3 + 8];
    static int8_t ring[MAX_K * (MAX_W * 3 + 2 * MAX_K)]; /* the rows interleaved, as in a ring (ml_rows_s8.h) */
    for (int t = 0; t < trials; ++t) {
        /* the fast path's trials: scales that leave most values unclamped (m / 2^shift near 2^-8) */
        const int kernel = t % 3 == 0 ? 3 : random_in(1, MAX_K), stride = random_in(1, 3), try_fast = t % 2 == 0;
        const int out_w = random_in(1, MAX_W), step = random_in(1, 4);
        const int shift = try_fast && kernel == 3 ? random_in(19, 24) : pick_shift();
        const int padded = (out_w - 1) * stride + kernel;
        const int32_t bias = try_fast && kernel == 3 ? random_in(-32768, 32767)
                                                     : random_in(-((int32_t)1 << 20), (int32_t)1 << 20);
        const int32_t zp = random_in(-128, 127), low = next_random() % 2 ? zp : -128;
        const int16_t m = (int16_t)(next_random() % 4 || (try_fast && kernel == 3) ? random_in(1, 32767)
                                                                                   : random_in(-32768, 32767));
        const int interleave = next_random() % 4 != 0, slot0 = random_in(0, kernel - 1);
        const int in_step = interleave ? kernel : 1;
        const int8_t *in[MAX_K];
        int ok = 1;
        for (int ky = 0; ky < kernel; ++ky) {
            const int s = (slot0 + ky) % kernel; /* the ring slot of window row ky */
            for (int i = 0; i < padded; ++i) rows[ky][i] = (int8_t)random_in(-128, 127);
            for (int i = 0; i < padded; ++i) ring[i * kernel + s] = rows[ky][i];
            in[ky] = interleave ? ring + s : rows[ky];
        }
        for (int i = 0; i < kernel * kernel; ++i) taps[i] = (int8_t)random_in(-128, 127);
        ml_rows_rq rq;
        const int fast = kernel == 3 && try_fast && make_rq(&rq, m, shift, zp, low,
                                                                   ((int32_t)1 << 20) + 9 * (int32_t)128 * 128);
        memset(out, 0x5A, sizeof out);
        ml_rows_filter_s8(in, kernel, stride, in_step, out_w, taps, bias, m, shift, zp, low, fast ? &rq : NULL, out,
                          step);
        for (int x = 0; x < out_w; ++x) {
            int32_t acc = bias;
            for (int ky = 0; ky < kernel; ++ky) {
                for (int kx = 0; kx < kernel; ++kx) acc += (int32_t)rows[ky][x * stride + kx] * taps[ky * kernel + kx];
            }
            ok &= out[x * step] == ml_requantize_s8(acc, m, shift, zp, low);
            for (int i = 1; i < step && x * step + i < (int)sizeof out; ++i) ok &= out[x * step + i] == 0x5A;
        }
        for (int i = (out_w - 1) * step + 1; i < (int)sizeof out; ++i) ok &= out[i] == 0x5A;
        check(ok, fast ? "filter (fast path)" : "filter", t);
    }
}

#if defined(ML_TEST_AVR)
/* The AVR's layer row of 3x3 filters (ml_rows_channels_k: the assembly, which moves on from channel to channel
 * by itself): up to 3 channels of interleaved rings (ml_rows_s8.h) with a gap between them, the outputs
 * interleaved (out_next 1, step = channels), against the plain loop. */
static void test_channels_k(int trials)
{
    enum { C = 3, W = 24 };
    static int8_t ring[C * ((2 * W + 3) * 3 + 4)], taps[C * 9], out[C * W + 8];
    static int32_t bias[C];
    static ml_rows_rq rq[C];
    for (int t = 0; t < trials; ++t) {
        const int channels = random_in(1, C), stride = random_in(1, 2), out_w = random_in(1, W);
        const int padded = (out_w - 1) * stride + 3, in_next = padded * 3 + random_in(0, 4), slot0 = random_in(0, 2);
        const int shift = random_in(19, 24);
        const int32_t zp = random_in(-128, 127), low = next_random() % 2 ? zp : -128;
        const int16_t m = (int16_t)random_in(1, 32767);
        int ok = 1;
        for (int i = 0; i < (int)sizeof ring; ++i) ring[i] = (int8_t)random_in(-128, 127);
        for (int i = 0; i < channels * 9; ++i) taps[i] = (int8_t)random_in(-127, 127); /* (the fast path's weights) */
        for (int c = 0; c < channels; ++c) {
            bias[c] = random_in(-32768, 32767);
            ok &= make_rq(&rq[c], m, shift, zp, low, ((int32_t)1 << 20) + 9 * (int32_t)128 * 128);
        }
        memset(out, 0x5A, sizeof out);
        ml_rows_k_layer((uint8_t)out_w, (uint8_t)channels, (int8_t)zp, (int8_t)low);
        ml_rows_channels_k(ring, (uint8_t)slot0, (uint16_t)in_next, (uint8_t)stride, (uint8_t)channels, bias, taps,
                           rq, out, 1);
        for (int c = 0; c < channels; ++c) {
            for (int x = 0; x < out_w; ++x) {
                int32_t acc = bias[c];
                for (int ky = 0; ky < 3; ++ky) {
                    const int8_t *row = ring + c * in_next + (slot0 + ky) % 3;
                    for (int kx = 0; kx < 3; ++kx) {
                        acc += (int32_t)row[(x * stride + kx) * 3] * taps[c * 9 + ky * 3 + kx];
                    }
                }
                ok &= out[x * channels + c] == ml_requantize_s8(acc, m, shift, zp, low);
            }
        }
        for (int i = out_w * channels; i < (int)sizeof out; ++i) ok &= out[i] == 0x5A;
        check(ok, "3x3 layer row (assembly)", t);
    }
}

#define MAX_C 40 /* input channels at full width (the sweep goes on to 64, ML_ROWS_MAX_CHANNELS, on fewer pixels) */
#define MAX_ROW (MAX_W + 4) /* a pointwise output row: width * step + 0..4 */
#else
#define MAX_C 80
#define MAX_ROW (3 * MAX_W + 4)
#endif
#define MAX_OUT 30 /* output channels */

/* how many pointwise channel rows the AVR's assembly computed (0 elsewhere) */
static unsigned fast_pointwise_rows(void)
{
#if defined(ML_TEST_AVR)
    return fast_pw + fast_pw_regs + fast_pw_rest;
#else
    return 0;
#endif
}

static int8_t pw_in[MAX_W * MAX_C], pw_weight[MAX_OUT * MAX_C], pw_out[MAX_OUT * MAX_ROW];

/* One pointwise layer row against the plain loop, bit for bit: in_c x width inputs (width * in_c <= sizeof
 * pw_in), out_c outputs (out_c * in_c <= sizeof pw_weight) at out[co * stride + x * step] (the bytes between
 * them untouched) or, with gap, into the pooling sums. try_fast: weights in [-127, 127], biases in 16 bits and
 * shifts 19..24, so that every channel gets an rq (the fast path); else any weights, biases, multipliers and
 * shifts (the generic path). 1 where all agree. */
static int pointwise_case(int width, int in_c, int out_c, int step, int stride, int gap, int try_fast,
                          ml_rows_pointwise_fn kernel)
{
    static int32_t bias[MAX_OUT], sums[MAX_OUT], expected[MAX_OUT];
    static int16_t multiplier[MAX_OUT];
    static ml_rows_rq rqs[MAX_OUT];
    ml_layer_s8 layer;
    int ok = 1;
    layer.weight = pw_weight;
    layer.bias = bias;
    layer.multiplier = multiplier;
    layer.in_zp = (int16_t)random_in(-128, 127);
    layer.out_zp = (int16_t)random_in(-128, 127);
    layer.low = next_random() % 2 ? layer.out_zp : -128;
    layer.shift = (uint8_t)(try_fast ? random_in(19, 24) : pick_shift()); /* as in test_filter */
    layer.rq = NULL;
    for (int i = 0; i < width * in_c; ++i) pw_in[i] = (int8_t)random_in(-128, 127);
    for (int i = 0; i < out_c * in_c; ++i) pw_weight[i] = (int8_t)random_in(try_fast ? -127 : -128, 127);
    for (int c = 0; c < out_c; ++c) {
        bias[c] = try_fast ? random_in(-32768, 32767) : random_in(-((int32_t)1 << 20), (int32_t)1 << 20);
        multiplier[c] = (int16_t)(next_random() % 4 || try_fast ? random_in(1, 32767) : random_in(-32768, 32767));
        sums[c] = expected[c] = random_in(-1000, 1000);
    }
    if (try_fast && in_c <= 64) { /* the fast path where every channel allows it */
        int fast = 1;
        for (int c = 0; c < out_c; ++c) {
            fast &= make_rq(&rqs[c], multiplier[c], layer.shift, layer.out_zp, layer.low,
                            ((int32_t)1 << 20) + in_c * (int32_t)128 * 128);
        }
        if (fast) layer.rq = rqs;
    }
    memset(pw_out, 0x5A, sizeof pw_out);
    kernel(pw_in, width, in_c, &layer, out_c, gap ? NULL : pw_out, stride, step, sums, layer.out_zp);
    for (int co = 0; co < out_c; ++co) {
        for (int x = 0; x < width; ++x) {
            int32_t acc = bias[co];
            for (int ci = 0; ci < in_c; ++ci) acc += (int32_t)pw_in[x * in_c + ci] * pw_weight[co * in_c + ci];
            {
                const int8_t value = ml_requantize_s8(acc, multiplier[co], layer.shift, layer.out_zp, layer.low);
                if (gap) expected[co] += value - layer.out_zp;
                else ok &= pw_out[co * stride + x * step] == value;
            }
        }
        if (gap) ok &= sums[co] == expected[co];
        for (int i = 0; !gap && i < stride; ++i) { /* the bytes between the outputs: untouched */
            ok &= i % step == 0 && i / step < width ? 1 : pw_out[co * stride + i] == 0x5A;
        }
    }
    return ok;
}

/* a pointwise case's step (3 into a ring, 1 into the scratch row) and stride for width pixels */
static int pick_step(int width)
{
    return width * 3 + 4 <= MAX_ROW ? random_in(1, 3) : 1;
}

static void test_pointwise(int trials)
{
    for (int t = 0; t < trials; ++t) {
        const int width = random_in(1, MAX_W), in_c = t % 5 == 0 && MAX_C > 64 ? random_in(65, MAX_C)
                         : t % 3 == 1 ? 8 * (next_random() % 2 ? 1 : random_in(2, 4)) : random_in(1, 32);
        const int out_c = random_in(1, MAX_OUT), gap = next_random() % 3 == 0, step = pick_step(width);
        const int stride = width * step + random_in(0, 4);
        check(pointwise_case(width, in_c, out_c, step, stride, gap, t % 2 == 0, ml_rows_pointwise_s8),
              gap ? "pointwise into the pooling sums" : "pointwise", t);
    }
}

/* Every input channel count from 1 to max_c (the AVR's fast path: 1..64, in groups of eight and the 1..7 left
 * over), each `rounds` times in the four ways (with and without rq; into a row and into the pooling sums) at
 * random widths (as many as the buffers hold), output channels and steps. On the AVR each channel row of the
 * rq cases must have taken the assembly. */
static void test_pointwise_channels(int max_c, int rounds)
{
    for (int r = 0; r < rounds; ++r) {
        for (int in_c = 1; in_c <= max_c; ++in_c) {
            for (int way = 0; way < 4; ++way) {
                const int try_fast = way & 1, gap = way >> 1;
                const int max_w = (int)sizeof pw_in / in_c, max_out = (int)sizeof pw_weight / in_c;
                const int width = random_in(1, max_w < MAX_W ? max_w : MAX_W);
                const int out_c = random_in(1, max_out < MAX_OUT ? max_out : MAX_OUT), step = pick_step(width);
                const int stride = width * step + random_in(0, 4);
                unsigned before = fast_pointwise_rows();
                check(pointwise_case(width, in_c, out_c, step, stride, gap, try_fast, ml_rows_pointwise_s8),
                      gap ? "pointwise channels 1.., into the pooling sums" : "pointwise channels 1..", in_c);
#if defined(ML_TEST_AVR)
                check(fast_pointwise_rows() - before == (try_fast ? (unsigned)out_c : 0u),
                      "pointwise channels 1..: the assembly ran for each rq channel row", in_c);
#endif
                /* the by-8 kernel (networks whose counts are all multiples of 8): the same values; the assembly
                 * only for those counts */
                before = fast_pointwise_rows();
                check(pointwise_case(width, in_c, out_c, step, stride, gap, try_fast, ml_rows_pointwise_by8_s8),
                      gap ? "pointwise by 8, into the pooling sums" : "pointwise by 8", in_c);
#if defined(ML_TEST_AVR)
                check(fast_pointwise_rows() - before == (try_fast && in_c % 8 == 0 ? (unsigned)out_c : 0u),
                      "pointwise by 8: the assembly ran for each rq channel row of a multiple of 8", in_c);
#else
                (void)before;
#endif
            }
        }
    }
}

#if defined(ML_TEST_AVR)
static int uart_put(char c, FILE *stream)
{
    (void)stream;
    while ((UCSR0A & _BV(UDRE0)) == 0) {
    }
    UDR0 = (uint8_t)c;
    return 0;
}

static FILE uart_out = FDEV_SETUP_STREAM(uart_put, NULL, _FDEV_SETUP_WRITE);

int main(void)
{
    UCSR0A = _BV(U2X0); /* as c/targets/uart_avr.c: 115200 baud at 16 MHz, 8N1 */
    UBRR0 = 16;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(TXEN0);
    stdout = &uart_out;
    test_requantize(2000);
    test_filter(1200);
    test_channels_k(300);
    test_pointwise(600);
    test_pointwise_channels(64, 2);
    printf("%d passed, %d failed, fast paths: %u depthwise rows, %u + %u + %u pointwise rows\n", checks - failures,
           failures, fast_dw_regs, fast_pw, fast_pw_regs, fast_pw_rest);
    while ((UCSR0A & _BV(TXC0)) == 0) { /* the last byte sent */
    }
    cli();
    sleep_enable();
    sleep_cpu(); /* with interrupts off: simavr stops ("done") */
    return 0;
}
#else
int main(void)
{
    test_requantize(200000);
    test_filter(3000);
    test_pointwise(1500);
    test_pointwise_channels(MAX_C, 4);
    printf("%d checks, %d failures\n", checks, failures);
    return failures != 0;
}
#endif
