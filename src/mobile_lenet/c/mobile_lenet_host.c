/* mobile_lenet_host.c - run the generated Mobile-LeNet on a computer (POSIX).
 *
 *   mobile_lenet_host classify FILE   images from an IDX file (e.g. t10k-images-idx3-ubyte, not gzipped)
 *   mobile_lenet_host classify -      raw images on stdin, MOBILE_LENET_INPUT_SIZE bytes (SxS uint8; 784, 28x28, for the seed) each
 *       prints one line per image: the digit, the 10 logits, the 10 probabilities
 *       (%.9g: every float32 value reads back exactly; an int8 library prints its 10 int8 logits)
 *   mobile_lenet_host time FILE|- [REPEATS]
 *       reads the images (IDX file or raw on stdin) into memory first, then times only the library calls
 *       (mobile_lenet_logits, or mobile_lenet_int8_logits for an int8 library; one image at a time, REPEATS
 *       passes over all the images, default 5, after one warm-up pass) with clock_gettime(CLOCK_MONOTONIC), and
 *       prints one line: "images N repeats R best_seconds S images_per_second X checksum C" (best pass; C, a sum
 *       of the predicted digits, keeps the calls from being optimized away). No per-image output.
 *   mobile_lenet_host serve           be the microcontroller: the serial protocol on stdin/stdout
 *
 * Built with -DML_TRACE (the layer debugger), classify also prints, before each image's line, one line per
 * layer: "LAYER <number> <count> <value>..." with each value's bytes in hex (a float32 as the 8 hex digits
 * of its bits, an int8 as 2), so the values come back exactly.
 *
 * Build: cc -std=c99 -O2 -o mobile_lenet_host *.c -lm */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mobile_lenet.h"
#include "mobile_lenet_serial.h"

/* Classify one image and print its line: the digit, the 10 logits (an int8 library: its 10 int8 logits), the
 * 10 probabilities. */
static void classify_and_print(const uint8_t image[MOBILE_LENET_INPUT_SIZE])
{
    float logits[MOBILE_LENET_NUM_CLASSES], probs[MOBILE_LENET_NUM_CLASSES];
#if MOBILE_LENET_INT8
    int8_t quantized[MOBILE_LENET_NUM_CLASSES];
    mobile_lenet_int8_logits(image, quantized);
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) {
        logits[i] = MOBILE_LENET_LOGIT_SCALE * (float)(quantized[i] - MOBILE_LENET_LOGIT_ZERO_POINT);
    }
#else
    mobile_lenet_logits(image, logits);
#endif
    mobile_lenet_softmax(logits, probs);
    printf("%d", mobile_lenet_argmax(logits));
#if MOBILE_LENET_INT8
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) printf(" %d", quantized[i]);
#else
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) printf(" %.9g", (double)logits[i]);
#endif
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) printf(" %.9g", (double)probs[i]);
    putchar('\n');
}

#ifdef ML_TRACE
void mobile_lenet_trace(int layer, const void *values, int count, int value_bytes)
{
    const unsigned char *bytes = values;
    printf("LAYER %d %d", layer, count);
    for (int i = 0; i < count; ++i) {
        uint32_t bits = 0;
        if (value_bytes == 4) {
            memcpy(&bits, bytes + 4 * i, 4); /* the float's bits, whatever the byte order */
            printf(" %08lx", (unsigned long)bits);
        } else {
            printf(" %02x", bytes[i]);
        }
    }
    putchar('\n');
}
#endif

/* ------------------------------------------------------------------------------ classify mode */

#define IDX_IMAGES_MAGIC 0x00000803u

static uint32_t read_big_endian(const unsigned char bytes[4])
{
    return ((uint32_t)bytes[0] << 24) | ((uint32_t)bytes[1] << 16) | ((uint32_t)bytes[2] << 8) | bytes[3];
}

/* Classify images until the end of the input (count < 0) or count images. */
static int classify_stream(FILE *in, long count, const char *name)
{
    uint8_t image[MOBILE_LENET_INPUT_SIZE];
    for (long n = 0; count < 0 || n < count; ++n) {
        const size_t got = fread(image, 1, sizeof image, in);
        if (got == 0 && count < 0 && feof(in)) break;
        if (got != sizeof image) {
            fprintf(stderr, "%s: image %ld is truncated (%lu of %d bytes)\n", name, n, (unsigned long)got,
                    MOBILE_LENET_INPUT_SIZE);
            return 1;
        }
        classify_and_print(image);
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

/* Read an IDX image file's header; returns its image count, or -1 (after saying why) if it is not 28x28 uint8. */
static long read_idx_header(FILE *in, const char *path)
{
    unsigned char header[16];
    if (fread(header, 1, sizeof header, in) != sizeof header || read_big_endian(header) != IDX_IMAGES_MAGIC
        || read_big_endian(header + 8) != MOBILE_LENET_INPUT_HEIGHT
        || read_big_endian(header + 12) != MOBILE_LENET_INPUT_WIDTH) {
        fprintf(stderr, "%s: not an IDX file of 28x28 uint8 images (gzipped files must be unpacked)\n", path);
        return -1;
    }
    return (long)read_big_endian(header + 4);
}

static int classify_idx_file(const char *path)
{
    FILE *in = fopen(path, "rb");
    long count;
    int status = 1;
    if (in == NULL) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return 1;
    }
    count = read_idx_header(in, path);
    if (count >= 0) status = classify_stream(in, count, path);
    fclose(in);
    return status;
}

/* ------------------------------------------------------------------------------ time mode */

static double seconds_now(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* One pass over the images, library calls only; returns the sum of the predicted digits. */
static long run_pass(const uint8_t *images, long count)
{
    long checksum = 0;
    for (long n = 0; n < count; ++n) {
#if MOBILE_LENET_INT8
        int8_t quantized[MOBILE_LENET_NUM_CLASSES];
        int best = 0;
        mobile_lenet_int8_logits(images + n * MOBILE_LENET_INPUT_SIZE, quantized);
        for (int i = 1; i < MOBILE_LENET_NUM_CLASSES; ++i) {
            if (quantized[i] > quantized[best]) best = i;
        }
        checksum += best;
#else
        float logits[MOBILE_LENET_NUM_CLASSES];
        mobile_lenet_logits(images + n * MOBILE_LENET_INPUT_SIZE, logits);
        checksum += mobile_lenet_argmax(logits);
#endif
    }
    return checksum;
}

/* Read every image (IDX file, or raw images on stdin when path is "-") into memory, then time the passes. */
static int time_images(const char *path, int repeats)
{
    FILE *in = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    uint8_t *images = NULL;
    long count = 0, capacity = 0, limit = -1, checksum = 0;
    double best = -1.0;
    if (in == NULL) {
        fprintf(stderr, "%s: %s\n", path, strerror(errno));
        return 1;
    }
    if (in != stdin) {
        limit = read_idx_header(in, path);
        if (limit < 0) {
            fclose(in);
            return 1;
        }
    }
    for (;;) {
        if (limit >= 0 && count == limit) break;
        if (count == capacity) {
            uint8_t *bigger;
            capacity = capacity ? 2 * capacity : 1024;
            bigger = realloc(images, (size_t)capacity * MOBILE_LENET_INPUT_SIZE);
            if (bigger == NULL) {
                fprintf(stderr, "%s: out of memory\n", path);
                free(images);
                if (in != stdin) fclose(in);
                return 1;
            }
            images = bigger;
        }
        const size_t got = fread(images + count * MOBILE_LENET_INPUT_SIZE, 1, MOBILE_LENET_INPUT_SIZE, in);
        if (got == 0 && limit < 0 && feof(in)) break;
        if (got != MOBILE_LENET_INPUT_SIZE) {
            fprintf(stderr, "%s: image %ld is truncated (%lu of %d bytes)\n", path, count, (unsigned long)got,
                    MOBILE_LENET_INPUT_SIZE);
            free(images);
            if (in != stdin) fclose(in);
            return 1;
        }
        ++count;
    }
    if (in != stdin) fclose(in);
    if (count == 0) {
        fprintf(stderr, "%s: no images\n", path);
        free(images);
        return 1;
    }
    checksum = run_pass(images, count); /* warm-up: caches, branch predictors, page faults */
    for (int r = 0; r < repeats; ++r) {
        const double start = seconds_now();
        checksum += run_pass(images, count);
        const double elapsed = seconds_now() - start;
        if (best < 0.0 || elapsed < best) best = elapsed;
    }
    free(images);
    printf("images %ld repeats %d best_seconds %.9f images_per_second %.1f checksum %ld\n", count, repeats, best,
           best > 0.0 ? (double)count / best : 0.0, checksum);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* ------------------------------------------------------------------------------ simulated device */

static uint32_t clock_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint32_t)((uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u);
}

static uint32_t clock_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint32_t)((uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u);
}

/* Print one line with the Arduino's println line end. */
static int send_line(const char *text)
{
    char line[ML_REPLY_MAX + 2];
    size_t length = strlen(text), sent = 0;
    memcpy(line, text, length);
    line[length++] = '\r';
    line[length++] = '\n';
    while (sent < length) {
        const ssize_t n = write(STDOUT_FILENO, line + sent, length - sent);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        sent += (size_t)n;
    }
    return 0;
}

static int serve(void)
{
    ml_serial_link link;
    char reply[ML_REPLY_MAX];
    uint8_t chunk[1024];
    ml_serial_start(&link, clock_ms());
    if (send_line("READY") != 0) return 1;
    for (;;) {
        struct pollfd input = {STDIN_FILENO, POLLIN, 0};
        /* wake up every few milliseconds even without input, to notice the timeout */
        const int ready = poll(&input, 1, 10);
        if (ready < 0 && errno != EINTR) return 1;
        if (ml_serial_tick(&link, clock_ms()) == ML_SERIAL_SEND_READY && send_line("READY") != 0) return 1;
        if (ready <= 0) continue;
        const ssize_t got = read(STDIN_FILENO, chunk, sizeof chunk);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return 0; /* end of input, or the terminal went away: the device powers off */
        for (ssize_t i = 0; i < got; ++i) {
            if (ml_serial_receive(&link, chunk[i], clock_ms()) == ML_SERIAL_IMAGE_COMPLETE) {
                ml_serial_classify(&link, clock_us, reply);
                if (send_line(reply) != 0) return 1;
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "classify") == 0) {
        return strcmp(argv[2], "-") == 0 ? classify_stream(stdin, -1, "stdin") : classify_idx_file(argv[2]);
    }
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "time") == 0) {
        const int repeats = argc == 4 ? atoi(argv[3]) : 5;
        if (repeats < 1) {
            fprintf(stderr, "time: REPEATS must be a positive number\n");
            return 2;
        }
        return time_images(argv[2], repeats);
    }
    if (argc == 2 && strcmp(argv[1], "serve") == 0) return serve();
    fprintf(stderr, "usage: %s classify FILE|-  or  %s time FILE|- [REPEATS]  or  %s serve\n", argv[0], argv[0],
            argv[0]);
    return 2;
}
