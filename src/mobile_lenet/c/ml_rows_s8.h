/* ml_rows_s8.h - the int8 network row by row: Mobile-LeNet in a few kilobytes of RAM (ATmega2560: 8 KB).
 *
 * The buffer schedule (mobile_lenet.c of the int8 library) keeps whole 28x28x8 feature maps: 12,544 bytes.
 * A 3x3 convolution only needs the three input rows its next output row reads, so here each block
 * (a depthwise KxK convolution, then a pointwise 1x1 one) keeps a ring of K input rows, and rows flow through
 * the network as soon as they can be computed: the stem computes one row of its output from the image and
 * pushes it into block 0's ring; a block whose ring holds the rows its next output row needs computes that
 * row (depthwise, then pointwise, in two shared scratch rows) and pushes it into the next block's ring; the
 * last block's rows are summed into the global average pool's accumulators. The memory planner
 * (codegen/memory.py, row_plan) sizes the rings from the architecture table; `mobile-lenet summary --memory
 * --int8 --target atmega2560` prints them.
 *
 * The arithmetic is the int8 reference's (ml_kernels_s8.c): the same integer sums and requantization, so
 * the logits are the same integers, bit for bit. Layer descriptions and weights stay in flash (ml_flash.h).
 * A row in RAM is channel-planar: value (c, x) at [c * width + x]. */
#ifndef ML_ROWS_S8_H
#define ML_ROWS_S8_H

#include <stdint.h>

/* One quantized layer's constants: kernel, bias and per-channel multipliers (in flash), zero points, shift;
 * low is the lower clamp (-128, or the output zero point when a ReLU is fused). */
typedef struct {
    const int8_t *weight;
    const int32_t *bias;
    const int16_t *multiplier;
    int16_t in_zp, out_zp, low;
    uint8_t shift;
} ml_layer_s8;

/* A depthwise-separable block: dw (kernel x kernel, stride, zero padding) on in_h x in_w x channels, then
 * pw (1x1) to out_channels. */
typedef struct {
    ml_layer_s8 dw, pw;
    uint8_t in_h, in_w, channels, out_h, out_w, out_channels, kernel, stride, padding;
} ml_block_s8;

/* A block's input rows in RAM: a ring of `kernel` rows, and how many rows came in and went out. */
typedef struct {
    int8_t *ring;
    uint8_t received, emitted;
} ml_block_rows;

typedef struct {
    const ml_block_s8 *blocks; /* in flash */
    ml_block_rows *rows;
    uint8_t count;
    int8_t *dw_row, *pw_row; /* scratch: one output row of a depthwise / pointwise layer (any block) */
    int32_t *gap_sums;       /* per channel of the last block's output: sum of (value - gap_in_zp) */
    int16_t gap_in_zp;
} ml_rows_network;

/* Start an image: empty rings, zero sums. */
void ml_rows_start_s8(const ml_rows_network *net);

/* Row y of the stem: a kernel x kernel convolution (stride 1, zero padding) of the uint8 image (h x w, one
 * channel; q = pixel - 128) to out_c channels, written to row (out_c x w). */
void ml_rows_stem_s8(const uint8_t *image, int h, int w, int y, const ml_layer_s8 *stem_in_flash, int out_c,
                     int kernel, int padding, int8_t *row);

/* Give block b its next input row; computes (and pushes on) every output row that has become computable. */
void ml_rows_push_s8(const ml_rows_network *net, int b, const int8_t *row);

#endif /* ML_ROWS_S8_H */
