/* runtime_xtensa.c - what a C library and compiler runtime would give the esp32 target's firmware.
 *
 * Debian has no C library or compiler-rt for the ESP32's ABI (windowed registers, hardware float), so the
 * firmware brings the few pieces it uses: start-up in C (copy .data, clear .bss), memcpy/memmove/memset,
 * sqrtf and expf (xtensa_libc/ declares them). Float division is in fpu_xtensa.S: the FPU's division
 * sequence, correctly rounded, like the ESP32's own compiler emits it.
 *
 * Each loop below has an empty asm statement in it: without it the compiler would recognise the loop as a
 * memcpy or memset and turn it into a call to the very function it is in. */
#include <math.h>
#include <stdint.h>
#include <string.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss;

int main(void);

void xtensa_start(void)
{
    const uint32_t *from = &_sidata;
    for (uint32_t *to = &_sdata; to < &_edata;) *to++ = *from++;
    for (uint32_t *to = &_sbss; to < &_ebss;) *to++ = 0u;
    main();
    for (;;) {
    }
}

#define NO_IDIOM() __asm__ volatile("" ::: "memory")

void *memcpy(void *restrict to, const void *restrict from, size_t count)
{
    uint8_t *out = to;
    const uint8_t *in = from;
    if ((((uintptr_t)out | (uintptr_t)in) & 3u) == 0u) {
        for (; count >= 4u; count -= 4u, out += 4, in += 4) {
            *(uint32_t *)(void *)out = *(const uint32_t *)(const void *)in;
            NO_IDIOM();
        }
    }
    for (; count > 0u; --count) {
        *out++ = *in++;
        NO_IDIOM();
    }
    return to;
}

void *memmove(void *to, const void *from, size_t count)
{
    uint8_t *out = to;
    const uint8_t *in = from;
    if (out <= in || out >= in + count) return memcpy(to, from, count);
    while (count-- > 0u) {
        out[count] = in[count];
        NO_IDIOM();
    }
    return to;
}

void *memset(void *to, int value, size_t count)
{
    uint8_t *out = to;
    for (; count > 0u && ((uintptr_t)out & 3u) != 0u; --count) { /* up to a word boundary */
        *out++ = (uint8_t)value;
        NO_IDIOM();
    }
    const uint32_t word = 0x01010101u * (uint8_t)value;
    for (; count >= 4u; count -= 4u, out += 4) {
        *(uint32_t *)(void *)out = word;
        NO_IDIOM();
    }
    for (; count > 0u; --count) {
        *out++ = (uint8_t)value;
        NO_IDIOM();
    }
    return to;
}

static uint32_t float_bits(float x)
{
    uint32_t bits;
    memcpy(&bits, &x, 4);
    return bits;
}

static float bits_float(uint32_t bits)
{
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

/* The square root, correctly rounded (round to nearest; a square root is never exactly halfway between two
 * floats, so "remainder above the midpoint" decides). The mantissa's root is found digit by digit in
 * integers: exact, and BatchNorm takes only one per channel. */
float sqrtf(float x)
{
    uint32_t bits = float_bits(x);
    if (bits == 0u || bits == 0x80000000u) return x;               /* +-0 */
    if (bits >> 31) return bits_float(0x7FC00000u);                 /* negative: NaN */
    int exponent = (int)(bits >> 23);
    if (exponent == 0xFF) return x;                                 /* +inf, NaN */
    uint32_t mantissa = bits & 0x7FFFFFu;
    if (exponent == 0) {                                            /* subnormal: normalise */
        while ((mantissa & 0x800000u) == 0u) {
            mantissa <<= 1;
            --exponent;
        }
        ++exponent;
    } else {
        mantissa |= 0x800000u;
    }
    exponent -= 127;
    if (exponent & 1) mantissa <<= 1; /* make the exponent even: x = mantissa * 2^(exponent - 23) */
    exponent >>= 1;                   /* arithmetic shift: floor(exponent / 2) */
    /* floor of the root of mantissa * 2^25 (a 49- or 50-bit value), two bits of it at a time: 25 bits, one
     * more than the 24 kept */
    uint32_t root = 0u, remainder = 0u;
    uint64_t value = (uint64_t)mantissa << 25;
    for (int i = 0; i < 25; ++i) {
        remainder = (remainder << 2) | (uint32_t)(value >> 48);
        value = (value << 2) & ((1ull << 50) - 1u);
        const uint32_t trial = (root << 2) | 1u;
        root <<= 1;
        if (remainder >= trial) {
            remainder -= trial;
            root |= 1u;
        }
    }
    /* root has 25 bits: the last one decides the rounding (a non-zero remainder means "above half") */
    const uint32_t half = root & 1u;
    root >>= 1;
    if (half) root += 1u; /* exactly half is impossible for a root, so above half rounds up */
    return bits_float(((uint32_t)(exponent + 127) << 23) + (root - 0x800000u));
}

/* e^x for the softmax: x = k ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor polynomial to degree 7
 * (error below 2e-9), then scaled by 2^k. Accurate to a few units in the last place. */
float expf(float x)
{
    if (x != x) return x;
    if (x > 88.72f) return bits_float(0x7F800000u);
    if (x < -103.9f) return 0.0f;
    /* k = x / ln 2 rounded to an integer: adding 1.5 * 2^23 leaves no fraction bits to keep */
    const float shifted = x * 1.44269504f + 12582912.0f;
    const int k = (int)(shifted - 12582912.0f);
    /* r = x - k ln 2, with ln 2 in two parts so that k * ln2_hi is exact */
    const float r = (x - (float)k * 0.693145752f) - (float)k * 1.42860677e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^k in two steps, so that k down to -149 (subnormal results) and up to 128 stay representable */
    const int k1 = k / 2, k2 = k - k1;
    return p * bits_float((uint32_t)(k1 + 127) << 23) * bits_float((uint32_t)(k2 + 127) << 23);
}
