/* qemu_insn_plugin.c - QEMU TCG plugin: exact count of executed guest instructions, read out each
 * time execution reaches a marker address, plus the stack's low-water mark from observed stores.
 *
 * Build (no QEMU headers needed, see qemu_plugin_api.h):
 *   cc -shared -fPIC -O2 -std=c99 -Wall -o libqemu_insn_plugin.so qemu_insn_plugin.c
 * Run:
 *   qemu-system-arm ... -plugin ./libqemu_insn_plugin.so,mark=0x1234,out=marks.txt,\
 *       stack_lo=0x20000a00,stack_hi=0x20020000[,skip_lo=0x..,skip_hi=0x..]
 *
 * Arguments (numbers in C syntax: 0x... or decimal):
 *   mark=ADDR       address of the marker function (e.g. from arm-none-eabi-nm; bit 0, the Thumb bit,
 *                   is ignored). Each time its first instruction executes, a line is written:
 *                     mark <n> insns <I> skipped <S> stack_min <A> interval_stack_min <B>
 *                   I: instructions executed so far, the marker's own first one excluded;
 *                   S: how many of those were in [skip_lo, skip_hi) (e.g. a timer interrupt
 *                   handler that should not be charged to the work between two marks);
 *                   A: lowest stack address stored to so far; B: the same since the previous mark
 *                   (0 when no store fell in the range).
 *   out=FILE        write the lines to FILE (flushed at each line); default: QEMU's log, which
 *                   needs "-d plugin" (and "-D FILE" to send it to a file)
 *   stack_lo, stack_hi  the stack's address range [lo, hi): stores inside it are tracked
 *   skip_lo, skip_hi    see S above
 * At exit one more line: "exit insns <I> skipped <S> stack_min <A> marks <n>".
 *
 * Counting is an inline add emitted before every translated instruction (no call), so it is exact
 * even when a block is left early. Only one vCPU is expected (Cortex-M machines have one). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = ML_QEMU_PLUGIN_VERSION;

static uint64_t insn_count;    /* every executed instruction */
static uint64_t skipped_count; /* those in [skip_lo, skip_hi) */
static uint64_t mark_addr = UINT64_MAX;
static uint64_t skip_lo, skip_hi;
static uint64_t stack_lo, stack_hi;
static uint64_t stack_min, interval_stack_min; /* lowest stored-to address, UINT64_MAX = none */
static unsigned long mark_count;
static FILE *out;

static void emit(const char *line)
{
    if (out != NULL) {
        fputs(line, out);
        fflush(out);
    } else {
        qemu_plugin_outs(line);
    }
}

static uint64_t shown(uint64_t address) { return address == UINT64_MAX ? 0 : address; }

/* The marker's first instruction gets this callback instead of the inline add: the figure written
 * is the count before it; the callback then counts the instruction itself. */
static void on_mark(unsigned int vcpu_index, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    char line[160];
    snprintf(line, sizeof line, "mark %lu insns %" PRIu64 " skipped %" PRIu64 " stack_min 0x%" PRIx64
             " interval_stack_min 0x%" PRIx64 "\n", ++mark_count, insn_count, skipped_count,
             shown(stack_min), shown(interval_stack_min));
    interval_stack_min = UINT64_MAX;
    insn_count++;
    emit(line);
}

static void on_store(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata)
{
    (void)vcpu_index;
    (void)userdata;
    if (!qemu_plugin_mem_is_store(info) || vaddr < stack_lo || vaddr >= stack_hi) return;
    if (vaddr < stack_min) stack_min = vaddr;
    if (vaddr < interval_stack_min) interval_stack_min = vaddr;
}

/* Called once per translation of a block: attach the counters to each of its instructions. */
static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    const size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        const uint64_t vaddr = qemu_plugin_insn_vaddr(insn);
        if (vaddr == mark_addr) {
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS, NULL);
        } else {
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &insn_count, 1);
        }
        if (vaddr >= skip_lo && vaddr < skip_hi) {
            qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &skipped_count, 1);
        }
        if (stack_hi > stack_lo) {
            qemu_plugin_register_vcpu_mem_cb(insn, on_store, QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_W, NULL);
        }
    }
}

static void at_exit_report(qemu_plugin_id_t id, void *userdata)
{
    (void)id;
    (void)userdata;
    char line[160];
    snprintf(line, sizeof line, "exit insns %" PRIu64 " skipped %" PRIu64 " stack_min 0x%" PRIx64
             " marks %lu\n", insn_count, skipped_count, shown(stack_min), mark_count);
    emit(line);
    if (out != NULL) fclose(out);
    out = NULL;
}

/* "name=value" with a numeric value: 1 when argument matches name (value stored), else 0. */
static int number_arg(const char *arg, const char *name, uint64_t *value)
{
    const size_t length = strlen(name);
    if (strncmp(arg, name, length) != 0 || arg[length] != '=') return 0;
    *value = strtoull(arg + length + 1, NULL, 0);
    return 1;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    stack_min = interval_stack_min = UINT64_MAX;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (number_arg(arg, "mark", &mark_addr)) {
            mark_addr &= ~(uint64_t)1; /* a Thumb function's symbol has bit 0 set */
        } else if (number_arg(arg, "stack_lo", &stack_lo) || number_arg(arg, "stack_hi", &stack_hi) ||
                   number_arg(arg, "skip_lo", &skip_lo) || number_arg(arg, "skip_hi", &skip_hi)) {
            skip_lo &= ~(uint64_t)1;
            skip_hi &= ~(uint64_t)1;
        } else if (strncmp(arg, "out=", 4) == 0) {
            out = fopen(arg + 4, "w");
            if (out == NULL) {
                fprintf(stderr, "qemu_insn_plugin: cannot write %s\n", arg + 4);
                return -1;
            }
        } else {
            fprintf(stderr, "qemu_insn_plugin: unknown argument '%s' (mark=, out=, stack_lo=, stack_hi=, "
                            "skip_lo=, skip_hi=)\n", arg);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, at_exit_report, NULL);
    return 0;
}
