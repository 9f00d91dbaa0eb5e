"""The NumPy reference engine: what the microcontroller computes, stated plainly (see NOODLE_FORMAT.md).

It needs nothing but Noodle tensors and walks the architecture table ``spec.LAYERS`` row by row, one small
kernel per layer kind. Activations are CHW float32, as on the device, with a batch axis in front:
``(N, C, H, W)``. Every kernel computes in float32 throughout.

The kernels are written for reading, not speed: a convolution is the sum, over the K x K kernel offsets,
of the (strided) input window at that offset times the kernel weights at that offset. This is the same sum
as the device's loops, in a vectorised order.
"""

from __future__ import annotations

import numpy as np

from mobile_lenet import spec
from mobile_lenet.model.data import to_tensor_input
from mobile_lenet.spec import LayerKind

BATCH_SIZE = 64  # images per step: keeps the activations (25 KB per image at 28x28x8) in the CPU cache


# ------------------------------------------------------------------------------------------------ kernels
def zero_pad(x: np.ndarray, padding: int) -> np.ndarray:
    """Zero padding of ``padding`` pixels on every side of each plane: (N, C, H, W) -> (N, C, H+2P, W+2P)."""
    if padding == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def _window(x: np.ndarray, dy: int, dx: int, out_h: int, out_w: int, stride: int) -> np.ndarray:
    """The input pixels that kernel offset (dy, dx) meets, one per output pixel: (N, C, out_h, out_w)."""
    return x[:, :, dy:dy + stride * (out_h - 1) + 1:stride, dx:dx + stride * (out_w - 1) + 1:stride]


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: int = 1,
           padding: int = 0) -> np.ndarray:
    """Convolution: zero padding P, then VALID with stride S. x (N, Cin, H, W), weight (Cout, Cin, K, K).

    ``out[n, o, y, x] = bias[o] + sum_{c, dy, dx} weight[o, c, dy, dx] * in[n, c, S*y + dy, S*x + dx]``
    """
    x = zero_pad(x, padding)
    n, _, h, w = x.shape
    c_out, _, k, _ = weight.shape
    out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, c_out, out_h, out_w), dtype=np.float32)
    for dy in range(k):
        for dx in range(k):
            # sum over input channels c of weight[o, c, dy, dx] * window[n, c, y, x]: (Cout, Cin) @ (N, Cin, pixels)
            window = _window(x, dy, dx, out_h, out_w, stride).reshape(n, -1, out_h * out_w)
            out += (weight[:, :, dy, dx] @ window).reshape(n, c_out, out_h, out_w)
    if bias is not None:
        out += bias.reshape(1, c_out, 1, 1)
    return out


def depthwise_conv2d(x: np.ndarray, weight: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Depthwise convolution (one K x K filter per channel, no mixing). x (N, C, H, W), weight (C, K, K).

    ``out[n, c, y, x] = sum_{dy, dx} weight[c, dy, dx] * in[n, c, S*y + dy, S*x + dx]``
    """
    x = zero_pad(x, padding)
    n, c, h, w = x.shape
    k = weight.shape[-1]
    out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
    out = np.zeros((n, c, out_h, out_w), dtype=np.float32)
    for dy in range(k):
        for dx in range(k):
            out += weight[:, dy, dx].reshape(1, c, 1, 1) * _window(x, dy, dx, out_h, out_w, stride)
    return out


def batch_norm(x: np.ndarray, params: np.ndarray, eps: float = spec.BN_EPSILON) -> np.ndarray:
    """Inference BatchNorm per channel: ``gamma * (x - mean) / sqrt(var + eps) + beta``; params (4, C)."""
    gamma, beta, mean, var = (p.reshape(1, -1, 1, 1) for p in params)
    return gamma * (x - mean) / np.sqrt(var + np.float32(eps)) + beta


def relu(x: np.ndarray) -> np.ndarray:
    """max(0, x)."""
    return np.maximum(x, np.float32(0))


def global_average_pool(x: np.ndarray) -> np.ndarray:
    """Mean over each channel's plane: (N, C, H, W) -> (N, C)."""
    return x.mean(axis=(2, 3), dtype=np.float32)


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Fully connected: (N, Din) @ weight (Dout, Din) transposed, plus bias (Dout,)."""
    return x @ weight.T + bias


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, max-subtracted (as the device does it, with expf)."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------------ network
def run_float_layer(layer: spec.Layer, x: np.ndarray, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """Apply one row of the architecture table to activations ``x``."""
    weight = tensors[layer.weight_file] if layer.weight_file else None
    if layer.kind == LayerKind.CONV:
        bias = tensors[layer.bias_file] if layer.bias_file else None
        return conv2d(x, weight, bias, layer.stride, layer.padding)
    if layer.kind == LayerKind.DWCONV:
        return depthwise_conv2d(x, weight, layer.stride, layer.padding)
    if layer.kind == LayerKind.BN:
        return batch_norm(x, weight)
    if layer.kind == LayerKind.RELU:
        return relu(x)
    if layer.kind == LayerKind.PAD:
        return zero_pad(x, layer.padding)
    if layer.kind == LayerKind.GAP:
        return global_average_pool(x)
    if layer.kind == LayerKind.DENSE:
        return dense(x, weight, tensors[layer.bias_file])
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def _shaped(tensors: dict[str, np.ndarray], arch: spec.Architecture) -> dict[str, np.ndarray]:
    """The member's tensors as float32 arrays in their Noodle shapes."""
    return {name: np.asarray(tensors[name], dtype=np.float32).reshape(shape)
            for name, _, shape in spec.noodle_tensors(arch)}


def reference_logits(tensors: dict[str, np.ndarray], images: np.ndarray, batch_size: int = BATCH_SIZE,
                     arch: spec.Architecture | None = None) -> np.ndarray:
    """Logits (N, 10), float32, of uint8 images (N, S, S) through the member ``arch`` (S its input size; default:
    the member loaded tensors record, ``spec.architecture_of``) whose weights are the Noodle tensors."""
    arch = spec.architecture_of(tensors, arch)
    arch.check_images(images)
    tensors = _shaped(tensors, arch)
    outputs = []
    for start in range(0, len(images), batch_size):
        x = to_tensor_input(images[start:start + batch_size])  # pixel / 255.0f, CHW with C=1
        for layer in spec.layers(arch):
            x = run_float_layer(layer, x, tensors)
        outputs.append(x)
    return np.concatenate(outputs) if outputs else np.zeros((0, spec.NUM_CLASSES), np.float32)


def reference_probabilities(tensors: dict[str, np.ndarray], images: np.ndarray,
                            arch: spec.Architecture | None = None) -> np.ndarray:
    """Softmax probabilities (N, 10): the device's output."""
    arch = spec.architecture_of(tensors, arch)
    return softmax(reference_logits(tensors, images, arch=arch))


def reference_layer_outputs(tensors: dict[str, np.ndarray], image: np.ndarray,
                            arch: spec.Architecture | None = None) -> dict[int, np.ndarray]:
    """Every stored row's output for one uint8 image (S, S): table row number -> flat float32 values in CHW
    order, as the C library's layer debugger prints them (``c/ml_trace.h``; padding rows are not stored)."""
    arch = spec.architecture_of(tensors, arch)
    tensors = _shaped(tensors, arch)
    x, outputs = to_tensor_input(np.asarray(image)[None]), {}
    for layer in spec.layers(arch):
        x = run_float_layer(layer, x, tensors)
        if layer.kind != LayerKind.PAD:
            outputs[layer.index] = x[0].ravel()
    return outputs
