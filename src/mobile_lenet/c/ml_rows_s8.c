/* ml_rows_s8.c - the int8 network row by row (see ml_rows_s8.h). */
#include "ml_rows_s8.h"

#include <string.h>

#include "ml_flash.h"
#include "ml_kernels_s8.h"

/* acc + (value - zero point) * weight. The product fits in 16 bits (|255 x 127| < 2^15), so it is formed in
 * int: on the AVR, whose int is 16 bits wide, a hardware 8x8 multiply instead of a 32-bit library call. */
static inline int32_t mac(int32_t acc, int centred, int8_t weight)
{
    return acc + (int32_t)(centred * weight);
}

void ml_rows_start_s8(const ml_rows_network *net)
{
    ml_block_s8 last;
    for (int b = 0; b < net->count; ++b) net->rows[b].received = net->rows[b].emitted = 0;
    ML_FLASH_COPY(&last, &net->blocks[net->count - 1]);
    for (int c = 0; c < last.out_channels; ++c) net->gap_sums[c] = 0;
}

void ml_rows_stem_s8(const uint8_t *image, int h, int w, int y, const ml_layer_s8 *stem_in_flash, int out_c,
                     int kernel, int padding, int8_t *row)
{
    ml_layer_s8 stem;
    ML_FLASH_COPY(&stem, stem_in_flash);
    for (int co = 0; co < out_c; ++co) {
        const int32_t bias = ML_FLASH_S32(&stem.bias[co]);
        const int16_t multiplier = ML_FLASH_S16(&stem.multiplier[co]);
        for (int x = 0; x < w; ++x) {
            int32_t acc = bias;
            for (int ky = 0; ky < kernel; ++ky) {
                const int iy = y + ky - padding;
                if (iy < 0 || iy >= h) continue; /* zero padding: real 0 adds nothing */
                for (int kx = 0; kx < kernel; ++kx) {
                    const int ix = x + kx - padding;
                    if (ix < 0 || ix >= w) continue;
                    const int q = (int)image[iy * w + ix] - 128; /* pixel / 255 in int8, exactly */
                    acc = mac(acc, q - stem.in_zp, ML_FLASH_S8(&stem.weight[(co * kernel + ky) * kernel + kx]));
                }
            }
            row[co * w + x] = ml_requantize_s8(acc, multiplier, stem.shift, stem.out_zp, stem.low);
        }
    }
}

/* Output row y of block p from its ring: the depthwise layer into dw_row, the pointwise one into pw_row. */
static void block_row(const ml_rows_network *net, const ml_block_s8 *p, const ml_block_rows *rows, int y)
{
    const int k = p->kernel, row_bytes = p->in_w * p->channels;
    for (int c = 0; c < p->channels; ++c) {
        const int32_t bias = ML_FLASH_S32(&p->dw.bias[c]);
        const int16_t multiplier = ML_FLASH_S16(&p->dw.multiplier[c]);
        for (int x = 0; x < p->out_w; ++x) {
            int32_t acc = bias;
            for (int ky = 0; ky < k; ++ky) {
                const int iy = y * p->stride + ky - p->padding;
                if (iy < 0 || iy >= p->in_h) continue;
                const int8_t *in = rows->ring + (iy % k) * row_bytes + c * p->in_w;
                for (int kx = 0; kx < k; ++kx) {
                    const int ix = x * p->stride + kx - p->padding;
                    if (ix < 0 || ix >= p->in_w) continue;
                    acc = mac(acc, in[ix] - p->dw.in_zp, ML_FLASH_S8(&p->dw.weight[(c * k + ky) * k + kx]));
                }
            }
            net->dw_row[c * p->out_w + x] = ml_requantize_s8(acc, multiplier, p->dw.shift, p->dw.out_zp, p->dw.low);
        }
    }
    for (int co = 0; co < p->out_channels; ++co) {
        const int32_t bias = ML_FLASH_S32(&p->pw.bias[co]);
        const int16_t multiplier = ML_FLASH_S16(&p->pw.multiplier[co]);
        for (int x = 0; x < p->out_w; ++x) {
            int32_t acc = bias;
            for (int ci = 0; ci < p->channels; ++ci) {
                acc = mac(acc, net->dw_row[ci * p->out_w + x] - p->pw.in_zp,
                          ML_FLASH_S8(&p->pw.weight[co * p->channels + ci]));
            }
            net->pw_row[co * p->out_w + x] = ml_requantize_s8(acc, multiplier, p->pw.shift, p->pw.out_zp, p->pw.low);
        }
    }
}

void ml_rows_push_s8(const ml_rows_network *net, int b, const int8_t *row)
{
    ml_block_s8 p; /* the block's description, copied out of flash (on the stack: one per block in flight) */
    ML_FLASH_COPY(&p, &net->blocks[b]);
    ml_block_rows *rows = &net->rows[b];
    const int row_bytes = p.in_w * p.channels;
    memcpy(rows->ring + (rows->received % p.kernel) * row_bytes, row, (size_t)row_bytes);
    rows->received++;
    while (rows->emitted < p.out_h) {
        int last = rows->emitted * p.stride - p.padding + p.kernel - 1; /* the last input row it reads */
        if (last > p.in_h - 1) last = p.in_h - 1;                      /* (below: zero padding) */
        if (rows->received <= last) return;                              /* not in yet */
        block_row(net, &p, rows, rows->emitted);
        rows->emitted++;
        if (b + 1 < net->count) {
            ml_rows_push_s8(net, b + 1, net->pw_row); /* copied into the next ring before pw_row is reused */
        } else {
            for (int c = 0; c < p.out_channels; ++c) {
                for (int x = 0; x < p.out_w; ++x) net->gap_sums[c] += (int32_t)net->pw_row[c * p.out_w + x] - net->gap_in_zp;
            }
        }
    }
}
