/* ml_kernels_f32_host.c - the float32 fast path for computers (see ml_kernels_f32_host.h). Host only: the
 * microcontroller library is ml_kernels_f32.c, which this file does not replace.
 *
 * x86 with AVX2 and FMA (the compiler defines __AVX2__ and __FMA__, e.g. with -march=native): 8 channels per
 * vector, weights of a channel group held in registers, fused multiply-adds. Elsewhere, or with
 * -DML_F32_HOST_PORTABLE, the same loops in plain C99 (tests build both). */
#include "ml_kernels_f32_host.h"

#if defined(__AVX2__) && defined(__FMA__) && !defined(ML_F32_HOST_PORTABLE)
#define ML_F32H_AVX 1
#include <immintrin.h>
#else
#define ML_F32H_AVX 0
#endif

#if defined(__GNUC__)
#define ML_F32H_INLINE static inline __attribute__((always_inline))
#else
#define ML_F32H_INLINE static inline
#endif

#define ML_F32H_MAX_CHANNELS 64 /* per-pixel sums on the stack in the portable loops */

static float ml_f32h_relu(float x) { return x < 0.0f ? 0.0f : x; }

/* ------------------------------------------------------------------------------------------------ portable */
static void conv3x3_c1_portable(const float *in, int in_rs, float *out, int out_h, int out_w, int out_rs, int out_c,
                                const float *weight, const float *bias)
{
    for (int oy = 0; oy < out_h; ++oy) {
        for (int ox = 0; ox < out_w; ++ox) {
            float *o = out + oy * out_rs + ox * out_c;
            for (int co = 0; co < out_c; ++co) {
                float acc = bias[co];
                for (int k = 0; k < 9; ++k) acc += in[(oy + k / 3) * in_rs + ox + k % 3] * weight[k * out_c + co];
                o[co] = ml_f32h_relu(acc);
            }
        }
    }
}

static void depthwise3x3_portable(const float *in, int in_rs, int c, float *out, int out_h, int out_w, int out_rs,
                                  int stride, const float *weight, const float *bias)
{
    for (int oy = 0; oy < out_h; ++oy) {
        for (int ox = 0; ox < out_w; ++ox) {
            float *o = out + oy * out_rs + ox * c;
            const float *corner = in + oy * stride * in_rs + ox * stride * c;
            for (int ch = 0; ch < c; ++ch) {
                float acc = bias[ch];
                for (int k = 0; k < 9; ++k) acc += corner[(k / 3) * in_rs + (k % 3) * c + ch] * weight[k * c + ch];
                o[ch] = ml_f32h_relu(acc);
            }
        }
    }
}

static void pointwise_portable(const float *in, int h, int w, int in_c, float *out, int out_rs, int out_c,
                               const float *weight, const float *bias)
{
    float acc[ML_F32H_MAX_CHANNELS];
    for (int y = 0; y < h; ++y) {
        for (int x = 0; x < w; ++x) {
            const float *px = in + (y * w + x) * in_c;
            float *o = out + y * out_rs + x * out_c;
            for (int co = 0; co < out_c; ++co) acc[co] = bias[co];
            for (int ci = 0; ci < in_c; ++ci) {
                const float v = px[ci];
                for (int co = 0; co < out_c; ++co) acc[co] += v * weight[ci * out_c + co];
            }
            for (int co = 0; co < out_c; ++co) o[co] = ml_f32h_relu(acc[co]);
        }
    }
}

/* ------------------------------------------------------------------------------------------------ AVX2 + FMA */
#if ML_F32H_AVX
static void conv3x3_c1_avx(const float *in, int in_rs, float *out, int out_h, int out_w, int out_rs, int out_c,
                           const float *weight, const float *bias)
{
    const __m256 zero = _mm256_setzero_ps();
    for (int g = 0; g < out_c; g += 8) {
        __m256 wv[9];
        const __m256 b = _mm256_loadu_ps(bias + g);
        for (int k = 0; k < 9; ++k) wv[k] = _mm256_loadu_ps(weight + k * out_c + g);
        for (int oy = 0; oy < out_h; ++oy) {
            const float *r0 = in + oy * in_rs, *r1 = r0 + in_rs, *r2 = r1 + in_rs;
            float *o = out + oy * out_rs + g;
            for (int ox = 0; ox < out_w; ++ox, o += out_c) {
                __m256 acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r0 + ox), wv[0], b);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r0 + ox + 1), wv[1], acc);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r0 + ox + 2), wv[2], acc);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r1 + ox), wv[3], acc);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r1 + ox + 1), wv[4], acc);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r1 + ox + 2), wv[5], acc);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r2 + ox), wv[6], acc);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r2 + ox + 1), wv[7], acc);
                acc = _mm256_fmadd_ps(_mm256_broadcast_ss(r2 + ox + 2), wv[8], acc);
                _mm256_storeu_ps(o, _mm256_max_ps(acc, zero));
            }
        }
    }
}

ML_F32H_INLINE void depthwise3x3_avx_stride(const float *in, int in_rs, int c, float *out, int out_h, int out_w,
                                            int out_rs, const int stride, const float *weight, const float *bias)
{
    const __m256 zero = _mm256_setzero_ps();
    for (int g = 0; g < c; g += 8) {
        __m256 wv[9];
        const __m256 b = _mm256_loadu_ps(bias + g);
        for (int k = 0; k < 9; ++k) wv[k] = _mm256_loadu_ps(weight + k * c + g);
        for (int oy = 0; oy < out_h; ++oy) {
            const float *r0 = in + oy * stride * in_rs + g, *r1 = r0 + in_rs, *r2 = r1 + in_rs;
            float *o = out + oy * out_rs + g;
            for (int ox = 0; ox < out_w; ++ox, o += c) {
                const int x = ox * stride * c;
                __m256 acc = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + x), wv[0], b);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + x + c), wv[1], acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + x + 2 * c), wv[2], acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + x), wv[3], acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + x + c), wv[4], acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + x + 2 * c), wv[5], acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + x), wv[6], acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + x + c), wv[7], acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + x + 2 * c), wv[8], acc);
                _mm256_storeu_ps(o, _mm256_max_ps(acc, zero));
            }
        }
    }
}

/* groups = out_c / 8 output vectors per pixel, two pixels at a time (each weight vector loaded once for both) */
ML_F32H_INLINE void pointwise_avx_groups(const float *in, int h, int w, int in_c, float *out, int out_rs, int out_c,
                                         const float *weight, const float *bias, const int groups)
{
    const __m256 zero = _mm256_setzero_ps();
    const int plane = h * w;
    int p = 0;
    for (; p + 2 <= plane; p += 2) {
        const float *x0 = in + p * in_c, *x1 = x0 + in_c;
        float *o0 = out + (p / w) * out_rs + (p % w) * out_c;
        float *o1 = out + ((p + 1) / w) * out_rs + ((p + 1) % w) * out_c;
        __m256 a0[4], a1[4];
        for (int k = 0; k < groups; ++k) a0[k] = a1[k] = _mm256_loadu_ps(bias + 8 * k);
        for (int ci = 0; ci < in_c; ++ci) {
            const __m256 v0 = _mm256_broadcast_ss(x0 + ci), v1 = _mm256_broadcast_ss(x1 + ci);
            const float *wr = weight + ci * out_c;
            for (int k = 0; k < groups; ++k) {
                const __m256 wv = _mm256_loadu_ps(wr + 8 * k);
                a0[k] = _mm256_fmadd_ps(v0, wv, a0[k]);
                a1[k] = _mm256_fmadd_ps(v1, wv, a1[k]);
            }
        }
        for (int k = 0; k < groups; ++k) {
            _mm256_storeu_ps(o0 + 8 * k, _mm256_max_ps(a0[k], zero));
            _mm256_storeu_ps(o1 + 8 * k, _mm256_max_ps(a1[k], zero));
        }
    }
    if (p < plane) { /* an odd plane: its last pixel */
        const float *x0 = in + p * in_c;
        float *o0 = out + (p / w) * out_rs + (p % w) * out_c;
        __m256 a0[4];
        for (int k = 0; k < groups; ++k) a0[k] = _mm256_loadu_ps(bias + 8 * k);
        for (int ci = 0; ci < in_c; ++ci) {
            const __m256 v0 = _mm256_broadcast_ss(x0 + ci);
            for (int k = 0; k < groups; ++k) a0[k] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(weight + ci * out_c + 8 * k), a0[k]);
        }
        for (int k = 0; k < groups; ++k) _mm256_storeu_ps(o0 + 8 * k, _mm256_max_ps(a0[k], zero));
    }
}
#endif

/* ------------------------------------------------------------------------------------------------ public */
void ml_f32h_input(const uint8_t *image, int h, int w, float *padded)
{
    for (int y = 0; y < h; ++y) {
        for (int x = 0; x < w; ++x) padded[(y + 1) * (w + 2) + x + 1] = (float)image[y * w + x] / 255.0f;
    }
}

void ml_f32h_conv3x3_c1_relu(const float *in, int in_rs, float *out, int out_h, int out_w, int out_rs, int out_c,
                             const float *weight, const float *bias)
{
#if ML_F32H_AVX
    if (out_c % 8 == 0) {
        conv3x3_c1_avx(in, in_rs, out, out_h, out_w, out_rs, out_c, weight, bias);
        return;
    }
#endif
    conv3x3_c1_portable(in, in_rs, out, out_h, out_w, out_rs, out_c, weight, bias);
}

void ml_f32h_depthwise3x3_relu(const float *in, int in_rs, int c, float *out, int out_h, int out_w, int out_rs,
                               int stride, const float *weight, const float *bias)
{
#if ML_F32H_AVX
    if (c % 8 == 0 && stride == 1) {
        depthwise3x3_avx_stride(in, in_rs, c, out, out_h, out_w, out_rs, 1, weight, bias);
        return;
    }
    if (c % 8 == 0 && stride == 2) {
        depthwise3x3_avx_stride(in, in_rs, c, out, out_h, out_w, out_rs, 2, weight, bias);
        return;
    }
#endif
    depthwise3x3_portable(in, in_rs, c, out, out_h, out_w, out_rs, stride, weight, bias);
}

void ml_f32h_pointwise_relu(const float *in, int h, int w, int in_c, float *out, int out_rs, int out_c,
                            const float *weight, const float *bias)
{
#if ML_F32H_AVX
    switch (out_c) {
    case 8: pointwise_avx_groups(in, h, w, in_c, out, out_rs, out_c, weight, bias, 1); return;
    case 16: pointwise_avx_groups(in, h, w, in_c, out, out_rs, out_c, weight, bias, 2); return;
    case 24: pointwise_avx_groups(in, h, w, in_c, out, out_rs, out_c, weight, bias, 3); return;
    case 32: pointwise_avx_groups(in, h, w, in_c, out, out_rs, out_c, weight, bias, 4); return;
    default: break;
    }
#endif
    if (out_c <= ML_F32H_MAX_CHANNELS) {
        pointwise_portable(in, h, w, in_c, out, out_rs, out_c, weight, bias);
        return;
    }
    for (int y = 0; y < h; ++y) { /* many channels: no stack array */
        for (int x = 0; x < w; ++x) {
            for (int co = 0; co < out_c; ++co) {
                float acc = bias[co];
                for (int ci = 0; ci < in_c; ++ci) acc += in[(y * w + x) * in_c + ci] * weight[ci * out_c + co];
                out[y * out_rs + x * out_c + co] = ml_f32h_relu(acc);
            }
        }
    }
}

void ml_f32h_pool_dense(const float *in, int plane, int c, float *logits, int out_size, const float *weight,
                        const float *bias)
{
    float mean[ML_F32H_MAX_CHANNELS];
    const int n = c < ML_F32H_MAX_CHANNELS ? c : ML_F32H_MAX_CHANNELS;
    for (int i = 0; i < n; ++i) mean[i] = 0.0f;
    for (int p = 0; p < plane; ++p) {
        for (int i = 0; i < n; ++i) mean[i] += in[p * c + i];
    }
    for (int i = 0; i < n; ++i) mean[i] /= (float)plane;
    for (int o = 0; o < out_size; ++o) {
        float sum = 0.0f;
        for (int i = 0; i < n; ++i) sum += weight[o * c + i] * mean[i];
        logits[o] = sum + bias[o];
    }
}
