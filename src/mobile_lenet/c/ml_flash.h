/* ml_flash.h - where the weights live: in flash, read with the target's flash loads.
 *
 * On most chips a const array stays in flash and is read like any other memory. The AVR (ATmega2560) is a
 * Harvard machine: a plain const array is copied into its 8 KB of SRAM at start-up, so the weights are
 * declared PROGMEM there and read with avr-libc's pgm_read_* instead. Everywhere else these macros are plain
 * C99: ML_FLASH is empty, ML_FLASH_F32(p) is *(p) and ML_FLASH_COPY(to, from) an assignment. The kernels read
 * every weight, bias, multiplier and layer description through them. (AVR's pgm_read_* reach the first 64 KB of flash, where avr-gcc puts PROGMEM data.) */
#ifndef ML_FLASH_H
#define ML_FLASH_H

#include <stdint.h>

#if defined(__AVR__) && !defined(ML_FLASH_IN_RAM) /* a test may keep its data in RAM */
#include <avr/pgmspace.h>
#define ML_FLASH PROGMEM
#define ML_FLASH_COPY(to, from) memcpy_P((to), (from), sizeof *(to))
#define ML_FLASH_F32(p) pgm_read_float(p)
#define ML_FLASH_S8(p) ((int8_t)pgm_read_byte(p))
#define ML_FLASH_S16(p) ((int16_t)pgm_read_word(p))
#define ML_FLASH_S32(p) ((int32_t)pgm_read_dword(p))
#else
#define ML_FLASH
#define ML_FLASH_COPY(to, from) (*(to) = *(from))
#define ML_FLASH_F32(p) (*(p))
#define ML_FLASH_S8(p) (*(p))
#define ML_FLASH_S16(p) (*(p))
#define ML_FLASH_S32(p) (*(p))
#endif

#endif /* ML_FLASH_H */
