"""``mobile-lenet export Q --format c --int8``: the int8 network as a self-contained C99 library.

The library has the float library's public API (``c/mobile_lenet.h``: ``mobile_lenet_predict``,
``mobile_lenet_logits``, ``mobile_lenet_softmax``, ``mobile_lenet_argmax``), so the serial protocol code, the
host program and the firmware run on it unchanged, plus the integer entry point ``mobile_lenet_int8_logits``.
Inside the network everything is an integer (see ``quantization.quantize``): int8 activations in two static
ping-pong buffers placed by the memory planner (``memory.int8_plan``), int8 weights, int32 biases and
accumulators, int16 multipliers with one shift per layer, int64 products. Only ``mobile_lenet_logits``
(dequantizing the int8 logits) and the softmax use floats, outside the network.

The kernels are the hand-written ``c/ml_kernels_s8.c``; this module generates the model header (sizes and
the logits' scale), the network (one kernel call per quantized layer, in the order of the architecture
table, each with the seed's rows it covers in a comment) and the weights: per layer ``ml_<layer>_weight``
(int8), ``_bias`` (int32) and ``_multiplier`` (int16), ``const`` so they stay in flash.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobile_lenet.codegen import c_library as lib, memory
from mobile_lenet.codegen.c_float import c_float, previous_export
from mobile_lenet.files import replace_folder
from mobile_lenet.quantization.arithmetic import INPUT_ZERO_POINT, INT8_MIN
from mobile_lenet.quantization.quantize import QLayer, QuantizedModel
from mobile_lenet.spec import LayerKind

PRECISION = "int8"
VALUES_PER_LINE = 16
C_TYPES = {np.dtype(np.int8): "int8_t", np.dtype(np.int16): "int16_t", np.dtype(np.int32): "int32_t"}
KERNEL_LAYOUTS = {LayerKind.CONV: "[Cout][Cin][Kh][Kw]", LayerKind.DWCONV: "[C][Kh][Kw]", LayerKind.DENSE: "[Dout][Din]"}


def array_name(layer_name: str, key: str) -> str:
    """The C name of one array of a quantized layer: ``ml_B3_dw3x3_s2_weight``."""
    return f"ml_{layer_name}_{key}"


def _array_comment(layer: QLayer, key: str, value: np.ndarray) -> str:
    if key == "weight":
        shape = "][".join(str(d) for d in value.shape)
        return f"{layer.name} int8 kernel {KERNEL_LAYOUTS[layer.kind]} = [{shape}]"
    if key == "bias":
        return f"{layer.name} int32 bias (BatchNorm folded in), scale in_scale * weight_scale[c]"
    return f"{layer.name} int16 requantization multipliers (real factor = multiplier / 2^{layer.shift})"


# ------------------------------------------------------------------------------------------------ weights
def weights_header(qmodel: QuantizedModel) -> str:
    """``mobile_lenet_weights.h``: one declaration per integer array."""
    declarations = []
    for layer in qmodel.layers:
        for key, value in layer.arrays().items():
            declarations.append(f"/* {_array_comment(layer, key, value)} */")
            declarations.append(f"extern const {C_TYPES[value.dtype]} {array_name(layer.name, key)}[{value.size}];")
    return lib.header_lines("MOBILE_LENET_WEIGHTS_H", f"{lib.WEIGHTS_HEADER} - the int8 Mobile-LeNet's integer "
                            "arrays, in flash.", ["<stdint.h>", '"ml_flash.h"'], declarations)


def weights_source(qmodel: QuantizedModel) -> str:
    """``mobile_lenet_weights.c``: the values, 16 per line."""
    lines = [f"/* {lib.WEIGHTS_SOURCE} - the int8 Mobile-LeNet's integer arrays. const: they stay in flash.",
             f" * {lib.GENERATED_NOTE} */", f'#include "{lib.WEIGHTS_HEADER}"', ""]
    for layer in qmodel.layers:
        for key, value in layer.arrays().items():
            # INT32_MIN has no literal of its own in C; a bias never reaches it (|bias| < 2^31 is checked)
            lines += lib.array_lines(C_TYPES[value.dtype], array_name(layer.name, key),
                                     [str(int(v)) for v in value.ravel()], VALUES_PER_LINE,
                                     _array_comment(layer, key, value))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ network
def layer_statements(layer: QLayer, step: memory.Step, number: int) -> list[str]:
    """The comment and the C call of quantized layer ``number`` (from 1), reading and writing the planner's
    buffers, and its layer-debugger hook."""
    source, target = lib.BUFFER_NAMES[step.source], lib.BUFFER_NAMES[step.target]
    low = layer.out_zero_point if layer.relu else INT8_MIN  # ReLU fused: clamp at the real zero
    requant = f"{array_name(layer.name, 'multiplier')}, {layer.shift}, {layer.out_zero_point}, {low}"
    is_conv = layer.kind in (LayerKind.CONV, LayerKind.DWCONV)
    comment = (f"/* {' + '.join(layer.rows)}: {lib.shape_text(step.input_shape)} -> {lib.shape_text(layer.out_shape)}"
               + (f", K{layer.kernel} S{layer.stride} P{layer.padding}" if is_conv else "")
               + f"; {step.source} -> {step.target} */")
    h, w, c = step.input_shape if len(step.input_shape) == 3 else (1, 1, step.input_shape[0])
    out = layer.out_shape
    weight, bias = array_name(layer.name, "weight"), array_name(layer.name, "bias")
    match layer.kind:
        case LayerKind.CONV:
            call = (f"ml_conv2d_s8({source}, {h}, {w}, {c}, {layer.in_zero_point}, {target}, {out[0]}, {out[1]}, "
                    f"{out[2]}, {layer.kernel}, {layer.stride}, {layer.padding}, {weight}, {bias}, {requant});")
        case LayerKind.DWCONV:
            call = (f"ml_depthwise_conv2d_s8({source}, {h}, {w}, {c}, {layer.in_zero_point}, {target}, {out[0]}, "
                    f"{out[1]}, {layer.kernel}, {layer.stride}, {layer.padding}, {weight}, {bias}, {requant});")
        case LayerKind.GAP:
            # Into the other buffer, as in the float library (in place would overwrite channel 0's plane).
            call = (f"ml_global_average_pool_s8({source}, {c}, {h * w}, {layer.in_zero_point}, {target}, "
                    f"ML_FLASH_S16(&{array_name(layer.name, 'multiplier')}[0]), {layer.shift}, {layer.out_zero_point});")
        case LayerKind.DENSE:
            call = (f"ml_dense_s8({source}, {c}, {layer.in_zero_point}, {target}, {out[0]}, {weight}, {bias}, "
                    f"{requant});")
        case _:  # BN, ReLU and padding are folded into the layers above (quantization.quantize.fold_batchnorm)
            raise ValueError(f"no int8 C code for layer kind {layer.kind!r}")
    return [comment, call, lib.trace_statement(number, target, layer.out_shape)]


def network_source(qmodel: QuantizedModel) -> str:
    """``mobile_lenet.c``: the int8 ping-pong buffers and the layer sequence."""
    plan = memory.int8_plan(qmodel.architecture)
    steps = {step.layer.name: step for step in plan.steps}
    body = [line for number, layer in enumerate(qmodel.layers, 1)
            for line in layer_statements(layer, steps[layer.name], number)]
    return lib.template("network_s8.c.in").substitute(
        note=lib.GENERATED_NOTE, buffer_values=plan.buffer_values, ram_bytes=plan.ram_bytes,
        input_buffer=lib.BUFFER_NAMES[plan.steps[0].source], input_zero_point=INPUT_ZERO_POINT,
        layers="\n".join("    " + line for line in body), result_buffer=lib.BUFFER_NAMES[plan.result_buffer])


# ------------------------------------------------------------------------------------------------ rows
def _folded_name(layer: QLayer) -> str:
    return array_name(layer.name, "folded_bias")


def _folded_bias(layer: QLayer) -> str:
    """The C array of a convolution's bias with its input zero point folded in: bias - in_zp * sum of the
    filter's weights (int32: checked), so the row kernels add q * w with no subtraction (c/ml_rows_s8.h)."""
    weight = layer.weight.astype(np.int64).reshape(layer.weight.shape[0], -1)
    folded = layer.bias.astype(np.int64) - layer.in_zero_point * weight.sum(axis=1)
    if np.abs(folded).max() >= 2**31:
        raise ValueError(f"{layer.name}: the folded bias does not fit in int32")
    values = ", ".join(str(int(v)) for v in folded)
    return f"static const int32_t {_folded_name(layer)}[{folded.size}] ML_FLASH = {{{values}}};"


ACC24_LIMIT = 2**23 - 1  # the fast path's sums are kept in three bytes (the AVR loops of c/ml_rows_s8.c)


def _rq_name(layer: QLayer) -> str:
    return array_name(layer.name, "rq")


def requant_table(layer: QLayer) -> np.ndarray | None:
    """The fast path's per-channel requantization (``ml_rows_rq`` in c/ml_rows_s8.h) of a convolution layer:
    (scale, lo, hi) int64 rows, or None where one of its assumptions fails (then the layer takes the generic
    path: int32 sums and the reference's requantization). Checked here, for every channel:
    - every sum the kernels can form, folded bias + sum of q * w over int8 q, has |sum| <= 2^23 - 2 (three bytes);
    - the weights are in [-127, 127] (as quantize makes them), so two products q * w add up in 16 bits (the AVR's
      loops take them in pairs);
    - 0 < multiplier, shift <= 24 and scale = multiplier * 2^(24 - shift) < 2^24 (three unsigned bytes);
    - hi = the smallest sum whose value reaches 127, lo = the smallest whose value exceeds the lower clamp
      (the value is non-decreasing in the sum since the multiplier is positive), both clipped to the sums'
      range, so that between them zero_point + floor((sum * scale + 2^23) / 2^24) is the reference's value."""
    shift = int(layer.shift)
    weight = layer.weight.astype(np.int64).reshape(layer.weight.shape[0], -1)
    folded = layer.bias.astype(np.int64) - layer.in_zero_point * weight.sum(axis=1)
    bound = np.abs(folded) + 128 * np.abs(weight).sum(axis=1)
    multiplier = layer.multiplier.astype(np.int64)
    if shift < 1 or shift > 24 or bound.max() >= ACC24_LIMIT or multiplier.min() <= 0 or weight.min() < -127:
        return None
    scale = multiplier << (24 - shift)
    if scale.max() >= 2**24:
        return None
    zp = int(layer.out_zero_point)
    low = zp if layer.relu else INT8_MIN
    rows = []
    for m, b, sc in zip(multiplier.tolist(), bound.tolist(), scale.tolist()):
        def reaches(v: int) -> int:  # the smallest sum with zp + floor((sum * m + 2^(shift-1)) / 2^shift) >= v
            return -((-((v - zp) * 2**shift - 2**(shift - 1))) // m)
        hi, lo = (min(max(t, -b), b + 1) for t in (reaches(127), reaches(low + 1)))
        rows.append((sc, lo, hi))
    return np.array(rows, dtype=np.int64)


def _requant_array(layer: QLayer) -> str:
    """The C array of a layer's ml_rows_rq rows (empty where the layer takes the generic path)."""
    table = requant_table(layer)
    if table is None:
        return f"/* {layer.name}: the generic path (an assumption of the fast one fails: c_int8.requant_table) */"
    values = ", ".join(f"{{{sc}, {lo}, {hi}}}" for sc, lo, hi in table.tolist())
    return f"static const ml_rows_rq {_rq_name(layer)}[{len(table)}] ML_FLASH = {{{values}}};"


def _layer_struct(layer: QLayer) -> str:
    """An ``ml_layer_s8`` initializer (c/ml_rows_s8.h) for a convolution layer (its folded bias array, and its
    fast requantization table or NULL)."""
    low = layer.out_zero_point if layer.relu else INT8_MIN
    rq = _rq_name(layer) if requant_table(layer) is not None else "NULL"
    return (f"{{{array_name(layer.name, 'weight')}, {_folded_name(layer)}, "
            f"{array_name(layer.name, 'multiplier')}, {layer.in_zero_point}, {layer.out_zero_point}, {low}, "
            f"{layer.shift}, {rq}}}")


def rows_network_source(qmodel: QuantizedModel) -> str:
    """``mobile_lenet.c`` of the row-by-row schedule (``c/ml_rows_s8.c``, ``memory.row_plan``): layer tables,
    folded biases, the rings of rows the planner sized, and the GAP / dense calls."""
    plan = memory.row_plan(qmodel.architecture)
    stem, blocks, gap, dense = _row_structure(qmodel)
    block_lines, rings, states = [], [], []
    for index, ring in enumerate(plan.rings):
        name = "ring_stem" if index == 0 else f"ring_{index - 1}"
        rings.append(f"static int8_t {name}[{ring.bytes}]; /* {ring.rows} padded rows of {ring.row_bytes} bytes: "
                     f"{ring.layer}'s input */")
        states.append(f"{{{name}, 0, 0}}")
    for dw, pw in blocks:
        h, w, c = dw.in_shape
        block_lines.append(f"    /* {' + '.join(dw.rows + pw.rows)} */")
        block_lines.append(f"    {{{_layer_struct(dw)}, {_layer_struct(pw)}, {h}, {w}, {c}, {dw.out_shape[0]}, "
                           f"{dw.out_shape[1]}, {pw.out_shape[2]}, {dw.kernel}, {dw.stride}, {dw.padding}}},")
    convolutions = [stem] + [layer for pair in blocks for layer in pair]
    folded = [_folded_bias(layer) for layer in convolutions] + [_requant_array(layer) for layer in convolutions]
    # every block's pointwise input a multiple of 8 (the seed's network): the kernel without the AVR assembly for
    # other counts, which the linker then leaves out (about 7.6 KB of flash)
    by8 = all(pw.in_shape[2] % 8 == 0 for _, pw in blocks)
    pointwise = "ml_rows_pointwise_by8_s8" if by8 else "ml_rows_pointwise_s8"
    low = dense.out_zero_point if dense.relu else INT8_MIN
    dense_call = (f"ml_dense_s8(pooled, {dense.in_shape[0]}, {dense.in_zero_point}, logits, {dense.out_shape[0]}, "
                  f"{array_name(dense.name, 'weight')}, {array_name(dense.name, 'bias')}, "
                  f"{array_name(dense.name, 'multiplier')}, {dense.shift}, {dense.out_zero_point}, {low});")
    return lib.template("network_rows_s8.c.in").substitute(
        note=lib.GENERATED_NOTE, folded_biases="\n".join(folded), stem_rows=" + ".join(stem.rows),
        stem=_layer_struct(stem), stem_h=stem.in_shape[0], stem_w=stem.in_shape[1], stem_channels=stem.out_shape[2],
        stem_kernel=stem.kernel, stem_padding=stem.padding,
        block_count=len(blocks), blocks="\n".join(block_lines), ram_bytes=f"{plan.ram_bytes:,}",
        rings="\n".join(rings), ring_count=len(plan.rings), row_states=", ".join(states),
        dw_row_bytes=plan.dw_row_bytes, gap_channels=gap.in_shape[2],
        gap_in_zp=gap.in_zero_point, gap_rows=" + ".join(gap.rows), gap_plane=gap.in_shape[0] * gap.in_shape[1],
        gap_multiplier=f"ML_FLASH_S16(&{array_name(gap.name, 'multiplier')}[0])", gap_shift=gap.shift,
        gap_out_zp=gap.out_zero_point, dense_rows=" + ".join(dense.rows), dense_call=dense_call, pointwise=pointwise)


def _row_structure(qmodel: QuantizedModel):
    """The quantized layers as the row schedule sees them: stem, (depthwise, pointwise) blocks, GAP, dense."""
    layers = list(qmodel.layers)
    stem, gap, dense = layers[0], layers[-2], layers[-1]
    pairs = list(zip(layers[1:-2:2], layers[2:-2:2]))
    shapes_ok = (stem.kind == LayerKind.CONV and stem.stride == 1 and stem.in_shape[2] == 1
                 and gap.kind == LayerKind.GAP and dense.kind == LayerKind.DENSE
                 and all(dw.kind == LayerKind.DWCONV and pw.kind == LayerKind.CONV and pw.kernel == 1
                         for dw, pw in pairs) and 2 * len(pairs) == len(layers) - 3
                 and stem.stride == 1 and stem.kernel <= 7 and stem.out_shape[:2] == stem.in_shape[:2]
                 and all(dw.kernel <= 7 and dw.in_shape[2] <= 255 and pw.in_shape[2] == dw.out_shape[2]
                         for dw, pw in pairs))
    if not shapes_ok:
        raise ValueError("the row schedule needs a stem convolution, depthwise-separable blocks, GAP and dense")
    return stem, pairs, gap, dense


def model_header(qmodel: QuantizedModel) -> str:
    """``mobile_lenet_model.h`` of the int8 library: sizes, and the scale and zero point of the int8 logits."""
    return lib.model_header(PRECISION, {"MOBILE_LENET_LOGIT_SCALE": c_float(np.float32(qmodel.output_scale)),
                                        "MOBILE_LENET_LOGIT_ZERO_POINT": str(qmodel.output_zero_point)},
                            "the int8 Mobile-LeNet's sizes; real logit = MOBILE_LENET_LOGIT_SCALE * "
                            "(int8 logit - MOBILE_LENET_LOGIT_ZERO_POINT).", qmodel.architecture)


SCHEDULES = ("buffers", "rows")  # whole feature maps in two ping-pong buffers, or rows flowing through rings


def generate_library(qmodel: QuantizedModel, schedule: str = "buffers") -> dict[str, str]:
    """The library proper (network, weights, kernels, serial protocol): file name -> text. ``schedule``:
    "buffers" (memory.int8_plan) or "rows" (memory.row_plan: the few-kilobyte schedule of small chips)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    network = rows_network_source(qmodel) if schedule == "rows" else network_source(qmodel)
    files = {lib.MODEL_HEADER: model_header(qmodel), lib.NETWORK_SOURCE: network,
             lib.WEIGHTS_HEADER: weights_header(qmodel), lib.WEIGHTS_SOURCE: weights_source(qmodel),
             **lib.static_files(PRECISION)}
    if schedule == "rows":
        files.update({name: lib.c_source(name) for name in lib.ROWS_FILES})
    return files


SCHEDULE_NOTES = {  # what the activation RAM of each schedule is, for the README
    "buffers": "two int8 ping-pong buffers, whole feature maps",
    "rows": "row by row (`ml_rows_s8.c`): rings of the few input rows each layer's next output row reads, for "
            "chips with a few kilobytes of SRAM",
}


def generate_sources(qmodel: QuantizedModel, schedule: str = "buffers") -> dict[str, str]:
    """Everything ``export --format c --int8`` writes: the library (``schedule``: see SCHEDULES), the host program
    (in ``host/``) and the README."""
    arch = qmodel.architecture
    ram_bytes = memory.row_plan(arch).ram_bytes if schedule == "rows" else memory.int8_plan(arch).ram_bytes
    readme = lib.template("c_int8_README.md").substitute(
        ram_bytes=f"{ram_bytes:,}", flash_bytes=f"{memory.int8_plan(arch).flash_bytes:,}", schedule=schedule,
        plan_command="summary --memory --int8" + (" --target atmega2560" if schedule == "rows" else ""),
        schedule_note=SCHEDULE_NOTES[schedule],
        rows_row="\n| `ml_rows_s8.h`, `.c` | the network row by row (called by `mobile_lenet.c`) |" if schedule == "rows" else "")
    return {**generate_library(qmodel, schedule), lib.EXPORTED_HOST_PROGRAM: lib.c_source(lib.HOST_PROGRAM),
            "README.md": readme}


def write_c_library_int8(qmodel: QuantizedModel, out_dir: str | Path, schedule: str = "buffers") -> list[Path]:
    """``export Q --format c --int8 [--schedule rows]``: write the int8 C library, host program (``host/``) and
    README into ``out_dir``."""
    return replace_folder(generate_sources(qmodel, schedule), out_dir, what="C export",
                          replaceable=previous_export())


# ------------------------------------------------------------------------------------------------ host fast path
# An opt-in variant for computers, not what ``export --format c --int8`` writes: the same integers as the NumPy
# int8 engine, with channels-last rows ("HCW") of bytes u = q + 128, stored zero-point borders, biases with the
# zero point folded in and per-channel requantization thresholds (c/ml_kernels_s8_host.h: AVX2 / VNNI on x86,
# plain C elsewhere). The ``c`` engine runs it for an int8 model; tests hold it bit for bit to the NumPy engine.
HOST_FAST_KERNEL_FILES = ("ml_kernels_s8_host.h", "ml_kernels_s8_host.c")
HOST_FAST_MAX_SHIFT = 23  # (sum * mult + round) stays inside int32 between the thresholds


class HostFastUnsupported(ValueError):
    """The host fast path has no kernel for this model (the generic int8 C runs it)."""


def host_fast_requant_rows(layer: QLayer) -> list[tuple[int, int, int, int, int, int]]:
    """Per output channel (lo, hi, mult, round, zp, low) of ``ml_s8h_rq`` (zero point and clamp as u = q + 128),
    checked: multiplier > 0, shift <= 23, and the clamped sums lo and hi give exactly low and 127, so that the
    vector requantization (clamp to [lo, hi], 32-bit multiply, add round, shift) is the reference's."""
    shift, zp = int(layer.shift), int(layer.out_zero_point)
    low = zp if layer.relu else INT8_MIN
    if not 1 <= shift <= HOST_FAST_MAX_SHIFT:
        raise HostFastUnsupported(f"{layer.name}: shift {shift} outside 1..{HOST_FAST_MAX_SHIFT}")
    unit, half = 1 << shift, 1 << (shift - 1)

    def value(acc: int, m: int) -> int:
        return min(max(zp + ((acc * m + half) >> shift), low), 127)

    rows = []
    for m in (int(v) for v in layer.multiplier.ravel()):
        if m <= 0:
            raise HostFastUnsupported(f"{layer.name}: multiplier {m} <= 0")
        hi = -((-((127 - zp) * unit - half)) // m)  # the smallest sum giving 127
        lo = -((-((low - zp + 1) * unit - half)) // m) - 1  # the largest sum giving low
        if value(hi, m) != 127 or value(lo, m) != low or (hi * m + half) >> shift != 127 - zp \
                or (lo * m + half) >> shift != low - zp or not -2**31 <= lo <= hi < 2**31:
            raise HostFastUnsupported(f"{layer.name}: requantization thresholds not exact")
        rows.append((lo, hi, m, half + (zp + 128) * unit, zp + 128, low + 128))
    return rows


def _host_int_array(c_type: str, name: str, values) -> list[str]:
    values = [str(int(v)) for v in values]
    return [f"static const {c_type} {name}[{len(values)}] = {{"] + [
        "    " + ", ".join(values[s:s + VALUES_PER_LINE]) + "," for s in range(0, len(values), VALUES_PER_LINE)] + [
        "};", ""]


def _host_conv_arrays(layer: QLayer, n: int) -> tuple[list[str], str, str, str]:
    """Weights (3x3: [C][3][4] with a zero fourth tap; 1x1: [Cout][Cin]), folded biases and requantization rows
    of a convolution; returns the lines and the three names."""
    weight = layer.weight.astype(np.int64)
    flat = weight.reshape(weight.shape[0], -1)
    bias = layer.bias.astype(np.int64) - (int(layer.in_zero_point) + 128) * flat.sum(axis=1)
    if np.abs(bias).max() >= 2**31 or np.abs(bias).max() + 255 * np.abs(flat).sum(axis=1).max() >= 2**31:
        raise HostFastUnsupported(f"{layer.name}: sums do not fit in int32")
    if layer.kernel == 3:
        quads = np.zeros((weight.shape[0], 3, 4), dtype=np.int64)
        quads[:, :, :3] = weight.reshape(weight.shape[0], 3, 3)
        weights = quads.ravel()
    else:
        weights = flat.ravel()
    w_name, b_name, rq_name = f"ml_hw{n:02d}", f"ml_hb{n:02d}", f"ml_hq{n:02d}"
    rows = host_fast_requant_rows(layer)
    rq = ", ".join("{" + ", ".join(str(v) for v in row) + "}" for row in host_fast_fold_bias(rows, bias))
    lines = (_host_int_array("int8_t", w_name, weights) + _host_int_array("int32_t", b_name, bias)
             + [f"static const ml_s8h_rq {rq_name}[{len(layer.multiplier.ravel())}] = {{{rq}}};", ""])
    return lines, w_name, b_name, rq_name, host_fast_needs_clamp(bias, flat, rows)


def host_fast_fold_bias(rows, bias: np.ndarray) -> list[tuple[int, ...]]:
    """``ml_s8h_rq`` rows with the (folded) bias moved in, as the vector loops use them: thresholds on the sum of
    u * w alone (lo - bias, hi - bias) and round + bias * mult modulo 2^32 (as int32); (sum + bias) * mult + round
    and sum * mult + that round are the same modulo 2^32."""
    folded = []
    for (lo, hi, mult, rnd, zp, low), b in zip(rows, (int(v) for v in bias)):
        lo, hi = max(lo - b, -2**31), min(hi - b, 2**31 - 1)
        if lo > hi:
            raise HostFastUnsupported("a bias moves the requantization thresholds out of int32")
        folded.append((lo, hi, mult, (rnd + b * mult + 2**31) % 2**32 - 2**31, zp, low))
    return folded


def host_fast_needs_clamp(bias: np.ndarray, weight: np.ndarray, rows) -> int:
    """The kernels' ``clamp`` argument for a layer (folded biases, weights (Cout, taps), requantization rows): 0
    where every sum the layer can form (bytes u in 0..255) keeps sum * mult + round inside int32 and every lower
    clamp is u = 0, so that the packs' saturation is the whole clamp; else 1."""
    w = weight.astype(np.int64)
    highest = bias + 255 * np.clip(w, 0, None).sum(axis=1)
    lowest = bias + 255 * np.clip(w, None, 0).sum(axis=1)
    table = np.array(rows, dtype=np.int64)
    mult, rnd, low = table[:, 2], table[:, 3], table[:, 5]
    safe = (highest * mult + rnd < 2**31) & (lowest * mult + rnd >= -2**31) & (low == 0)
    return 0 if bool(safe.all()) else 1


def host_fast_network_source(qmodel: QuantizedModel) -> str:
    """``mobile_lenet.c`` of the int8 host fast path: the arrays, HCW byte buffers with zero-point borders (set
    once) and the layer calls. Raises HostFastUnsupported for a model its kernels do not cover."""
    layers = list(qmodel.layers)
    arrays, buffers, borders, body = [], {}, [], []
    h0, w0, _ = layers[0].in_shape
    if layers[0].in_zero_point != INPUT_ZERO_POINT:
        raise HostFastUnsupported("the input zero point is not -128")
    buffers["ml_input"] = (h0 + 2) * (w0 + 2)  # u = pixel; border 0 (q = -128, the input zero point)
    source = {"name": "ml_input", "rs": w0 + 2, "cs": w0 + 2, "padded": True}
    for n, layer in enumerate(layers):
        comment = f"/* {' + '.join(layer.rows)} */"
        if layer.kind in (LayerKind.CONV, LayerKind.DWCONV):
            in_h, in_w, in_c = layer.in_shape
            out_h, out_w, out_c = layer.out_shape
            kinds = {(LayerKind.CONV, 3): "conv3", (LayerKind.DWCONV, 3): "dw", (LayerKind.CONV, 1): "pw"}
            kind = kinds.get((layer.kind, layer.kernel))
            padded_in = kind in ("conv3", "dw")
            if kind is None or (padded_in and (layer.padding != 1 or not source["padded"])) \
                    or (kind == "pw" and (layer.padding or layer.stride != 1 or in_c % 4 or in_c > 64)) \
                    or (kind == "conv3" and (in_c != 1 or layer.stride != 1)) or (kind == "dw" and layer.stride > 2):
                raise HostFastUnsupported(f"{layer.name}: no host fast kernel (kernel {layer.kernel}, "
                                          f"stride {layer.stride}, padding {layer.padding}, {in_c} channels)")
            lines, w_name, b_name, rq_name, clamp = _host_conv_arrays(layer, n)
            arrays += lines
            following = layers[n + 1] if n + 1 < len(layers) else None
            pad = following is not None and following.kind in (LayerKind.CONV, LayerKind.DWCONV) \
                and following.kernel == 3
            # a depthwise convolution into a 1x1 one: the quad layout (ml_kernels_s8_host.h), groups of 8+ pixels
            quads = kind == "dw" and not pad and following is not None and following.kind == LayerKind.CONV \
                and following.kernel == 1 and out_c % 4 == 0
            cs = out_w + 2 if pad else (4 * max(out_w, 8) if quads else out_w)  # quads: the stride of a group
            rs = (out_c // 4 if quads else out_c) * cs
            name = f"ml_map{n:02d}"
            buffers[name] = (out_h + 2 * pad) * rs
            if pad:
                borders.append(f"ml_s8h_fill({name}, sizeof {name}, {int(layer.out_zero_point) + 128});")
            out_ptr = f"{name} + {rs + 1}" if pad else name
            if kind == "conv3":
                call = (f"ml_s8h_conv3x3_c1({source['name']}, {source['rs']}, {out_ptr}, {rs}, {cs}, {out_h}, "
                        f"{out_w}, {out_c}, {w_name}, {b_name}, {rq_name}, {layer.shift}, {clamp});")
            elif kind == "dw":
                call = (f"ml_s8h_depthwise3x3{'_quads' if quads else ''}({source['name']}, {source['rs']}, "
                        f"{source['cs']}, {in_c}, "
                        f"{layer.stride}, {out_ptr}, {rs}, {cs}, {out_h}, {out_w}, {w_name}, {b_name}, {rq_name}, "
                        f"{layer.shift}, {clamp});")
            else:
                in_ptr = f"{source['name']} + {source['rs'] + 1}" if source["padded"] else source["name"]
                call = (f"ml_s8h_pointwise{'_quads' if source.get('quads') else ''}({in_ptr}, {source['rs']}, "
                        f"{source['cs']}, {in_c}, {out_ptr}, {rs}, "
                        f"{cs}, {in_h}, {in_w}, {out_c}, {w_name}, {b_name}, {rq_name}, {layer.shift}, {clamp});")
            body += [comment, call]
            source = {"name": name, "rs": rs, "cs": cs, "padded": pad, "shape": (out_h, out_w, out_c), "quads": quads}
        elif layer.kind == LayerKind.GAP and "shape" in source and not source["padded"] and not source["quads"]:
            h, w, c = source["shape"]
            low = layer.out_zero_point if layer.relu else INT8_MIN
            body += [comment, f"ml_s8h_global_average_pool({source['name']}, {source['rs']}, {source['cs']}, {h}, "
                              f"{w}, {c}, {layer.in_zero_point}, ml_pooled, {int(layer.multiplier.ravel()[0])}, "
                              f"{layer.shift}, {layer.out_zero_point}, {low});"]
            source = {"name": "ml_pooled"}
        elif layer.kind == LayerKind.DENSE and source.get("name") == "ml_pooled" and n == len(layers) - 1:
            low = layer.out_zero_point if layer.relu else INT8_MIN
            arrays += (_host_int_array("int8_t", "ml_dense_w", layer.weight.ravel())
                       + _host_int_array("int32_t", "ml_dense_b", layer.bias.ravel())
                       + _host_int_array("int16_t", "ml_dense_m", layer.multiplier.ravel()))
            body += [comment, f"ml_s8h_dense(ml_pooled, {layer.in_shape[0]}, {layer.in_zero_point}, logits, "
                              f"{layer.out_shape[0]}, ml_dense_w, ml_dense_b, ml_dense_m, {layer.shift}, "
                              f"{layer.out_zero_point}, {low});"]
            source = {"name": "logits"}
        else:
            raise HostFastUnsupported(f"{layer.name}: no host fast kernel for {layer.kind}")
    if source.get("name") != "logits":
        raise HostFastUnsupported("the network does not end with global average pooling and a dense layer")
    pooled_size = layers[-1].in_shape[0]
    lines = [f"/* {NETWORK_SOURCE_FAST_TITLE}", f" * {lib.GENERATED_NOTE}", " *",
             " * Host fast path (codegen.c_int8.generate_host_fast_sources), not the microcontroller library: the",
             " * NumPy int8 engine's integers with HCW byte maps u = q + 128 whose zero-point borders are set once and",
             " * never written. See ml_kernels_s8_host.h. */",
             "#include \"mobile_lenet.h\"", "#include \"ml_kernels_s8_host.h\"", ""]
    lines += [f"static uint8_t {name}[{size} + ML_S8H_SLACK];" for name, size in buffers.items()]
    lines += [f"static int8_t ml_pooled[{pooled_size}];", "static int ml_borders_set;", ""] + arrays
    lines += ["void mobile_lenet_int8_logits(const uint8_t image[MOBILE_LENET_INPUT_SIZE], "
              "int8_t logits[MOBILE_LENET_NUM_CLASSES])", "{", "    if (!ml_borders_set) {"]
    lines += ["        " + line for line in borders] + ["        ml_borders_set = 1;", "    }"]
    lines += [f"    ml_s8h_input(image, {h0}, {w0}, ml_input);"]
    lines += ["    " + line for line in body] + ["}", ""]
    return "\n".join(lines)


NETWORK_SOURCE_FAST_TITLE = "mobile_lenet.c - the int8 Mobile-LeNet, host fast path."


def generate_host_fast_sources(qmodel: QuantizedModel) -> dict[str, str]:
    """The int8 host fast path's program: the fast network and kernels, the shared API, the host program."""
    return {lib.MODEL_HEADER: model_header(qmodel), lib.NETWORK_SOURCE: host_fast_network_source(qmodel),
            **{name: lib.c_source(name) for name in lib.COMMON_FILES + HOST_FAST_KERNEL_FILES},
            lib.HOST_PROGRAM: lib.c_source(lib.HOST_PROGRAM)}
