"""The integer-only reference engine of the int8 model, in NumPy (the contract for the int8 C program).

Once the pixels are quantized (``q = pixel - 128``, exact), nothing inside the network is a float:
activations are int8, weights int8, biases and accumulators int32, and requantization multiplies by a
16-bit integer and shifts right with rounding in int64. The scheme is described in ``quantize``'s
docstring; the C program ``cgen_int8`` generates computes exactly the same integers, image by image.

The convolution helpers here are written once for any dtype: ``quantize`` runs them in float32 to
calibrate the activation ranges, this engine runs them in int32 (after subtracting zero points, so that
zero padding means "real zero" in both).
"""

from __future__ import annotations

import numpy as np

from mobile_lenet.model.data import IMAGE_SIZE

INT8_MIN, INT8_MAX = -128, 127
INPUT_ZERO_POINT = -128  # pixel / 255 in int8: q = pixel - 128, scale 1/255, exactly
BATCH = 64  # images per chunk: keeps the intermediates small enough for the CPU caches (about 2x faster)


# ------------------------------------------------------------------------------------------------ arithmetic
def rounding_right_shift(value: np.ndarray, shift: int) -> np.ndarray:
    """``floor(value / 2**shift + 1/2)`` for int64 arrays: divide by a power of two, round half up.

    Adding half of the divisor before an arithmetic (flooring) shift rounds to nearest, ties toward
    +infinity (-2.5 -> -2, 2.5 -> 3). TFLite rounds ties away from zero instead; ties are rare and both
    engines of this project use this rule.
    """
    if shift < 1:
        raise ValueError(f"shift must be at least 1, got {shift}")
    return (value + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)


def requantize(acc: np.ndarray, multiplier: np.ndarray, shift: int, zero_point: int, relu: bool,
               channel_axis: int = 1) -> np.ndarray:
    """int32 accumulators -> int8: ``clamp(zero_point + round(acc * multiplier / 2**shift))``.

    ``multiplier`` is one int16 per output channel (or a single one), ``shift`` one per layer (>= 1): together
    they are the fixed-point form of the real factor ``in_scale * weight_scale / out_scale``. The product
    is formed in int64 (acc < 2**31, multiplier < 2**15). With ``relu`` the lower clamp is the output
    zero point, i.e. real 0: the ReLU costs nothing once fused here.
    """
    scaled = np.array(acc, dtype=np.int64)  # a copy: the steps below work in place
    multiplier = np.asarray(multiplier, dtype=np.int64).reshape(-1)
    if multiplier.size > 1:  # per channel: broadcast along the channel axis
        shape = [1] * scaled.ndim
        shape[channel_axis] = multiplier.size
        multiplier = multiplier.reshape(shape)
    scaled *= multiplier
    scaled = rounding_right_shift(scaled, shift)
    scaled += zero_point
    low = max(zero_point, INT8_MIN) if relu else INT8_MIN
    return np.clip(scaled, low, INT8_MAX, out=scaled).astype(np.int8)


# ------------------------------------------------------------------------------------------------ layers
def _tap(xp: np.ndarray, ky: int, kx: int, stride: int, out_h: int, out_w: int) -> np.ndarray:
    """The input pixels that kernel tap (ky, kx) meets, for every output pixel: (N, C, out_h, out_w)."""
    return xp[:, :, ky:ky + stride * (out_h - 1) + 1:stride, kx:kx + stride * (out_w - 1) + 1:stride]


def convolve(x: np.ndarray, weight: np.ndarray, stride: int, padding: int, depthwise: bool) -> np.ndarray:
    """Sum of products of a convolution with zero padding, no bias, in the dtype of ``x``.

    ``x`` is (N, Cin, H, W); ``weight`` is (Cout, Cin, K, K), or (C, K, K) when ``depthwise``. For the
    integer engine ``x`` holds ``q - zero_point`` as int32, so the zero padding is the real value 0.
    """
    n, c_in, h, w = x.shape
    k = weight.shape[-1]
    out_h, out_w = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))) if padding else x
    weight = weight.astype(x.dtype)
    c_out = c_in if depthwise else weight.shape[0]
    acc = np.zeros((n, c_out, out_h, out_w), dtype=x.dtype)
    for ky in range(k):
        for kx in range(k):
            patch = _tap(xp, ky, kx, stride, out_h, out_w)
            if depthwise:
                acc += weight[None, :, ky, kx, None, None] * patch
            else:  # mix channels: acc[n, o] += sum over c of weight[o, c] * patch[n, c]
                acc += np.einsum("oc,nchw->nohw", weight[:, :, ky, kx], patch)
    return acc


def quantize_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels (N, 28, 28) -> int8 (N, 1, 28, 28): ``q = pixel - 128`` (scale 1/255, zero point -128)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected uint8 images (N, 28, 28), got {images.dtype} {images.shape}")
    return (images.astype(np.int16) + INPUT_ZERO_POINT).astype(np.int8)[:, None, :, :]


def run_layer(layer, x: np.ndarray) -> np.ndarray:
    """One quantized layer (see ``quantize.QLayer``): int8 in, int8 out, integers only."""
    centred = x.astype(np.int32) - np.int32(layer.in_zero_point)  # q - zp: the real value / in_scale
    if layer.kind in ("conv", "dwconv"):
        acc = convolve(centred, layer.weight, layer.stride, layer.padding, layer.kind == "dwconv")
        acc += layer.bias.astype(np.int32)[None, :, None, None]
        return requantize(acc, layer.multiplier, layer.shift, layer.out_zero_point, layer.relu)
    if layer.kind == "gap":
        # Integer sum over the plane; the 1/(H*W) of the mean is folded into the multiplier.
        acc = centred.sum(axis=(2, 3), dtype=np.int32)
        return requantize(acc, layer.multiplier, layer.shift, layer.out_zero_point, layer.relu)
    if layer.kind == "dense":
        acc = centred @ layer.weight.astype(np.int32).T + layer.bias.astype(np.int32)[None, :]
        return requantize(acc, layer.multiplier, layer.shift, layer.out_zero_point, layer.relu)
    raise ValueError(f"unknown quantized layer kind {layer.kind!r}")


def int8_logits(qmodel, images: np.ndarray) -> np.ndarray:
    """The int8 logits (N, 10) of uint8 images (N, 28, 28), computed with integers only."""
    out = []
    for start in range(0, len(images), BATCH):
        x = quantize_input(images[start:start + BATCH])
        for layer in qmodel.layers:
            x = run_layer(layer, x)
        out.append(x)
    return np.concatenate(out) if out else np.zeros((0, qmodel.layers[-1].out_shape[-1]), np.int8)
