/* board.h - the few board services the bare-metal main needs (one implementation per target).
 *
 * uart_*.c implements them for one board: a polled UART (115200 8N1) and a clock.
 * The clock only needs to be coarse: it drives the protocol's idle timeout and the
 * "<seconds>" field of the reply. Simulators do not model time faithfully. */
#ifndef ML_BOARD_H
#define ML_BOARD_H

#include <stdint.h>

void board_init(void);            /* clocks, UART, timer; interrupts enabled on return */
void board_uart_write(uint8_t b); /* blocking */
int board_uart_read(void);        /* one received byte, or -1 when none is waiting */
uint32_t board_millis(void);      /* milliseconds since board_init (wraps at 2^32) */
uint32_t board_micros(void);      /* microseconds since board_init (wraps at 2^32) */

#endif /* ML_BOARD_H */
