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
    plan = memory.int8_plan()
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


ACC24_LIMIT = 2**23 - 1  # the fast path's sums are kept in three bytes (c/ml_rows_s8.c, ml_rows_dot24)


def _rq_name(layer: QLayer) -> str:
    return array_name(layer.name, "rq")


def requant_table(layer: QLayer) -> np.ndarray | None:
    """The fast path's per-channel requantization (``ml_rows_rq`` in c/ml_rows_s8.h) of a convolution layer:
    (scale, lo, hi) int64 rows, or None where one of its assumptions fails (then the layer takes the generic
    path: int32 sums and the reference's requantization). Checked here, for every channel:
    - every sum the kernels can form, folded bias + sum of q * w over int8 q, has |sum| <= 2^23 - 2 (three bytes);
    - 0 < multiplier, shift <= 24 and scale = multiplier * 2^(24 - shift) < 2^24 (three unsigned bytes);
    - hi = the smallest sum whose value reaches 127, lo = the smallest whose value exceeds the lower clamp
      (the value is non-decreasing in the sum since the multiplier is positive), both clipped to the sums'
      range, so that between them zero_point + floor((sum * scale + 2^23) / 2^24) is the reference's value."""
    shift = int(layer.shift)
    weight = layer.weight.astype(np.int64).reshape(layer.weight.shape[0], -1)
    folded = layer.bias.astype(np.int64) - layer.in_zero_point * weight.sum(axis=1)
    bound = np.abs(folded) + 128 * np.abs(weight).sum(axis=1)
    multiplier = layer.multiplier.astype(np.int64)
    if shift < 1 or shift > 24 or bound.max() >= ACC24_LIMIT or multiplier.min() <= 0:
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
    plan = memory.row_plan()
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
        dw_row_bytes=plan.dw_row_bytes, pad_row_bytes=plan.pad_row_bytes, gap_channels=gap.in_shape[2],
        gap_in_zp=gap.in_zero_point, gap_rows=" + ".join(gap.rows), gap_plane=gap.in_shape[0] * gap.in_shape[1],
        gap_multiplier=f"ML_FLASH_S16(&{array_name(gap.name, 'multiplier')}[0])", gap_shift=gap.shift,
        gap_out_zp=gap.out_zero_point, dense_rows=" + ".join(dense.rows), dense_call=dense_call)


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
                            "(int8 logit - MOBILE_LENET_LOGIT_ZERO_POINT).")


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


def generate_sources(qmodel: QuantizedModel, schedule: str = "buffers") -> dict[str, str]:
    """Everything ``export --format c --int8`` writes: the library, the host program and the README."""
    plan = memory.int8_plan()
    readme = lib.template("c_int8_README.md").substitute(ram_bytes=plan.ram_bytes, flash_bytes=plan.flash_bytes)
    return {**generate_library(qmodel, schedule), lib.HOST_PROGRAM: lib.c_source(lib.HOST_PROGRAM),
            "README.md": readme}


def write_c_library_int8(qmodel: QuantizedModel, out_dir: str | Path) -> list[Path]:
    """``export Q --format c --int8``: write the int8 C library, host program and README into ``out_dir``."""
    return replace_folder(generate_sources(qmodel), out_dir, what="C export", replaceable=previous_export())
