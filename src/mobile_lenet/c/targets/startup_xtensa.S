/* startup_xtensa.S - reset, vectors and start-up for the esp32 target (Xtensa LX, windowed ABI, with FPU).
 *
 * Written for the ESP32's instruction set and run on QEMU's de233_fpu core ("-M lx60"), whose vector layout
 * (VECBASE offsets) is the ESP32's. No ROM code runs before this, so it does what a boot ROM and the
 * ESP-IDF start-up would: vector base, FPU on, window registers and PS for windowed calls, stack, then C
 * (xtensa_start in runtime_xtensa.c copies .data, clears .bss and calls main).
 *
 * Vectors (at _vectors, 1 KB aligned, see esp32.ld):
 * - window overflow/underflow handlers: spill and refill a caller's registers to and from its stack frame,
 *   as the windowed ABI defines them. They run on a real ESP32 too (less often: it has 64 physical address
 *   registers, de233_fpu 32), and their instructions are counted.
 * - the user exception vector: emulates MULSH and MULUH (the high word of a signed / unsigned 32 x 32-bit
 *   product). The ESP32 has them (the MUL32_HIGH option) and LLVM emits them for -mcpu=esp32; de233_fpu does
 *   not, so they trap as illegal instructions here. The handler computes the result from four 16 x 16-bit
 *   products, writes it to the instruction's destination register and resumes after it. The harness counts
 *   the trapping instruction once (as the ESP32 executes it) and leaves the handler's own instructions out
 *   (its skip range is [_vectors + 0x340, _vectors_end): the user vector's first three instructions,
 *   which also dispatch the Alloca exception below, are left out with it).
 * - the Alloca exception of MOVSP (see the handler at 0x180), as on any windowed-ABI system.
 * - every other exception or interrupt: stop (a loop); a harness sees the UART go quiet and times out. */

    .equ PS_WOE_UM, 0x00040020  # PS.WOE (window overflow exceptions on), PS.UM (user vector), INTLEVEL 0

/* ------------------------------------------------------------------------------------------------ reset */
    .section .reset, "ax"
    .global _reset
_reset:
    j _start

/* ------------------------------------------------------------------------------------------------ vectors */
    .section .vectors, "ax"
    .global _vectors_start
_vectors_start:

/* Overflow of a frame that called with CALL4: its a0-a3 go to the 16 bytes below its callee's stack
 * pointer (a5 in this rotated window). */
    .org 0x000
_window_overflow4:
    s32e a0, a5, -16
    s32e a1, a5, -12
    s32e a2, a5, -8
    s32e a3, a5, -4
    rfwo

    .org 0x040
_window_underflow4:
    l32e a0, a5, -16
    l32e a1, a5, -12
    l32e a2, a5, -8
    l32e a3, a5, -4
    rfwu

/* CALL8 frames: a0-a3 as above (a9 is the callee's stack pointer); a4-a7 go to the extra save area at the
 * bottom of this frame's caller's frame, whose stack pointer was saved at [a1 - 12] of this frame. */
    .org 0x080
_window_overflow8:
    s32e a0, a9, -16
    l32e a0, a1, -12
    s32e a1, a9, -12
    s32e a2, a9, -8
    s32e a3, a9, -4
    s32e a4, a0, -32
    s32e a5, a0, -28
    s32e a6, a0, -24
    s32e a7, a0, -20
    rfwo

    .org 0x0c0
_window_underflow8:
    l32e a1, a9, -12
    l32e a0, a9, -16
    l32e a7, a1, -12
    l32e a2, a9, -8
    l32e a4, a7, -32
    l32e a3, a9, -4
    l32e a5, a7, -28
    l32e a6, a7, -24
    l32e a7, a7, -20
    rfwu

/* CALL12 frames: the same with a13 as the callee's stack pointer and eight extra registers. */
    .org 0x100
_window_overflow12:
    s32e a0, a13, -16
    l32e a0, a1, -12
    s32e a1, a13, -12
    s32e a2, a13, -8
    s32e a3, a13, -4
    s32e a4, a0, -48
    s32e a5, a0, -44
    s32e a6, a0, -40
    s32e a7, a0, -36
    s32e a8, a0, -32
    s32e a9, a0, -28
    s32e a10, a0, -24
    s32e a11, a0, -20
    rfwo

    .org 0x140
_window_underflow12:
    l32e a1, a13, -12
    l32e a0, a13, -16
    l32e a11, a1, -12
    l32e a2, a13, -8
    l32e a4, a11, -48
    l32e a8, a11, -32
    l32e a3, a13, -4
    l32e a5, a11, -44
    l32e a6, a11, -40
    l32e a7, a11, -36
    l32e a9, a11, -28
    l32e a10, a11, -24
    l32e a11, a11, -20
    rfwu

/* Interrupt levels 2-6 and NMI are never enabled here; their slots (0x180-0x2ff) hold the MOVSP handler.
 *
 * MOVSP (which LLVM emits to move the stack pointer around calls with arguments on the stack) raises the
 * Alloca exception when the caller's registers are not in the register file (spilled by an overflow): it
 * must see them live. The handler makes the exception a window underflow of the caller: PS.OWB gets this
 * frame's WINDOWBASE, the window rotates back to the caller by this frame's call size (the top two bits of
 * its return address, a0, which the user vector saved in EXCSAVE1), and the matching underflow handler
 * reloads the caller's registers; its RFWU returns to the MOVSP, which then completes. An ESP32 runs the
 * same kind of handler (less often, with twice the physical registers); these instructions are counted. */
    .org 0x180
_alloca_exception:
    rsr a0, windowbase
    rotw -1                     # this frame's a0-a3 are now a4-a7; a0-a3 belong to a spilled frame
    rsr a2, ps
    extui a3, a2, 8, 4          # PS.OWB
    xor a3, a3, a4              # a4: WINDOWBASE before the rotation
    rsr a4, excsave1            # this frame's return address
    slli a3, a3, 8
    xor a2, a2, a3              # PS.OWB = WINDOWBASE before the rotation
    wsr a2, ps
    rsync
    bbsi a4, 31, 1f             # call size 4 (return address bits 31-30 = 01)
    j _window_underflow4
1:  rotw -1
    bbsi a8, 30, 2f             # call size 8 (10)
    j _window_underflow8
2:  rotw -1                     # call size 12 (11)
    j _window_underflow12

/* The word at 0x2fc is the user handler's one literal (L32R reads literals at lower addresses than itself). */
    .org 0x2fc
_register_save_address:
    .long _exception_registers

    .org 0x300
_kernel_exception:
    j _stop

/* User exception: MOVSP's Alloca cause goes to its handler above; the rest saves a0-a15 to memory (the
 * emulation indexes registers by number), then decodes. */
    .org 0x340
_user_exception:
    wsr a0, excsave1
    rsr a0, exccause
    beqi a0, 5, _alloca_exception_far
    l32r a0, _register_save_address
    j _user_exception_body
_alloca_exception_far:
    j _alloca_exception

    .org 0x3c0
_double_exception:
    j _stop

    .org 0x400
_user_exception_body:
    s32i a1, a0, 4
    s32i a2, a0, 8
    s32i a3, a0, 12
    s32i a4, a0, 16
    s32i a5, a0, 20
    s32i a6, a0, 24
    s32i a7, a0, 28
    s32i a8, a0, 32
    s32i a9, a0, 36
    s32i a10, a0, 40
    s32i a11, a0, 44
    s32i a12, a0, 48
    s32i a13, a0, 52
    s32i a14, a0, 56
    s32i a15, a0, 60
    rsr a1, excsave1
    s32i a1, a0, 0
    rsr a2, exccause
    bnez a2, .Lnot_emulated        # not CAUSE_ILLEGAL (0)
    /* The instruction (RRR format, 3 bytes, maybe unaligned): byte 0 = t << 4 | op0, byte 1 = r << 4 | s,
     * byte 2 = op2 << 4 | op1. MULUH: op0 0, op1 2, op2 10; MULSH: op2 11. */
    rsr a3, epc1
    l8ui a4, a3, 0
    l8ui a5, a3, 1
    l8ui a6, a3, 2
    extui a7, a4, 0, 4
    bnez a7, .Lnot_emulated
    extui a7, a6, 0, 4
    bnei a7, 2, .Lnot_emulated
    extui a8, a6, 4, 4          # op2
    movi a7, 10
    sub a7, a8, a7              # 0: MULUH, 1: MULSH
    bltui a7, 2, .Lemulate
.Lnot_emulated:
    j _stop
.Lemulate:
    extui a10, a5, 4, 4         # r: the destination
    extui a9, a5, 0, 4          # s
    addx4 a9, a9, a0
    l32i a9, a9, 0              # x = as
    extui a11, a4, 4, 4         # t
    addx4 a11, a11, a0
    l32i a11, a11, 0            # y = at
    /* The unsigned product's high word from 16-bit halves: x = xh:xl, y = yh:yl,
     * x * y = xh*yh << 32 + (xh*yl + xl*yh) << 16 + xl*yl. */
    extui a2, a9, 0, 16         # xl
    extui a3, a9, 16, 16        # xh
    extui a4, a11, 0, 16        # yl
    extui a5, a11, 16, 16       # yh
    mul16u a6, a2, a4           # xl*yl
    mul16u a12, a3, a4          # xh*yl
    mul16u a13, a2, a5          # xl*yh
    mul16u a14, a3, a5          # xh*yh
    extui a15, a6, 16, 16       # bits 16-31 of the sum, with the carries into bit 32:
    extui a2, a12, 0, 16
    add a15, a15, a2
    extui a2, a13, 0, 16
    add a15, a15, a2
    extui a15, a15, 16, 16
    add a14, a14, a15           # high word = xh*yh + carries + the upper halves of the middle products
    extui a2, a12, 16, 16
    add a14, a14, a2
    extui a2, a13, 16, 16
    add a14, a14, a2
    /* Signed (MULSH): a negative x stands for x - 2^32, which takes y from the high word; likewise y. */
    beqz a7, 2f
    bgez a9, 1f
    sub a14, a14, a11
1:  bgez a11, 2f
    sub a14, a14, a9
2:  addx4 a10, a10, a0
    s32i a14, a10, 0
    rsr a3, epc1
    addi a3, a3, 3
    wsr a3, epc1
    l32i a1, a0, 4
    l32i a2, a0, 8
    l32i a3, a0, 12
    l32i a4, a0, 16
    l32i a5, a0, 20
    l32i a6, a0, 24
    l32i a7, a0, 28
    l32i a8, a0, 32
    l32i a9, a0, 36
    l32i a10, a0, 40
    l32i a11, a0, 44
    l32i a12, a0, 48
    l32i a13, a0, 52
    l32i a14, a0, 56
    l32i a15, a0, 60
    l32i a0, a0, 0
    rsync
    rfe

_stop:
    j _stop
    .global _vectors_end_marker
_vectors_end_marker:

/* ------------------------------------------------------------------------------------------------ start */
    .section .text._start, "ax"
    .literal_position
    .literal .Lvectors, _vectors_start
    .literal .Lps, PS_WOE_UM
    .literal .Lstack_top, _estack
    .literal .Lc_start, xtensa_start
    .global _start
    .align 4
_start:
    l32r a2, .Lvectors
    wsr a2, vecbase
    movi a2, 1
    wsr a2, cpenable            # coprocessor 0: the FPU
    movi a2, 0
    wsr a2, intenable
    wsr a2, windowbase
    movi a2, 1
    wsr a2, windowstart
    rsync
    l32r a2, .Lps
    wsr a2, ps
    rsync
    l32r a1, .Lstack_top
    addi a1, a1, -32            # room above for a spill of this frame's a0-a3
    movi a0, 0                  # no return address: the end of the call chain for a debugger
    mov a9, a1                  # CALL8: the callee's stack pointer is this window's a9
    l32r a8, .Lc_start
    callx8 a8
1:  j 1b

    .section .bss._exception_registers, "aw"
    .align 4
_exception_registers:
    .space 64
