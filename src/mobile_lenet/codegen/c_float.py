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
def check_tensors(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> dict[str, np.ndarray]:
    """The member's Noodle tensors as flat float32 arrays, checked for presence, size and finiteness."""
    arch = spec.architecture_of(tensors, arch)
    flat = {}
    for name, _, shape in spec.noodle_tensors(arch):
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


def weights_header(arch: spec.Architecture = spec.SEED) -> str:
    """``mobile_lenet_weights.h``: one declaration per Noodle tensor."""
    declarations = []
    for file_name, layer, shape in spec.noodle_tensors(arch):
        declarations.append(f"/* {_tensor_comment(file_name, layer, shape)} */")
        declarations.append(f"extern const float {c_array_name(file_name)}[{int(np.prod(shape))}];")
    return lib.header_lines("MOBILE_LENET_WEIGHTS_H", f"{lib.WEIGHTS_HEADER} - the Mobile-LeNet weights "
                            "(Noodle tensors), one const array each, in flash.", ['"ml_flash.h"'], declarations)


def weights_source(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> str:
    """``mobile_lenet_weights.c``: the values, eight per line as in the seed's headers."""
    arch = spec.architecture_of(tensors, arch)
    flat = check_tensors(tensors, arch)
    lines = [f"/* {lib.WEIGHTS_SOURCE} - the Mobile-LeNet weights. const: they stay in flash on a microcontroller.",
             f" * {lib.GENERATED_NOTE} */", f'#include "{lib.WEIGHTS_HEADER}"', ""]
    for file_name, layer, shape in spec.noodle_tensors(arch):
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


def network_source(arch: spec.Architecture = spec.SEED) -> str:
    """``mobile_lenet.c``: the ping-pong buffers and the layer sequence."""
    plan = memory.plan(memory.FLOAT32, arch)
    body = [line for step in plan.steps for line in layer_statements(step)]
    largest = max(plan.steps, key=lambda s: s.activation_values)
    return lib.template("network_f32.c.in").substitute(
        note=lib.GENERATED_NOTE, buffer_values=plan.buffer_values, buffer_bytes=plan.buffer_bytes,
        largest_layer=largest.layer.name, largest_shape=lib.shape_text(largest.layer.out_shape),
        ram_bytes=plan.ram_bytes, input_buffer=lib.BUFFER_NAMES[plan.steps[0].source],
        layers="\n".join("    " + line for line in body), result_buffer=lib.BUFFER_NAMES[plan.result_buffer])


def model_header(arch: spec.Architecture = spec.SEED) -> str:
    """``mobile_lenet_model.h`` of the float library."""
    return lib.model_header(PRECISION, {"MOBILE_LENET_BN_EPSILON": f"{spec.BN_EPSILON:g}f"},
                            "the float32 Mobile-LeNet's sizes.", arch)


def generate_library(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> dict[str, str]:
    """The library proper (network, weights, kernels, serial protocol) of the member ``arch`` (default: the member
    loaded tensors record, ``spec.architecture_of``): file name -> text. Used by firmware too."""
    arch = spec.architecture_of(tensors, arch)
    return {lib.MODEL_HEADER: model_header(arch), lib.NETWORK_SOURCE: network_source(arch),
            lib.WEIGHTS_HEADER: weights_header(arch), lib.WEIGHTS_SOURCE: weights_source(tensors, arch),
            **lib.static_files(PRECISION)}


def generate_sources(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> dict[str, str]:
    """Everything ``export --format c`` writes: the library, the host program (in ``host/``) and the README."""
    arch = spec.architecture_of(tensors, arch)
    plan = memory.plan(memory.FLOAT32, arch)
    readme = lib.template("c_README.md").substitute(
        buffer_values=f"{plan.buffer_values:,}", buffer_bytes=f"{plan.buffer_bytes:,}",
        ram_bytes=f"{plan.ram_bytes:,}", flash_bytes=f"{plan.flash_bytes:,}")
    return {**generate_library(tensors, arch), lib.EXPORTED_HOST_PROGRAM: lib.c_source(lib.HOST_PROGRAM),
            "README.md": readme}


def write_c_library(tensors: dict[str, np.ndarray], out_dir: str | Path, arch: spec.Architecture | None = None) -> list[Path]:
    """``export --format c``: write the C library, host program (``host/``) and README into ``out_dir``.

    The folder is replaced whole (``files.replace_folder``): it must be new, empty, or a previous C export."""
    arch = spec.architecture_of(tensors, arch)
    return replace_folder(generate_sources(tensors, arch), out_dir, what="C export", replaceable=previous_export())


def previous_export(header: str = lib.MODEL_HEADER):
    """A test for ``replace_folder``: the folder holds this generator's ``header`` (a previous export, which
    is then replaced whole, build products and all)."""
    def replaceable(folder: Path) -> bool:
        try:
            return lib.GENERATED_NOTE in (folder / header).read_text(encoding="ascii", errors="replace")[:400]
        except OSError:
            return False
    return replaceable


# ------------------------------------------------------------------------------------------------ host fast path
# An opt-in variant for computers, not what ``export --format c`` writes: BatchNorm folded into the convolutions'
# weights and biases here (float64, then float32), ReLU fused, HWC buffers with stored zero borders, fused
# multiply-adds (c/ml_kernels_f32_host.c: AVX2 on x86, plain C elsewhere). Its rounding differs from the
# reference's; tests hold it to the reference's predictions on all 10,000 MNIST test images, |dp| <= 1e-5.
HOST_FAST_KERNEL_FILES = ("ml_kernels_f32_host.h", "ml_kernels_f32_host.c")
HOST_FAST_MAX_CHANNELS = 64  # ml_f32h_pool_dense's stack array


def _fold_batch_norm(weight: np.ndarray, bias: np.ndarray | None, bn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights (Cout, ...) and bias of a convolution followed by inference BatchNorm ([gamma, beta, mean, var][C]),
    as one convolution: w * s, (b - mean) * s + beta with s = gamma / sqrt(var + eps); float64."""
    gamma, beta, mean, variance = bn.astype(np.float64).reshape(4, -1)
    scale = gamma / np.sqrt(variance + np.float64(np.float32(spec.BN_EPSILON)))
    w = weight.astype(np.float64) * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    b = np.zeros_like(mean) if bias is None else bias.astype(np.float64)
    return w, (b - mean) * scale + beta


def _host_fast_ops(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> list[dict]:
    """The network as fused operations: conv/depthwise + BatchNorm + ReLU, then pool + dense; weights folded and
    laid out for the host kernels. Raises UserError for a table the host kernels do not cover."""
    arch = spec.architecture_of(tensors, arch)
    flat = check_tensors(tensors, arch)
    shapes = {name: shape for name, _, shape in spec.noodle_tensors(arch)}
    layers, ops, i, pending_pad = spec.layers(arch), [], 0, 0
    while i < len(layers):
        layer = layers[i]
        if layer.kind == LayerKind.PAD:
            pending_pad, i = layer.padding, i + 1
            continue
        if layer.kind in (LayerKind.CONV, LayerKind.DWCONV):
            bn, relu = (list(layers[i + 1:i + 3]) + [None, None])[:2]
            if bn is None or bn.kind != LayerKind.BN or relu is None or relu.kind != LayerKind.RELU:
                raise UserError(f"host fast path: {layer.name} is not followed by BatchNorm and ReLU")
            padding = layer.padding + pending_pad
            weight = flat[layer.weight_file].reshape(shapes[layer.weight_file])
            bias = flat[layer.bias_file] if layer.bias_file else None
            w, b = _fold_batch_norm(weight, bias, flat[bn.weight_file])
            in_h, in_w, in_c = layer.in_shape
            in_h, in_w = in_h - 2 * pending_pad, in_w - 2 * pending_pad
            out_h, out_w, out_c = layer.out_shape
            if layer.kind == LayerKind.DWCONV and layer.kernel == 3 and padding == 1:
                op = {"kind": "dw", "weight": w.reshape(out_c, 9).T}
            elif layer.kind == LayerKind.CONV and layer.kernel == 3 and padding == 1 and in_c == 1 \
                    and layer.stride == 1:
                op = {"kind": "conv3", "weight": w.reshape(out_c, 9).T}
            elif layer.kind == LayerKind.CONV and layer.kernel == 1 and padding == 0 and layer.stride == 1:
                op = {"kind": "pw", "weight": w.reshape(out_c, in_c).T}
            else:
                raise UserError(f"host fast path: no kernel for {layer.name} (kernel {layer.kernel}, "
                                f"padding {padding}, stride {layer.stride})")
            op.update(name=f"{layer.name} + {bn.name} + {relu.name}", bias=b, stride=layer.stride,
                      in_shape=(in_h, in_w, in_c), out_shape=(out_h, out_w, out_c))
            ops.append(op)
            pending_pad, i = 0, i + 3
            continue
        if layer.kind == LayerKind.GAP and i + 1 < len(layers) and layers[i + 1].kind == LayerKind.DENSE:
            dense = layers[i + 1]
            h, w, c = layer.in_shape
            if c > HOST_FAST_MAX_CHANNELS:
                raise UserError(f"host fast path: {c} channels before the pooling, at most {HOST_FAST_MAX_CHANNELS}")
            ops.append({"kind": "head", "name": f"{layer.name} + {dense.name}", "in_shape": (h, w, c),
                        "weight": flat[dense.weight_file].astype(np.float64),
                        "bias": flat[dense.bias_file].astype(np.float64), "out_size": dense.out_channels})
            i += 2
            continue
        raise UserError(f"host fast path: no kernel for {layer.name} ({layer.kind})")
    return ops


def host_fast_network_source(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> str:
    """``mobile_lenet.c`` of the host fast path: folded weights, HWC buffers and the fused layer calls."""
    arch = spec.architecture_of(tensors, arch)
    ops = _host_fast_ops(tensors, arch)
    arrays, buffers, body = [], {}, []
    h0, w0, _ = arch.input_shape
    buffers["ml_input"] = (h0 + 2) * (w0 + 2)
    dense_size = max(int(np.prod(op["out_shape"])) for op in ops if "out_shape" in op)
    buffers["ml_u"] = buffers["ml_v"] = dense_size
    source = ("ml_input", True)  # (buffer, padded)
    for n, op in enumerate(ops):
        weight_name, bias_name = f"ml_fw{n:02d}", f"ml_fb{n:02d}"
        for name, values in ((weight_name, op["weight"]), (bias_name, op["bias"])):
            literals = [c_float(v) for v in np.asarray(values, dtype=np.float32).ravel()]
            arrays += [f"static const float {name}[{len(literals)}] = {{"]
            arrays += ["    " + ", ".join(literals[s:s + VALUES_PER_LINE]) + "," for s in
                       range(0, len(literals), VALUES_PER_LINE)] + ["};", ""]
        body.append(f"/* {op['name']} */")
        in_h, in_w, in_c = op["in_shape"]
        if op["kind"] == "head":
            body.append(f"ml_f32h_pool_dense({source[0]}, {in_h * in_w}, {in_c}, logits, {op['out_size']}, "
                        f"{weight_name}, {bias_name});")
            break
        out_h, out_w, out_c = op["out_shape"]
        needs_padding = n + 1 < len(ops) and ops[n + 1]["kind"] in ("dw", "conv3")
        if needs_padding:
            target = f"ml_pad_{out_h + 2}x{out_w + 2}x{out_c}"
            if target == source[0]:
                target += "_b"
            buffers[target] = (out_h + 2) * (out_w + 2) * out_c
            out_ptr, out_rs = f"{target} + {(out_w + 2 + 1) * out_c}", (out_w + 2) * out_c
        else:
            target = "ml_v" if source[0] == "ml_u" else "ml_u"
            out_ptr, out_rs = target, out_w * out_c
        in_rs = (in_w + 2) * in_c
        if op["kind"] == "conv3":
            body.append(f"ml_f32h_conv3x3_c1_relu({source[0]}, {in_rs}, {out_ptr}, {out_h}, {out_w}, {out_rs}, "
                        f"{out_c}, {weight_name}, {bias_name});")
        elif op["kind"] == "dw":
            body.append(f"ml_f32h_depthwise3x3_relu({source[0]}, {in_rs}, {in_c}, {out_ptr}, {out_h}, {out_w}, "
                        f"{out_rs}, {op['stride']}, {weight_name}, {bias_name});")
        else:
            body.append(f"ml_f32h_pointwise_relu({source[0]}, {in_h}, {in_w}, {in_c}, {out_ptr}, {out_rs}, "
                        f"{out_c}, {weight_name}, {bias_name});")
        source = (target, needs_padding)
    lines = [f"/* {NETWORK_SOURCE_FAST_TITLE}", f" * {lib.GENERATED_NOTE}",
             " *", " * Host fast path (codegen.c_float.generate_host_fast_sources), not the microcontroller library:",
             " * BatchNorm folded into the convolutions, ReLU fused, HWC buffers whose zero borders are never written",
             " * (static storage starts at zero). See ml_kernels_f32_host.h. */",
             "#include \"mobile_lenet.h\"", "#include \"ml_kernels_f32_host.h\"", ""]
    lines += [f"static float {name}[{size}];" for name, size in buffers.items()] + [""]
    lines += arrays
    lines += ["void mobile_lenet_logits(const uint8_t image[MOBILE_LENET_INPUT_SIZE], "
              "float logits[MOBILE_LENET_NUM_CLASSES])", "{", f"    ml_f32h_input(image, {h0}, {w0}, ml_input);"]
    lines += ["    " + line for line in body] + ["}", ""]
    return "\n".join(lines)


NETWORK_SOURCE_FAST_TITLE = "mobile_lenet.c - the float32 Mobile-LeNet, host fast path."


def generate_host_fast_sources(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> dict[str, str]:
    """The host fast path's program: the fast network and kernels, the shared API, the host program."""
    arch = spec.architecture_of(tensors, arch)
    return {lib.MODEL_HEADER: model_header(arch), lib.NETWORK_SOURCE: host_fast_network_source(tensors, arch),
            **{name: lib.c_source(name) for name in lib.COMMON_FILES + HOST_FAST_KERNEL_FILES},
            lib.HOST_PROGRAM: lib.c_source(lib.HOST_PROGRAM)}
