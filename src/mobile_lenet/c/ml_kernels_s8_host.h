/* ml_kernels_s8_host.h - the int8 fast path for computers (x86 hosts): not the microcontroller library.
 *
 * What `mobile-lenet export --format c --int8` writes and what the firmware runs are ml_kernels_s8.h's kernels
 * (CHW). These are an opt-in host variant (codegen.c_int8.generate_host_fast_sources), bit for bit the NumPy
 * int8 engine: the same integer sums and requantization, computed another way.
 *
 * Values: an activation q (int8) is stored as the byte u = q + 128, so that sums of u * w (unsigned bytes
 * times int8 weights) are what VPDPBUSD forms; the generator folds -(in_zp + 128) * sum of the weights into
 * each bias, so an output's sum is bias_u + sum of u * w over every tap. Zero padding is real: a padded map
 * stores a border of bytes in_zp + 128 (real value 0) that the kernels never write, so every output is an
 * interior one.
 *
 * Layout "HCW": for each row y, each channel's row of w bytes in turn (map[y][c][x]); `rs` is the stride of a
 * row y, `cs` that of a channel row. Eight neighbouring pixels of one channel are eight adjacent bytes: the
 * 3x3 kernels take, per kernel row, one 16-byte load and one byte shuffle to give each of eight output pixels
 * its three taps (and a zero-weighted fourth), and the 1x1 kernels interleave four channel rows into the
 * four-byte groups of eight pixels.
 *
 * Requantization (ml_s8h_rq, one per output channel, computed by the generator): the sum of u * w clamped to
 * [lo, hi], then (sum * mult + round) >> shift in 32-bit arithmetic (modulo 2^32) is exactly the NumPy engine's
 * output plus 128 (round = 2^(shift-1) + zp * 2^shift + bias * mult with zp = out_zp + 128: the vector loops never
 * add the bias, the portable ones and ml_s8h_requantize do), eight outputs at a time. The convolutions'
 * `clamp` argument may be 0 only where no sum the layer can form makes sum * mult + round leave int32 and every
 * low is 0 (q = -128): then saturating to [0, 255] is the whole clamp (the generator checks this per layer).
 *
 * With AVX2 (e.g. -march=native on a recent x86) the loops are AVX2 intrinsics, with VPDPBUSD where the
 * compiler targets AVX512-VNNI + AVX512VL or AVX-VNNI; otherwise (or with -DML_S8_HOST_PORTABLE) plain C99.
 * Kernels read up to ML_S8H_SLACK bytes past a map's last byte: buffers carry that much slack. */
#ifndef ML_KERNELS_S8_HOST_H
#define ML_KERNELS_S8_HOST_H

#include <stdint.h>

#define ML_S8H_SLACK 32
#define ML_S8H_MAX_IN_CHANNELS 64 /* of a 1x1 convolution (its groups of four, in registers) */

typedef struct {
    int32_t lo, hi;   /* sums of u * w (the bias not included) <= lo give low, >= hi give 255 (q = 127) */
    int32_t mult;     /* the int16 multiplier (> 0) */
    int32_t round;    /* 2^(shift-1) + zp * 2^shift + bias * mult, modulo 2^32 (the bias folded in) */
    int32_t zp, low;  /* output zero point and lower clamp, as bytes u = q + 128 */
} ml_s8h_rq;

/* The input image as bytes u = q + 128 = pixel inside a padded one-channel map of (h + 2) x (w + 2) bytes (its
 * border, 0, is q = -128: the input zero point). */
void ml_s8h_input(const uint8_t *image, int h, int w, uint8_t *padded);

/* bytes bytes of map set to value (a padded map's border: its zero point as a byte u, once) */
void ml_s8h_fill(uint8_t *map, unsigned long bytes, int value);

/* u = zp + floor((acc * mult + 2^(shift-1)) / 2^shift) clamped to [low, 255]: the reference's requantization
 * (quantization.arithmetic.requantize) in bytes u = q + 128, with 64-bit products. */
uint8_t ml_s8h_requantize(int32_t acc, const ml_s8h_rq *rq, int shift);

/* 3x3 convolution, stride 1, of a padded one-channel map (row stride in_rs, read from its corner) into out_c
 * channels: out[oy][co][ox] = requantize(bias[co] + sum over ky, kx of in[oy + ky][ox + kx] * w[co][ky][kx]);
 * weight is [out_c][3][4] (kx = 0..2, then a 0). */
void ml_s8h_conv3x3_c1(const uint8_t *in, int in_rs, uint8_t *out, int out_rs, int out_cs, int out_h, int out_w,
                       int out_c, const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq, int shift, int clamp);

/* 3x3 depthwise convolution, stride 1 or 2, of a padded HCW map (read from its corner):
 * out[oy][ch][ox] = requantize(bias[ch] + sum over ky, kx of in[oy * stride + ky][ch][ox * stride + kx]
 * * w[ch][ky][kx]); weight is [c][3][4]. */
void ml_s8h_depthwise3x3(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out, int out_rs,
                         int out_cs, int out_h, int out_w, const int8_t *weight, const int32_t *bias,
                         const ml_s8h_rq *rq, int shift, int clamp);

/* 1x1 convolution of an HCW map: out[y][co][x] = requantize(bias[co] + sum over ci of in[y][ci][x] * w[co][ci]);
 * weight is [out_c][in_c], in_c a multiple of 4 and at most ML_S8H_MAX_IN_CHANNELS. */
void ml_s8h_pointwise(const uint8_t *in, int in_rs, int in_cs, int in_c, uint8_t *out, int out_rs, int out_cs,
                      int h, int w, int out_c, const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq,
                      int shift, int clamp);

/* The quad layout, between a depthwise and a 1x1 convolution: for each row y, each group of four channels, each
 * pixel x, the four channels' bytes (map[y][c / 4][x][c % 4]); `gs` is the stride of a group, at least 4 * 8
 * bytes (the depthwise one writes eight pixels at a time). The 1x1 convolution then reads four channels of eight
 * pixels with one load. c and in_c multiples of 4. */
void ml_s8h_depthwise3x3_quads(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out, int out_rs,
                               int out_gs, int out_h, int out_w, const int8_t *weight, const int32_t *bias,
                               const ml_s8h_rq *rq, int shift, int clamp);
void ml_s8h_pointwise_quads(const uint8_t *in, int in_rs, int in_gs, int in_c, uint8_t *out, int out_rs, int out_cs,
                            int h, int w, int out_c, const int8_t *weight, const int32_t *bias, const ml_s8h_rq *rq,
                            int shift, int clamp);
void ml_s8h_depthwise3x3_quads_portable(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out,
                                        int out_rs, int out_gs, int out_h, int out_w, const int8_t *weight,
                                        const int32_t *bias, const ml_s8h_rq *rq, int shift);
void ml_s8h_pointwise_quads_portable(const uint8_t *in, int in_rs, int in_gs, int in_c, uint8_t *out, int out_rs,
                                     int out_cs, int h, int w, int out_c, const int8_t *weight, const int32_t *bias,
                                     const ml_s8h_rq *rq, int shift);

/* The plain C99 loops of the three convolutions (what the AVX2 ones must match bit for bit). */
void ml_s8h_conv3x3_c1_portable(const uint8_t *in, int in_rs, uint8_t *out, int out_rs, int out_cs, int out_h,
                                int out_w, int out_c, const int8_t *weight, const int32_t *bias,
                                const ml_s8h_rq *rq, int shift);
void ml_s8h_depthwise3x3_portable(const uint8_t *in, int in_rs, int in_cs, int c, int stride, uint8_t *out,
                                  int out_rs, int out_cs, int out_h, int out_w, const int8_t *weight,
                                  const int32_t *bias, const ml_s8h_rq *rq, int shift);
void ml_s8h_pointwise_portable(const uint8_t *in, int in_rs, int in_cs, int in_c, uint8_t *out, int out_rs,
                               int out_cs, int h, int w, int out_c, const int8_t *weight, const int32_t *bias,
                               const ml_s8h_rq *rq, int shift);

/* Global average pooling of an HCW map into c int8 values: the sum of q - in_zp over the plane, requantized
 * with one multiplier (the 1 / plane included), lower clamp low (int8 units). */
void ml_s8h_global_average_pool(const uint8_t *in, int rs, int cs, int h, int w, int c, int32_t in_zp,
                                int8_t *out, int16_t multiplier, int shift, int32_t out_zp, int32_t low);

/* Dense: out[o] = requantize(bias[o] + sum over i of (in[i] - in_zp) * weight[o][i]) with multiplier[o]. */
void ml_s8h_dense(const int8_t *in, int in_size, int32_t in_zp, int8_t *out, int out_size, const int8_t *weight,
                  const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp, int32_t low);

#endif /* ML_KERNELS_S8_HOST_H */
