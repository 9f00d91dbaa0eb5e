/* uart_stm32f4.c - board services for the cortex-m4f target (STM32F405/407 class; QEMU
 * "-M netduinoplus2"): USART1 at 0x40011000 (QEMU's first serial port), SysTick for time.
 * CPU_HZ is 168 MHz (the netduinoplus2 model's system clock). */
#include <stdint.h>

#include "board.h"

#ifndef CPU_HZ
#error "define CPU_HZ (core clock in Hz)"
#endif

#define RCC_APB2ENR (*(volatile uint32_t *)0x40023844u)
#define RCC_APB2ENR_USART1EN (1u << 4)

#define USART1_BASE 0x40011000u
#define USART_SR (*(volatile uint32_t *)(USART1_BASE + 0x00u))
#define USART_DR (*(volatile uint32_t *)(USART1_BASE + 0x04u))
#define USART_BRR (*(volatile uint32_t *)(USART1_BASE + 0x08u))
#define USART_CR1 (*(volatile uint32_t *)(USART1_BASE + 0x0Cu))
#define USART_SR_RXNE (1u << 5)
#define USART_SR_TXE (1u << 7)
#define USART_CR1_UE (1u << 13)
#define USART_CR1_TE (1u << 3)
#define USART_CR1_RE (1u << 2)

#define APB2_HZ (CPU_HZ / 2u) /* APB2 runs at half the core clock on the F4 at 168 MHz */
#define BAUD 115200u

void systick_start(void);

void board_init(void)
{
    RCC_APB2ENR |= RCC_APB2ENR_USART1EN;
    USART_BRR = (APB2_HZ + BAUD / 2u) / BAUD; /* 16x oversampling: mantissa and fraction in one */
    USART_CR1 = USART_CR1_UE | USART_CR1_TE | USART_CR1_RE;
    systick_start();
}

void board_uart_write(uint8_t b)
{
    while ((USART_SR & USART_SR_TXE) == 0u) {
    }
    USART_DR = b;
}

int board_uart_read(void)
{
    if ((USART_SR & USART_SR_RXNE) == 0u) return -1;
    return (int)(USART_DR & 0xFFu);
}
