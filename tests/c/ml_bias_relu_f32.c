/* ml_bias_relu_f32.c - see ml_bias_relu_f32.h. */
#include "ml_bias_relu_f32.h"

#include "ml_flash.h"

void ml_bias_relu_f32(float *x, int channels, int plane, const float *bias)
{
    for (int c = 0; c < channels; ++c) {
        const float b = ML_FLASH_F32(&bias[c]);
        for (int i = 0; i < plane; ++i) {
            const float v = x[c * plane + i] + b;
            x[c * plane + i] = v > 0.0f ? v : 0.0f;
        }
    }
}
