"""The Mobile-LeNet architecture table: the single source of truth.

Everything else (the PyTorch model, the weight-file names, the reference engine, the C generator, the
summary and the memory planner) reads ``LAYERS``. Like torchvision's MobileNetV2, the network is written
as a small settings table (``STEM_CHANNELS``, ``BLOCKS``) expanded by one loop into the seed's 43 rows.

Shapes are ``(H, W, C)`` as in the seed's table (Keras, channels last); the engines themselves compute in
CHW, as the microcontroller does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
STEM_CHANNELS = 8
BN_EPSILON = 1e-3  # Keras' default, used by the seed and by Noodle's noodle_bn_relu
BN_MOMENTUM_KERAS = 0.99  # Keras' moving-average momentum (PyTorch's momentum is 1 - this)

# (name, depthwise stride, pointwise output channels): the six DW -> BN -> ReLU -> PW -> BN -> ReLU blocks.
BLOCKS = (
    ("B1", 1, 8),
    ("B2", 1, 8),
    ("B3", 2, 16),
    ("B4", 1, 16),
    ("B5", 2, 24),
    ("B6", 1, 24),
)


class LayerKind(StrEnum):
    """What a row of the table computes. Every engine and every generator handles each kind (a test checks)."""

    CONV = "conv"
    DWCONV = "dwconv"
    BN = "bn"
    RELU = "relu"
    PAD = "pad"
    GAP = "gap"
    DENSE = "dense"


# The Keras class name the seed's table shows for each kind.
KERAS_TYPES = {
    LayerKind.CONV: "Conv2D",
    LayerKind.DWCONV: "DepthwiseConv2D",
    LayerKind.BN: "BatchNorm",
    LayerKind.RELU: "ReLU",
    LayerKind.PAD: "ZeroPadding2D",
    LayerKind.GAP: "GlobalAveragePooling2D",
    LayerKind.DENSE: "Dense",
}


@dataclass(frozen=True)
class Layer:
    """One row of the seed's table, with everything an engine needs to run it."""

    index: int  # 1-based row number, as in the seed
    name: str  # the seed's layer name, e.g. "B3_dw3x3_s2"
    kind: LayerKind
    block: str  # "stem", "B1".."B6" or "head"
    in_shape: tuple  # (H, W, C)
    out_shape: tuple  # (H, W, C), or (C,) after GAP
    kernel: int = 0
    stride: int = 1
    padding: int = 0  # zero padding on every side before a VALID convolution
    bias: bool = False
    weight_file: str | None = None  # Noodle file of the kernel / BN parameters, e.g. "w06" or "bn06"
    bias_file: str | None = None  # Noodle file of the bias, e.g. "b01"
    trainable_params: int = 0
    non_trainable_params: int = 0
    macs: int = 0  # multiply-accumulates per image
    files: tuple = field(default_factory=tuple)

    @property
    def params(self) -> int:
        return self.trainable_params + self.non_trainable_params

    @property
    def in_channels(self) -> int:
        return self.in_shape[-1]

    @property
    def out_channels(self) -> int:
        return self.out_shape[-1]

    @property
    def keras_type(self) -> str:
        return KERAS_TYPES[self.kind]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(params=self.params, keras_type=self.keras_type)
        d["in_shape"], d["out_shape"], d["files"] = list(self.in_shape), list(self.out_shape), list(self.files)
        return d


def conv_out(width: int, kernel: int, stride: int, padding: int) -> int:
    """Output width of a convolution with symmetric zero padding: (W + 2P - K) // S + 1."""
    return (width + 2 * padding - kernel) // stride + 1


class _TableBuilder:
    """Expands the settings into rows, numbering weight files in the seed's order."""

    def __init__(self):
        self.rows: list[Layer] = []
        self.shape = INPUT_SHAPE
        self.n_w = self.n_b = self.n_bn = 0

    def _next(self, prefix: str) -> str:
        attr = {"w": "n_w", "b": "n_b", "bn": "n_bn"}[prefix]
        setattr(self, attr, getattr(self, attr) + 1)
        return f"{prefix}{getattr(self, attr):02d}"

    def add(self, name, kind, block, out_shape, **kw) -> None:
        files = tuple(f for f in (kw.get("weight_file"), kw.get("bias_file")) if f)
        self.rows.append(Layer(len(self.rows) + 1, name, kind, block, self.shape, tuple(out_shape), files=files, **kw))
        self.shape = tuple(out_shape)

    def conv(self, name, block, cout, kernel, stride, padding, depthwise=False, bias=False):
        h, w, cin = self.shape
        ho, wo = conv_out(h, kernel, stride, padding), conv_out(w, kernel, stride, padding)
        if depthwise:
            cout = cin
            weights, macs = cin * kernel * kernel, ho * wo * cin * kernel * kernel
        else:
            weights, macs = cout * cin * kernel * kernel, ho * wo * cout * cin * kernel * kernel
        self.add(name, LayerKind.DWCONV if depthwise else LayerKind.CONV, block, (ho, wo, cout), kernel=kernel, stride=stride,
                 padding=padding, bias=bias, weight_file=self._next("w"),
                 bias_file=self._next("b") if bias else None,
                 trainable_params=weights + (cout if bias else 0), macs=macs)

    def bn_relu(self, bn_name, relu_name, block):
        c = self.shape[-1]
        # gamma, beta trainable; moving mean and variance not (Keras' split, as in the seed's totals)
        self.add(bn_name, LayerKind.BN, block, self.shape, weight_file=self._next("bn"), trainable_params=2 * c,
                 non_trainable_params=2 * c)
        self.add(relu_name, LayerKind.RELU, block, self.shape)


def _build() -> tuple[Layer, ...]:
    t = _TableBuilder()
    t.conv("stem_conv3x3", "stem", STEM_CHANNELS, kernel=3, stride=1, padding=1, bias=True)
    t.bn_relu("stem_bn", "stem_relu", "stem")
    for block, stride, cout in BLOCKS:
        if stride == 1:
            t.conv(f"{block}_dw3x3_s1", block, None, kernel=3, stride=1, padding=1, depthwise=True)
        else:
            # The seed's padding strategy: explicit symmetric zero padding, then a VALID stride-2 convolution.
            h, w, c = t.shape
            t.add(f"{block}_pad1", LayerKind.PAD, block, (h + 2, w + 2, c), padding=1)
            t.conv(f"{block}_dw3x3_s{stride}", block, None, kernel=3, stride=stride, padding=0, depthwise=True)
        t.bn_relu(f"{block}_dw_bn", f"{block}_dw_relu", block)
        t.conv(f"{block}_pw1x1", block, cout, kernel=1, stride=1, padding=0)
        t.bn_relu(f"{block}_pw_bn", f"{block}_pw_relu", block)
    c = t.shape[-1]
    t.add("GAP", LayerKind.GAP, "head", (c,))
    t.add("OUT", LayerKind.DENSE, "head", (NUM_CLASSES,), bias=True, weight_file=t._next("w"), bias_file=t._next("b"),
          trainable_params=c * NUM_CLASSES + NUM_CLASSES, macs=c * NUM_CLASSES)
    return tuple(t.rows)


LAYERS: tuple[Layer, ...] = _build()
LAYER_BY_NAME = {layer.name: layer for layer in LAYERS}


def noodle_tensors() -> list[tuple[str, Layer, tuple]]:
    """Every Noodle weight file in the seed's order, as (file name, layer, Noodle shape).

    Order: w01, w02, ..., w14, then b01, b02, then bn01, ..., bn13 (the order of the seed's listing).
    Shapes follow NOODLE_FORMAT.md: conv [Cout][Cin][K][K], depthwise [C][K][K], dense [Dout][Din],
    biases [C], BatchNorm [4][C] = gamma, beta, moving mean, moving variance.
    """
    out = []
    for layer in LAYERS:
        c_in, c_out, k = layer.in_channels, layer.out_channels, layer.kernel
        if layer.kind == LayerKind.CONV:
            out.append((layer.weight_file, layer, (c_out, c_in, k, k)))
        elif layer.kind == LayerKind.DWCONV:
            out.append((layer.weight_file, layer, (c_out, k, k)))
        elif layer.kind == LayerKind.DENSE:
            out.append((layer.weight_file, layer, (c_out, c_in)))
        elif layer.kind == LayerKind.BN:
            out.append((layer.weight_file, layer, (4, c_out)))
        if layer.bias_file:
            out.append((layer.bias_file, layer, (c_out,)))
    order = {"w": 0, "b": 1, "bn": 2}
    return sorted(out, key=lambda t: (order[t[0].rstrip("0123456789")], t[0]))


def totals() -> dict:
    """Parameter and MAC totals of the whole network."""
    trainable = sum(layer.trainable_params for layer in LAYERS)
    non_trainable = sum(layer.non_trainable_params for layer in LAYERS)
    return {"total_params": trainable + non_trainable, "trainable_params": trainable,
            "non_trainable_params": non_trainable, "macs": sum(layer.macs for layer in LAYERS)}
