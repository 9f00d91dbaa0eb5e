/* mobile_lenet_serial.c - the serial protocol state machine (see mobile_lenet_serial.h).
 * No printf: formatting is done here so that it needs no C library on any board. */
#include "mobile_lenet_serial.h"

#include "mobile_lenet.h"

void ml_serial_start(ml_serial_link *link, uint32_t now_ms)
{
    link->received = 0;
    link->last_activity_ms = now_ms;
}

ml_serial_event ml_serial_tick(ml_serial_link *link, uint32_t now_ms)
{
    /* unsigned difference: right across the wrap of a 32-bit millisecond clock */
    if ((uint32_t)(now_ms - link->last_activity_ms) < (uint32_t)ML_TIMEOUT_MS) return ML_SERIAL_NOTHING;
    link->received = 0; /* a partial image is stale: drop it, the host resends after READY */
    link->last_activity_ms = now_ms;
    return ML_SERIAL_SEND_READY;
}

ml_serial_event ml_serial_receive(ml_serial_link *link, uint8_t byte, uint32_t now_ms)
{
    if (link->received >= ML_IMAGE_BYTES) link->received = 0; /* the caller did not classify: start over */
    link->image[link->received++] = byte;
    link->last_activity_ms = now_ms;
    return link->received == ML_IMAGE_BYTES ? ML_SERIAL_IMAGE_COMPLETE : ML_SERIAL_NOTHING;
}

/* Append the decimal digits of value; returns the new end. */
static char *append_unsigned(char *end, uint32_t value)
{
    char digits[10];
    int count = 0;
    do {
        digits[count++] = (char)('0' + value % 10u);
        value /= 10u;
    } while (value != 0u);
    while (count > 0) *end++ = digits[--count];
    return end;
}

/* Append value / 10000 with exactly 4 decimals, e.g. 123 -> "0.0123". */
static char *append_fixed4(char *end, uint32_t ten_thousandths)
{
    uint32_t fraction = ten_thousandths % 10000u;
    end = append_unsigned(end, ten_thousandths / 10000u);
    *end++ = '.';
    for (uint32_t scale = 1000u; scale > 0u; scale /= 10u) *end++ = (char)('0' + (fraction / scale) % 10u);
    return end;
}

void ml_serial_format_reply(char reply[ML_REPLY_MAX], int digit, uint32_t elapsed_us, float confidence)
{
    static const char prefix[] = "PRED ";
    char *end = reply;
    if (!(confidence >= 0.0f)) confidence = 0.0f; /* also catches NaN, which must not reach the cast */
    if (confidence > 1.0f) confidence = 1.0f;
    for (const char *p = prefix; *p != '\0'; ++p) *end++ = *p;
    *end++ = (char)('0' + digit);
    *end++ = ' ';
    end = append_fixed4(end, elapsed_us / 100u + (elapsed_us % 100u >= 50u ? 1u : 0u));
    *end++ = ' ';
    end = append_fixed4(end, (uint32_t)(confidence * 10000.0f + 0.5f));
    *end = '\0';
}

void ml_serial_classify(ml_serial_link *link, ml_clock_us clock_us, char reply[ML_REPLY_MAX])
{
    float probs[MOBILE_LENET_NUM_CLASSES];
    const uint32_t start = clock_us();
    const int digit = mobile_lenet_predict(link->image, probs);
    const uint32_t elapsed_us = clock_us() - start;
    link->received = 0;
    ml_serial_format_reply(reply, digit, elapsed_us, probs[digit]);
}
