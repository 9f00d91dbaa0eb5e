/* test_xtensa_runtime.c - the esp32 target's own runtime in QEMU (c/targets/startup_xtensa.S, fpu_xtensa.S,
 * runtime_xtensa.c), checked by tests/engines/test_xtensa_runtime.py against Python's exact arithmetic:
 *
 * - "P <op> <x> <y> <result>": MULUH (op 0) and MULSH (op 1) of pseudo-random and edge words, emulated by the
 *   exception handler on this core;
 * - "D <n> <d> <q>" and "S <x> <root>": float division (__divsf3, the FPU's division steps) and sqrtf on
 *   pseudo-random bit patterns and special values, as hex words;
 * - marks around loops of known length (run_loop): n turns of two instructions, or of three with a MULSH in
 *   them, so that the instruction plugin's count less the handler's skipped count is 2n or 3n plus a constant.
 * Output goes through the semihosting write call; the program ends with the semihosting exit call. */
#include <stdint.h>

void xtensa_semihosting_write(const char *text, uint32_t length);

static void simcall(uint32_t operation, uint32_t a, uint32_t b, uint32_t c)
{
    register uint32_t a2 __asm__("a2") = operation;
    register uint32_t a3 __asm__("a3") = a;
    register uint32_t a4 __asm__("a4") = b;
    register uint32_t a5 __asm__("a5") = c;
    __asm__ volatile(".byte 0x00, 0x51, 0x00" : "+r"(a2), "+r"(a3) : "r"(a4), "r"(a5) : "memory"); /* SIMCALL */
}

static char line[96];
static int used;

static void put(char c) { line[used++] = c; }

static void put_hex(uint32_t v)
{
    put(' ');
    for (int shift = 28; shift >= 0; shift -= 4) put("0123456789abcdef"[(v >> shift) & 15u]);
}

static void end_line(void)
{
    put('\n');
    simcall(4u, 1u, (uint32_t)(uintptr_t)line, (uint32_t)used); /* write(1, line, used) */
    used = 0;
}

static uint32_t state = 0x2545F491u;
static uint32_t next_random(void) /* xorshift32 */
{
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return state;
}

__attribute__((noinline)) static uint32_t high_unsigned(uint32_t x, uint32_t y)
{
    return (uint32_t)(((uint64_t)x * y) >> 32);
}

__attribute__((noinline)) static int32_t high_signed(int32_t x, int32_t y)
{
    return (int32_t)(((int64_t)x * y) >> 32);
}

__attribute__((noinline, used)) void ml_mark(uint32_t id)
{
    __asm__ volatile("" : : "r"(id) : "memory");
}

/* mark 1; n turns of "addi, bnez" (or "mulsh, addi, bnez"); mark 2 */
__attribute__((noinline)) static void run_loop(uint32_t n, int with_mulsh)
{
    ml_mark(1u);
    if (with_mulsh) {
        __asm__ volatile("1:\n\tmulsh a9, %0, %0\n\taddi %0, %0, -1\n\tbnez %0, 1b" : "+r"(n) : : "a9");
    } else {
        __asm__ volatile("1:\n\taddi %0, %0, -1\n\tbnez %0, 1b" : "+r"(n));
    }
    ml_mark(2u);
}

static uint32_t bits(float x) { union { float f; uint32_t u; } v = {x}; return v.u; }
static float from_bits(uint32_t u) { union { uint32_t u; float f; } v = {u}; return v.f; }

float sqrtf(float x);

int main(void)
{
    static const uint32_t edges[] = {0u, 1u, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu, 0x0000FFFFu, 0xFFFF0000u};
    for (int i = 0; i < 7; ++i) {
        for (int j = 0; j < 7; ++j) {
            put('P'), put_hex(0), put_hex(edges[i]), put_hex(edges[j]), put_hex(high_unsigned(edges[i], edges[j])), end_line();
            put('P'), put_hex(1), put_hex(edges[i]), put_hex(edges[j]);
            put_hex((uint32_t)high_signed((int32_t)edges[i], (int32_t)edges[j])), end_line();
        }
    }
    for (int i = 0; i < 300; ++i) {
        const uint32_t x = next_random(), y = next_random();
        put('P'), put_hex(0), put_hex(x), put_hex(y), put_hex(high_unsigned(x, y)), end_line();
        put('P'), put_hex(1), put_hex(x), put_hex(y), put_hex((uint32_t)high_signed((int32_t)x, (int32_t)y)), end_line();
    }
    static const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x3F800000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u,
                                        0x00000001u, 0x007FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0x40490FDBu, 0xC0000000u};
    for (int i = 0; i < 12; ++i) {
        for (int j = 0; j < 12; ++j) {
            volatile float n = from_bits(specials[i]), d = from_bits(specials[j]);
            put('D'), put_hex(specials[i]), put_hex(specials[j]), put_hex(bits(n / d)), end_line();
        }
        volatile float x = from_bits(specials[i]);
        put('S'), put_hex(specials[i]), put_hex(bits(sqrtf(x))), end_line();
    }
    for (int i = 0; i < 2000; ++i) {
        /* random signs, exponents near 1 (the network's values) and over the whole range, every mantissa */
        const uint32_t r = next_random(), m = next_random() & 0x807FFFFFu;
        const uint32_t n_bits = i % 2 ? (r & 0xFFFFFFFFu) : (m | ((uint32_t)(120 + r % 16) << 23));
        const uint32_t d_bits = i % 3 ? next_random() : ((next_random() & 0x807FFFFFu) | ((uint32_t)(118 + r % 20) << 23));
        volatile float n = from_bits(n_bits), d = from_bits(d_bits);
        put('D'), put_hex(n_bits), put_hex(d_bits), put_hex(bits(n / d)), end_line();
        const uint32_t s_bits = i % 2 ? (next_random() & 0x7FFFFFFFu) : (m & 0x7FFFFFu) | ((uint32_t)(100 + r % 60) << 23);
        volatile float x = from_bits(s_bits);
        put('S'), put_hex(s_bits), put_hex(bits(sqrtf(x))), end_line();
    }
    run_loop(1u, 0), run_loop(1000u, 0), run_loop(1000u, 1), run_loop(100000u, 1);
    simcall(1u, 0u, 0u, 0u); /* exit(0) */
    return 0;
}
