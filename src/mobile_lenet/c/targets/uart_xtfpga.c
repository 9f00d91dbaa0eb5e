/* uart_xtfpga.c - board services for the esp32 target as QEMU runs it ("-M lx60 -cpu de233_fpu"): the
 * board's 16550 UART at 0xFD050020 (registers 4 bytes apart; QEMU's first serial port), and the core's cycle
 * counter CCOUNT for time, so no timer interrupt runs. QEMU advances CCOUNT with the host's clock at the
 * core's nominal 40 MHz (CPU_HZ); on a real ESP32 these two services are the Arduino core's Serial and
 * micros(). */
#include <stdint.h>

#include "board.h"

#ifndef CPU_HZ
#error "define CPU_HZ (the rate of CCOUNT in Hz)"
#endif

#define UART_BASE 0xFD050020u
#define UART_REG(n) (*(volatile uint32_t *)(UART_BASE + 4u * (n)))
#define UART_RBR UART_REG(0) /* receive buffer (read) / transmit holding (write) */
#define UART_IER UART_REG(1)
#define UART_FCR UART_REG(2)
#define UART_LCR UART_REG(3)
#define UART_LSR UART_REG(5)
#define UART_LSR_DATA_READY 0x01u
#define UART_LSR_THR_EMPTY 0x20u

static uint32_t read_ccount(void)
{
    uint32_t count;
    __asm__ volatile("rsr %0, ccount" : "=r"(count));
    return count;
}

/* CCOUNT wraps every 2^32 cycles (107 s at 40 MHz): each reading adds the cycles since the last one to a
 * millisecond count, by subtraction (the main loop reads the clock far more often than once per wrap, and a
 * division in it would be slow here: see MULUH in startup_xtensa.S). */
#define CYCLES_PER_MS (CPU_HZ / 1000u)
static uint32_t last_ccount, cycles_left, millis_now;

static void advance_clock(void)
{
    const uint32_t now = read_ccount();
    cycles_left += now - last_ccount;
    last_ccount = now;
    while (cycles_left >= CYCLES_PER_MS) {
        cycles_left -= CYCLES_PER_MS;
        ++millis_now;
    }
}

void board_init(void)
{
    UART_IER = 0u;   /* polled: no UART interrupts */
    UART_LCR = 0x03u; /* 8N1 (QEMU ignores the baud rate) */
    UART_FCR = 0x07u; /* FIFOs on and cleared */
    last_ccount = read_ccount();
}

void board_uart_write(uint8_t b)
{
    while ((UART_LSR & UART_LSR_THR_EMPTY) == 0u) {
    }
    UART_RBR = b;
}

int board_uart_read(void)
{
    if ((UART_LSR & UART_LSR_DATA_READY) == 0u) return -1;
    return (int)(UART_RBR & 0xFFu);
}

uint32_t board_millis(void)
{
    advance_clock();
    return millis_now;
}

uint32_t board_micros(void)
{
    advance_clock();
    return millis_now * 1000u + cycles_left / (CPU_HZ / 1000000u);
}
