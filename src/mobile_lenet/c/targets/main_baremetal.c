/* main_baremetal.c - Mobile-LeNet firmware main for bare-metal targets (no Arduino, no OS).
 *
 * Does what the PlatformIO firmware's main.cpp does with Arduino Serial, over the board's own
 * UART (board.h): the protocol itself is the library's state machine (mobile_lenet_serial.c),
 * so the code that runs here is the code the host tests run.
 *
 * Measurement hook: ml_mark() is an empty, never-inlined function called right before and right
 * after every inference. Simulator harnesses watch for execution reaching its address and read
 * their instruction / cycle counter there (hits come in pairs: before, after). The wrap is done
 * with the linker's --wrap=mobile_lenet_predict, so the generated library is not modified: its
 * call in ml_serial_classify() lands in __wrap_mobile_lenet_predict() below. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "mobile_lenet.h"
#include "mobile_lenet_serial.h"

/* noinline + an asm volatile body: the call cannot be inlined, merged or deleted. */
__attribute__((noinline, noclone, used)) void ml_mark(uint32_t id)
{
    __asm__ volatile("" : : "r"(id) : "memory");
}

int __real_mobile_lenet_predict(const uint8_t image[MOBILE_LENET_INPUT_SIZE],
                                float probs[MOBILE_LENET_NUM_CLASSES]);

int __wrap_mobile_lenet_predict(const uint8_t image[MOBILE_LENET_INPUT_SIZE],
                                float probs[MOBILE_LENET_NUM_CLASSES])
{
    ml_mark(1u); /* inference starts */
    const int digit = __real_mobile_lenet_predict(image, probs);
    ml_mark(2u); /* inference done */
    return digit;
}

static void uart_print(const char *text)
{
    while (*text != '\0') board_uart_write((uint8_t)*text++);
}

/* Serial.println(): the text, then CR LF. */
static void uart_println(const char *text)
{
    uart_print(text);
    uart_print("\r\n");
}

#ifdef ML_TRACE
/* The layer debugger (c/ml_trace.h): each layer's output as one line "LAYER <number> <count> <hex>...",
 * the format of the host program, sent before the PRED line. No printf: a few hand-made digits. */
static void uart_hex(uint32_t value, int digits)
{
    static const char hex[] = "0123456789abcdef";
    for (int shift = 4 * (digits - 1); shift >= 0; shift -= 4) board_uart_write((uint8_t)hex[(value >> shift) & 15u]);
}

static void uart_decimal(uint32_t value)
{
    char digits[10];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u);
    while (count > 0) board_uart_write((uint8_t)digits[--count]);
}

void mobile_lenet_trace(int layer, const void *values, int count, int value_bytes)
{
    const uint8_t *bytes = values;
    uart_print("LAYER ");
    uart_decimal((uint32_t)layer);
    board_uart_write(' ');
    uart_decimal((uint32_t)count);
    for (int i = 0; i < count; ++i) {
        board_uart_write(' ');
        if (value_bytes == 4) {
            uint32_t bits;
            memcpy(&bits, bytes + 4 * i, 4); /* the float's bits (all targets here are little-endian) */
            uart_hex(bits, 8);
        } else {
            uart_hex(bytes[i], 2);
        }
    }
    uart_print("\r\n");
}
#endif

static uint32_t clock_us(void) { return board_micros(); }

static ml_serial_link serial_link;
static char reply[ML_REPLY_MAX];

int main(void)
{
    board_init();
    ml_serial_start(&serial_link, board_millis());
    uart_println("READY");
    for (;;) {
        if (ml_serial_tick(&serial_link, board_millis()) == ML_SERIAL_SEND_READY) uart_println("READY");
        int received;
        while ((received = board_uart_read()) >= 0) {
            if (ml_serial_receive(&serial_link, (uint8_t)received, board_millis()) == ML_SERIAL_IMAGE_COMPLETE) {
                ml_serial_classify(&serial_link, clock_us, reply);
                uart_println(reply);
            }
        }
    }
}
