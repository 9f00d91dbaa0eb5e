/* ml_rows_s8.c - the int8 network row by row (see ml_rows_s8.h). */
#include "ml_rows_s8.h"

#include <stddef.h>
#include <string.h>

#include "ml_flash.h"
#include "ml_kernels_s8.h"

#define ML_ROWS_MAX_KERNEL 7    /* larger kernels: not supported by the schedule (the generator checks) */
#define ML_ROWS_MAX_CHANNELS 64 /* a pointwise filter's weights copied out of flash; more: read in place */

/* acc + sum of a[i] * w[i], i < n (n >= 1), modulo 2^32 (the int32 sums never wrap: same bits). On the AVR a
 * loop of MULS (8 x 8 -> 16 signed, 2 cycles) and a sign-extended 32-bit add, both operands in RAM. */
static inline int32_t ml_rows_dot(int32_t acc, const int8_t *a, const int8_t *w, uint8_t n)
{
#if defined(__AVR__)
    uint8_t x, y, s;
    __asm__ volatile("1: ld %[x], X+\n\t"
                     "ld %[y], Z+\n\t"
                     "muls %[x], %[y]\n\t"
                     "mov %[s], r1\n\t"
                     "lsl %[s]\n\t"
                     "sbc %[s], %[s]\n\t"
                     "add %A[acc], r0\n\t"
                     "adc %B[acc], r1\n\t"
                     "adc %C[acc], %[s]\n\t"
                     "adc %D[acc], %[s]\n\t"
                     "dec %[n]\n\t"
                     "brne 1b\n\t"
                     "clr __zero_reg__"
                     : [acc] "+r"(acc), [a] "+x"(a), [w] "+z"(w), [n] "+r"(n), [x] "=&d"(x), [y] "=&d"(y),
                       [s] "=&r"(s)
                     :
                     : "r0", "memory");
    return acc;
#else
    for (uint8_t i = 0; i < n; ++i) acc += a[i] * w[i];
    return acc;
#endif
}

/* 16 x 16 -> 32-bit products, kept apart so that avr-gcc uses its widening multiplies (__mulhisi3,
 * __usmulhisi3) rather than a 32 x 32 one on operands it has widened once for both. */
#if defined(__AVR__)
__attribute__((noinline))
#endif
static int32_t ml_rows_mul(int16_t a, int16_t b)
{
    return (int32_t)a * b;
}

#if defined(__AVR__)
__attribute__((noinline))
#endif
static int32_t ml_rows_mulu(uint16_t a, int16_t b)
{
    return (int32_t)a * b;
}

int8_t ml_rows_requantize_s8(int32_t acc, int16_t multiplier, int shift, int32_t zero_point, int32_t low)
{
    int32_t value;
    if (shift < 17 || shift > 31) return ml_requantize_s8(acc, multiplier, shift, zero_point, low);
    /* acc = hi * 2^16 + lo (lo in [0, 65535]); |hi * m| <= 2^30 and lo * m fits in 32 bits, and
     * floor((hi * m * 2^16 + lo * m + 2^(s-1)) / 2^s) = floor((hi * m + 2^(s-17) + floor(lo * m / 2^16)) / 2^(s-16))
     * (nested floors; the right shifts of negative values are arithmetic, as in ml_requantize_s8). */
    {
        /* 16 x 16 -> 32 products (on the AVR: avr-gcc's widening multiplies, not a 32 x 32 library call) */
        const int16_t hi = (int16_t)(acc >> 16);
        const uint16_t lo = (uint16_t)((uint32_t)acc & 0xFFFFu);
        const int32_t high = ml_rows_mul(hi, multiplier), low_part = ml_rows_mulu(lo, multiplier);
        value = (high + ((int32_t)1 << (shift - 17)) + (low_part >> 16)) >> (shift - 16);
    }
    value += zero_point;
    if (value < low) value = low;
    if (value > 127) value = 127;
    return (int8_t)value;
}

void ml_rows_filter_s8(const int8_t *const *in, int kernel, int stride, int out_w, const int8_t *taps,
                       int32_t bias, int16_t multiplier, int shift, int32_t out_zp, int32_t low,
                       int8_t *out, int out_step)
{
    if (kernel == 3) {
        /* the nine taps in locals; each product q * w fits in 16 bits (int on the AVR: one MULS) */
        int8_t t[9];
        const int8_t *r0 = in[0], *r1 = in[1], *r2 = in[2];
        for (int i = 0; i < 9; ++i) t[i] = ML_FLASH_S8(&taps[i]);
        for (int x = 0; x < out_w; ++x) {
            int32_t acc = ml_rows_dot(bias, r0, t, 3);
            acc = ml_rows_dot(acc, r1, t + 3, 3);
            acc = ml_rows_dot(acc, r2, t + 6, 3);
            *out = ml_rows_requantize_s8(acc, multiplier, shift, out_zp, low);
            out += out_step;
            r0 += stride;
            r1 += stride;
            r2 += stride;
        }
        return;
    }
    for (int x = 0; x < out_w; ++x) {
        int32_t acc = bias;
        for (int ky = 0; ky < kernel; ++ky) {
            const int8_t *row = in[ky] + x * stride;
            for (int kx = 0; kx < kernel; ++kx) acc += row[kx] * ML_FLASH_S8(&taps[ky * kernel + kx]);
        }
        out[x * out_step] = ml_rows_requantize_s8(acc, multiplier, shift, out_zp, low);
    }
}

void ml_rows_pointwise_s8(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                          int8_t *out, int out_stride, int32_t *gap_sums, int32_t gap_in_zp)
{
    int8_t copy[ML_ROWS_MAX_CHANNELS]; /* one filter's weights, out of flash */
    for (int co = 0; co < out_c; ++co) {
        const int8_t *w = layer->weight + co * in_c;
        const int32_t bias = ML_FLASH_S32(&layer->bias[co]);
        const int16_t multiplier = ML_FLASH_S16(&layer->multiplier[co]);
        if (in_c >= 1 && in_c <= ML_ROWS_MAX_CHANNELS) {
            for (int ci = 0; ci < in_c; ++ci) copy[ci] = ML_FLASH_S8(&w[ci]);
            w = copy;
        }
        for (int x = 0; x < width; ++x) {
            const int8_t *p = in + x * in_c;
            int32_t acc = bias;
            if (w == copy) {
                acc = ml_rows_dot(acc, p, copy, (uint8_t)in_c);
            } else {
                for (int ci = 0; ci < in_c; ++ci) acc += p[ci] * ML_FLASH_S8(&w[ci]);
            }
            {
                const int8_t value = ml_rows_requantize_s8(acc, multiplier, layer->shift, layer->out_zp, layer->low);
                if (out != NULL) {
                    out[co * out_stride + x] = value;
                } else {
                    gap_sums[co] += (int32_t)value - gap_in_zp;
                }
            }
        }
    }
}

/* Row r's slot in a ring of `kernel` rows of row_bytes each. */
static int8_t *slot(const ml_block_rows *rows, int r, int kernel, int row_bytes)
{
    return rows->ring + (r % kernel) * row_bytes;
}

void ml_rows_start_s8(const ml_rows_network *net)
{
    ml_stem_s8 stem;
    ml_block_s8 block;
    int channels = 0; /* the last block's output channels: the pooling sums */
    ML_FLASH_COPY(&stem, net->stem);
    memset(net->rows[0].ring, stem.conv.in_zp, (size_t)(stem.kernel * (stem.w + 2 * stem.padding)));
    net->rows[0].received = net->rows[0].emitted = 0;
    for (int b = 0; b < net->count; ++b) {
        ML_FLASH_COPY(&block, &net->blocks[b]);
        memset(net->rows[b + 1].ring, block.dw.in_zp,
               (size_t)(block.kernel * block.channels * (block.in_w + 2 * block.padding)));
        net->rows[b + 1].received = net->rows[b + 1].emitted = 0;
        channels = block.out_channels;
    }
    for (int c = 0; c < channels; ++c) net->gap_sums[c] = 0;
}

/* Where the producer of block b's next input row writes it: channel 0's first value, and the channel stride. */
static int8_t *next_row(const ml_rows_network *net, int b, int *channel_stride)
{
    ml_block_s8 block;
    ML_FLASH_COPY(&block, &net->blocks[b]);
    *channel_stride = block.in_w + 2 * block.padding;
    return slot(&net->rows[b + 1], net->rows[b + 1].received, block.kernel, block.channels * *channel_stride)
           + block.padding;
}

/* Output row y of block p (its ring: rows): the depthwise layer into dw_row, the pointwise one into block
 * b + 1's ring (or the pooling sums). */
static void block_row(const ml_rows_network *net, int b, const ml_block_s8 *p, const ml_block_rows *rows, int y)
{
    const int k = p->kernel, padded = p->in_w + 2 * p->padding, row_bytes = p->channels * padded;
    const int8_t *base[ML_ROWS_MAX_KERNEL], *in[ML_ROWS_MAX_KERNEL];
    int8_t *out = NULL;
    int out_stride = 0;
    for (int ky = 0; ky < k; ++ky) {
        const int iy = y * p->stride + ky - p->padding;
        base[ky] = iy >= 0 && iy < p->in_h ? slot(rows, iy, k, row_bytes) : NULL;
        if (base[ky] == NULL) memset(net->pad_row, p->dw.in_zp, (size_t)padded);
    }
    for (int c = 0; c < p->channels; ++c) {
        for (int ky = 0; ky < k; ++ky) in[ky] = base[ky] != NULL ? base[ky] + c * padded : net->pad_row;
        ml_rows_filter_s8(in, k, p->stride, p->out_w, p->dw.weight + c * k * k, ML_FLASH_S32(&p->dw.bias[c]),
                          ML_FLASH_S16(&p->dw.multiplier[c]), p->dw.shift, p->dw.out_zp, p->dw.low,
                          net->dw_row + c, p->channels);
    }
    if (b + 1 < net->count) out = next_row(net, b + 1, &out_stride);
    ml_rows_pointwise_s8(net->dw_row, p->out_w, p->channels, &p->pw, p->out_channels, out, out_stride,
                         net->gap_sums, net->gap_in_zp);
}

/* Block b's ring has received its next row: compute (and hand on) every output row that has become computable. */
static void push(const ml_rows_network *net, int b)
{
    ml_block_s8 p; /* the block's description, copied out of flash (on the stack: one per block in flight) */
    ml_block_rows *rows = &net->rows[b + 1];
    ML_FLASH_COPY(&p, &net->blocks[b]);
    rows->received++;
    while (rows->emitted < p.out_h) {
        int last = rows->emitted * p.stride - p.padding + p.kernel - 1; /* the last input row it reads */
        if (last > p.in_h - 1) last = p.in_h - 1;                      /* (below: zero padding) */
        if (rows->received <= last) return;                              /* not in yet */
        block_row(net, b, &p, rows, rows->emitted);
        rows->emitted++;
        if (b + 1 < net->count) push(net, b + 1);
    }
}

void ml_rows_run_s8(const ml_rows_network *net, const uint8_t *image)
{
    ml_stem_s8 s;
    ml_block_rows *rows = &net->rows[0];
    const int8_t *in[ML_ROWS_MAX_KERNEL];
    ML_FLASH_COPY(&s, net->stem);
    {
        const int k = s.kernel, padded = s.w + 2 * s.padding;
        for (int y = 0; y < s.h; ++y) {
            int last = y - s.padding + k - 1, channel_stride;
            int8_t *out;
            if (last > s.h - 1) last = s.h - 1;
            while (rows->received <= last) { /* the image rows it reads, as int8 (q = pixel - 128) */
                int8_t *row = slot(rows, rows->received, k, padded) + s.padding;
                const uint8_t *pixels = image + rows->received * s.w;
                for (int x = 0; x < s.w; ++x) row[x] = (int8_t)((int)pixels[x] - 128);
                rows->received++;
            }
            for (int ky = 0; ky < k; ++ky) {
                const int iy = y + ky - s.padding;
                in[ky] = iy >= 0 && iy < s.h ? slot(rows, iy, k, padded) : NULL;
                if (in[ky] == NULL) {
                    memset(net->pad_row, s.conv.in_zp, (size_t)padded);
                    in[ky] = net->pad_row;
                }
            }
            out = next_row(net, 0, &channel_stride);
            for (int co = 0; co < s.out_channels; ++co) {
                ml_rows_filter_s8(in, k, 1, s.w, s.conv.weight + co * k * k, ML_FLASH_S32(&s.conv.bias[co]),
                                  ML_FLASH_S16(&s.conv.multiplier[co]), s.conv.shift, s.conv.out_zp, s.conv.low,
                                  out + co * channel_stride, 1);
            }
            push(net, 0); /* row y of the stem flows through the blocks */
        }
    }
}
