/* test_kernels_s8_host.c - the int8 host fast path's kernels (c/ml_kernels_s8_host.c) against plain loops, bit for
 * bit: each convolution (the AVX2 / VNNI one that the public name runs under -march=native, and the portable one)
 * on pseudo-random maps, weights, biases, zero points, multipliers and shifts, over many shapes and both strides,
 * against the obvious loop with the int64 requantization of quantization.arithmetic. The whole output buffer is
 * compared, so a kernel writing outside its outputs (over a stored border) fails too. The requantization
 * thresholds are computed here as codegen.c_int8.host_fast_requant_rows computes them, the kernels' clamp
 * argument as codegen.c_int8.host_fast_needs_clamp decides it (small weights and biases give layers without it).
 * The quad layout (a depthwise convolution into it, a 1x1 one from it) is tested the same way, its valid bytes.
 *
 * Built by tests/engines/test_host_c_int8_fast.py (strict C99; with the host flags, with -DML_S8_HOST_NO_VNNI and
 * -DML_S8_HOST_PORTABLE, and under the sanitizers). It includes the .c file it tests. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ml_kernels_s8_host.c"

static unsigned long checks, failures, unclamped;
static uint32_t state = 0x2468ACE1u;

static uint32_t next_random(void) /* xorshift32 */
{
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

static int32_t random_in(int32_t lo, int32_t hi) { return lo + (int32_t)(next_random() % (uint32_t)(hi - lo + 1)); }

static void check(int ok, const char *what, int a, int b, int c)
{
    ++checks;
    if (!ok && ++failures <= 10) printf("FAILED: %s (%d, %d, %d)\n", what, a, b, c);
}

#define MAX_MAP (40 * 40 * 64 + ML_S8H_SLACK)
#define MAX_CH 64
static uint8_t in_map[MAX_MAP], out_fast[MAX_MAP], out_portable[MAX_MAP], out_loop[MAX_MAP];
static int8_t weight[MAX_CH * MAX_CH];
static int32_t bias[MAX_CH];
static ml_s8h_rq rq[MAX_CH];
static int32_t zp[MAX_CH], low[MAX_CH], mult[MAX_CH];

static int64_t ceil_div(int64_t n, int64_t d) { return n >= 0 ? (n + d - 1) / d : -((-n) / d); }

/* the reference requantization (quantization.arithmetic.requantize), as a byte u = q + 128 */
static uint8_t loop_requantize(int32_t acc, int ch, int shift)
{
    int64_t v = ((int64_t)acc * mult[ch] + ((int64_t)1 << (shift - 1))) >> shift;
    v += zp[ch];
    if (v < low[ch]) v = low[ch];
    if (v > 127) v = 127;
    return (uint8_t)(v + 128);
}

/* random requantization parameters for count channels (multipliers below 2^shift, as real layers have) */
static int random_requant(int count)
{
    const int shift = random_in(8, 23), all_low = next_random() % 2; /* all_low: every lower clamp at q = -128 */
    const int32_t max_mult = shift >= 16 ? 32767 : ((int32_t)1 << shift) - 1;
    for (int c = 0; c < count; ++c) {
        const int64_t unit = (int64_t)1 << shift, half = unit >> 1;
        mult[c] = random_in(max_mult / 4 + 1, max_mult);
        zp[c] = random_in(-128, 100);
        low[c] = all_low ? -128 : (next_random() % 2 ? zp[c] : -128);
        rq[c].mult = mult[c];
        rq[c].hi = (int32_t)ceil_div((127 - zp[c]) * unit - half, mult[c]);
        rq[c].lo = (int32_t)(ceil_div((low[c] - zp[c] + 1) * unit - half, mult[c]) - 1);
        rq[c].round = (int32_t)(half + (zp[c] + 128) * unit);
        rq[c].zp = zp[c] + 128;
        rq[c].low = low[c] + 128;
    }
    return shift;
}

/* the kernels' clamp argument: 0 only where no sum of these channels (weights at stride per channel, taps each,
 * bytes 0..255) takes sum * mult + round out of int32 and every low is q = -128 (as codegen.c_int8 decides) */
static int needs_clamp(int channels, int stride, int taps)
{
    for (int c = 0; c < channels; ++c) {
        int64_t highest = bias[c], lowest = bias[c];
        for (int t = 0; t < taps; ++t) {
            const int v = weight[c * stride + t];
            if (v > 0) highest += 255 * v;
            else lowest += 255 * v;
        }
        if (highest * mult[c] + rq[c].round >= ((int64_t)1 << 31) || lowest * mult[c] + rq[c].round < -((int64_t)1 << 31)
            || rq[c].low != 0) {
            return 1;
        }
    }
    return 0;
}

/* the rows as the vector loops take them: the bias moved into the thresholds and the rounding term */
static void fold_biases(int channels)
{
    for (int c = 0; c < channels; ++c) {
        rq[c].lo -= bias[c];
        rq[c].hi -= bias[c];
        rq[c].round = (int32_t)((uint32_t)rq[c].round + (uint32_t)bias[c] * (uint32_t)mult[c]);
    }
}

static void random_data(int weights, int channels)
{
    const int small = next_random() % 2; /* small weights and biases: layers that need no clamp */
    for (int i = 0; i < MAX_MAP; ++i) in_map[i] = (uint8_t)next_random();
    for (int i = 0; i < weights; ++i) weight[i] = (int8_t)(small ? random_in(-4, 4) : random_in(-128, 127));
    for (int c = 0; c < channels; ++c) bias[c] = small ? random_in(-3000, 3000) : random_in(-300000, 300000);
    memset(out_fast, 0xA5, sizeof out_fast);
    memset(out_portable, 0xA5, sizeof out_portable);
    memset(out_loop, 0xA5, sizeof out_loop);
}

static void compare(const char *what, int a, int b, int c)
{
    check(memcmp(out_fast, out_loop, sizeof out_loop) == 0, what, a, b, c);
    check(memcmp(out_portable, out_loop, sizeof out_loop) == 0, what, a, b, c);
}

/* 3x3 weights [c][3][4]: the fourth of each row is 0 (the kernels multiply a fourth byte by it) */
static void zero_fourth_taps(int c)
{
    for (int i = 3; i < c * 12; i += 4) weight[i] = 0;
}

static void test_conv3x3_c1(int h, int w, int out_c, int border)
{
    const int in_rs = w + 2 + random_in(0, 3), out_cs = w + 2 * border, out_rs = out_c * out_cs;
    uint8_t *o[3];
    random_data(out_c * 12, out_c);
    zero_fourth_taps(out_c);
    const int shift = random_requant(out_c);
    o[0] = out_fast + border * (out_rs + 1);
    o[1] = out_portable + border * (out_rs + 1);
    o[2] = out_loop + border * (out_rs + 1);
    const int clamp = needs_clamp(out_c, 12, 12);
    fold_biases(out_c);
    ml_s8h_conv3x3_c1(in_map, in_rs, o[0], out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, clamp);
    ml_s8h_conv3x3_c1_portable(in_map, in_rs, o[1], out_rs, out_cs, h, w, out_c, weight, bias, rq, shift);
    for (int y = 0; y < h; ++y) {
        for (int co = 0; co < out_c; ++co) {
            for (int x = 0; x < w; ++x) {
                int32_t acc = bias[co];
                for (int ky = 0; ky < 3; ++ky) {
                    for (int kx = 0; kx < 3; ++kx) acc += in_map[(y + ky) * in_rs + x + kx] * weight[co * 12 + ky * 4 + kx];
                }
                o[2][y * out_rs + co * out_cs + x] = loop_requantize(acc, co, shift);
            }
        }
    }
    compare("conv3x3_c1", h, w, out_c);
}

static void test_depthwise(int out_h, int out_w, int c, int stride, int border)
{
    const int in_w = (out_w - 1) * stride + 3, in_h = (out_h - 1) * stride + 3;
    const int in_cs = in_w + random_in(0, 2), in_rs = c * in_cs;
    const int out_cs = out_w + 2 * border, out_rs = c * out_cs;
    uint8_t *o[3];
    (void)in_h;
    random_data(c * 12, c);
    zero_fourth_taps(c);
    const int shift = random_requant(c);
    o[0] = out_fast + border * (out_rs + 1);
    o[1] = out_portable + border * (out_rs + 1);
    o[2] = out_loop + border * (out_rs + 1);
    const int clamp = needs_clamp(c, 12, 12);
    fold_biases(c);
    ml_s8h_depthwise3x3(in_map, in_rs, in_cs, c, stride, o[0], out_rs, out_cs, out_h, out_w, weight, bias, rq, shift,
                        clamp);
    ml_s8h_depthwise3x3_portable(in_map, in_rs, in_cs, c, stride, o[1], out_rs, out_cs, out_h, out_w, weight, bias, rq,
                                 shift);
    for (int y = 0; y < out_h; ++y) {
        for (int ch = 0; ch < c; ++ch) {
            for (int x = 0; x < out_w; ++x) {
                int32_t acc = bias[ch];
                for (int ky = 0; ky < 3; ++ky) {
                    for (int kx = 0; kx < 3; ++kx) {
                        acc += in_map[(y * stride + ky) * in_rs + ch * in_cs + x * stride + kx] * weight[ch * 12 + ky * 4 + kx];
                    }
                }
                o[2][y * out_rs + ch * out_cs + x] = loop_requantize(acc, ch, shift);
            }
        }
    }
    compare("depthwise3x3", out_w, c, stride);
}

static void test_pointwise(int h, int w, int in_c, int out_c, int border)
{
    const int in_cs = w + random_in(0, 2), in_rs = in_c * in_cs;
    const int out_cs = w + 2 * border, out_rs = out_c * out_cs;
    uint8_t *o[3];
    random_data(out_c * in_c, out_c);
    const int shift = random_requant(out_c);
    o[0] = out_fast + border * (out_rs + 1);
    o[1] = out_portable + border * (out_rs + 1);
    o[2] = out_loop + border * (out_rs + 1);
    const int clamp = needs_clamp(out_c, in_c, in_c);
    fold_biases(out_c);
    unclamped += !clamp;
    ml_s8h_pointwise(in_map, in_rs, in_cs, in_c, o[0], out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, clamp);
    ml_s8h_pointwise_portable(in_map, in_rs, in_cs, in_c, o[1], out_rs, out_cs, h, w, out_c, weight, bias, rq, shift);
    for (int y = 0; y < h; ++y) {
        for (int co = 0; co < out_c; ++co) {
            for (int x = 0; x < w; ++x) {
                int32_t acc = bias[co];
                for (int ci = 0; ci < in_c; ++ci) acc += in_map[y * in_rs + ci * in_cs + x] * weight[co * in_c + ci];
                o[2][y * out_rs + co * out_cs + x] = loop_requantize(acc, co, shift);
            }
        }
    }
    compare("pointwise", w, in_c, out_c);
}

/* into the quad layout (map[y][c / 4][x][c % 4], group stride gs >= 32): the valid bytes compared (the kernel
 * may write the pixels past out_w of a group stride, as documented) */
static void test_depthwise_quads(int out_h, int out_w, int c, int stride)
{
    const int in_w = (out_w - 1) * stride + 3;
    const int in_cs = in_w + random_in(0, 2), in_rs = c * in_cs;
    const int out_gs = 4 * (out_w < 8 ? 8 : out_w) + 4 * random_in(0, 2), out_rs = (c / 4) * out_gs;
    random_data(c * 12, c);
    zero_fourth_taps(c);
    const int shift = random_requant(c), clamp = needs_clamp(c, 12, 12);
    fold_biases(c);
    ml_s8h_depthwise3x3_quads(in_map, in_rs, in_cs, c, stride, out_fast, out_rs, out_gs, out_h, out_w, weight, bias, rq,
                              shift, clamp);
    ml_s8h_depthwise3x3_quads_portable(in_map, in_rs, in_cs, c, stride, out_portable, out_rs, out_gs, out_h, out_w,
                                       weight, bias, rq, shift);
    int same_fast = 1, same_portable = 1;
    for (int y = 0; y < out_h; ++y) {
        for (int ch = 0; ch < c; ++ch) {
            for (int x = 0; x < out_w; ++x) {
                int32_t acc = bias[ch];
                for (int ky = 0; ky < 3; ++ky) {
                    for (int kx = 0; kx < 3; ++kx) {
                        acc += in_map[(y * stride + ky) * in_rs + ch * in_cs + x * stride + kx] * weight[ch * 12 + ky * 4 + kx];
                    }
                }
                const int at = y * out_rs + (ch / 4) * out_gs + x * 4 + ch % 4;
                const uint8_t expected = loop_requantize(acc, ch, shift);
                same_fast &= out_fast[at] == expected;
                same_portable &= out_portable[at] == expected;
            }
        }
    }
    check(same_fast, "depthwise3x3_quads", out_w, c, stride);
    check(same_portable, "depthwise3x3_quads_portable", out_w, c, stride);
    check(out_fast[out_h * out_rs] == 0xA5, "depthwise3x3_quads wrote past its map", out_w, c, stride);
}

static void test_pointwise_quads(int h, int w, int in_c, int out_c, int border)
{
    const int in_gs = 4 * (w < 8 ? 8 : w) + 4 * random_in(0, 2), in_rs = (in_c / 4) * in_gs;
    const int out_cs = w + 2 * border, out_rs = out_c * out_cs;
    uint8_t *o[3];
    random_data(out_c * in_c, out_c);
    const int shift = random_requant(out_c), clamp = needs_clamp(out_c, in_c, in_c);
    fold_biases(out_c);
    o[0] = out_fast + border * (out_rs + 1);
    o[1] = out_portable + border * (out_rs + 1);
    o[2] = out_loop + border * (out_rs + 1);
    ml_s8h_pointwise_quads(in_map, in_rs, in_gs, in_c, o[0], out_rs, out_cs, h, w, out_c, weight, bias, rq, shift, clamp);
    ml_s8h_pointwise_quads_portable(in_map, in_rs, in_gs, in_c, o[1], out_rs, out_cs, h, w, out_c, weight, bias, rq,
                                    shift);
    for (int y = 0; y < h; ++y) {
        for (int co = 0; co < out_c; ++co) {
            for (int x = 0; x < w; ++x) {
                int32_t acc = bias[co];
                for (int ci = 0; ci < in_c; ++ci) {
                    acc += in_map[y * in_rs + (ci / 4) * in_gs + x * 4 + ci % 4] * weight[co * in_c + ci];
                }
                o[2][y * out_rs + co * out_cs + x] = loop_requantize(acc, co, shift);
            }
        }
    }
    compare("pointwise_quads", w, in_c, out_c);
}

int main(void)
{
    static const int widths[] = {28, 14, 7, 1, 5, 8, 9, 16, 17, 23};
    static const int channels[] = {8, 16, 24, 1, 3, 4, 5, 12};
    for (int round = 0; round < 4; ++round) {
        for (int i = 0; i < (int)(sizeof widths / sizeof widths[0]); ++i) {
            const int w = widths[i], h = random_in(1, 9);
            for (int j = 0; j < (int)(sizeof channels / sizeof channels[0]); ++j) {
                const int c = channels[j], border = random_in(0, 1);
                test_conv3x3_c1(h, w, c, border);
                test_depthwise(h, w, c, 1, border);
                test_depthwise(h, w, c, 2, border);
                if (c % 4 == 0) {
                    test_depthwise_quads(h, w, c, 1);
                    test_depthwise_quads(h, w, c, 2);
                }
                for (int k = 0; k < (int)(sizeof channels / sizeof channels[0]); ++k) {
                    test_pointwise(h, w, 4 * random_in(1, 16), channels[k], border);
                    test_pointwise(h, w, channels[k], c, border);
                    test_pointwise_quads(h, w, 4 * random_in(1, 16), channels[k], border);
                }
            }
        }
    }
    printf("paths: %s\n", ML_S8H_AVX ? "x86 AVX2" : "portable C");
    printf("pointwise cases without the clamp: %lu\n", unclamped);
    printf("%lu checks: %lu passed, %lu failed\n", checks, checks - failures, failures);
    return failures != 0;
}
