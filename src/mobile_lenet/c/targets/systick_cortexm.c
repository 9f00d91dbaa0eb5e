/* systick_cortexm.c - millisecond / microsecond clock from the Cortex-M SysTick timer (any M core).
 *
 * SysTick counts the core clock (CPU_HZ, set per target by the Makefile) down from RELOAD and
 * interrupts every millisecond; the handler counts milliseconds. Microseconds add the part of
 * the current millisecond that has elapsed (RELOAD - VAL).
 * Under QEMU the timer follows host time, not executed instructions, so this clock is only coarse
 * there. The handler's instructions are the only interrupt work during an inference; the QEMU
 * plugin can leave them out of the count (its skip_lo/skip_hi arguments, see c/sim/README.md). */
#include <stdint.h>

#ifndef CPU_HZ
#error "define CPU_HZ (core clock in Hz)"
#endif

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u) /* control and status */
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u) /* reload value */
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u) /* current value */
#define SYST_CSR_ENABLE 1u
#define SYST_CSR_TICKINT 2u
#define SYST_CSR_CLKSOURCE 4u /* 1: the processor clock */

#define TICKS_PER_MS (CPU_HZ / 1000u)
#define TICKS_PER_US (CPU_HZ / 1000000u)

static volatile uint32_t milliseconds;

void SysTick_Handler(void) { milliseconds++; }

void systick_start(void)
{
    SYST_RVR = TICKS_PER_MS - 1u;
    SYST_CVR = 0u;
    SYST_CSR = SYST_CSR_ENABLE | SYST_CSR_TICKINT | SYST_CSR_CLKSOURCE;
}

uint32_t board_millis(void) { return milliseconds; }

uint32_t board_micros(void)
{
    uint32_t ms, value;
    do { /* read both without a tick in between */
        ms = milliseconds;
        value = SYST_CVR;
    } while (ms != milliseconds);
    return ms * 1000u + (TICKS_PER_MS - 1u - value) / TICKS_PER_US;
}
