/* math.h - the part of the C library the esp32 target's firmware uses (runtime_xtensa.c implements it). */
#ifndef ML_XTENSA_MATH_H
#define ML_XTENSA_MATH_H

float sqrtf(float x); /* correctly rounded, as IEEE 754 requires: the same bits as any other C library */
float expf(float x);  /* within a few units in the last place (the softmax's probabilities only) */

#endif /* ML_XTENSA_MATH_H */
