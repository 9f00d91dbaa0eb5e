/* uart_nrf51.c - board services for the cortex-m0plus target as simulated by QEMU "-M microbit"
 * (nRF51822: UART0 at 0x40002000, 16 MHz core clock, SysTick for time).
 *
 * The memory map comes from the simulated board; cortex-m0plus.ld gives it RP2040-class sizes
 * (QEMU: -global nrf51-soc.sram-size=270336 -global nrf51-soc.flash-size=2097152). */
#include <stdint.h>

#include "board.h"

#define UART0_BASE 0x40002000u
#define UART_REG(offset) (*(volatile uint32_t *)(UART0_BASE + (offset)))
#define TASKS_STARTRX UART_REG(0x000)
#define TASKS_STARTTX UART_REG(0x008)
#define EVENTS_RXDRDY UART_REG(0x108)
#define EVENTS_TXDRDY UART_REG(0x11C)
#define UART_ENABLE UART_REG(0x500)
#define PSELTXD UART_REG(0x50C)
#define PSELRXD UART_REG(0x514)
#define RXD UART_REG(0x518)
#define TXD UART_REG(0x51C)
#define BAUDRATE UART_REG(0x524)

#define UART_ENABLE_ON 4u
#define BAUDRATE_115200 0x01D7E000u
#define MICROBIT_TX_PIN 24u
#define MICROBIT_RX_PIN 25u

void systick_start(void);

void board_init(void)
{
    PSELTXD = MICROBIT_TX_PIN;
    PSELRXD = MICROBIT_RX_PIN;
    BAUDRATE = BAUDRATE_115200;
    UART_ENABLE = UART_ENABLE_ON;
    TASKS_STARTTX = 1u;
    TASKS_STARTRX = 1u;
    systick_start();
}

void board_uart_write(uint8_t b)
{
    EVENTS_TXDRDY = 0u;
    TXD = b;
    while (EVENTS_TXDRDY == 0u) {
    }
}

int board_uart_read(void)
{
    if (EVENTS_RXDRDY == 0u) return -1;
    EVENTS_RXDRDY = 0u; /* clear before reading RXD: the read raises it again if more bytes wait */
    return (int)(RXD & 0xFFu);
}
