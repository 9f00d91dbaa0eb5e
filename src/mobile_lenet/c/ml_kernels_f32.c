/* ml_kernels_f32.c - the float32 layer kernels (see ml_kernels_f32.h).
 *
 * Why the convolutions look like this: the obvious loop (for each output value, for each tap, skip the taps
 * on the zero padding) tests the padding bounds in the innermost loop and walks the input with a stride, so
 * the compiler cannot vectorize it. Here each tap (ci, ky, kx) is instead applied to a whole output plane:
 * out += weight * (input shifted by the tap), over the outputs whose input is inside the map (the others
 * would read zero padding, which adds nothing). The padding test is done once per tap, and the inner loop
 * is a plain "y += a * x" over a row that the compiler turns into SIMD code. The taps are added in the same
 * order (ci, ky, kx) as in the obvious loop, so every output is the same float32 sum, bit for bit.
 * restrict: the memory planner never gives a layer overlapping input and output buffers. */
#include "ml_kernels_f32.h"

/* The floating-point contract: every product is rounded to float32 before it is added, as in the reference
 * engine, so no multiply-add may be fused into an FMA (which rounds once). C99's pragma says so; GCC ignores
 * it (and by default, in its GNU modes, fuses on targets with an FMA, e.g. the Cortex-M4F), so GCC gets its
 * own pragma. The build files also pass -ffp-contract=off. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#else
#pragma STDC FP_CONTRACT OFF
#endif

#include <math.h>
#include <stddef.h>

#include "ml_flash.h"
#include "ml_padding.h"

/* One tap on one plane: out[oy][ox] += weight * in[oy * stride + ky - padding][ox * stride + kx - padding]
 * for every output whose input is inside the in_h x in_w map. */
static void accumulate_tap(const float *restrict in, int in_h, int in_w, float *restrict out, int out_h, int out_w,
                           int stride, int padding, int ky, int kx, float weight)
{
    int y_first, y_end, x_first, x_end;
    ml_inside_outputs(ky, padding, stride, in_h, out_h, &y_first, &y_end);
    ml_inside_outputs(kx, padding, stride, in_w, out_w, &x_first, &x_end);
    for (int oy = y_first; oy < y_end; ++oy) {
        const float *in_row = in + (oy * stride + ky - padding) * in_w;
        float *out_row = out + oy * out_w;
        const int offset = kx - padding;
        if (stride == 1) {
            for (int ox = x_first; ox < x_end; ++ox) out_row[ox] += weight * in_row[ox + offset];
        } else {
            for (int ox = x_first; ox < x_end; ++ox) out_row[ox] += weight * in_row[ox * stride + offset];
        }
    }
}

/* A 1x1 convolution (pointwise, no padding) is the common case: one "plane += weight * plane" over the
 * contiguous planes per (out channel, in channel). */
void ml_conv2d_f32(const float *restrict in, int in_h, int in_w, int in_c, float *restrict out, int out_h, int out_w,
                   int out_c, int kernel, int stride, int padding, const float *restrict weight,
                   const float *restrict bias)
{
    const int plane = out_h * out_w;
    const int pointwise = kernel == 1 && stride == 1 && padding == 0 && in_h == out_h && in_w == out_w;
    for (int co = 0; co < out_c; ++co) {
        float *out_plane = out + co * plane;
        for (int i = 0; i < plane; ++i) out_plane[i] = 0.0f;
        for (int ci = 0; ci < in_c; ++ci) {
            const float *in_plane = in + ci * in_h * in_w;
            const float *taps = weight + (co * in_c + ci) * kernel * kernel;
            if (pointwise) {
                const float w = ML_FLASH_F32(&taps[0]);
                for (int i = 0; i < plane; ++i) out_plane[i] += w * in_plane[i];
                continue;
            }
            for (int ky = 0; ky < kernel; ++ky) {
                for (int kx = 0; kx < kernel; ++kx) {
                    accumulate_tap(in_plane, in_h, in_w, out_plane, out_h, out_w, stride, padding, ky, kx,
                                   ML_FLASH_F32(&taps[ky * kernel + kx]));
                }
            }
        }
        if (bias != NULL) {
            const float b = ML_FLASH_F32(&bias[co]);
            for (int i = 0; i < plane; ++i) out_plane[i] += b;
        }
    }
}

void ml_depthwise_conv2d_f32(const float *restrict in, int in_h, int in_w, int channels, float *restrict out,
                             int out_h, int out_w, int kernel, int stride, int padding, const float *restrict weight)
{
    const int plane = out_h * out_w;
    for (int c = 0; c < channels; ++c) {
        float *out_plane = out + c * plane;
        for (int i = 0; i < plane; ++i) out_plane[i] = 0.0f;
        for (int ky = 0; ky < kernel; ++ky) {
            for (int kx = 0; kx < kernel; ++kx) {
                accumulate_tap(in + c * in_h * in_w, in_h, in_w, out_plane, out_h, out_w, stride, padding, ky, kx,
                               ML_FLASH_F32(&weight[(c * kernel + ky) * kernel + kx]));
            }
        }
    }
}

/* The square root is taken once per channel (the same value for every element of the plane); the division
 * stays a division, as in the reference, so the results are the same float32 numbers. */
void ml_batch_norm_f32(float *x, int channels, int plane, const float *params, float epsilon)
{
    const float *gamma = params, *beta = params + channels;
    const float *mean = params + 2 * channels, *variance = params + 3 * channels;
    for (int c = 0; c < channels; ++c) {
        const float g = ML_FLASH_F32(&gamma[c]), b = ML_FLASH_F32(&beta[c]), m = ML_FLASH_F32(&mean[c]);
        const float deviation = sqrtf(ML_FLASH_F32(&variance[c]) + epsilon);
        float *x_plane = x + c * plane;
        for (int i = 0; i < plane; ++i) x_plane[i] = g * (x_plane[i] - m) / deviation + b;
    }
}

/* Written as a select, not "if (x[i] < 0) x[i] = 0": a store under a condition keeps the compiler from
 * vectorizing the loop, a select stores every element and becomes SIMD code. */
void ml_relu_f32(float *x, int count)
{
    for (int i = 0; i < count; ++i) x[i] = x[i] < 0.0f ? 0.0f : x[i];
}

void ml_global_average_pool_f32(const float *in, int channels, int plane, float *out)
{
    for (int c = 0; c < channels; ++c) {
        float sum = 0.0f;
        for (int i = 0; i < plane; ++i) sum += in[c * plane + i];
        out[c] = sum / (float)plane;
    }
}

void ml_dense_f32(const float *in, int in_size, float *out, int out_size, const float *weight, const float *bias)
{
    for (int o = 0; o < out_size; ++o) {
        float sum = 0.0f;
        for (int i = 0; i < in_size; ++i) sum += ML_FLASH_F32(&weight[o * in_size + i]) * in[i];
        out[o] = sum + ML_FLASH_F32(&bias[o]);
    }
}
