/* known_loop_avr.c - a loop of known length for the simavr runner's cycle counter (ATmega2560).
 *
 * run_loop(n) marks, spins n times through "sbiw; brne" (2 + 2 cycles, the last brne 1: 4 n - 1 cycles),
 * and marks again. Everything else between the two marks is the same code whatever n is, so the cycles
 * between the marks of run_loop(1001) exceed those of run_loop(1) by exactly 4000. Then the core sleeps
 * with interrupts off, which ends the simulation. */
#include <avr/interrupt.h>
#include <avr/sleep.h>
#include <stdint.h>

__attribute__((noinline, used)) void ml_mark(uint8_t id)
{
    __asm__ volatile("" : : "r"(id) : "memory");
}

__attribute__((noinline)) static void run_loop(uint16_t n)
{
    ml_mark(1);
    __asm__ volatile("1: sbiw %0, 1\n\t"
                     "brne 1b"
                     : "+w"(n));
    ml_mark(2);
}

int main(void)
{
    run_loop(1);
    run_loop(1001);
    cli();
    sleep_cpu();
    return 0;
}
