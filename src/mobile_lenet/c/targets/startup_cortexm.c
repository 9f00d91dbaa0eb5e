/* startup_cortexm.c - reset handler and vector table for the Cortex-M targets (ARMv6-M and ARMv7E-M).
 *
 * The linker script (cortex-m0plus.ld, cortex-m4f.ld via cortexm_sections.ld) provides the symbols:
 * _estack (initial stack pointer: the top of RAM), _sidata/_sdata/_edata (.data in flash and RAM),
 * _sbss/_ebss (.bss). No C library start-up code runs (-nostartfiles): the library needs none. */
#include <stdint.h>

extern uint32_t _estack, _sidata, _sdata, _edata, _sbss, _ebss;

int main(void);
void SysTick_Handler(void);

void Reset_Handler(void)
{
    const uint32_t *from = &_sidata;
    for (uint32_t *to = &_sdata; to < &_edata;) *to++ = *from++;
    for (uint32_t *to = &_sbss; to < &_ebss;) *to++ = 0u;
#if defined(__ARM_FP)
    /* Cortex-M4F: grant full access to the FPU (CP10, CP11) before any float instruction. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    main();
    for (;;) {
    }
}

/* Faults and unexpected interrupts stop here; a harness sees the UART go quiet and times out. */
void Default_Handler(void)
{
    for (;;) {
    }
}

typedef void (*vector_t)(void);

/* The 16 system entries, then 32 external interrupts (all unused). */
__attribute__((section(".isr_vector"), used)) const vector_t vector_table[16 + 32] = {
    (vector_t)(uintptr_t)&_estack, /* initial SP */
    Reset_Handler,
    Default_Handler, /* NMI */
    Default_Handler, /* HardFault */
    Default_Handler, /* MemManage (v7-M) */
    Default_Handler, /* BusFault (v7-M) */
    Default_Handler, /* UsageFault (v7-M) */
    0, 0, 0, 0,      /* reserved */
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMon (v7-M) */
    0,               /* reserved */
    Default_Handler, /* PendSV */
    SysTick_Handler,
#define FOUR_DEFAULTS Default_Handler, Default_Handler, Default_Handler, Default_Handler
    FOUR_DEFAULTS, FOUR_DEFAULTS, FOUR_DEFAULTS, FOUR_DEFAULTS, /* IRQ 0-15 */
    FOUR_DEFAULTS, FOUR_DEFAULTS, FOUR_DEFAULTS, FOUR_DEFAULTS, /* IRQ 16-31 */
};
