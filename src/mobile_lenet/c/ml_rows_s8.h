/* ml_rows_s8.h - the int8 network row by row: Mobile-LeNet in a few kilobytes of RAM (ATmega2560: 8 KB).
 *
 * The buffer schedule (mobile_lenet.c of the int8 library) keeps whole 28x28x8 feature maps: 12,544 bytes.
 * A 3x3 convolution only needs the three input rows its next output row reads, so here the stem and each
 * block (a depthwise KxK convolution, then a pointwise 1x1 one) keep a ring of K input rows, and rows flow
 * through the network as soon as they can be computed: an image row goes into the stem's ring; the stem
 * computes one row of its output straight into block 0's ring; a block whose ring holds the rows its next
 * output row needs computes that row (depthwise into a shared scratch row, then pointwise straight into the
 * next block's ring) and hands it on; the last block's rows are summed into the global average pool's
 * accumulators. The memory planner (codegen/memory.py, row_plan) sizes the rings from the architecture table;
 * `mobile-lenet summary --memory --int8 --target atmega2560` prints them.
 *
 * Ring rows are padded and interleaved: row r goes into slot s = r mod K, its value (c, x) at
 * [(c * (width + 2 * padding) + padding + x) * K + s], so the K rows of a channel's window lie side by side
 * (on the AVR one pointer reaches a 3x3 window's nine values, at fixed offsets); the padding bytes hold the
 * layer's input zero point (the real 0), so the kernels have no bounds tests per tap, and a row above or below
 * the plane is a slot of zero points (above: a slot not yet written, from ml_rows_start_s8; below: filled when
 * reached, the row it held being no longer needed). The depthwise
 * scratch row is pixel-major ((x, c) at [x * channels + c]) so the pointwise layer reads one pixel's channels
 * in a run.
 *
 * The arithmetic gives the int8 reference's (ml_kernels_s8.c) integers, bit for bit: each bias has the input
 * zero point folded in (bias - in_zp * sum of the filter's weights, at generation time, so the loops add
 * q * w with no subtraction; q * w fits in 16 bits). Where the generator has checked its assumptions
 * (ml_rows_rq below) a layer takes the fast path: three-byte sums and a shift-free requantization, on the AVR
 * whole layer rows in assembly (ml_rows_s8.c; 3x3 filters of stride 1 or 2 and pointwise filters of 1 to 64
 * input channels, eight at a time and the 1..7 left over last, taps or weights in registers, products added in
 * pairs: 7.5 cycles a multiply-add; checked at run time); otherwise requantization uses 32-bit products (exact
 * for shifts 17..31, the reference's int64 path otherwise). Layer descriptions and weights stay in flash
 * (ml_flash.h). */
#ifndef ML_ROWS_S8_H
#define ML_ROWS_S8_H

#include <stddef.h> /* NULL: a layer's rq where it takes the generic path (the generated tables use it) */
#include <stdint.h>

/* One quantized layer's constants: kernel, folded bias (bias - in_zp * sum of the filter's weights) and
 * per-channel multipliers (in flash), zero points, shift; low is the lower clamp (-128, or the output zero
 * point when a ReLU is fused). */
/* One output channel's requantization in a form without shifts (the fast path; the generator computes it and
 * checks its assumptions, c_int8.requant_table): for an accumulator acc with |acc| < 2^23 (checked from the
 * weights, which are in [-127, 127]), the reference's value zero_point + floor((acc * multiplier +
 * 2^(shift-1)) / 2^shift), clamped to [low, 127], is 127 when acc >= hi, low when acc < lo, and otherwise
 * zero_point + floor((acc * scale + 2^23) / 2^24), where scale = multiplier * 2^(24 - shift) (multiplier > 0,
 * shift <= 24, scale < 2^24): only byte 3 of that product matters, which the AVR computes with eight 8 x 8
 * multiplies and no shifts (six where 0 <= lo <= hi < 2^16: then acc < 2^16 there). */
typedef struct {
    int32_t scale, lo, hi;
} ml_rows_rq;

typedef struct {
    const int8_t *weight;
    const int32_t *bias;
    const int16_t *multiplier;
    int16_t in_zp, out_zp, low;
    uint8_t shift;
    const ml_rows_rq *rq; /* per output channel, in flash; NULL: the generic path (int32 sums, the reference's
                           * requantization) */
} ml_layer_s8;

/* A depthwise-separable block: dw (kernel x kernel, stride, zero padding) on in_h x in_w x channels, then
 * pw (1x1) to out_channels. */
typedef struct {
    ml_layer_s8 dw, pw;
    uint8_t in_h, in_w, channels, out_h, out_w, out_channels, kernel, stride, padding;
} ml_block_s8;

/* A ring of input rows in RAM (kernel rows, padded), and how many rows came in and went out. */
typedef struct {
    int8_t *ring;
    uint8_t received, emitted;
} ml_block_rows;

/* The stem: a kernel x kernel convolution, stride 1, of the one-channel image (q = pixel - 128). */
typedef struct {
    ml_layer_s8 conv;
    uint8_t h, w, out_channels, kernel, padding;
} ml_stem_s8;

/* A pointwise row kernel: ml_rows_pointwise_s8 or ml_rows_pointwise_by8_s8 (below). */
typedef void (*ml_rows_pointwise_fn)(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                                     int8_t *out, int out_stride, int out_step, int32_t *gap_sums, int32_t gap_in_zp);

typedef struct {
    const ml_stem_s8 *stem;    /* in flash */
    const ml_block_s8 *blocks; /* in flash */
    ml_block_rows *rows;       /* rows[0]: the stem's ring; rows[b + 1]: block b's */
    uint8_t count;             /* blocks */
    int8_t *dw_row;            /* scratch: one depthwise output row (any block), pixel-major */
    int32_t *gap_sums;         /* per channel of the last block's output: sum of (value - gap_in_zp) */
    int16_t gap_in_zp;
    ml_rows_pointwise_fn pointwise; /* the blocks' pointwise kernel: ml_rows_pointwise_by8_s8 where every block's
                                     * input channels are a multiple of 8, else ml_rows_pointwise_s8 */
} ml_rows_network;

/* Start an image: rings filled with their zero point, zero sums. */
void ml_rows_start_s8(const ml_rows_network *net);

/* Run the stem and the blocks over the whole image (h x w uint8): afterwards gap_sums hold the pooling sums. */
void ml_rows_run_s8(const ml_rows_network *net, const uint8_t *image);

/* One output row of a kernel x kernel filter (taps in flash) over padded rows in[0..kernel-1] (int8, the
 * zero point's bytes as padding; in_step bytes between two values of a row): out[x * out_step] = requantized
 * (bias + sum of in[ky][(x * stride + kx) * in_step] * taps[ky * kernel + kx]), x < out_w. rq (in flash): this
 * channel's ml_rows_rq (the fast path), or NULL. (Plain C: on the AVR the network's 3x3 layers take the
 * assembly, a layer row at a time: ml_rows_s8.c.) */
void ml_rows_filter_s8(const int8_t *const *in, int kernel, int stride, int in_step, int out_w,
                       const int8_t *taps, int32_t bias, int16_t multiplier, int shift, int32_t out_zp, int32_t low,
                       const ml_rows_rq *rq, int8_t *out, int out_step);

/* A 1x1 convolution of one row: in is pixel-major (width x in_c), out[co * out_stride + x * out_step] =
 * requantized (bias[co] + sum over ci of in[x * in_c + ci] * weight[co * in_c + ci]); with gap_sums instead
 * (out NULL), gap_sums[co] += value - gap_in_zp. */
void ml_rows_pointwise_s8(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                          int8_t *out, int out_stride, int out_step, int32_t *gap_sums, int32_t gap_in_zp);

/* The same values as ml_rows_pointwise_s8; on the AVR only input channel counts that are a multiple of 8 take the
 * assembly (the others plain C), so that a network without other counts (the seed's) links without the assembly
 * for them (about 7.6 KB of flash, left out by --gc-sections). Elsewhere the same plain C. */
void ml_rows_pointwise_by8_s8(const int8_t *in, int width, int in_c, const ml_layer_s8 *layer, int out_c,
                              int8_t *out, int out_stride, int out_step, int32_t *gap_sums, int32_t gap_in_zp);

/* zero_point + round(acc * multiplier / 2^shift) clamped to [low, 127]: ml_requantize_s8's value. */
int8_t ml_rows_requantize_s8(int32_t acc, int16_t multiplier, int shift, int32_t zero_point, int32_t low);

/* The same value from a channel's ml_rows_rq (|acc| < 2^23): plain C, what the AVR's assembly computes. */
int8_t ml_rows_requantize_rq_s8(int32_t acc, const ml_rows_rq *rq, int32_t zero_point, int32_t low);

#endif /* ML_ROWS_S8_H */
