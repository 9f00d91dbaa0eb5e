"""Post-training int8 quantization: BatchNorm folding, calibration, and the quantized model folder.

The scheme (integer-only inference after Jacob et al., 2018, "Quantization and Training of Neural Networks
for Efficient Integer-Arithmetic-Only Inference", the scheme of TFLite / CMSIS-NN):

* **Real numbers as integers.** A tensor's real value is ``r = scale * (q - zero_point)``, ``q`` an int8.
* **Input.** ``pixel / 255`` is ``q = pixel - 128`` with scale 1/255 and zero point -128: exact.
* **BatchNorm folding.** Each convolution absorbs the BatchNorm that follows it (epsilon 1e-3):
  ``w' = w * gamma / sqrt(var + eps)`` per output channel and ``b' = (b - mean) * gamma / sqrt(var + eps)
  + beta``. The stem conv already has a bias; the depthwise and pointwise ones get one from the folding.
* **Weights.** Symmetric int8 per output channel: ``scale_w[c] = max|w'[c]| / 127``, ``q = round(w / scale_w)``
  in [-127, 127], zero point 0.
* **Activations.** int8, one scale and zero point per tensor, calibrated on TRAINING images with the folded
  float network: every layer's output range ``[min(0, lo), max(0, hi)]`` over the calibration images is
  spread over the 256 int8 levels. After a ReLU the range starts at 0, so the zero point is -128.
* **Biases.** int32 in the accumulator's scale: ``q_b[c] = round(b'[c] / (scale_in * scale_w[c]))``.
* **Convolution / dense.** ``acc[c] = q_b[c] + sum (q_x - zp_x) * q_w[c]`` in int32. Zero padding pads
  ``q_x - zp_x`` with 0, i.e. the real value 0, as in the float network.
* **Requantization.** The real factor ``M[c] = scale_in * scale_w[c] / scale_out`` is stored in fixed point,
  as a 16-bit multiplier per output channel and one right shift per layer: ``M[c] ~= m[c] / 2**shift``,
  with the shift chosen so the largest ``m[c]`` uses 15 bits. Then ``q_out = clamp(zp_out + round(acc[c] *
  m[c] / 2**shift))``, the product in int64 and the shift rounding half up. (Jacob et al. use a 32-bit
  multiplier and a shift per channel: 5 bytes per channel instead of about 2. With 16 bits the largest
  multiplier of a layer is exact to 2**-15 and the others lose only the spread of the weight scales, a
  small error next to the int8 rounding, and the flash of the requantization data halves.)
* **ReLU** is fused into the requantization: the lower clamp is ``zp_out`` (the real 0) instead of -128.
* **Global average pooling** is an int32 sum of ``q - zp`` over the 7x7 plane, requantized with the 1/49
  folded into the multiplier ``scale_in / (49 * scale_out)`` (one for all channels).
* **Dense** 24 -> 10 like a convolution, without ReLU. Its int8 outputs are the logits; only a user of the
  result (softmax, confidence) dequantizes them with ``scale_out`` and ``zp_out``. The argmax needs nothing.

On disk a quantized model is a folder (``formats.int8_folder``); the int8 engines are
``engines.reference_int8`` (NumPy) and the generated C (``codegen.c_int8``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.model.data import to_tensor_input
from mobile_lenet.quantization.arithmetic import INPUT_ZERO_POINT, INT8_MAX, INT8_MIN, convolve
from mobile_lenet.spec import LayerKind

INPUT_SCALE = 1.0 / 255.0
WEIGHT_QMAX = 127  # symmetric weights use [-127, 127], so -w is always representable
MULTIPLIER_BITS = 15  # the requantization multipliers are int16 (positive: at most 2**15 - 1)
MAX_SHIFT = 62  # keeps 1 << (shift - 1) and the int64 product in range
DEFAULT_CALIBRATION_COUNT = 1000


@dataclass
class FoldedLayer:
    """One float operation of the folded network: conv/dwconv (+ folded BN, + ReLU), gap or dense."""

    name: str  # the seed's name of the main row, e.g. "B3_dw3x3_s2"
    kind: LayerKind  # CONV, DWCONV, GAP or DENSE
    rows: tuple  # every row of spec.LAYERS this operation covers, e.g. ("B3_pad1", "B3_dw3x3_s2", ...)
    in_shape: tuple  # (H, W, C) or (C,), as in spec
    out_shape: tuple
    kernel: int = 0
    stride: int = 1
    padding: int = 0  # a separate ZeroPadding2D row is folded in here
    relu: bool = False
    weight: np.ndarray | None = None  # float64, Noodle layout: conv (Cout,Cin,K,K), dw (C,K,K), dense (Dout,Din)
    bias: np.ndarray | None = None  # float64 (Cout,)


@dataclass
class QLayer:
    """One integer operation (see the module docstring); what both int8 engines execute."""

    name: str
    kind: LayerKind
    rows: tuple
    in_shape: tuple
    out_shape: tuple
    kernel: int
    stride: int
    padding: int
    relu: bool
    in_scale: float
    in_zero_point: int
    out_scale: float
    out_zero_point: int
    shift: int  # one right shift for the whole layer
    multiplier: np.ndarray  # int16, one per output channel (gap: a single one)
    weight: np.ndarray | None = None  # int8, same layout as the float weight
    bias: np.ndarray | None = None  # int32 (Cout,)
    weight_scale: np.ndarray | None = None  # float per output channel (documentation; not used to infer)

    def arrays(self) -> dict[str, np.ndarray]:
        """The integer arrays that go into the npz and into the C program."""
        out = {"multiplier": self.multiplier}
        if self.weight is not None:
            out.update(weight=self.weight, bias=self.bias)
        return out


@dataclass
class QuantizedModel:
    """The int8 network: its layers in order, plus where it came from and which family member it is."""

    layers: list
    metadata: dict = field(default_factory=dict)
    architecture: spec.Architecture = spec.SEED

    @property
    def output_scale(self) -> float:
        return self.layers[-1].out_scale

    @property
    def output_zero_point(self) -> int:
        return self.layers[-1].out_zero_point

    def dequantize_logits(self, q: np.ndarray) -> np.ndarray:
        """Real-valued logits from int8 ones (outside the network: for softmax and confidences)."""
        return (q.astype(np.float32) - self.output_zero_point) * np.float32(self.output_scale)


# ------------------------------------------------------------------------------------------------ folding
def fold_batchnorm(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> list[FoldedLayer]:
    """Walk the member's table and fold every BN into its convolution, ReLU and padding into flags."""
    arch = spec.architecture_of(tensors, arch)
    layers: list[FoldedLayer] = []
    pad = None  # a ZeroPadding2D row waiting for its convolution
    for row in spec.layers(arch):
        if row.kind == LayerKind.PAD:
            pad = row
        elif row.kind in (LayerKind.CONV, LayerKind.DWCONV, LayerKind.DENSE):
            weight = np.asarray(tensors[row.weight_file], dtype=np.float64)
            bias = (np.asarray(tensors[row.bias_file], dtype=np.float64) if row.bias_file
                    else np.zeros(row.out_channels))
            rows, in_shape, padding = (row.name,), row.in_shape, row.padding
            if pad is not None:  # the convolution pads its unpadded input itself
                rows, in_shape, padding = (pad.name, row.name), pad.in_shape, padding + pad.padding
                pad = None
            layers.append(FoldedLayer(row.name, row.kind, rows, in_shape, row.out_shape, row.kernel, row.stride,
                                      padding, weight=weight.copy(), bias=bias.copy()))
        elif row.kind == LayerKind.BN:
            op = layers[-1]
            gamma, beta, mean, var = np.asarray(tensors[row.weight_file], dtype=np.float64).reshape(4, -1)
            factor = gamma / np.sqrt(var + spec.BN_EPSILON)
            op.weight *= factor.reshape((-1,) + (1,) * (op.weight.ndim - 1))
            op.bias = (op.bias - mean) * factor + beta
            op.rows += (row.name,)
        elif row.kind == LayerKind.RELU:
            layers[-1].relu = True
            layers[-1].rows += (row.name,)
        elif row.kind == LayerKind.GAP:
            layers.append(FoldedLayer(row.name, LayerKind.GAP, (row.name,), row.in_shape, row.out_shape))
        else:
            raise ValueError(f"cannot quantize layer kind {row.kind!r}")
    return layers


def run_folded_layer(op: FoldedLayer, x: np.ndarray) -> np.ndarray:
    """One folded float layer on float32 activations (N, C, H, W) or (N, C)."""
    if op.kind in (LayerKind.CONV, LayerKind.DWCONV):
        y = convolve(x, op.weight.astype(np.float32), op.stride, op.padding, op.kind == LayerKind.DWCONV)
        y += op.bias.astype(np.float32)[None, :, None, None]
    elif op.kind == LayerKind.GAP:
        y = x.mean(axis=(2, 3))
    else:
        y = x @ op.weight.astype(np.float32).T + op.bias.astype(np.float32)
    return np.maximum(y, 0) if op.relu else y


def folded_logits(folded: list[FoldedLayer], images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Float logits of the folded network (a check that folding preserves the float model)."""
    out = []
    for start in range(0, len(images), batch):
        x = to_tensor_input(images[start:start + batch])
        for op in folded:
            x = run_folded_layer(op, x)
        out.append(x)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ calibration
def calibrate(folded: list[FoldedLayer], images: np.ndarray, batch: int = 500) -> list[tuple[float, float]]:
    """The (min, max) of every folded layer's output over the calibration ``images`` (float network)."""
    if len(images) == 0:
        raise UserError("calibration needs at least one image")
    ranges = [(math.inf, -math.inf)] * len(folded)
    for start in range(0, len(images), batch):
        x = to_tensor_input(images[start:start + batch])
        for i, op in enumerate(folded):
            x = run_folded_layer(op, x)
            lo, hi = ranges[i]
            ranges[i] = (min(lo, float(x.min())), max(hi, float(x.max())))
    return ranges


def activation_params(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point spreading the real range [min(lo,0), max(hi,0)] over int8 (0 exactly representable)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:  # a constant-zero tensor: any scale works
        return 1.0, 0
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return scale, zero_point


# ------------------------------------------------------------------------------------------------ integers
def quantize_weights(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights: returns (int8 weights, float scale per channel)."""
    flat = weight.reshape(weight.shape[0], -1)
    max_abs = np.abs(flat).max(axis=1)
    scale = np.where(max_abs > 0, max_abs / WEIGHT_QMAX, 1.0)  # an all-zero channel: any scale works
    q = np.clip(np.round(flat / scale[:, None]), -WEIGHT_QMAX, WEIGHT_QMAX).astype(np.int8)
    return q.reshape(weight.shape), scale


def quantize_multipliers(real: np.ndarray) -> tuple[np.ndarray, int]:
    """Fixed point for positive factors: int16 multipliers ``m`` and one shift with ``real ~= m / 2**shift``.

    The shift is the largest that keeps every ``m`` below 2**15, so the largest factor keeps 15
    significant bits (the others as many as their size allows).
    """
    real = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if np.any(real < 0) or not np.all(np.isfinite(real)):
        raise ValueError("requantization factors must be finite and non-negative")
    largest = float(real.max())
    if largest == 0:
        return np.zeros(real.shape, np.int16), 1
    _, exponent = math.frexp(largest)  # largest = f * 2**exponent, 0.5 <= f < 1
    shift = MULTIPLIER_BITS - exponent
    if round(largest * 2.0 ** shift) > 2 ** MULTIPLIER_BITS - 1:  # f rounded up to 1.0
        shift -= 1
    if shift < 1:
        raise UserError(f"requantization factor {largest:.3g} too large for a 16-bit multiplier")
    shift = min(shift, MAX_SHIFT)
    multipliers = np.round(real * 2.0 ** shift).astype(np.int64)
    return multipliers.astype(np.int16), int(shift)


def quantize_model(tensors: dict[str, np.ndarray], calibration_images: np.ndarray,
                   metadata: dict | None = None, arch: spec.Architecture | None = None) -> QuantizedModel:
    """Fold, calibrate on ``calibration_images`` (uint8, training data, at the member's input size) and quantize
    the member ``arch`` to integers."""
    arch = spec.architecture_of(tensors, arch)
    arch.check_images(calibration_images)
    folded = fold_batchnorm(tensors, arch)
    ranges = calibrate(folded, calibration_images)
    layers = []
    in_scale, in_zero_point = INPUT_SCALE, INPUT_ZERO_POINT
    for op, (lo, hi) in zip(folded, ranges):
        out_scale, out_zero_point = activation_params(lo, hi)
        common = dict(name=op.name, kind=op.kind, rows=op.rows, in_shape=op.in_shape, out_shape=op.out_shape,
                      kernel=op.kernel, stride=op.stride, padding=op.padding, relu=op.relu, in_scale=in_scale,
                      in_zero_point=in_zero_point, out_scale=out_scale, out_zero_point=out_zero_point)
        if op.kind == LayerKind.GAP:
            plane = op.in_shape[0] * op.in_shape[1]
            multiplier, shift = quantize_multipliers(in_scale / (plane * out_scale))
            layers.append(QLayer(**common, shift=shift, multiplier=multiplier))
        else:
            weight, weight_scale = quantize_weights(op.weight)
            accumulator_scale = in_scale * weight_scale
            bias = np.round(op.bias / accumulator_scale)
            if np.abs(bias).max() >= 2 ** 31:
                raise UserError(f"{op.name}: a bias does not fit in int32 at scale {accumulator_scale.min():.3g}")
            multiplier, shift = quantize_multipliers(accumulator_scale / out_scale)
            layers.append(QLayer(**common, shift=shift, multiplier=multiplier, weight=weight,
                                 bias=bias.astype(np.int32), weight_scale=weight_scale))
        in_scale, in_zero_point = out_scale, out_zero_point
    meta = dict(metadata or {})
    meta.setdefault("calibration", {})["count"] = int(len(calibration_images))
    return QuantizedModel(layers, meta, arch)


def pick_calibration_images(images: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` training images drawn without replacement (fixed by ``seed``), in their original order."""
    if count < 1:
        raise UserError("--calibration-count must be at least 1")
    if count >= len(images):
        return images
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), size=count, replace=False))
    return images[chosen]
