/* ml_kernels_f32.h - the float32 layer kernels of Mobile-LeNet (Noodle semantics, see NOODLE_FORMAT.md).
 *
 * Tensors are CHW, float32. Every kernel computes the same float32 numbers as the NumPy reference engine,
 * operation for operation: build with -ffp-contract=off so that no multiply-add is fused. */
#ifndef ML_KERNELS_F32_H
#define ML_KERNELS_F32_H

#include <stddef.h> /* NULL: a convolution without a bias (the generated calls pass it) */

/* Convolution: out[co][oy][ox] = bias[co] + sum over ci, ky, kx (in that order, from 0) of
 * in[ci][oy * stride - padding + ky][ox * stride - padding + kx] * weight[co][ci][ky][kx].
 * Taps on the zero padding contribute nothing. bias may be NULL. in and out must not overlap. */
void ml_conv2d_f32(const float *in, int in_h, int in_w, int in_c, float *out, int out_h, int out_w, int out_c,
                   int kernel, int stride, int padding, const float *weight, const float *bias);

/* Depthwise convolution (depth multiplier 1, no bias): channel c is filtered by weight[c][ky][kx] only. */
void ml_depthwise_conv2d_f32(const float *in, int in_h, int in_w, int channels, float *out, int out_h, int out_w,
                             int kernel, int stride, int padding, const float *weight);

/* Inference BatchNorm, in place: x = gamma * (x - mean) / sqrtf(variance + epsilon) + beta per channel.
 * params: gamma[channels], beta[channels], mean[channels], variance[channels] (a Noodle bn file). */
void ml_batch_norm_f32(float *x, int channels, int plane, const float *params, float epsilon);

/* ReLU, in place. */
void ml_relu_f32(float *x, int count);

/* Global average pooling: out[c] = mean of in[c][.][.]. out must not overlap in (upstream Noodle's bug). */
void ml_global_average_pool_f32(const float *in, int channels, int plane, float *out);

/* Dense: out[o] = bias[o] + sum over i of weight[o][i] * in[i]. */
void ml_dense_f32(const float *in, int in_size, float *out, int out_size, const float *weight, const float *bias);

#endif /* ML_KERNELS_F32_H */
