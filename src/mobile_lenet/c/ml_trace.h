/* ml_trace.h - an optional look inside the network: every layer's output, for the layer debugger.
 *
 * Built with -DML_TRACE, the generated network calls mobile_lenet_trace() after each layer it stores, with
 * the layer's number (the row of the architecture table; in an int8 library, the quantized layer's number)
 * and its output. The program provides the function: the host program prints the values, the bare-metal
 * firmware sends them over its UART (`mobile-lenet simulate --layers`).
 *
 * Built with -DML_PROFILE instead (bare-metal firmware only), the same place after each layer calls the
 * firmware's measurement marker ml_mark() (c/targets/main_baremetal.c), where the simulator reads its
 * instruction or cycle counter: the cost of each layer (`mobile-lenet simulate --profile`).
 * Without either, the calls vanish. */
#ifndef ML_TRACE_H
#define ML_TRACE_H

#ifdef ML_TRACE
/* values: count values of value_bytes bytes each (4: float32, 1: int8), in the buffer's order (CHW). */
void mobile_lenet_trace(int layer, const void *values, int count, int value_bytes);
#define ML_TRACE_LAYER(layer, buffer, count) mobile_lenet_trace((layer), (buffer), (count), (int)sizeof((buffer)[0]))
#elif defined(ML_PROFILE)
#include <stdint.h>
void ml_mark(uint32_t id);
#define ML_TRACE_LAYER(layer, buffer, count) ml_mark(100u + (uint32_t)(layer)) /* ids 1, 2: an inference */
#else
#define ML_TRACE_LAYER(layer, buffer, count) ((void)0)
#endif

#endif /* ML_TRACE_H */
