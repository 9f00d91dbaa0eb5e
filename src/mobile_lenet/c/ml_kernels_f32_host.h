/* ml_kernels_f32_host.h - the float32 fast path for computers (x86 hosts): not the microcontroller library.
 *
 * What `mobile-lenet export --format c` writes and what the firmware runs are the Noodle-semantics kernels
 * (ml_kernels_f32.h, bit for bit the NumPy reference). These kernels are an opt-in host variant
 * (codegen.c_float.generate_host_fast_sources): BatchNorm folded into the convolutions' weights and biases
 * (at generation time), ReLU fused, fused multiply-adds, tensors in HWC order with the channels innermost
 * (8, 16 or 24 here: whole 8-float AVX vectors) and zero-padded borders stored in the buffers. Rounding
 * differs from the reference's (a test holds it to the same predictions on all 10,000 MNIST test images and
 * |probability difference| <= 1e-5).
 *
 * With AVX2 and FMA (e.g. -march=native on a recent x86) the loops are AVX intrinsics when the channel counts
 * are multiples of 8; otherwise (or with -DML_F32_HOST_PORTABLE) they are plain C99.
 *
 * Layouts: an HWC map with row stride `rs` floats (pixels of `c` floats each). A "padded" map is stored with
 * one zero row and column on every side; the 3x3 kernels read such a map and start at its corner. */
#ifndef ML_KERNELS_F32_HOST_H
#define ML_KERNELS_F32_HOST_H

#include <stdint.h>

/* The input image as x = pixel / 255 (as the reference) inside a padded one-channel map of (h + 2) x (w + 2)
 * floats whose border is zero. */
void ml_f32h_input(const uint8_t *image, int h, int w, float *padded);

/* 3x3 convolution of a one-channel padded map (row stride in_rs) into out_c channels, bias, ReLU:
 * out[oy][ox][co] = max(0, bias[co] + sum over ky, kx of in[oy + ky][ox + kx] * weight[ky * 3 + kx][co]). */
void ml_f32h_conv3x3_c1_relu(const float *in, int in_rs, float *out, int out_h, int out_w, int out_rs, int out_c,
                             const float *weight, const float *bias);

/* 3x3 depthwise convolution of a padded HWC map (c channels, row stride in_rs), stride 1 or 2, bias, ReLU:
 * out[oy][ox][ch] = max(0, bias[ch] + sum over ky, kx of in[oy * stride + ky][ox * stride + kx][ch]
 * * weight[ky * 3 + kx][ch]). */
void ml_f32h_depthwise3x3_relu(const float *in, int in_rs, int c, float *out, int out_h, int out_w, int out_rs,
                               int stride, const float *weight, const float *bias);

/* 1x1 convolution of a dense HWC map (h * w pixels of in_c floats) into out_c channels, bias, ReLU:
 * out[y][x][co] = max(0, bias[co] + sum over ci of in[y][x][ci] * weight[ci][co]) with row stride out_rs. */
void ml_f32h_pointwise_relu(const float *in, int h, int w, int in_c, float *out, int out_rs, int out_c,
                            const float *weight, const float *bias);

/* Global average pooling of a dense HWC map (plane pixels of c floats) and the dense layer:
 * logits[o] = bias[o] + sum over i of weight[o][i] * mean(in[.][i]). */
void ml_f32h_pool_dense(const float *in, int plane, int c, float *logits, int out_size, const float *weight,
                        const float *bias);

#endif /* ML_KERNELS_F32_HOST_H */
