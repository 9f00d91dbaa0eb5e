/* ml_kernels_s8.h - the int8 layer kernels of the quantized Mobile-LeNet (integers only).
 *
 * A tensor's real value is scale * (q - zero_point) with q an int8 (see the Python module
 * mobile_lenet.quantization.quantize). Each layer sums (q_in - in_zp) * q_weight in int32 on top of an int32
 * bias (BatchNorm is folded into the weights and biases), then requantizes the sum to int8 with
 * ml_requantize_s8. Tensors are CHW. Every kernel gives exactly the integers of the NumPy int8 engine. */
#ifndef ML_KERNELS_S8_H
#define ML_KERNELS_S8_H

#include <stdint.h>

/* zero_point + round(acc * multiplier / 2^shift), rounding half up, clamped to [low, 127] (shift >= 1).
 * low is -128, or the output zero point when a ReLU is fused (the real 0). */
int8_t ml_requantize_s8(int32_t acc, int16_t multiplier, int shift, int32_t zero_point, int32_t low);

/* Convolution: acc[co] = bias[co] + sum over ci, ky, kx of (in - in_zp) * weight[co][ci][ky][kx], requantized
 * with multiplier[co]. Taps on the zero padding (real value 0) add nothing. in and out must not overlap. */
void ml_conv2d_s8(const int8_t *in, int in_h, int in_w, int in_c, int32_t in_zp,
                  int8_t *out, int out_h, int out_w, int out_c, int kernel, int stride, int padding,
                  const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp,
                  int32_t low);

/* Depthwise convolution (depth multiplier 1): channel c is filtered by weight[c][ky][kx] only. */
void ml_depthwise_conv2d_s8(const int8_t *in, int in_h, int in_w, int channels, int32_t in_zp,
                            int8_t *out, int out_h, int out_w, int kernel, int stride, int padding,
                            const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift,
                            int32_t out_zp, int32_t low);

/* The reference versions of the two convolutions (ml_kernels_s8.c): the plain loops the optimized kernels
 * above (ml_kernels_s8_fast.c) must match bit for bit, and what they fall back to for shapes they do not cover.
 * Built with -DML_S8_REFERENCE, the public names are these. */
void ml_conv2d_s8_ref(const int8_t *in, int in_h, int in_w, int in_c, int32_t in_zp,
                      int8_t *out, int out_h, int out_w, int out_c, int kernel, int stride, int padding,
                      const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift,
                      int32_t out_zp, int32_t low);
void ml_depthwise_conv2d_s8_ref(const int8_t *in, int in_h, int in_w, int channels, int32_t in_zp,
                                int8_t *out, int out_h, int out_w, int kernel, int stride, int padding,
                                const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift,
                                int32_t out_zp, int32_t low);

/* Global average pooling: the int32 sum of (in - in_zp) over the plane, requantized with a multiplier that
 * includes the 1 / plane of the mean. out must not overlap in. */
void ml_global_average_pool_s8(const int8_t *in, int channels, int plane, int32_t in_zp,
                               int8_t *out, int16_t multiplier, int shift, int32_t out_zp);

/* Dense: acc[o] = bias[o] + sum over i of (in[i] - in_zp) * weight[o][i], requantized per output. */
void ml_dense_s8(const int8_t *in, int in_size, int32_t in_zp, int8_t *out, int out_size,
                 const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp,
                 int32_t low);

#endif /* ML_KERNELS_S8_H */
