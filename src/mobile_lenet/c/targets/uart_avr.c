/* uart_avr.c - board services for the atmega2560 target (Arduino Mega class, 16 MHz):
 * USART0 at 115200 baud (U2X, UBRR0 = 16), Timer1 in CTC mode as a 1 kHz tick for the clock.
 * simavr models both, cycle for cycle. */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <stdint.h>

#include "board.h"

#ifndef F_CPU
#define F_CPU 16000000UL
#endif

#define TIMER1_PRESCALER 64u
#define TIMER1_TICKS_PER_MS (F_CPU / TIMER1_PRESCALER / 1000u) /* 250 */
#define TIMER1_US_PER_TICK (TIMER1_PRESCALER * 1000000UL / F_CPU) /* 4 */

static volatile uint32_t milliseconds;

ISR(TIMER1_COMPA_vect) { milliseconds++; }

void board_init(void)
{
    UCSR0A = _BV(U2X0);
    UBRR0 = (uint16_t)((F_CPU / 8u + 115200u / 2u) / 115200u - 1u); /* 16: 117.6 kbaud, 2.1% off */
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);                              /* 8N1 */
    UCSR0B = _BV(RXEN0) | _BV(TXEN0);

    TCCR1A = 0;
    TCCR1B = _BV(WGM12) | _BV(CS11) | _BV(CS10); /* CTC on OCR1A, clock / 64 */
    OCR1A = TIMER1_TICKS_PER_MS - 1u;             /* after the mode: simavr ignores OCR writes in mode 0 */
    TIMSK1 = _BV(OCIE1A);
    sei();
}

void board_uart_write(uint8_t b)
{
    while ((UCSR0A & _BV(UDRE0)) == 0) {
    }
    UDR0 = b;
}

int board_uart_read(void)
{
    if ((UCSR0A & _BV(RXC0)) == 0) return -1;
    return UDR0;
}

uint32_t board_millis(void)
{
    const uint8_t sreg = SREG;
    cli();
    const uint32_t ms = milliseconds;
    SREG = sreg;
    return ms;
}

uint32_t board_micros(void)
{
    const uint8_t sreg = SREG;
    cli();
    uint32_t ms = milliseconds;
    uint16_t ticks = TCNT1;
    if ((TIFR1 & _BV(OCF1A)) != 0 && ticks < TIMER1_TICKS_PER_MS - 1u) ms++; /* a tick is pending */
    SREG = sreg;
    return ms * 1000u + (uint32_t)ticks * TIMER1_US_PER_TICK;
}
