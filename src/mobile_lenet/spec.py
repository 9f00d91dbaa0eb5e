"""The Mobile-LeNet architecture table: the single source of truth.

Everything else (the PyTorch model, the weight-file names, the reference engine, the C generator, the
summary and the memory planner) reads the table of layers. Like torchvision's MobileNetV2, which takes its
``inverted_residual_setting``, the network is a small settings value, an ``Architecture`` (the stem's and
each block's output channels, the blocks' strides, the input size), expanded by one loop (``layers``) into
its rows. ``SEED`` is the seed's network, whose table ``LAYERS`` is the seed's 43 rows; the other members of
the family scale its channels (``width``, MobileNet's alpha) or set them one by one (``channels``), and take
an input of 16 to 32 pixels a side.

Shapes are ``(H, W, C)`` as in the seed's table (Keras, channels last); the engines themselves compute in
CHW, as the microcontroller does.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from mobile_lenet.errors import UserError

NUM_CLASSES = 10
BN_EPSILON = 1e-3  # Keras' default, used by the seed and by Noodle's noodle_bn_relu
BN_MOMENTUM_KERAS = 0.99  # Keras' moving-average momentum (PyTorch's momentum is 1 - this)
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 16, 32  # 16: upstream's Mobile-LeNet-16; 32: a padded MNIST digit
MAX_CHANNELS = 256  # a sanity bound: the seed's widest layer has 24
MAX_BLOCKS = 16  # a sanity bound on --strides: the seed has 6 blocks


@dataclass(frozen=True)
class Architecture:
    """One member of the Mobile-LeNet family: a stem convolution with ``channels[0]`` outputs, then one
    DW -> BN -> ReLU -> PW -> BN -> ReLU block per stride, block i (B1, B2, ...) with depthwise stride
    ``strides[i]`` and ``channels[i + 1]`` pointwise outputs, on square ``input_size`` x ``input_size`` images.
    The defaults are the seed's network. Invalid values raise one-line UserErrors."""

    channels: tuple = (8, 8, 8, 16, 16, 24, 24)
    strides: tuple = (1, 1, 2, 1, 2, 1)
    input_size: int = 28

    def __post_init__(self):
        _check_strides(self.strides)
        if len(self.channels) != len(self.strides) + 1:
            example = f", e.g. {','.join(map(str, SEED_CHANNELS))}" if len(self.strides) == len(SEED_STRIDES) else ""
            raise UserError(f"channels must list the stem's and the {len(self.strides)} blocks' output channels "
                            f"({len(self.strides) + 1} numbers{example}), not {len(self.channels)}")
        if not all(_is_int(c) and 1 <= c <= MAX_CHANNELS for c in self.channels):
            raise UserError(f"channels must be whole numbers from 1 to {MAX_CHANNELS}, not "
                            f"{','.join(map(str, self.channels))}")
        if not (_is_int(self.input_size) and MIN_INPUT_SIZE <= self.input_size <= MAX_INPUT_SIZE):
            raise UserError(f"input size must be a whole number of pixels from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, "
                            f"not {self.input_size}")

    @classmethod
    def from_options(cls, width: float | None = None, channels: str | tuple | None = None,
                     input_size: int | None = None, strides: str | tuple | None = None) -> "Architecture":
        """The member that ``--width``, ``--channels``, ``--input-size`` and ``--strides`` name (None: the seed's).
        ``strides`` sets each block's depthwise stride and so the number of blocks; with another number of blocks
        than the seed's six, ``channels`` must list the stem's and every block's output channels."""
        if width is not None and channels is not None:
            raise UserError("--width scales the seed's channels and --channels sets them; give one of the two")
        size = SEED_INPUT_SIZE if input_size is None else input_size
        block_strides = SEED_STRIDES if strides is None else parse_numbers(strides, "strides", SEED_STRIDES)
        _check_strides(block_strides)
        if channels is None and len(block_strides) != len(SEED_STRIDES):
            raise UserError(f"--strides gives {len(block_strides)} blocks and the seed's channels are for "
                            f"{len(SEED_STRIDES)}: give --channels with {len(block_strides) + 1} numbers (the stem's "
                            f"and each block's output channels)")
        if channels is not None:
            return cls(parse_channels(channels), block_strides, size)
        arch = cls(SEED_CHANNELS, block_strides, size)
        return arch if width is None else arch.scaled(width)

    def scaled(self, width: float) -> "Architecture":
        """Every channel count times ``width`` (alpha), rounded half up, at least 1."""
        if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
            raise UserError(f"width must be a number above 0, not {width}")
        channels = tuple(max(1, math.floor(c * width + 0.5)) for c in self.channels)
        if max(channels) > MAX_CHANNELS:  # rounding half up: a layer of c channels stays within while c x width < 256.5
            bound = (MAX_CHANNELS + 0.5) / max(self.channels)
            raise UserError(f"width {width:g} makes the widest layer {max(channels)} channels, above the "
                            f"{MAX_CHANNELS} allowed: width must be under {bound:g}")
        return Architecture(channels, self.strides, self.input_size)

    @property
    def stem_channels(self) -> int:
        return self.channels[0]

    @property
    def blocks(self) -> tuple:
        """(name, depthwise stride, pointwise output channels) per block: ("B1", 1, 8), ..."""
        return tuple((f"B{i + 1}", s, c) for i, (s, c) in enumerate(zip(self.strides, self.channels[1:])))

    @property
    def input_shape(self) -> tuple:
        """(H, W, C) of the input image."""
        return (self.input_size, self.input_size, 1)

    @property
    def is_seed(self) -> bool:
        return self == SEED

    def to_dict(self) -> dict:
        """What checkpoints and manifests record."""
        return {"channels": list(self.channels), "strides": list(self.strides), "input_size": self.input_size}

    @classmethod
    def from_dict(cls, d, where: str = "") -> "Architecture":
        """The inverse of ``to_dict``; anything else is one UserError naming ``where``."""
        prefix = f"{where}: " if where else ""
        try:
            if set(d) != {"channels", "strides", "input_size"}:
                raise TypeError
            return cls(tuple(d["channels"]), tuple(d["strides"]), d["input_size"])
        except (TypeError, ValueError, AttributeError):
            raise UserError(f"{prefix}its architecture is not a mobile-lenet architecture record") from None
        except UserError as e:
            raise UserError(f"{prefix}its architecture is invalid ({e})") from None

    def check_images(self, images) -> None:
        """UserError unless ``images`` is a stack (N, S, S) of this member's input size (other sizes are resized
        first, with ``model.images.resize_digits``)."""
        shape = getattr(images, "shape", ())
        if len(shape) != 3 or shape[1:] != (self.input_size, self.input_size):
            raise UserError(f"images must be (N, {self.input_size}, {self.input_size}) for this network "
                            f"({self.describe()}), got {tuple(shape)}")

    def describe(self) -> str:
        """One line for messages: ``channels 4,4,4,8,8,12,12, input 16x16`` (and the strides, where they are not
        the seed's)."""
        strides = "" if self.strides == SEED_STRIDES else f", strides {','.join(map(str, self.strides))}"
        return f"channels {','.join(map(str, self.channels))}{strides}, input {self.input_size}x{self.input_size}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_strides(strides: tuple) -> None:
    if not (all(s in (1, 2) and _is_int(s) for s in strides) and 1 <= len(strides) <= MAX_BLOCKS):
        raise UserError(f"block strides must be 1 to {MAX_BLOCKS} numbers, each 1 or 2, not "
                        f"{','.join(map(str, strides)) or 'none'}")


def parse_numbers(text: str | tuple, what: str, example: tuple) -> tuple:
    """``"4,4,4,8"`` -> (4, 4, 4, 8); one UserError naming ``what`` (and ``example``) for anything else."""
    if not isinstance(text, str):
        return tuple(text)
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{what} must be whole numbers separated by commas (e.g. "
                        f"{','.join(map(str, example))}), not {text!r}") from None


def parse_channels(text: str | tuple) -> tuple:
    """``"4,4,4,8,8,16,16"`` -> (4, 4, 4, 8, 8, 16, 16); one UserError for anything else."""
    return parse_numbers(text, "channels", SEED_CHANNELS)


class MemberWeights(dict):
    """Float weights (Noodle file name -> array) that know the family member they are for, as an int8 model
    (``QuantizedModel.architecture``) does: what the checkpoint, Noodle manifest or Mega 2560 folder they were
    read from records, so that no verb needs the member repeated on its command line."""

    def __init__(self, tensors: dict, architecture: Architecture):
        super().__init__(tensors)
        self.architecture = architecture


def architecture_of(model, arch: Architecture | None = None) -> Architecture:
    """The member ``model`` is for: what an int8 model or ``MemberWeights`` record, else ``arch``, else the seed's
    network (plain tensors record nothing). An ``arch`` the model's record contradicts is one UserError."""
    recorded = getattr(model, "architecture", None)
    if recorded is None:
        return SEED if arch is None else arch
    if arch is not None and arch != recorded:
        raise UserError(f"the model is the network with {recorded.describe()}, not {arch.describe()}")
    return recorded


SEED_CHANNELS = Architecture.channels
SEED_STRIDES = Architecture.strides
SEED_INPUT_SIZE = Architecture.input_size
SEED = Architecture()
# The seed's settings under their old names, for callers that only know the seed's network.
INPUT_SHAPE = SEED.input_shape
STEM_CHANNELS = SEED.stem_channels
BLOCKS = SEED.blocks


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
    block: str  # "stem", "B1", "B2", ... or "head"
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

    def __init__(self, input_shape: tuple):
        self.rows: list[Layer] = []
        self.shape = input_shape
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


@functools.cache
def layers(arch: Architecture = SEED) -> tuple[Layer, ...]:
    """The table of ``arch``: for the seed's, the seed's 43 rows."""
    t = _TableBuilder(arch.input_shape)
    t.conv("stem_conv3x3", "stem", arch.stem_channels, kernel=3, stride=1, padding=1, bias=True)
    t.bn_relu("stem_bn", "stem_relu", "stem")
    for block, stride, cout in arch.blocks:
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


LAYERS: tuple[Layer, ...] = layers(SEED)
LAYER_BY_NAME = {layer.name: layer for layer in LAYERS}


def noodle_tensors(arch: Architecture = SEED) -> list[tuple[str, Layer, tuple]]:
    """Every Noodle weight file of ``arch`` in the seed's order, as (file name, layer, Noodle shape).

    Order: w01, w02, ..., w14, then b01, b02, then bn01, ..., bn13 (the order of the seed's listing).
    Shapes follow NOODLE_FORMAT.md: conv [Cout][Cin][K][K], depthwise [C][K][K], dense [Dout][Din],
    biases [C], BatchNorm [4][C] = gamma, beta, moving mean, moving variance.
    """
    out = []
    for layer in layers(arch):
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


def totals(arch: Architecture = SEED) -> dict:
    """Parameter and MAC totals of the whole network."""
    table = layers(arch)
    trainable = sum(layer.trainable_params for layer in table)
    non_trainable = sum(layer.non_trainable_params for layer in table)
    return {"total_params": trainable + non_trainable, "trainable_params": trainable,
            "non_trainable_params": non_trainable, "macs": sum(layer.macs for layer in table)}

