/* fpu_xtensa.S - float division for the esp32 target with the FPU's division instructions.
 *
 * The ESP32's FPU has no single divide instruction; it has the steps of one (the FP_DIV option: DIV0.S,
 * NEXP01.S, MKDADJ.S, ADDEXP.S, ADDEXPM.S, DIVN.S, and the fused MADDN.S), and the ESP32's GCC emits them
 * inline for every "/". LLVM calls __divsf3 instead, which this file provides with the same steps, so the
 * quotient is the correctly rounded one (IEEE 754, round to nearest even): the bits of the host's division.
 *
 * The method: d and n are taken apart into mantissas (NEXP01.S: the negated mantissa scaled into [1, 2)) and
 * an exponent adjustment (MKDADJ.S). DIV0.S gives a first reciprocal y ~ 1/m_d; Newton-Raphson steps refine it,
 * y' = y + y (1 - m_d y), and the quotient, q' = q + y (m_n - m_d q), each error term computed exactly by
 * MADDN.S (one rounding). ADDEXP.S/ADDEXPM.S put the exponents back and DIVN.S makes the last step with the
 * final rounding, and the special cases (zeros, infinities, NaN, overflow, subnormal results).
 *
 * Windowed ABI: n in a2, d in a3, the quotient in a2; f0-f15 are caller-saved. */
    .text
    .global __divsf3
    .type __divsf3, @function
    .align 4
__divsf3:
    entry a1, 16
    wfr f0, a2                  # n
    wfr f1, a3                  # d
    div0.s f2, f1               # y0 ~ 1 / m_d
    nexp01.s f3, f1             # -m_d
    nexp01.s f6, f0             # -m_n
    neg.s f7, f6                # m_n
    const.s f5, 0
    maddn.s f5, f7, f2          # q0 = m_n y0
    const.s f4, 1
    maddn.s f4, f3, f2          # e0 = 1 - m_d y0
    mov.s f8, f1
    mkdadj.s f8, f0             # the exponent adjustment of n / d
    maddn.s f2, f4, f2          # y1 = y0 + e0 y0
    const.s f4, 1
    maddn.s f4, f3, f2          # e1 = 1 - m_d y1
    maddn.s f7, f3, f5          # r0 = m_n - m_d q0
    maddn.s f2, f4, f2          # y2 = y1 + e1 y1
    maddn.s f5, f7, f2          # q1 = q0 + r0 y2
    const.s f4, 1
    maddn.s f4, f3, f2          # e2 = 1 - m_d y2
    neg.s f7, f6
    maddn.s f7, f3, f5          # r1 = m_n - m_d q1
    maddn.s f2, f4, f2          # y3 = y2 + e2 y2
    addexpm.s f5, f8            # exponents back on q1 and y3
    addexp.s f2, f8
    divn.s f5, f7, f2           # q = q1 + r1 y3, rounded once, special cases resolved
    rfr a2, f5
    retw
    .size __divsf3, . - __divsf3
