/* known_loop.c - test program for qemu_insn_plugin.c: a loop whose instruction count between two
 * ml_mark() calls is known exactly, on either Cortex-M target.
 *
 * run_loop(n) is hand-written Thumb (valid on ARMv6-M and ARMv7-M):
 *     movs r0, #1 ; bl ml_mark          <- mark 1 is read at ml_mark's first instruction
 *     ml_mark's body                     (K instructions: its own code, e.g. K = 1 for "bx lr")
 *  1: subs r4, r4, #1 ; bne 1b           (2 n instructions)
 *     movs r0, #2 ; bl ml_mark          (2 instructions)  <- mark 2
 * so mark2 - mark1 = K + 2 n + 2. main runs n = 1, 1000 and 1000000, then exits QEMU through
 * semihosting (SYS_EXIT), so the plugin's exit line is written too.
 *
 * Build with the firmware's startup code and linker scripts, see c/sim/README.md. */
#include <stdint.h>

__attribute__((noinline, noclone, used)) void ml_mark(uint32_t id)
{
    __asm__ volatile("" : : "r"(id) : "memory");
}

void SysTick_Handler(void) {} /* the vector table wants one; SysTick stays off here */

__attribute__((naked, noinline)) static void run_loop(uint32_t n)
{
    (void)n;
    __asm__ volatile(
        ".syntax unified\n\t"
        "push {r4, lr}\n\t"
        "mov r4, r0\n\t"
        "movs r0, #1\n\t"
        "bl ml_mark\n"
        "1:\n\t"
        "subs r4, r4, #1\n\t"
        "bne 1b\n\t"
        "movs r0, #2\n\t"
        "bl ml_mark\n\t"
        "pop {r4, pc}\n");
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
