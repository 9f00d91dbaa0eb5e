/* simavr_runner.c - run an ATmega2560 firmware in simavr with its UART0 on a pseudo-terminal, and
 * measure it: the cycle count each time execution reaches a marker address, and the lowest stack
 * pointer seen.
 *
 * Build:  cc -std=c99 -O2 -Wall -o simavr_runner simavr_runner.c -lsimavr -lelf
 * Run:    simavr_runner [options] firmware.elf
 *   --mark ADDR       byte address of the marker function (avr-nm prints it)
 *   --marks N         stop after N marker hits (default: no limit)
 *   --max-cycles N    stop after N simulated cycles (default: no limit)
 *   --max-seconds S   stop after S seconds of wall-clock time (default 600): never runs forever
 *   --skip LO:HI      also report the cycles of instructions in [LO, HI) (e.g. a timer interrupt
 *                     handler) between marks, so they can be subtracted
 *   --xmem            give the chip 64 KB of data memory (RAMEND 0xFFFF): the ATmega2560's external
 *                     SRAM interface fully populated, no wait states (build with AVR_MEMORY=xmem)
 *   --stdio           UART0 on stdin/stdout instead of a pty
 *   --marks-out FILE  also write one line per marker hit to FILE as it happens, flushed at once, so a host
 *                     can read the counts live while the run goes on (the demo reads each image's):
 *                     "mark <n> cycles <C> skipped <S> interval_min_sp 0x<B>" (the summary's values at hit n)
 * First stdout line (pty mode): the pty's path, e.g. "/dev/pts/7". Last stdout line: one JSON object:
 *   {"stop": why, "cycles": total, "frequency": 16000000, "ramend": R, "min_sp": lowest SP,
 *    "marks": [cycle at each hit], "interval_min_sp": [lowest SP since the previous hit, per hit],
 *    "skipped": [cycles spent in the skip range so far, per hit]}
 * Stops also on SIGINT / SIGTERM (and prints the summary), when the program that started it dies
 * (Linux: even by SIGKILL, so no runner is left spinning), or when the core crashes or sleeps with
 * interrupts off (stop "crashed" / "done"). */
#define _XOPEN_SOURCE 600
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <simavr/avr_uart.h>
#include <simavr/sim_avr.h>
#include <simavr/sim_elf.h>

#define AVR_SPL 0x5D /* data-space addresses of the stack pointer */
#define AVR_SPH 0x5E
#define MAX_MARKS 100000
#define POLL_EVERY 256 /* instructions between two looks at the host side */

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static int host_in = -1, host_out = -1; /* the pty master twice, or stdin / stdout */
static int uart_xon = 1;                 /* simavr says its receive FIFO has room */

static void uart_output(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    const uint8_t byte = (uint8_t)value;
    if (write(host_out, &byte, 1) < 0) { /* host not reading (EAGAIN): the byte is lost, like a wire */
    }
}
static void uart_xon_hook(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq, (void)value, (void)param;
    uart_xon = 1;
}
static void uart_xoff_hook(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq, (void)value, (void)param;
    uart_xon = 0;
}

/* A raw pty: no echo, no line editing, so bytes pass unchanged both ways. */
static int open_pty(void)
{
    const int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) return -1;
    const char *name = ptsname(master);
    const int slave = open(name, O_RDWR | O_NOCTTY); /* kept open: the master never sees EIO */
    struct termios tio;
    if (slave < 0 || tcgetattr(slave, &tio) != 0) return -1;
    cfmakeraw(&tio);
    tcsetattr(slave, TCSANOW, &tio);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    printf("%s\n", name);
    fflush(stdout);
    return master;
}

/* simavr's messages go to stderr (only warnings and errors): stdout carries the pty path and the JSON. */
static void stderr_logger(struct avr_t *avr, const int level, const char *format, va_list ap)
{
    if (avr != NULL && level > avr->log) return;
    if (avr == NULL && level > LOG_WARNING) return;
    vfprintf(stderr, format, ap);
}

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--mark ADDR] [--marks N] [--max-cycles N] [--max-seconds S] [--skip LO:HI] "
                    "[--xmem] [--stdio] [--marks-out FILE] firmware.elf\n", argv0);
    exit(2);
}

int main(int argc, char **argv)
{
    uint64_t mark = UINT64_MAX, max_marks = UINT64_MAX, max_cycles = UINT64_MAX, skip_lo = 0, skip_hi = 0;
    double max_seconds = 600.0;
    int xmem = 0, use_stdio = 0;
    const char *elf = NULL, *marks_out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const int more = i + 1 < argc;
        if (strcmp(a, "--mark") == 0 && more) mark = strtoull(argv[++i], NULL, 0);
        else if (strcmp(a, "--marks") == 0 && more) max_marks = strtoull(argv[++i], NULL, 0);
        else if (strcmp(a, "--max-cycles") == 0 && more) max_cycles = strtoull(argv[++i], NULL, 0);
        else if (strcmp(a, "--max-seconds") == 0 && more) max_seconds = atof(argv[++i]);
        else if (strcmp(a, "--skip") == 0 && more) {
            char *end;
            skip_lo = strtoull(argv[++i], &end, 0);
            if (*end != ':') usage(argv[0]);
            skip_hi = strtoull(end + 1, NULL, 0);
        } else if (strcmp(a, "--xmem") == 0) xmem = 1;
        else if (strcmp(a, "--stdio") == 0) use_stdio = 1;
        else if (strcmp(a, "--marks-out") == 0 && more) marks_out = argv[++i];
        else if (a[0] != '-' && elf == NULL) elf = a;
        else usage(argv[0]);
    }
    if (elf == NULL) usage(argv[0]);
    FILE *marks_file = NULL;
    if (marks_out != NULL && (marks_file = fopen(marks_out, "w")) == NULL) {
        fprintf(stderr, "simavr_runner: cannot write %s (%s)\n", marks_out, strerror(errno));
        return 1;
    }

    avr_global_logger_set(stderr_logger);
    elf_firmware_t firmware;
    memset(&firmware, 0, sizeof firmware);
    if (elf_read_firmware(elf, &firmware) != 0) {
        fprintf(stderr, "simavr_runner: cannot read %s\n", elf);
        return 1;
    }
    avr_t *avr = avr_make_mcu_by_name("atmega2560");
    if (avr == NULL) return 1;
    if (xmem) avr->ramend = 0xFFFF; /* before avr_init, which sizes the data memory from it */
    avr_init(avr);
    avr->log = LOG_WARNING;
    avr_load_firmware(avr, &firmware);
    avr->frequency = 16000000;

    /* UART0: no console echo of its own, no sleeping in the simulator while the firmware polls. */
    uint32_t flags = 0;
    avr_ioctl(avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
    avr_irq_t *uart_in = avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT), uart_output, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON), uart_xon_hook, NULL);
    avr_irq_register_notify(avr_io_getirq(avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF), uart_xoff_hook, NULL);

    if (use_stdio) {
        host_in = STDIN_FILENO;
        host_out = STDOUT_FILENO;
        fcntl(host_in, F_SETFL, fcntl(host_in, F_GETFL) | O_NONBLOCK);
    } else {
        host_in = host_out = open_pty();
        if (host_in < 0) {
            fprintf(stderr, "simavr_runner: cannot open a pty (%s)\n", strerror(errno));
            return 1;
        }
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
#ifdef __linux__
    const pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the parent's death stops the run like a SIGTERM */
    if (getppid() != parent) stop_signal = SIGTERM; /* it died before the call */
#endif

    static uint64_t marks[MAX_MARKS], skipped_at[MAX_MARKS];
    static uint16_t interval_sp[MAX_MARKS];
    uint64_t n_marks = 0, skipped = 0;
    uint16_t min_sp = 0xFFFF, interval_min = 0xFFFF;
    uint8_t pending[256];
    size_t pending_len = 0, pending_pos = 0;
    const double deadline = now_seconds() + max_seconds;
    const char *stop = NULL;

    for (uint64_t step = 0; stop == NULL; step++) {
        const avr_flashaddr_t pc_before = avr->pc;
        const avr_cycle_count_t cycle_before = avr->cycle;
        const int state = avr_run(avr);
        if (state == cpu_Done) stop = "done";
        else if (state == cpu_Crashed) stop = "crashed";
        if (pc_before >= skip_lo && pc_before < skip_hi) skipped += avr->cycle - cycle_before;

        const uint16_t sp = (uint16_t)(avr->data[AVR_SPL] | (avr->data[AVR_SPH] << 8));
        if (sp < min_sp) min_sp = sp;
        if (sp < interval_min) interval_min = sp;
        if (avr->pc == mark && n_marks < MAX_MARKS) {
            marks[n_marks] = avr->cycle;
            skipped_at[n_marks] = skipped;
            interval_sp[n_marks] = interval_min;
            interval_min = 0xFFFF;
            if (marks_file != NULL) { /* live: the host reads it while the firmware goes on */
                fprintf(marks_file, "mark %llu cycles %llu skipped %llu interval_min_sp 0x%x\n",
                        (unsigned long long)n_marks + 1, (unsigned long long)marks[n_marks],
                        (unsigned long long)skipped, (unsigned)interval_sp[n_marks]);
                fflush(marks_file);
            }
            if (++n_marks >= max_marks) stop = "marks";
        }
        if (avr->cycle >= max_cycles) stop = "cycles";

        if (step % POLL_EVERY == 0) {
            if (stop_signal) stop = "signal";
            if (step % (POLL_EVERY * 4096) == 0 && now_seconds() > deadline) stop = "timeout";
            if (pending_pos == pending_len) { /* fetch what the host sent */
                const ssize_t got = read(host_in, pending, sizeof pending);
                pending_pos = 0;
                pending_len = got > 0 ? (size_t)got : 0;
            }
            if (pending_pos < pending_len && uart_xon) avr_raise_irq(uart_in, pending[pending_pos++]);
        }
    }

    printf("{\"stop\": \"%s\", \"cycles\": %llu, \"frequency\": %u, \"ramend\": %u, \"min_sp\": %u, \"marks\": [",
           stop, (unsigned long long)avr->cycle, (unsigned)avr->frequency, (unsigned)avr->ramend, (unsigned)min_sp);
    for (uint64_t i = 0; i < n_marks; i++) printf("%s%llu", i ? ", " : "", (unsigned long long)marks[i]);
    printf("], \"interval_min_sp\": [");
    for (uint64_t i = 0; i < n_marks; i++) printf("%s%u", i ? ", " : "", (unsigned)interval_sp[i]);
    printf("], \"skipped\": [");
    for (uint64_t i = 0; i < n_marks; i++) printf("%s%llu", i ? ", " : "", (unsigned long long)skipped_at[i]);
    printf("]}\n");
    fflush(stdout);
    if (marks_file != NULL) fclose(marks_file);
    return 0;
}
