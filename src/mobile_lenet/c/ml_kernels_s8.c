/* ml_kernels_s8.c - the int8 layer kernels (see ml_kernels_s8.h): the reference (contract) versions of the
 * convolutions, ml_conv2d_s8_ref and ml_depthwise_conv2d_s8_ref (the public ml_conv2d_s8 and
 * ml_depthwise_conv2d_s8 are the optimized ones of ml_kernels_s8_fast.c, bit for bit the same), and the only
 * versions of requantization, global average pooling and dense.
 *
 * Why the convolutions look like this: the obvious loop (for each output value, for each tap, skip the taps
 * on the zero padding) tests the padding bounds in its innermost loop and reads the input with a stride, so
 * the compiler cannot vectorize it. Here a run of up to ROW_CHUNK outputs of one row is accumulated in a small
 * local int32 array, one tap (ci, ky, kx) at a time: acc[i] += (in - in_zp) * weight over the outputs whose
 * input is inside the map (the padding taps, real value 0, are skipped once per tap, not per value). The inner
 * loop is then a plain "y += a * x" that becomes SIMD code. Integer sums do not depend on the order: the
 * results are the NumPy engine's, bit for bit. The array lives on the stack (ROW_CHUNK * 4 bytes). */
#include "ml_kernels_s8.h"

#include "ml_flash.h"
#include "ml_padding.h"

#define ROW_CHUNK 32

/* The product needs up to 47 bits, hence int64. Right-shifting a negative number is implementation-defined
 * in C99; GCC and Clang (and the ESP32's GCC) shift arithmetically, i.e. divide rounding toward -infinity,
 * which with the added half gives round-half-up, the rule of the NumPy engine. */
int8_t ml_requantize_s8(int32_t acc, int16_t multiplier, int shift, int32_t zero_point, int32_t low)
{
    int64_t value = ((int64_t)acc * multiplier + ((int64_t)1 << (shift - 1))) >> shift;
    value += zero_point;
    if (value < low) value = low;
    if (value > 127) value = 127;
    return (int8_t)value;
}

/* acc[i] += sum over ky, kx of (in[oy * stride + ky - padding][ox * stride + kx - padding] - in_zp)
 * * taps[ky][kx], for the outputs ox = ox_begin + i, i < count, of row oy (a kernel x kernel filter on one
 * in_h x in_w plane; taps outside the plane are zero padding and add nothing). */
static void accumulate_row(const int8_t *restrict in, int in_h, int in_w, int32_t in_zp, int out_w,
                           const int8_t *restrict taps, int kernel, int stride, int padding,
                           int oy, int ox_begin, int count, int32_t *restrict acc)
{
    for (int ky = 0; ky < kernel; ++ky) {
        const int iy = oy * stride + ky - padding;
        if (iy < 0 || iy >= in_h) continue;
        for (int kx = 0; kx < kernel; ++kx) {
            const int8_t *in_row = in + iy * in_w;
            const int32_t w = ML_FLASH_S8(&taps[ky * kernel + kx]), offset = kx - padding;
            int first, end;
            ml_inside_outputs(kx, padding, stride, in_w, out_w, &first, &end);
            if (first < ox_begin) first = ox_begin;
            if (end > ox_begin + count) end = ox_begin + count;
            for (int ox = first; ox < end; ++ox) {
                acc[ox - ox_begin] += ((int32_t)in_row[ox * stride + offset] - in_zp) * w;
            }
        }
    }
}

/* A 1x1 convolution (pointwise, no padding) sums contiguous runs of the input planes directly. */
void ml_conv2d_s8_ref(const int8_t *restrict in, int in_h, int in_w, int in_c, int32_t in_zp,
                      int8_t *restrict out, int out_h, int out_w, int out_c, int kernel, int stride, int padding,
                      const int8_t *restrict weight, const int32_t *restrict bias, const int16_t *restrict multiplier,
                      int shift, int32_t out_zp, int32_t low)
{
    const int plane = out_h * out_w, in_plane = in_h * in_w;
    const int pointwise = kernel == 1 && stride == 1 && padding == 0 && in_h == out_h && in_w == out_w;
    int32_t acc[ROW_CHUNK];
    for (int co = 0; co < out_c; ++co) {
        int8_t *out_plane = out + co * plane;
        const int32_t b = ML_FLASH_S32(&bias[co]);
        const int16_t m = ML_FLASH_S16(&multiplier[co]);
        if (pointwise) { /* the plane as one row: runs of ROW_CHUNK consecutive values */
            for (int begin = 0; begin < plane; begin += ROW_CHUNK) {
                const int count = plane - begin < ROW_CHUNK ? plane - begin : ROW_CHUNK;
                for (int i = 0; i < count; ++i) acc[i] = b;
                for (int ci = 0; ci < in_c; ++ci) {
                    const int8_t *run = in + ci * in_plane + begin;
                    const int32_t w = ML_FLASH_S8(&weight[co * in_c + ci]);
                    for (int i = 0; i < count; ++i) acc[i] += ((int32_t)run[i] - in_zp) * w;
                }
                for (int i = 0; i < count; ++i) {
                    out_plane[begin + i] = ml_requantize_s8(acc[i], m, shift, out_zp, low);
                }
            }
            continue;
        }
        for (int oy = 0; oy < out_h; ++oy) {
            for (int begin = 0; begin < out_w; begin += ROW_CHUNK) {
                const int count = out_w - begin < ROW_CHUNK ? out_w - begin : ROW_CHUNK;
                for (int i = 0; i < count; ++i) acc[i] = b;
                for (int ci = 0; ci < in_c; ++ci) {
                    accumulate_row(in + ci * in_plane, in_h, in_w, in_zp, out_w,
                                   weight + (co * in_c + ci) * kernel * kernel, kernel, stride, padding,
                                   oy, begin, count, acc);
                }
                for (int i = 0; i < count; ++i) {
                    out_plane[oy * out_w + begin + i] = ml_requantize_s8(acc[i], m, shift, out_zp, low);
                }
            }
        }
    }
}

void ml_depthwise_conv2d_s8_ref(const int8_t *restrict in, int in_h, int in_w, int channels, int32_t in_zp,
                                int8_t *restrict out, int out_h, int out_w, int kernel, int stride, int padding,
                                const int8_t *restrict weight, const int32_t *restrict bias,
                                const int16_t *restrict multiplier, int shift, int32_t out_zp, int32_t low)
{
    int32_t acc[ROW_CHUNK];
    for (int c = 0; c < channels; ++c) {
        const int32_t b = ML_FLASH_S32(&bias[c]);
        const int16_t m = ML_FLASH_S16(&multiplier[c]);
        for (int oy = 0; oy < out_h; ++oy) {
            for (int begin = 0; begin < out_w; begin += ROW_CHUNK) {
                const int count = out_w - begin < ROW_CHUNK ? out_w - begin : ROW_CHUNK;
                for (int i = 0; i < count; ++i) acc[i] = b;
                accumulate_row(in + c * in_h * in_w, in_h, in_w, in_zp, out_w, weight + c * kernel * kernel,
                               kernel, stride, padding, oy, begin, count, acc);
                for (int i = 0; i < count; ++i) {
                    out[(c * out_h + oy) * out_w + begin + i] =
                        ml_requantize_s8(acc[i], m, shift, out_zp, low);
                }
            }
        }
    }
}

void ml_global_average_pool_s8(const int8_t *in, int channels, int plane, int32_t in_zp,
                               int8_t *out, int16_t multiplier, int shift, int32_t out_zp)
{
    for (int c = 0; c < channels; ++c) {
        int32_t sum = 0;
        for (int i = 0; i < plane; ++i) sum += (int32_t)in[c * plane + i] - in_zp;
        out[c] = ml_requantize_s8(sum, multiplier, shift, out_zp, -128);
    }
}

void ml_dense_s8(const int8_t *in, int in_size, int32_t in_zp, int8_t *out, int out_size,
                 const int8_t *weight, const int32_t *bias, const int16_t *multiplier, int shift, int32_t out_zp,
                 int32_t low)
{
    for (int o = 0; o < out_size; ++o) {
        int32_t acc = ML_FLASH_S32(&bias[o]);
        for (int i = 0; i < in_size; ++i) acc += ((int32_t)in[i] - in_zp) * ML_FLASH_S8(&weight[o * in_size + i]);
        out[o] = ml_requantize_s8(acc, ML_FLASH_S16(&multiplier[o]), shift, out_zp, low);
    }
}
