"""The integer-only reference engine of the int8 model, in NumPy (the contract for the int8 C program).

Once the pixels are quantized (``q = pixel - 128``, exact), nothing inside the network is a float:
activations are int8, weights int8, biases and accumulators int32, and requantization multiplies by a
16-bit integer and shifts right with rounding in int64 (``quantization.arithmetic``). The generated int8 C
(``codegen.c_int8``) computes exactly the same integers, image by image.
"""

from __future__ import annotations

import numpy as np

from mobile_lenet.quantization.arithmetic import convolve, quantize_input, requantize
from mobile_lenet.quantization.quantize import QLayer, QuantizedModel
from mobile_lenet.spec import LayerKind

BATCH = 64  # images per chunk: keeps the intermediates small enough for the CPU caches (about 2x faster)


def run_int8_layer(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """One quantized layer: int8 in, int8 out, integers only."""
    centred = x.astype(np.int32) - np.int32(layer.in_zero_point)  # q - zp: the real value / in_scale
    match layer.kind:
        case LayerKind.CONV | LayerKind.DWCONV:
            acc = convolve(centred, layer.weight, layer.stride, layer.padding, layer.kind == LayerKind.DWCONV)
            acc += layer.bias.astype(np.int32)[None, :, None, None]
        case LayerKind.GAP:
            # Integer sum over the plane; the 1/(H*W) of the mean is folded into the multiplier.
            acc = centred.sum(axis=(2, 3), dtype=np.int32)
        case LayerKind.DENSE:
            acc = centred @ layer.weight.astype(np.int32).T + layer.bias.astype(np.int32)[None, :]
        case _:
            raise ValueError(f"no int8 operation for layer kind {layer.kind!r}")
    return requantize(acc, layer.multiplier, layer.shift, layer.out_zero_point, layer.relu)


def int8_logits(qmodel: QuantizedModel, images: np.ndarray) -> np.ndarray:
    """The int8 logits (N, 10) of uint8 images (N, S, S), S the model's input size, computed with integers only."""
    qmodel.architecture.check_images(images)
    out = []
    for start in range(0, len(images), BATCH):
        x = quantize_input(images[start:start + BATCH])
        for layer in qmodel.layers:
            x = run_int8_layer(layer, x)
        out.append(x)
    return np.concatenate(out) if out else np.zeros((0, qmodel.layers[-1].out_shape[-1]), np.int8)


def int8_layer_outputs(qmodel: QuantizedModel, image: np.ndarray) -> dict[int, np.ndarray]:
    """Every quantized layer's int8 output for one uint8 image (S, S): layer number (from 1) -> flat values in
    CHW order, as the int8 C library's layer debugger prints them (``c/ml_trace.h``)."""
    x, outputs = quantize_input(np.asarray(image)[None]), {}
    for number, layer in enumerate(qmodel.layers, 1):
        x = run_int8_layer(layer, x)
        outputs[number] = x[0].ravel()
    return outputs
