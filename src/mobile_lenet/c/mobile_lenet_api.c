/* mobile_lenet_api.c - what the float and the int8 library share around the network: softmax, argmax,
 * predict, and (int8) the dequantized logits. The network itself, mobile_lenet_logits or
 * mobile_lenet_int8_logits, is the generated mobile_lenet.c. */
#include <math.h>

#include "mobile_lenet.h"

#if MOBILE_LENET_INT8
void mobile_lenet_logits(const uint8_t image[MOBILE_LENET_INPUT_SIZE], float logits[MOBILE_LENET_NUM_CLASSES])
{
    int8_t quantized[MOBILE_LENET_NUM_CLASSES];
    mobile_lenet_int8_logits(image, quantized);
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) {
        logits[i] = MOBILE_LENET_LOGIT_SCALE * (float)(quantized[i] - MOBILE_LENET_LOGIT_ZERO_POINT);
    }
}
#endif

void mobile_lenet_softmax(const float logits[MOBILE_LENET_NUM_CLASSES], float probs[MOBILE_LENET_NUM_CLASSES])
{
    float largest = logits[0], sum = 0.0f;
    for (int i = 1; i < MOBILE_LENET_NUM_CLASSES; ++i) {
        if (logits[i] > largest) largest = logits[i];
    }
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) {
        probs[i] = expf(logits[i] - largest);
        sum += probs[i];
    }
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) probs[i] /= sum;
}

int mobile_lenet_argmax(const float values[MOBILE_LENET_NUM_CLASSES])
{
    int best = 0;
    for (int i = 1; i < MOBILE_LENET_NUM_CLASSES; ++i) {
        if (values[i] > values[best]) best = i;
    }
    return best;
}

int mobile_lenet_predict(const uint8_t image[MOBILE_LENET_INPUT_SIZE], float probs[MOBILE_LENET_NUM_CLASSES])
{
    float logits[MOBILE_LENET_NUM_CLASSES];
    mobile_lenet_logits(image, logits);
    mobile_lenet_softmax(logits, probs);
    return mobile_lenet_argmax(logits);
}
