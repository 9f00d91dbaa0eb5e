/* mobile_lenet.h - Mobile-LeNet (MNIST digits) inference in plain C99: the public API.
 *
 * The same API for the float32 and the int8 library; mobile_lenet_model.h (generated per model) says which
 * one this is (MOBILE_LENET_INT8) and gives the sizes.
 * Input: one 28x28 image, uint8, row-major, white digit on black (MNIST polarity).
 * Not reentrant: the activations live in two static buffers (see mobile_lenet.c). */
#ifndef MOBILE_LENET_H
#define MOBILE_LENET_H

#include <stdint.h>

#include "mobile_lenet_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The ten logits (before softmax) of one image; from an int8 library, dequantized from the int8 ones. */
void mobile_lenet_logits(const uint8_t image[MOBILE_LENET_INPUT_SIZE], float logits[MOBILE_LENET_NUM_CLASSES]);

#if MOBILE_LENET_INT8
/* The ten int8 logits of one image, computed with integers only.
 * real logit = MOBILE_LENET_LOGIT_SCALE * (int8 logit - MOBILE_LENET_LOGIT_ZERO_POINT) */
void mobile_lenet_int8_logits(const uint8_t image[MOBILE_LENET_INPUT_SIZE], int8_t logits[MOBILE_LENET_NUM_CLASSES]);
#endif

/* Softmax, max-subtracted (safe for any logits). */
void mobile_lenet_softmax(const float logits[MOBILE_LENET_NUM_CLASSES], float probs[MOBILE_LENET_NUM_CLASSES]);

/* Index of the largest value (the first one on ties). */
int mobile_lenet_argmax(const float values[MOBILE_LENET_NUM_CLASSES]);

/* Classify one image: fills the ten probabilities and returns the digit. */
int mobile_lenet_predict(const uint8_t image[MOBILE_LENET_INPUT_SIZE], float probs[MOBILE_LENET_NUM_CLASSES]);

#ifdef __cplusplus
}
#endif

#endif /* MOBILE_LENET_H */
