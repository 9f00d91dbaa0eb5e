/* ml_padding.h - which outputs of a convolution tap read inside the input map (shared by the float and int8 kernels).
 *
 * A tap (ky or kx) of a convolution with stride S and zero padding P reads input index o * S + tap - P for
 * output o. The outputs whose index falls outside [0, in_size) would read zero padding and add nothing, so
 * the kernels skip them by looping over [first, end) only: the padding test is done once per tap instead of
 * once per multiply-accumulate. */
#ifndef ML_PADDING_H
#define ML_PADDING_H

/* The outputs o in [*first, *end) whose input index o * stride + tap - padding lies in [0, in_size). */
static inline void ml_inside_outputs(int tap, int padding, int stride, int in_size, int out_size, int *first, int *end)
{
    const int offset = tap - padding; /* input index = o * stride + offset */
    const int lo = offset < 0 ? (-offset + stride - 1) / stride : 0;
    int hi = in_size - 1 - offset < 0 ? 0 : (in_size - 1 - offset) / stride + 1;
    if (hi > out_size) hi = out_size;
    *first = lo;
    *end = hi > lo ? hi : lo;
}

#endif /* ML_PADDING_H */
