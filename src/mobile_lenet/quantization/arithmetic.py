"""The arithmetic of the int8 scheme, in NumPy: input quantization, rounding shifts, requantization.

The scheme is described in ``quantize``'s docstring. The int8 reference engine (``engines.reference_int8``)
is built from these functions, and the int8 C kernels (``c/ml_kernels_s8.c``) compute the same integers.

``convolve`` is written once for any dtype: ``quantize`` runs it in float32 to calibrate the activation
ranges, the int8 engine in int32 (after subtracting zero points, so that zero padding means "real zero" in
both).
"""

from __future__ import annotations

import numpy as np


INT8_MIN, INT8_MAX = -128, 127
INPUT_ZERO_POINT = -128  # pixel / 255 in int8: q = pixel - 128, scale 1/255, exactly


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


# ------------------------------------------------------------------------------------------------ convolution
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
    """uint8 pixels (N, S, S) -> int8 (N, 1, S, S): ``q = pixel - 128`` (scale 1/255, zero point -128). The
    size is the model's to check (``spec.Architecture.check_images``)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square uint8 images (N, S, S), got {images.dtype} {images.shape}")
    return (images.astype(np.int16) + INPUT_ZERO_POINT).astype(np.int8)[:, None, :, :]
