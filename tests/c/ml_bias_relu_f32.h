/* ml_bias_relu_f32.h - what upstream's Mega 2560 example ("Mobile-LeNet-16") does after each convolution of its
 * folded network: add the bias into which the BatchNorm was folded, then ReLU. With the project's float kernels
 * (ml_kernels_f32.c) it runs that network from the export's PROGMEM headers (tests/formats/test_noodle_mega2560.py). */
#ifndef ML_BIAS_RELU_F32_H
#define ML_BIAS_RELU_F32_H

/* x[c][i] = max(0, x[c][i] + bias[c]) for every channel c and each of its plane values; bias is read from flash
 * (ML_FLASH_F32: pgm_read_float on the AVR, where the Mega 2560 headers put it in PROGMEM). */
void ml_bias_relu_f32(float *x, int channels, int plane, const float *bias);

#endif /* ML_BIAS_RELU_F32_H */
