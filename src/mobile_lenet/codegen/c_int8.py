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
from mobile_lenet.codegen.c_float import c_float
from mobile_lenet.files import write_text_files
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
                            "arrays.", ["<stdint.h>"], declarations)


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
def layer_statements(layer: QLayer, step: memory.Step) -> list[str]:
    """The comment and the C call of one quantized layer, reading and writing the planner's buffers."""
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
                    f"{array_name(layer.name, 'multiplier')}[0], {layer.shift}, {layer.out_zero_point});")
        case LayerKind.DENSE:
            call = (f"ml_dense_s8({source}, {c}, {layer.in_zero_point}, {target}, {out[0]}, {weight}, {bias}, "
                    f"{requant});")
        case _:  # BN, ReLU and padding are folded into the layers above (quantization.quantize.fold_batchnorm)
            raise ValueError(f"no int8 C code for layer kind {layer.kind!r}")
    return [comment, call]


def network_source(qmodel: QuantizedModel) -> str:
    """``mobile_lenet.c``: the int8 ping-pong buffers and the layer sequence."""
    plan = memory.int8_plan()
    steps = {step.layer.name: step for step in plan.steps}
    body = [line for layer in qmodel.layers for line in layer_statements(layer, steps[layer.name])]
    return lib.template("network_s8.c.in").substitute(
        note=lib.GENERATED_NOTE, buffer_values=plan.buffer_values, ram_bytes=plan.ram_bytes,
        input_buffer=lib.BUFFER_NAMES[plan.steps[0].source], input_zero_point=INPUT_ZERO_POINT,
        layers="\n".join("    " + line for line in body), result_buffer=lib.BUFFER_NAMES[plan.result_buffer])


def model_header(qmodel: QuantizedModel) -> str:
    """``mobile_lenet_model.h`` of the int8 library: sizes, and the scale and zero point of the int8 logits."""
    return lib.model_header(PRECISION, {"MOBILE_LENET_LOGIT_SCALE": c_float(np.float32(qmodel.output_scale)),
                                        "MOBILE_LENET_LOGIT_ZERO_POINT": str(qmodel.output_zero_point)},
                            "the int8 Mobile-LeNet's sizes; real logit = MOBILE_LENET_LOGIT_SCALE * "
                            "(int8 logit - MOBILE_LENET_LOGIT_ZERO_POINT).")


def generate_library(qmodel: QuantizedModel) -> dict[str, str]:
    """The library proper (network, weights, kernels, serial protocol): file name -> text."""
    return {lib.MODEL_HEADER: model_header(qmodel), lib.NETWORK_SOURCE: network_source(qmodel),
            lib.WEIGHTS_HEADER: weights_header(qmodel), lib.WEIGHTS_SOURCE: weights_source(qmodel),
            **lib.static_files(PRECISION)}


def generate_sources(qmodel: QuantizedModel) -> dict[str, str]:
    """Everything ``export --format c --int8`` writes: the library, the host program and the README."""
    plan = memory.int8_plan()
    readme = lib.template("c_int8_README.md").substitute(ram_bytes=plan.ram_bytes, flash_bytes=plan.flash_bytes)
    return {**generate_library(qmodel), lib.HOST_PROGRAM: lib.c_source(lib.HOST_PROGRAM), "README.md": readme}


def write_c_library_int8(qmodel: QuantizedModel, out_dir: str | Path) -> list[Path]:
    """``export Q --format c --int8``: write the int8 C library, host program and README into ``out_dir``."""
    return write_text_files(generate_sources(qmodel), out_dir)
