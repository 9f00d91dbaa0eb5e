/* mobile_lenet_model.h for the C unit tests: the sizes a generated model header gives (float32 library). */
#ifndef MOBILE_LENET_MODEL_H
#define MOBILE_LENET_MODEL_H

#define MOBILE_LENET_INT8 0
#define MOBILE_LENET_INPUT_HEIGHT 28
#define MOBILE_LENET_INPUT_WIDTH 28
#define MOBILE_LENET_INPUT_SIZE 784
#define MOBILE_LENET_NUM_CLASSES 10

#endif /* MOBILE_LENET_MODEL_H */
