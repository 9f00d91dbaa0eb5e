/* known_loop.c - test program for qemu_insn_plugin.c: a loop whose instruction count between two
 * ml_mark() calls is known exactly, on either Cortex-M target.
 *
 * run_loop(n) is hand-written Thumb (valid on ARMv6-M and ARMv7-M):
 *     (saving registers, loading the ICSR's address and its PENDSTSET bit: before the marks)
 *     movs r0, #1 ; bl ml_mark          <- mark 1 is read at ml_mark's first instruction
 *     ml_mark's body                     (K instructions: its own code, e.g. K = 1 for "bx lr")
 *  1: subs r4, r4, #1 ; bne 1b           (2 n instructions)
 *     movs r0, #2 ; bl ml_mark          (2 instructions)  <- mark 2
 * so mark2 - mark1 = K + 2 n + 2. main runs n = 1, 1000 and 1000000, then exits QEMU through
 * semihosting (SYS_EXIT), so the plugin's exit line is written too.
 *
 * Built with -DTICK_EVERY_ITERATION, each iteration also fires the timer's interrupt: a store to the
 * ICSR's PENDSTSET bit pends SysTick, whose handler (hand-written, 5 instructions) runs before the
 * loop goes on. Between the marks: K + 3 n + 2 instructions of the loop and 5 n of the handler; a
 * count that leaves the handler out (the plugin's skip range) must still give K + 3 n + 2.
 *
 * Build with the firmware's startup code and linker scripts, see c/sim/README.md. */
#include <stdint.h>

__attribute__((noinline, noclone, used)) void ml_mark(uint32_t id)
{
    __asm__ volatile("" : : "r"(id) : "memory");
}

#ifdef TICK_EVERY_ITERATION
volatile uint32_t ticks;

/* ticks++ in 5 instructions (r0-r3 are saved by the exception entry); the literal pool is never executed. */
__attribute__((naked, noinline)) void SysTick_Handler(void)
{
    __asm__ volatile(
        ".syntax unified\n\t"
        "ldr r0, =ticks\n\t"
        "ldr r1, [r0]\n\t"
        "adds r1, r1, #1\n\t"
        "str r1, [r0]\n\t"
        "bx lr\n\t"
        ".ltorg\n");
}
#else
void SysTick_Handler(void) {} /* the vector table wants one; SysTick stays off here */
#endif

__attribute__((naked, noinline)) static void run_loop(uint32_t n)
{
    (void)n;
    __asm__ volatile(
        ".syntax unified\n\t"
        "push {r4, r5, r6, lr}\n\t"
        "mov r4, r0\n\t"
        "ldr r5, =0xE000ED04\n\t" /* ICSR */
        "movs r6, #1\n\t"
        "lsls r6, r6, #26\n\t" /* PENDSTSET */
        "movs r0, #1\n\t"
        "bl ml_mark\n"
        "1:\n\t"
#ifdef TICK_EVERY_ITERATION
        "str r6, [r5]\n\t"
#endif
        "subs r4, r4, #1\n\t"
        "bne 1b\n\t"
        "movs r0, #2\n\t"
        "bl ml_mark\n\t"
        "pop {r4, r5, r6, pc}\n\t"
        ".ltorg\n");
}

/* Semihosting SYS_EXIT (0x18) with ADP_Stopped_ApplicationExit: QEMU exits with status 0. */
static void semihosting_exit(void)
{
    register uint32_t operation __asm__("r0") = 0x18u;
    register uint32_t argument __asm__("r1") = 0x20026u;
    __asm__ volatile("bkpt 0xab" : : "r"(operation), "r"(argument) : "memory");
}

int main(void)
{
    run_loop(1u);
    run_loop(1000u);
    run_loop(1000000u);
    semihosting_exit();
    return 0;
}
