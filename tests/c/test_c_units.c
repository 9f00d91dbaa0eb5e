/* test_c_units.c - unit tests of the hand-written C (src/mobile_lenet/c/), in the manner of llama2.c's test.c:
 * it includes the .c files it tests, so the static helpers are reachable too.
 *
 * Each optimized kernel is checked against the obvious loop written out here (for each output, for each tap,
 * skip the padding), on pseudo-random data over many shapes, strides and paddings: bit for bit, since both
 * add the same products in the same order. A few cases are also checked against numbers worked out by hand.
 *
 * Build (tests/codegen/test_c_kernels.py does it): cc -std=c99 -Wall -Wextra -Werror -pedantic
 *     -ffp-contract=off -I tests/c -I src/mobile_lenet/c tests/c/test_c_units.c -lm */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "ml_kernels_f32.c"
#include "ml_kernels_s8.c"
#include "ml_kernels_s8_fast.c"
#include "mobile_lenet_serial.c"

static int failures = 0, checks = 0;

#define CHECK(condition) check((condition), #condition, __FILE__, __LINE__)

static void check(int ok, const char *what, const char *file, int line)
{
    ++checks;
    if (!ok) {
        ++failures;
        printf("%s:%d: FAILED: %s\n", file, line, what);
    }
}

/* The serial code's only call into the network: a stub that answers digit 3 with probability 0.25. */
static int predictions = 0;

int mobile_lenet_predict(const uint8_t image[MOBILE_LENET_INPUT_SIZE], float probs[MOBILE_LENET_NUM_CLASSES])
{
    (void)image;
    ++predictions;
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) probs[i] = i == 3 ? 0.25f : 0.0f;
    return 3;
}

/* A small linear congruential generator: the same data on every machine. */
static uint32_t seed = 12345u;

static uint32_t next_random(void)
{
    seed = seed * 1664525u + 1013904223u;
    return seed >> 8;
}

static float random_float(void) { return (float)(next_random() % 2001u) / 1000.0f - 1.0f; }
static int8_t random_int8(void) { return (int8_t)((int)(next_random() % 256u) - 128); }

/* --------------------------------------------------------------------------------------------- helpers */
static void test_inside_outputs(void)
{
    int first, end;
    ml_inside_outputs(0, 1, 1, 4, 4, &first, &end); /* tap 0 with padding 1 reads index o - 1: o >= 1 */
    CHECK(first == 1 && end == 4);
    ml_inside_outputs(2, 1, 1, 4, 4, &first, &end); /* tap 2 reads o + 1: o <= 2 */
    CHECK(first == 0 && end == 3);
    ml_inside_outputs(0, 1, 2, 28, 14, &first, &end); /* B3's stride-2 tap 0 on the unpadded 28 wide map */
    CHECK(first == 1 && end == 14);
    ml_inside_outputs(2, 1, 2, 28, 14, &first, &end);
    CHECK(first == 0 && end == 14);
    ml_inside_outputs(2, 5, 1, 3, 3, &first, &end); /* every output on the padding: an empty range */
    CHECK(first == end);
}

/* --------------------------------------------------------------------------------------------- float */
static void naive_conv2d_f32(const float *in, int in_h, int in_w, int in_c, float *out, int out_h, int out_w,
                             int out_c, int kernel, int stride, int padding, const float *weight, const float *bias,
                             int depthwise)
{
    for (int co = 0; co < out_c; ++co) {
        for (int oy = 0; oy < out_h; ++oy) {
            for (int ox = 0; ox < out_w; ++ox) {
                float sum = 0.0f;
                for (int ci = depthwise ? co : 0; ci < (depthwise ? co + 1 : in_c); ++ci) {
                    for (int ky = 0; ky < kernel; ++ky) {
                        for (int kx = 0; kx < kernel; ++kx) {
                            const int iy = oy * stride + ky - padding, ix = ox * stride + kx - padding;
                            if (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w) continue;
                            const float w = depthwise ? weight[(co * kernel + ky) * kernel + kx]
                                                      : weight[((co * in_c + ci) * kernel + ky) * kernel + kx];
                            sum += w * in[(ci * in_h + iy) * in_w + ix];
                        }
                    }
                }
                out[(co * out_h + oy) * out_w + ox] = bias != NULL ? sum + bias[co] : sum;
            }
        }
    }
}

static void test_conv2d_f32_by_hand(void)
{
    /* 1..9 in a 3x3 map, an all-ones 3x3 kernel, padding 1, bias 0.5: each output sums its neighbourhood */
    const float in[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, weight[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1}, bias[1] = {0.5f};
    float out[9];
    ml_conv2d_f32(in, 3, 3, 1, out, 3, 3, 1, 3, 1, 1, weight, bias);
    CHECK(out[4] == 45.5f);           /* centre: 1 + ... + 9 */
    CHECK(out[0] == 12.5f);           /* corner: 1 + 2 + 4 + 5 */
    CHECK(out[1] == 21.5f);           /* edge: 1 + 2 + 3 + 4 + 5 + 6 */
}

#define MAX_VALUES 16384 /* the largest case: 8 channels of 28x28 */

static void test_convolutions_f32_match_the_obvious_loop(void)
{
    static float in[MAX_VALUES], weight[MAX_VALUES], bias[64], fast[MAX_VALUES], slow[MAX_VALUES];
    /* (size, channels in, channels out, kernel, stride, padding): Mobile-LeNet's shapes and odd ones */
    const int cases[][6] = {{28, 1, 8, 3, 1, 1}, {28, 8, 8, 1, 1, 0}, {7, 3, 5, 3, 2, 1}, {9, 2, 3, 3, 2, 0},
                            {5, 4, 2, 3, 1, 2}, {6, 2, 2, 1, 2, 0}, {4, 1, 1, 3, 3, 1}};
    for (size_t n = 0; n < sizeof cases / sizeof cases[0]; ++n) {
        const int size = cases[n][0], in_c = cases[n][1], out_c = cases[n][2], k = cases[n][3], s = cases[n][4],
                  p = cases[n][5];
        const int out_size = (size + 2 * p - k) / s + 1;
        for (int i = 0; i < in_c * size * size; ++i) in[i] = random_float();
        for (int i = 0; i < out_c * in_c * k * k; ++i) weight[i] = random_float();
        for (int i = 0; i < out_c; ++i) bias[i] = random_float();
        ml_conv2d_f32(in, size, size, in_c, fast, out_size, out_size, out_c, k, s, p, weight, bias);
        naive_conv2d_f32(in, size, size, in_c, slow, out_size, out_size, out_c, k, s, p, weight, bias, 0);
        CHECK(memcmp(fast, slow, sizeof(float) * (size_t)(out_c * out_size * out_size)) == 0);
        ml_depthwise_conv2d_f32(in, size, size, in_c, fast, out_size, out_size, k, s, p, weight);
        naive_conv2d_f32(in, size, size, in_c, slow, out_size, out_size, in_c, k, s, p, weight, NULL, 1);
        CHECK(memcmp(fast, slow, sizeof(float) * (size_t)(in_c * out_size * out_size)) == 0);
    }
}

static void test_small_float_kernels_by_hand(void)
{
    /* BatchNorm with gamma 2, beta 1, mean 0.5, variance 3 and epsilon 1: y = 2 (x - 0.5) / 2 + 1 = x + 0.5 */
    float x[4] = {0.0f, 1.0f, -2.0f, 4.5f};
    const float params[4] = {2.0f, 1.0f, 0.5f, 3.0f};
    ml_batch_norm_f32(x, 1, 4, params, 1.0f);
    CHECK(x[0] == 0.5f && x[1] == 1.5f && x[2] == -1.5f && x[3] == 5.0f);
    ml_relu_f32(x, 4);
    CHECK(x[0] == 0.5f && x[2] == 0.0f && x[3] == 5.0f);
    /* GAP of two 2x2 planes, into another buffer */
    const float planes[8] = {1, 2, 3, 4, -1, -1, -1, 5};
    float means[2];
    ml_global_average_pool_f32(planes, 2, 4, means);
    CHECK(means[0] == 2.5f && means[1] == 0.5f);
    /* dense 3 -> 2: [1 2 3; -1 0 1] . [1 1 2] + [0.5 -0.5] */
    const float in[3] = {1, 1, 2}, weight[6] = {1, 2, 3, -1, 0, 1}, bias[2] = {0.5f, -0.5f};
    float out[2];
    ml_dense_f32(in, 3, out, 2, weight, bias);
    CHECK(out[0] == 9.5f && out[1] == 0.5f);
}

/* --------------------------------------------------------------------------------------------- int8 */
static void test_requantize_rounds_half_up_and_clamps(void)
{
    CHECK(ml_requantize_s8(5, 1, 1, 0, -128) == 3);     /* 2.5 -> 3 */
    CHECK(ml_requantize_s8(-5, 1, 1, 0, -128) == -2);   /* -2.5 -> -2: half up, not away from zero */
    CHECK(ml_requantize_s8(-7, 1, 1, 0, -128) == -3);   /* -3.5 -> -3 */
    CHECK(ml_requantize_s8(6, 3, 2, 10, -128) == 15);   /* 18 / 4 = 4.5 -> 5, + zero point 10 */
    CHECK(ml_requantize_s8(1000000, 32767, 15, 0, -128) == 127);    /* clamped high */
    CHECK(ml_requantize_s8(-1000000, 32767, 15, 0, -128) == -128);  /* clamped low */
    CHECK(ml_requantize_s8(-100, 1, 1, -20, -20) == -20);            /* fused ReLU: real 0 is the floor */
    CHECK(ml_requantize_s8(2147483647, 32767, 31, 0, -128) == 127);  /* the int64 product does not overflow */
}

static void naive_conv2d_s8(const int8_t *in, int in_h, int in_w, int in_c, int32_t in_zp, int8_t *out, int out_h,
                            int out_w, int out_c, int kernel, int stride, int padding, const int8_t *weight,
                            const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp, int32_t low,
                            int depthwise)
{
    for (int co = 0; co < out_c; ++co) {
        for (int oy = 0; oy < out_h; ++oy) {
            for (int ox = 0; ox < out_w; ++ox) {
                int32_t acc = bias[co];
                for (int ci = depthwise ? co : 0; ci < (depthwise ? co + 1 : in_c); ++ci) {
                    for (int ky = 0; ky < kernel; ++ky) {
                        for (int kx = 0; kx < kernel; ++kx) {
                            const int iy = oy * stride + ky - padding, ix = ox * stride + kx - padding;
                            if (iy < 0 || iy >= in_h || ix < 0 || ix >= in_w) continue;
                            const int8_t w = depthwise ? weight[(co * kernel + ky) * kernel + kx]
                                                       : weight[((co * in_c + ci) * kernel + ky) * kernel + kx];
                            acc += ((int32_t)in[(ci * in_h + iy) * in_w + ix] - in_zp) * w;
                        }
                    }
                }
                out[(co * out_h + oy) * out_w + ox] = ml_requantize_s8(acc, multiplier[co], shift, out_zp, low);
            }
        }
    }
}

static void test_convolutions_s8_match_the_obvious_loop(void)
{
    static int8_t in[MAX_VALUES], weight[MAX_VALUES], fast[MAX_VALUES], slow[MAX_VALUES];
    static int32_t bias[64];
    static int16_t multiplier[64];
    /* 40 wide rows cross the kernels' 32-value chunks */
    const int cases[][6] = {{28, 1, 8, 3, 1, 1}, {28, 8, 8, 1, 1, 0}, {7, 3, 5, 3, 2, 1}, {9, 2, 3, 3, 2, 0},
                            {5, 4, 2, 3, 1, 2}, {40, 2, 2, 3, 1, 1}, {40, 3, 4, 1, 1, 0}, {6, 2, 2, 1, 2, 0}};
    for (size_t n = 0; n < sizeof cases / sizeof cases[0]; ++n) {
        const int size = cases[n][0], in_c = cases[n][1], out_c = cases[n][2], k = cases[n][3], s = cases[n][4],
                  p = cases[n][5];
        const int out_size = (size + 2 * p - k) / s + 1;
        const int32_t in_zp = (int32_t)(next_random() % 256u) - 128, out_zp = (int32_t)(next_random() % 64u) - 32;
        const int32_t low = n % 2 ? out_zp : -128;
        for (int i = 0; i < in_c * size * size; ++i) in[i] = random_int8();
        for (int i = 0; i < out_c * in_c * k * k; ++i) weight[i] = random_int8();
        for (int i = 0; i < out_c; ++i) {
            bias[i] = (int32_t)(next_random() % 20001u) - 10000;
            multiplier[i] = (int16_t)(next_random() % 32768u);
        }
        ml_conv2d_s8(in, size, size, in_c, in_zp, fast, out_size, out_size, out_c, k, s, p, weight, bias, multiplier,
                     20, out_zp, low);
        naive_conv2d_s8(in, size, size, in_c, in_zp, slow, out_size, out_size, out_c, k, s, p, weight, bias,
                        multiplier, 20, out_zp, low, 0);
        CHECK(memcmp(fast, slow, (size_t)(out_c * out_size * out_size)) == 0);
        ml_depthwise_conv2d_s8(in, size, size, in_c, in_zp, fast, out_size, out_size, k, s, p, weight, bias,
                               multiplier, 20, out_zp, low);
        naive_conv2d_s8(in, size, size, in_c, in_zp, slow, out_size, out_size, in_c, k, s, p, weight, bias,
                        multiplier, 20, out_zp, low, 1);
        CHECK(memcmp(fast, slow, (size_t)(in_c * out_size * out_size)) == 0);
    }
}

static void test_small_int8_kernels_by_hand(void)
{
    /* GAP: plane sums (q - zp) = (1+2+3+4) - 4 * (-2) = 18 and -4; multiplier 1 / 2^2: 4.5 -> 5 and -1 */
    const int8_t planes[8] = {1, 2, 3, 4, -3, -3, -3, -3};
    int8_t means[2];
    ml_global_average_pool_s8(planes, 2, 4, -2, means, 1, 2, 0);
    CHECK(means[0] == 5 && means[1] == -1);
    /* dense 2 -> 2 with input zero point 1: acc = bias + (in - 1) . w */
    const int8_t in[2] = {3, -1}, weight[4] = {1, 2, -3, 4};
    const int32_t bias[2] = {10, 0};
    const int16_t multiplier[2] = {1, 1};
    int8_t out[2];
    ml_dense_s8(in, 2, 1, out, 2, weight, bias, multiplier, 1, 0, -128);
    CHECK(out[0] == 4 && out[1] == -7); /* (10 + 2 - 4) / 2 = 4; (-6 - 8) / 2 = -7 */
}

/* --------------------------------------------------------------------------------------------- serial */
static uint32_t fake_clock = 0;
static uint32_t clock_us(void) { return fake_clock += 1250u; } /* each call: 1.25 ms later */

static void test_serial_reply_format_rounds(void)
{
    char reply[ML_REPLY_MAX];
    ml_serial_format_reply(reply, 7, 12345u, 0.98765f);
    CHECK(strcmp(reply, "PRED 7 0.0123 0.9877") == 0);
    ml_serial_format_reply(reply, 0, 150u, 0.00004f); /* 1.5 ten-thousandths of a second round up */
    CHECK(strcmp(reply, "PRED 0 0.0002 0.0000") == 0);
    ml_serial_format_reply(reply, 9, 149u, 2.0f); /* 1.49 rounds down; a confidence above 1 is clamped */
    CHECK(strcmp(reply, "PRED 9 0.0001 1.0000") == 0);
    ml_serial_format_reply(reply, 1, 3000000000u, -1.0f);
    CHECK(strcmp(reply, "PRED 1 3000.0000 0.0000") == 0);
}

static void test_serial_state_machine(void)
{
    ml_serial_link link;
    char reply[ML_REPLY_MAX];
    ml_serial_start(&link, 1000u);
    CHECK(ml_serial_tick(&link, 1000u + ML_TIMEOUT_MS - 1u) == ML_SERIAL_NOTHING);
    CHECK(ml_serial_tick(&link, 1000u + ML_TIMEOUT_MS) == ML_SERIAL_SEND_READY); /* idle: READY again */
    /* an image whose bytes keep arriving, each within the timeout of the last, is never dropped */
    uint32_t now = 1000u + ML_TIMEOUT_MS;
    for (int i = 0; i < ML_IMAGE_BYTES - 1; ++i) {
        now += ML_TIMEOUT_MS / 2u;
        CHECK(ml_serial_tick(&link, now) == ML_SERIAL_NOTHING);
        CHECK(ml_serial_receive(&link, (uint8_t)i, now) == ML_SERIAL_NOTHING);
    }
    CHECK(ml_serial_receive(&link, 0u, now) == ML_SERIAL_IMAGE_COMPLETE);
    ml_serial_classify(&link, clock_us, reply);
    CHECK(predictions == 1 && strcmp(reply, "PRED 3 0.0013 0.2500") == 0);
    /* a partial image followed by silence is dropped: the next byte starts a new image */
    CHECK(ml_serial_receive(&link, 1u, now) == ML_SERIAL_NOTHING);
    CHECK(ml_serial_tick(&link, now + ML_TIMEOUT_MS) == ML_SERIAL_SEND_READY && link.received == 0);
    /* the millisecond clock wraps around 2^32 without a spurious timeout */
    ml_serial_start(&link, 0xFFFFFFF0u);
    CHECK(ml_serial_tick(&link, 0x00000010u) == ML_SERIAL_NOTHING);
}

int main(void)
{
    test_inside_outputs();
    test_conv2d_f32_by_hand();
    test_convolutions_f32_match_the_obvious_loop();
    test_small_float_kernels_by_hand();
    test_requantize_rounds_half_up_and_clamps();
    test_convolutions_s8_match_the_obvious_loop();
    test_small_int8_kernels_by_hand();
    test_serial_reply_format_rounds();
    test_serial_state_machine();
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
