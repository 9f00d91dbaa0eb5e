/* string.h - the part of the C library the esp32 target's firmware uses (runtime_xtensa.c implements it).
 * Debian has no C library for the ESP32's windowed, hardware-float ABI, so the firmware brings these few. */
#ifndef ML_XTENSA_STRING_H
#define ML_XTENSA_STRING_H

#include <stddef.h>

void *memcpy(void *restrict to, const void *restrict from, size_t count);
void *memmove(void *to, const void *from, size_t count);
void *memset(void *to, int value, size_t count);

#endif /* ML_XTENSA_STRING_H */
