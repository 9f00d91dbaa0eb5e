/* test_kernels_s8.c - the optimized int8 convolutions (c/ml_kernels_s8_fast.c) against the reference ones
 * (c/ml_kernels_s8.c), bit for bit, on pseudo-random data over many shapes, strides, paddings, zero points,
 * multipliers and shifts (the covered ones and the ones that fall back to the reference), plus the two
 * 32-bit requantization formulas against the int64 one.
 *
 * It includes the .c files it tests, so the static helpers are reachable. Built for the host by
 * tests/codegen/test_kernels_s8.py (strict C99, and under the sanitizers), and for the Cortex-M targets with
 * -DML_TEST_BAREMETAL, run in QEMU: the result is the semihosting exit status (so the DSP path of the
 * Cortex-M4 and the MAC16 path of the ESP32 are tested on their own instruction sets). */
#include <stdint.h>

#include "ml_kernels_s8.c"
#include "ml_kernels_s8_fast.c"

#if defined(ML_TEST_BAREMETAL) && defined(__XTENSA__)
/* the esp32 target (c/targets/startup_xtensa.S): QEMU's Xtensa semihosting, the SIMCALL instruction */
static uint32_t simcall(uint32_t operation, uint32_t a, uint32_t b, uint32_t c)
{
    register uint32_t a2 __asm__("a2") = operation;
    register uint32_t a3 __asm__("a3") = a;
    register uint32_t a4 __asm__("a4") = b;
    register uint32_t a5 __asm__("a5") = c;
    __asm__ volatile(".byte 0x00, 0x51, 0x00" : "+r"(a2), "+r"(a3) : "r"(a4), "r"(a5) : "memory");
    return a2;
}

static void say(const char *text)
{
    uint32_t length = 0;
    while (text[length] != '\0') ++length;
    simcall(4u, 1u, (uint32_t)(uintptr_t)text, length); /* write(1, text, length) */
}

static void finish(int failed) { simcall(1u, (uint32_t)failed, 0u, 0u); } /* exit(failed) */
#elif defined(ML_TEST_BAREMETAL)
void SysTick_Handler(void) {} /* the vector table of c/targets/startup_cortexm.c wants one */

static void semihosting_call(uint32_t operation, uint32_t argument)
{
    register uint32_t r0 __asm__("r0") = operation;
    register uint32_t r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}

static void say(const char *text) { semihosting_call(0x04u, (uint32_t)(uintptr_t)text); } /* SYS_WRITE0 */

/* SYS_EXIT: internal error / application exit */
static void finish(int failed) { semihosting_call(0x18u, failed ? 0x20023u : 0x20026u); }
#else
#include <stdio.h>
static void say(const char *text) { fputs(text, stdout); }
#endif

static unsigned long checks, failures;
static uint32_t state = 0x12345678u;

static uint32_t next_random(void) /* xorshift32 */
{
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

static int32_t random_in(int32_t lo, int32_t hi) { return lo + (int32_t)(next_random() % (uint32_t)(hi - lo + 1)); }

static void check(int ok, const char *what)
{
    ++checks;
    if (!ok) {
        ++failures;
        if (failures <= 10) {
            say("FAILED: ");
            say(what);
            say("\n");
        }
    }
}

#define MAX_IN 8192
#define MAX_OUT 8192
#define MAX_WEIGHTS 4096
#define MAX_CH 72

static int8_t in[MAX_IN], out_fast[MAX_OUT + 16], out_ref[MAX_OUT + 16], weight[MAX_WEIGHTS];
static int32_t bias[MAX_CH];
static int16_t multiplier[MAX_CH];

/* Multipliers: positive, as real layers' (BatchNorm signs go into the weights), in 3 calls out of 4; otherwise
 * any int16, which the plain C kernels hand to the reference ones when one is <= 0. */
static void fill(int in_values, int weights, int channels, int bias_range)
{
    const int any_sign = next_random() % 4 == 0;
    for (int i = 0; i < in_values; ++i) in[i] = (int8_t)random_in(-128, 127);
    for (int i = 0; i < weights; ++i) weight[i] = (int8_t)random_in(-128, 127);
    for (int c = 0; c < channels; ++c) {
        bias[c] = random_in(-bias_range, bias_range);
        multiplier[c] = (int16_t)(any_sign ? random_in(-32768, 32767) : random_in(1, 32767));
    }
}

static int same(int count)
{
    for (int i = 0; i < count + 16; ++i) {
        if (out_fast[i] != out_ref[i]) return 0;
    }
    return 1;
}

/* A shift that makes the outputs spread over the int8 range, some clamped at either end, for sums of `scale`
 * / 256 random products (about 20 + log2(products) / 2, as real layers' 20..23: the plain C kernels cover shifts
 * up to 23, the DSP ones 17..31 and 10..16 in 3x3 filters), and now and then one anywhere in 1..40 (outside: the
 * reference kernels). */
static int pick_shift(int scale)
{
    int shift = 20;
    for (int t = scale / 256; t > 1; t >>= 2) ++shift;
    if (next_random() % 8 == 0) shift = random_in(1, 40);
    else shift += random_in(-3, 4);
    return shift < 1 ? 1 : shift > 40 ? 40 : shift;
}

static void clear_outputs(void)
{
    for (int i = 0; i < MAX_OUT + 16; ++i) out_fast[i] = out_ref[i] = (int8_t)0x5A;
}

static void test_conv2d(int trials)
{
    for (int t = 0; t < trials; ++t) {
        const int pointwise = next_random() % 2;
        const int kernel = pointwise ? 1 : random_in(1, 5), stride = pointwise ? 1 : random_in(1, 3);
        const int padding = pointwise ? 0 : random_in(0, kernel - 1 > 2 ? 2 : kernel - 1);
        const int in_c = pointwise ? random_in(1, 33) : (next_random() % 2 ? 1 : random_in(1, 4));
        const int out_c = random_in(1, pointwise ? 33 : 9);
        const int in_h = random_in(kernel > 2 * padding ? kernel - 2 * padding : 1, 30);
        const int in_w = random_in(kernel > 2 * padding ? kernel - 2 * padding : 1, 30);
        const int out_h = (in_h + 2 * padding - kernel) / stride + 1, out_w = (in_w + 2 * padding - kernel) / stride + 1;
        if (in_c * in_h * in_w > MAX_IN || out_c * out_h * out_w > MAX_OUT || out_c * in_c * kernel * kernel > MAX_WEIGHTS) {
            --t;
            continue;
        }
        const int32_t in_zp = next_random() % 2 ? -128 : random_in(-128, 127);
        const int32_t out_zp = random_in(-128, 127), low = next_random() % 2 ? out_zp : -128;
        const int shift = pick_shift(in_c * kernel * kernel * 256);
        fill(in_c * in_h * in_w, out_c * in_c * kernel * kernel, out_c, 1 << 16);
        clear_outputs();
        ml_conv2d_s8(in, in_h, in_w, in_c, in_zp, out_fast, out_h, out_w, out_c, kernel, stride, padding, weight, bias,
                     multiplier, shift, out_zp, low);
        ml_conv2d_s8_ref(in, in_h, in_w, in_c, in_zp, out_ref, out_h, out_w, out_c, kernel, stride, padding, weight,
                         bias, multiplier, shift, out_zp, low);
        check(same(out_c * out_h * out_w), "ml_conv2d_s8 == ml_conv2d_s8_ref");
    }
}

static void test_depthwise(int trials)
{
    for (int t = 0; t < trials; ++t) {
        const int kernel = next_random() % 2 ? 3 : random_in(1, 5), stride = random_in(1, 3);
        const int padding = random_in(0, kernel - 1 > 2 ? 2 : kernel - 1), channels = random_in(1, 6);
        const int in_h = random_in(kernel > 2 * padding ? kernel - 2 * padding : 1, 31);
        const int in_w = random_in(kernel > 2 * padding ? kernel - 2 * padding : 1, 31);
        const int out_h = (in_h + 2 * padding - kernel) / stride + 1, out_w = (in_w + 2 * padding - kernel) / stride + 1;
        if (channels * in_h * in_w > MAX_IN || channels * out_h * out_w > MAX_OUT) {
            --t;
            continue;
        }
        const int32_t in_zp = next_random() % 2 ? -128 : random_in(-128, 127);
        const int32_t out_zp = random_in(-128, 127), low = next_random() % 2 ? out_zp : -128;
        const int shift = pick_shift(kernel * kernel * 256);
        fill(channels * in_h * in_w, channels * kernel * kernel, channels, 1 << 16);
        clear_outputs();
        ml_depthwise_conv2d_s8(in, in_h, in_w, channels, in_zp, out_fast, out_h, out_w, kernel, stride, padding,
                               weight, bias, multiplier, shift, out_zp, low);
        ml_depthwise_conv2d_s8_ref(in, in_h, in_w, channels, in_zp, out_ref, out_h, out_w, kernel, stride, padding,
                                   weight, bias, multiplier, shift, out_zp, low);
        check(same(channels * out_h * out_w), "ml_depthwise_conv2d_s8 == ml_depthwise_conv2d_s8_ref");
    }
}

/* 3x3 filters whose requantization shift is below 17 (a depthwise layer with a scale near 1, as trained models
 * have them: shifts 14-16), which the DSP path runs with its taps prescaled (ml_s8_filters_prescaled): shifts 8..18, the
 * weights and multipliers of such layers (small taps, the outputs spread over the int8 range) and of any layer
 * (full-range taps, large biases: some layers' sums leave int32 when prescaled, and those fall back), the stem
 * and depthwise layers at both strides. */
static void test_small_shifts(int trials)
{
    for (int t = 0; t < trials; ++t) {
        const int shift = random_in(8, 18), stride = random_in(1, 2), stem = next_random() % 3 == 0;
        const int channels = random_in(1, 24), size = random_in(3, 28), realistic = next_random() % 4 != 0;
        const int out_size = (size + 2 - 3) / stride + 1;
        if (channels * size * size > MAX_IN || channels * out_size * out_size > MAX_OUT) {
            --t;
            continue;
        }
        const int32_t in_zp = next_random() % 2 ? -128 : random_in(-128, 127);
        const int32_t out_zp = random_in(-128, 127), low = next_random() % 2 ? out_zp : -128;
        fill(stem ? size * size : channels * size * size, channels * 9, channels, realistic ? 1 << 12 : 1 << 28);
        if (realistic) {
            for (int i = 0; i < channels * 9; ++i) weight[i] = (int8_t)random_in(-6, 6);
            for (int c = 0; c < channels; ++c) multiplier[c] = (int16_t)random_in(1 << (shift - 8), 32767);
        }
        clear_outputs();
        if (stem) {
            ml_conv2d_s8(in, size, size, 1, in_zp, out_fast, out_size, out_size, channels, 3, stride, 1, weight, bias,
                         multiplier, shift, out_zp, low);
            ml_conv2d_s8_ref(in, size, size, 1, in_zp, out_ref, out_size, out_size, channels, 3, stride, 1, weight,
                             bias, multiplier, shift, out_zp, low);
            check(same(channels * out_size * out_size), "stem, shift below 17");
        } else {
            ml_depthwise_conv2d_s8(in, size, size, channels, in_zp, out_fast, out_size, out_size, 3, stride, 1, weight,
                                   bias, multiplier, shift, out_zp, low);
            ml_depthwise_conv2d_s8_ref(in, size, size, channels, in_zp, out_ref, out_size, out_size, 3, stride, 1,
                                       weight, bias, multiplier, shift, out_zp, low);
            check(same(channels * out_size * out_size), "depthwise, shift below 17");
        }
    }
}

/* The model's own shapes (28 x 28 x 8 stem and blocks, 14 x 14, 7 x 7), with extreme inputs too. */
static void test_model_shapes(void)
{
    static const int maps[][4] = {{28, 8, 1, 1}, {28, 8, 2, 1}, {14, 16, 1, 1}, {14, 16, 2, 1}, {7, 24, 1, 1}};
    for (int m = 0; m < 5; ++m) {
        for (int extreme = 0; extreme < 3; ++extreme) {
            const int size = maps[m][0], c = maps[m][1], stride = maps[m][2], padding = maps[m][3];
            const int out_size = (size + 2 * padding - 3) / stride + 1;
            fill(c * size * size, c * 9, c, 1 << 12);
            if (extreme) {
                for (int i = 0; i < c * size * size; ++i) in[i] = (int8_t)(extreme == 1 ? 127 : -128);
                for (int i = 0; i < c * 9; ++i) weight[i] = (int8_t)(extreme == 1 ? -128 : 127);
            }
            clear_outputs();
            ml_depthwise_conv2d_s8(in, size, size, c, -128, out_fast, out_size, out_size, 3, stride, padding, weight,
                                   bias, multiplier, 20, -128, -128);
            ml_depthwise_conv2d_s8_ref(in, size, size, c, -128, out_ref, out_size, out_size, 3, stride, padding,
                                       weight, bias, multiplier, 20, -128, -128);
            check(same(c * out_size * out_size), "depthwise, model shape");
            clear_outputs();
            ml_conv2d_s8(in, size, size, c, -128, out_fast, size, size, c, 1, 1, 0, weight, bias, multiplier, 21, 5, 5);
            ml_conv2d_s8_ref(in, size, size, c, -128, out_ref, size, size, c, 1, 1, 0, weight, bias, multiplier, 21, 5,
                             5);
            check(same(c * size * size), "pointwise, model shape");
            clear_outputs();
            ml_conv2d_s8(in, 28, 28, 1, -128, out_fast, 28, 28, 8, 3, 1, 1, weight, bias, multiplier, 23, -128, -128);
            ml_conv2d_s8_ref(in, 28, 28, 1, -128, out_ref, 28, 28, 8, 3, 1, 1, weight, bias, multiplier, 23, -128,
                             -128);
            check(same(8 * 28 * 28), "stem, model shape");
        }
    }
}

#ifndef ML_S8_REFERENCE
/* Both 32-bit requantization formulas against round-half-up(acc * m / 2^shift) in int64, over the whole int32
 * range of acc, every int16 multiplier sign, every shift they cover. */
static void test_scaling(int trials)
{
    int ok32 = 1, ok64 = 1;
    for (int t = 0; t < trials; ++t) {
        const int shift = random_in(ML_S8_MIN_SHIFT, ML_S8_MAX_SHIFT);
        const int32_t m = t % 7 == 0 ? (t % 2 ? -32768 : 32767) : random_in(-32768, 32767);
        int32_t acc = (int32_t)next_random();
        if (t % 5 == 0) acc >>= random_in(0, 31);
        if (t % 11 == 0) acc = t % 2 ? INT32_MIN : INT32_MAX;
        const int64_t expected = ((int64_t)acc * m + ((int64_t)1 << (shift - 1))) >> shift;
        ok32 &= ml_s8_scale32(acc, m, shift) == expected;
        ok64 &= ml_s8_scale64(acc, (int32_t)((uint32_t)m << (32 - shift))) == expected;
    }
    check(ok32, "ml_s8_scale32 == int64 rounding shift");
    check(ok64, "ml_s8_scale64 == int64 rounding shift");
}

/* The kernels' requantization (ml_s8_requant + ml_s8_out: SMMLAR on the DSP, thresholds in plain C) against
 * ml_requantize_s8, over the multipliers and shifts it covers, every zero point and lower clamp, and sums near the
 * plain C thresholds (hi, lo and one either side) as well as anywhere in int32. */
static void test_output(int trials)
{
    int ok = 1;
    for (int t = 0; t < trials; ++t) {
        int16_t m = (int16_t)random_in(1, 32767);
        int shift = random_in(ML_S8_MIN_SHIFT, 23);
#if ML_S8_DSP
        if (t % 3 == 0) m = (int16_t)random_in(-32768, 32767);
        if (t % 5 == 0) shift = random_in(ML_S8_MIN_SHIFT, ML_S8_MAX_SHIFT);
#else
        if (t % 5 == 0) shift = random_in(1, 23);
#endif
        if (t % 13 == 0) m = t % 2 ? 32767 : 1;
        const int32_t zp = random_in(-128, 127), low = t % 2 ? -128 : random_in(-128, 127);
        if (!ml_s8_rq_covered(&m, 1, shift)) continue;
        const ml_s8_rq q = ml_s8_requant(m, shift, zp, low);
        for (int k = 0; k < 12; ++k) {
            int32_t acc = (int32_t)next_random();
            if (k < 6) acc >>= random_in(0, 31);
#if !ML_S8_DSP
            if (k >= 6) acc = (k < 9 ? q.hi : q.lo) + (k % 3) - 1;
#endif
            const int8_t expected = ml_requantize_s8(acc, m, shift, zp, low);
            ok &= ml_s8_out((uint32_t)acc, &q, shift, 1) == expected;
            if (low == -128) ok &= ml_s8_out((uint32_t)acc, &q, shift, 0) == expected;
        }
    }
    check(ok, "ml_s8_out(ml_s8_requant) == ml_requantize_s8");
}
#endif

int main(void)
{
#ifdef ML_TEST_BAREMETAL
    const int trials = 150; /* QEMU runs a few million instructions a second: keep it under a minute */
#else
    const int trials = 3000;
#endif
#ifndef ML_S8_REFERENCE
    test_scaling(trials * 100);
    test_output(trials * 20);
#endif
    test_model_shapes();
    test_conv2d(trials);
    test_depthwise(trials);
    test_small_shifts(trials);
#ifdef ML_TEST_BAREMETAL
    say(failures ? "test_kernels_s8: FAILED\n" : "test_kernels_s8: all passed\n");
    finish(failures != 0);
    return failures ? 1 : 0;
#else
#if !defined(ML_S8_REFERENCE) && ML_S8_X86
    say("paths: x86 AVX2\n"); /* the host test checks that its -march=native build tests these */
#endif
    printf("%lu passed, %lu failed\n", checks - failures, failures);
    return failures ? 1 : 0;
#endif
}
