"""``mobile-lenet export --format c``: the float32 network as a self-contained C99 library.

The kernels, the public API, the serial protocol and the host program are hand-written C in the package's
``c/`` folder (``c_library``). This module generates what depends on the model:

* ``mobile_lenet_model.h``: sizes and precision (and the BatchNorm epsilon);
* ``mobile_lenet.c``: the two static ping-pong activation buffers laid out by the memory planner
  (``memory.plan``) and ``mobile_lenet_logits``: one kernel call per row of the architecture table, in the
  table's order, with the seed's layer name in a comment;
* ``mobile_lenet_weights.h`` / ``.c``: every Noodle tensor as a ``const float`` array (flash on an MCU),
  written so that each value reads back as the exact float32 number;
* ``README.md``: how to build and use it, with the memory plan's figures.

Semantics are NOODLE_FORMAT.md's, operation for operation the reference engine's: float32, x = pixel / 255,
zero-padded convolutions, BatchNorm ``gamma * (x - mean) / sqrtf(var + 1e-3f) + beta`` then ReLU, GAP into the
other buffer, dense, max-subtracted softmax with ``expf``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.codegen import c_library as lib, memory
from mobile_lenet.errors import UserError
from mobile_lenet.files import replace_folder
from mobile_lenet.spec import LayerKind

PRECISION = "float32"
VALUES_PER_LINE = 8  # as in the seed's weight headers


# ------------------------------------------------------------------------------------------------ weights
def check_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The Noodle tensors as flat float32 arrays, checked for presence, size and finiteness."""
    flat = {}
    for name, _, shape in spec.noodle_tensors():
        if name not in tensors:
            raise UserError(f"weights: tensor {name} is missing")
        values = np.asarray(tensors[name], dtype=np.float32).ravel()
        if values.size != int(np.prod(shape)):
            raise UserError(f"weights: {name} has {values.size} values, expected {int(np.prod(shape))}")
        if not np.isfinite(values).all():
            raise UserError(f"weights: {name} contains NaN or infinity")
        flat[name] = values
    return flat


def c_float(value: np.float32) -> str:
    """A C float literal that reads back as exactly this float32 (shortest such decimal), e.g. -3.731234e-02f."""
    return np.format_float_scientific(np.float32(value), unique=True, trim="-") + "f"


def c_array_name(file_name: str) -> str:
    """The C name of a Noodle tensor: ``w01`` -> ``ml_w01`` (prefixed to stay out of the user's namespace)."""
    return f"ml_{file_name}"


def _tensor_comment(file_name: str, layer: spec.Layer, shape: tuple) -> str:
    if file_name == layer.bias_file:
        role, layout = "bias", "[C]"
    else:
        role, layout = {LayerKind.BN: ("BatchNorm", "[gamma, beta, moving_mean, moving_variance][C]"),
                        LayerKind.CONV: ("kernel", "[Cout][Cin][Kh][Kw]"),
                        LayerKind.DWCONV: ("depthwise kernel", "[C][Kh][Kw]"),
                        LayerKind.DENSE: ("kernel", "[Dout][Din]")}[layer.kind]
    return f"{file_name}: {layer.name} {role}, {layout} = [{']['.join(str(d) for d in shape)}]"


def weights_header() -> str:
    """``mobile_lenet_weights.h``: one declaration per Noodle tensor."""
    declarations = []
    for file_name, layer, shape in spec.noodle_tensors():
        declarations.append(f"/* {_tensor_comment(file_name, layer, shape)} */")
        declarations.append(f"extern const float {c_array_name(file_name)}[{int(np.prod(shape))}];")
    return lib.header_lines("MOBILE_LENET_WEIGHTS_H", f"{lib.WEIGHTS_HEADER} - the Mobile-LeNet weights "
                            "(Noodle tensors), one const array each, in flash.", ['"ml_flash.h"'], declarations)


def weights_source(tensors: dict[str, np.ndarray]) -> str:
    """``mobile_lenet_weights.c``: the values, eight per line as in the seed's headers."""
    flat = check_tensors(tensors)
    lines = [f"/* {lib.WEIGHTS_SOURCE} - the Mobile-LeNet weights. const: they stay in flash on a microcontroller.",
             f" * {lib.GENERATED_NOTE} */", f'#include "{lib.WEIGHTS_HEADER}"', ""]
    for file_name, layer, shape in spec.noodle_tensors():
        lines += lib.array_lines("float", c_array_name(file_name), [c_float(v) for v in flat[file_name]],
                                 VALUES_PER_LINE, _tensor_comment(file_name, layer, shape))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ network
def layer_statements(step: memory.Step) -> list[str]:
    """The C statements (with their comment) that run one row of the table, as placed by the planner."""
    layer = step.layer
    source, target = lib.BUFFER_NAMES[step.source], lib.BUFFER_NAMES[step.target]
    files = ", ".join(layer.files) or "no weights"
    shown_input = lib.shape_text(layer.in_shape)
    if step.input_shape != layer.in_shape:  # after a folded ZeroPadding2D: the buffer holds the unpadded map
        shown_input = f"{lib.shape_text(step.input_shape)} (padded: {shown_input})"
    comment = (f"/* {layer.index:2d} {layer.name} ({layer.keras_type}): {shown_input} -> "
               f"{lib.shape_text(layer.out_shape)}")
    if layer.kind in (LayerKind.CONV, LayerKind.DWCONV):
        comment += f", K{layer.kernel} S{layer.stride} P{step.padding}"
    comment += f"; {files}; {step.source}" + (" in place */" if step.in_place else f" -> {step.target} */")
    h, w, c = step.input_shape if len(step.input_shape) == 3 else (1, 1, step.input_shape[0])
    out = layer.out_shape
    match layer.kind:
        case LayerKind.CONV:
            bias = c_array_name(layer.bias_file) if layer.bias_file else "NULL"
            call = (f"ml_conv2d_f32({source}, {h}, {w}, {c}, {target}, {out[0]}, {out[1]}, {out[2]}, "
                    f"{layer.kernel}, {layer.stride}, {step.padding}, {c_array_name(layer.weight_file)}, {bias});")
        case LayerKind.DWCONV:
            call = (f"ml_depthwise_conv2d_f32({source}, {h}, {w}, {c}, {target}, {out[0]}, {out[1]}, "
                    f"{layer.kernel}, {layer.stride}, {step.padding}, {c_array_name(layer.weight_file)});")
        case LayerKind.BN:
            call = (f"ml_batch_norm_f32({target}, {c}, {h * w}, {c_array_name(layer.weight_file)}, "
                    f"MOBILE_LENET_BN_EPSILON);")
        case LayerKind.RELU:
            call = f"ml_relu_f32({target}, {h * w * c});"
        case LayerKind.PAD:
            return [f"/* {layer.index:2d} {layer.name} (ZeroPadding2D): {lib.shape_text(layer.in_shape)} -> "
                    f"{lib.shape_text(layer.out_shape)}; not stored: folded into the next convolution's padding */"]
        case LayerKind.GAP:
            # Into the other buffer: averaging in place would overwrite channel 0's plane (upstream Noodle's bug).
            call = f"ml_global_average_pool_f32({source}, {c}, {h * w}, {target});"
        case LayerKind.DENSE:
            call = (f"ml_dense_f32({source}, {layer.in_channels}, {target}, {layer.out_channels}, "
                    f"{c_array_name(layer.weight_file)}, {c_array_name(layer.bias_file)});")
        case _:
            raise ValueError(f"no C code for layer kind {layer.kind!r}")
    return [comment, call, lib.trace_statement(layer.index, target, layer.out_shape)]


def network_source() -> str:
    """``mobile_lenet.c``: the ping-pong buffers and the layer sequence."""
    plan = memory.plan()
    body = [line for step in plan.steps for line in layer_statements(step)]
    largest = max(plan.steps, key=lambda s: s.activation_values)
    return lib.template("network_f32.c.in").substitute(
        note=lib.GENERATED_NOTE, buffer_values=plan.buffer_values, buffer_bytes=plan.buffer_bytes,
        largest_layer=largest.layer.name, largest_shape=lib.shape_text(largest.layer.out_shape),
        ram_bytes=plan.ram_bytes, input_buffer=lib.BUFFER_NAMES[plan.steps[0].source],
        layers="\n".join("    " + line for line in body), result_buffer=lib.BUFFER_NAMES[plan.result_buffer])


def model_header() -> str:
    """``mobile_lenet_model.h`` of the float library."""
    return lib.model_header(PRECISION, {"MOBILE_LENET_BN_EPSILON": f"{spec.BN_EPSILON:g}f"},
                            "the float32 Mobile-LeNet's sizes.")


def generate_library(tensors: dict[str, np.ndarray]) -> dict[str, str]:
    """The library proper (network, weights, kernels, serial protocol): file name -> text. Used by firmware too."""
    return {lib.MODEL_HEADER: model_header(), lib.NETWORK_SOURCE: network_source(),
            lib.WEIGHTS_HEADER: weights_header(), lib.WEIGHTS_SOURCE: weights_source(tensors),
            **lib.static_files(PRECISION)}


def generate_sources(tensors: dict[str, np.ndarray]) -> dict[str, str]:
    """Everything ``export --format c`` writes: the library, the host program and the README."""
    plan = memory.plan()
    readme = lib.template("c_README.md").substitute(
        buffer_values=f"{plan.buffer_values:,}", buffer_bytes=f"{plan.buffer_bytes:,}",
        ram_bytes=f"{plan.ram_bytes:,}", flash_bytes=f"{plan.flash_bytes:,}")
    return {**generate_library(tensors), lib.HOST_PROGRAM: lib.c_source(lib.HOST_PROGRAM), "README.md": readme}


def write_c_library(tensors: dict[str, np.ndarray], out_dir: str | Path) -> list[Path]:
    """``export --format c``: write the C library, host program and README into ``out_dir``.

    The folder is replaced whole (``files.replace_folder``): it must be new, empty, or a previous C export."""
    return replace_folder(generate_sources(tensors), out_dir, what="C export", replaceable=previous_export())


def previous_export(header: str = lib.MODEL_HEADER):
    """A test for ``replace_folder``: the folder holds this generator's ``header`` (a previous export, which
    is then replaced whole, build products and all)."""
    def replaceable(folder: Path) -> bool:
        try:
            return lib.GENERATED_NOTE in (folder / header).read_text(encoding="ascii", errors="replace")[:400]
        except OSError:
            return False
    return replaceable
