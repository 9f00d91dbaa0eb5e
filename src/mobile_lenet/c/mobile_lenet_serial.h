/* mobile_lenet_serial.h - the seed's serial protocol as a state machine with no I/O of its own.
 *
 * Protocol (115200 baud): the device prints READY; the host sends exactly ML_IMAGE_BYTES raw bytes (one SxS
 * image, S the model's input size: 784 bytes, 28x28, for the seed's network);
 * the device answers one line "PRED <digit> <seconds> <confidence>" (4 decimals each). When no byte has
 * arrived for ML_TIMEOUT_MS, the device drops any partial image and prints READY again (so an idle device
 * repeats READY every ML_TIMEOUT_MS, which also greets a host that connects late).
 *
 * The caller owns the I/O, so the firmware (Arduino Serial) and the host program (stdin/stdout) run the
 * same code. Each pass of the main loop:
 *   if (ml_serial_tick(&link, now_ms) == ML_SERIAL_SEND_READY) print the line "READY";
 *   for each byte received:
 *       if (ml_serial_receive(&link, byte, now_ms) == ML_SERIAL_IMAGE_COMPLETE) {
 *           ml_serial_classify(&link, clock_us, reply); print the line reply;
 *       }
 */
#ifndef MOBILE_LENET_SERIAL_H
#define MOBILE_LENET_SERIAL_H

#include <stdint.h>

#include "mobile_lenet_model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ML_BAUD_RATE 115200
/* one image of the model's input size: the generated model header (per-model data) says how large */
#define ML_IMAGE_BYTES MOBILE_LENET_INPUT_SIZE
#ifndef ML_TIMEOUT_MS
#define ML_TIMEOUT_MS 3000 /* override at compile time, e.g. -DML_TIMEOUT_MS=300 for fast tests */
#endif
#define ML_REPLY_MAX 40 /* "PRED 7 1234.5678 0.9876" plus room to spare */

typedef struct {
    uint8_t image[ML_IMAGE_BYTES];
    uint16_t received;         /* bytes of the current image so far */
    uint32_t last_activity_ms; /* when the last byte arrived or the last READY went out */
} ml_serial_link;

typedef enum {
    ML_SERIAL_NOTHING = 0,      /* nothing to do */
    ML_SERIAL_IMAGE_COMPLETE,   /* ML_IMAGE_BYTES are in: call ml_serial_classify and print its reply */
    ML_SERIAL_SEND_READY        /* timeout: any partial image was dropped; print READY */
} ml_serial_event;

/* A microsecond clock (wrapping at 2^32 is fine). */
typedef uint32_t (*ml_clock_us)(void);

/* Start (or restart) the link; the caller then prints READY. */
void ml_serial_start(ml_serial_link *link, uint32_t now_ms);

/* Call regularly, before feeding the bytes that arrived since the last call. */
ml_serial_event ml_serial_tick(ml_serial_link *link, uint32_t now_ms);

/* Feed one received byte. */
ml_serial_event ml_serial_receive(ml_serial_link *link, uint8_t byte, uint32_t now_ms);

/* Classify the complete image and write the reply line (no line end) into reply; starts the next image. */
void ml_serial_classify(ml_serial_link *link, ml_clock_us clock_us, char reply[ML_REPLY_MAX]);

/* Format "PRED <digit> <seconds> <confidence>" from the inference time in microseconds. */
void ml_serial_format_reply(char reply[ML_REPLY_MAX], int digit, uint32_t elapsed_us, float confidence);

#ifdef __cplusplus
}
#endif

#endif /* MOBILE_LENET_SERIAL_H */
