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

/* Serial.println(): the text, then CR LF. */
static void uart_println(const char *text)
{
    while (*text != '\0') board_uart_write((uint8_t)*text++);
    board_uart_write('\r');
    board_uart_write('\n');
}

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
