"""Reading a Keras 3 ``.keras`` file of Mobile-LeNet with h5py alone (no TensorFlow, no Keras).

A ``.keras`` file is a zip holding ``config.json`` (the model's layers, with the seed's layer names) and
``model.weights.h5``. In the HDF5 file each layer's variables sit in ``layers/<path>/vars/0, 1, ...`` where
``<path>`` is Keras' generated name (``conv2d``, ``batch_normalization_3``, ...): the snake-cased class
name, numbered per class in the order the layers appear in the model. Keras 3 also stores the layer's own
name as the ``name`` attribute of that ``vars`` group. We map by the seed's names from config.json and check
that both ways of locating a layer's weights agree.

Variables per layer (Keras order): Conv2D kernel ``(Kh, Kw, Cin, Cout)`` [+ bias]; DepthwiseConv2D kernel
``(Kh, Kw, C, 1)``; BatchNormalization gamma, beta, moving_mean, moving_variance; Dense kernel
``(Din, Dout)`` + bias. They are transposed to the Noodle layouts (NOODLE_FORMAT.md).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import h5py
import numpy as np

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.spec import LayerKind

# The Keras class of each layer kind of the table.
KERAS_CLASSES = {
    LayerKind.CONV: "Conv2D",
    LayerKind.DWCONV: "DepthwiseConv2D",
    LayerKind.BN: "BatchNormalization",
    LayerKind.RELU: "ReLU",
    LayerKind.PAD: "ZeroPadding2D",
    LayerKind.GAP: "GlobalAveragePooling2D",
    LayerKind.DENSE: "Dense",
}
# The seed's .keras names its stem convolution "stem_conv"; its table says "stem_conv3x3".
KERAS_NAME_ALIASES = {"stem_conv": "stem_conv3x3"}


MAX_MEMBER_BYTES = 16 * 1024 * 1024  # Mobile-LeNet's weights.h5 is about 100 KB: a larger member is not ours


class _KerasFile:
    """The two parts of a .keras file, with errors that name it."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                for needed in ("config.json", "model.weights.h5"):
                    if needed not in names:
                        raise UserError(f"{path}: not a Keras 3 .keras file (no {needed} inside)")
                    size = archive.getinfo(needed).file_size  # declared; the read below stops there too
                    if size > MAX_MEMBER_BYTES:
                        raise UserError(f"{path}: its {needed} declares {size:,} bytes, far more than Mobile-LeNet's "
                                        f"(at most {MAX_MEMBER_BYTES:,}); not this network's .keras file")
                self.config = json.loads(archive.read("config.json"))
                self.weights_bytes = archive.read("model.weights.h5")
        except zipfile.BadZipFile:
            raise UserError(f"{path}: not a Keras 3 .keras file (not a zip archive)") from None
        except (ValueError, UnicodeDecodeError):
            raise UserError(f"{path}: config.json inside is not valid JSON") from None

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.path}: {message}")


def read_keras(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Noodle tensors from a Keras 3 ``.keras`` file of Mobile-LeNet.

    Raises one UserError naming the file if it is not a .keras file or its architecture is not the table's.
    """
    keras = _KerasFile(Path(path))
    layers = _config_layers(keras)
    h5_paths = _h5_paths()
    try:
        with h5py.File(io.BytesIO(keras.weights_bytes), "r") as h5:
            tensors = {}
            for layer in spec.LAYERS:
                if layer.weight_file is None:
                    continue
                variables = _layer_variables(keras, h5, h5_paths[layer.name], layers[layer.name]["name"])
                tensors.update(_to_noodle(keras, layer, variables))
    except OSError:
        raise keras.fail("model.weights.h5 inside is not a readable HDF5 file") from None
    return tensors


def _config_layers(keras: _KerasFile) -> dict[str, dict]:
    """The table's layer name -> that layer's Keras config entry; the architecture is checked on the way."""
    try:
        entries = keras.config["config"]["layers"]
        if keras.config.get("class_name") not in ("Sequential", "Functional"):
            raise KeyError
    except (KeyError, TypeError):
        raise keras.fail("config.json does not describe a Sequential or Functional model") from None
    entries = [e for e in entries if not (isinstance(e, dict) and e.get("class_name") == "InputLayer")]
    if len(entries) != len(spec.LAYERS):
        raise keras.fail(f"has {len(entries)} layers; Mobile-LeNet has {len(spec.LAYERS)} (not Mobile-LeNet)")
    by_name = {}
    for layer, entry in zip(spec.LAYERS, entries):
        keras_name = entry.get("config", {}).get("name", "?") if isinstance(entry, dict) else "?"
        if KERAS_NAME_ALIASES.get(keras_name, keras_name) != layer.name:
            raise keras.fail(f"layer {layer.index} is {keras_name!r}, Mobile-LeNet's is {layer.name!r} "
                             "(not Mobile-LeNet)")
        _check_layer(keras, layer, entry)
        by_name[layer.name] = entry["config"]
    return by_name


def _check_layer(keras: _KerasFile, layer: spec.Layer, entry: dict) -> None:
    """Raise if a Keras layer does not compute what the table's row computes."""
    config = entry["config"]
    expected_class = KERAS_CLASSES[layer.kind]
    if entry.get("class_name") != expected_class:
        raise keras.fail(f"layer {layer.name} is a {entry.get('class_name')}, expected {expected_class}")

    def require(condition: bool, what: str) -> None:
        if not condition:
            raise keras.fail(f"layer {layer.name}: {what} (not Mobile-LeNet)")

    require(config.get("data_format", "channels_last") == "channels_last", "data_format must be channels_last")
    if layer.kind in (LayerKind.CONV, LayerKind.DWCONV):
        k, s = layer.kernel, layer.stride
        require(list(config.get("kernel_size", [])) == [k, k],
                f"kernel_size {config.get('kernel_size')}, expected {k}x{k}")
        require(list(config.get("strides", [])) == [s, s], f"strides {config.get('strides')}, expected {s}")
        require(list(config.get("dilation_rate", [1, 1])) == [1, 1], "dilation must be 1")
        require(config.get("use_bias") == layer.bias, f"use_bias should be {layer.bias}")
        require(config.get("activation", "linear") == "linear", "activation must be linear (BN and ReLU follow)")
        require(_keras_padding(config.get("padding"), k, s) == layer.padding,
                f"padding {config.get('padding')!r} is not the table's symmetric P={layer.padding}")
        if layer.kind == LayerKind.CONV:
            require(config.get("filters") == layer.out_channels,
                    f"filters {config.get('filters')}, expected {layer.out_channels}")
            require(config.get("groups", 1) == 1, "groups must be 1")
        else:
            require(config.get("depth_multiplier") == 1, "depth_multiplier must be 1")
    elif layer.kind == LayerKind.BN:
        require(abs(float(config.get("epsilon", 0)) - spec.BN_EPSILON) < 1e-9, f"epsilon must be {spec.BN_EPSILON}")
        require(config.get("center", True) and config.get("scale", True), "needs both gamma and beta")
        require(config.get("axis") in (-1, 3, [-1], [3]), "must normalise the channel axis")
    elif layer.kind == LayerKind.PAD:
        p = layer.padding
        require(config.get("padding") in ([[p, p], [p, p]], [p, p], p), f"padding must be {p} on every side")
    elif layer.kind == LayerKind.RELU:
        require(config.get("max_value") is None and not config.get("negative_slope") and not config.get("threshold"),
                "must be a plain ReLU")
    elif layer.kind == LayerKind.DENSE:
        require(config.get("units") == layer.out_channels,
                f"units {config.get('units')}, expected {layer.out_channels}")
        require(config.get("use_bias") is True, "needs a bias")
        require(config.get("activation") in ("linear", "softmax"), "activation must be softmax or linear")


def _keras_padding(padding: str | None, kernel: int, stride: int) -> int | None:
    """Keras' padding mode as symmetric padding P, or None where it is asymmetric (``same`` with stride 2)."""
    if padding == "valid":
        return 0
    if padding == "same" and (stride == 1 and kernel % 2 == 1):
        return (kernel - 1) // 2
    return None


def _h5_paths() -> dict[str, str]:
    """Table layer name -> HDF5 group by Keras' naming rule: snake_case(class), numbered per class in order."""
    counts: dict[str, int] = {}
    paths = {}
    for layer in spec.LAYERS:
        base = _snake_case(KERAS_CLASSES[layer.kind])
        n = counts.get(base, 0)
        counts[base] = n + 1
        paths[layer.name] = f"layers/{base}" + (f"_{n}" if n else "")
    return paths


def _snake_case(class_name: str) -> str:
    """Keras' generated layer name stem: Conv2D -> conv2d, BatchNormalization -> batch_normalization."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)  # a capitalised word starts a new part
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()  # so does a capital after a lower-case letter


def _layer_variables(keras: _KerasFile, h5, group_path: str, keras_name: str) -> list[np.ndarray]:
    """The variables of one layer, located by the naming rule and checked against the stored layer name."""
    named = {g.attrs.get("name"): name for name, g in _vars_groups(h5)}
    if keras_name in named and named[keras_name] != group_path:
        raise keras.fail(f"weights of layer {keras_name} are stored under {named[keras_name]}, "
                         f"expected {group_path}")
    group = h5.get(group_path + "/vars")
    if group is None:
        raise keras.fail(f"model.weights.h5 has no weights for layer {keras_name} (no {group_path}/vars)")
    if "name" in group.attrs and group.attrs["name"] != keras_name:
        raise keras.fail(f"{group_path} holds weights of layer {group.attrs['name']}, expected {keras_name}")
    return [np.asarray(group[str(i)], dtype=np.float32) for i in range(len(group))]


def _vars_groups(h5) -> list:
    """(path, vars group) of every layer in the HDF5 file."""
    layers = h5.get("layers")
    if layers is None:
        return []
    return [(f"layers/{name}", layers[name]["vars"]) for name in layers if "vars" in layers[name]]


def _to_noodle(keras: _KerasFile, layer: spec.Layer, variables: list[np.ndarray]) -> dict[str, np.ndarray]:
    """One layer's Keras variables as Noodle tensors, shapes checked."""
    k, cin, cout = layer.kernel, layer.in_channels, layer.out_channels
    expected = {
        LayerKind.CONV: [(k, k, cin, cout)] + ([(cout,)] if layer.bias else []),
        LayerKind.DWCONV: [(k, k, cin, 1)],
        LayerKind.BN: [(cout,)] * 4,
        LayerKind.DENSE: [(cin, cout), (cout,)],
    }[layer.kind]
    shapes = [v.shape for v in variables]
    if shapes != expected:
        raise keras.fail(f"layer {layer.name} has weight shapes {shapes}, expected {expected}")
    for v in variables:
        if not np.all(np.isfinite(v)):
            raise keras.fail(f"layer {layer.name} has non-finite weights")
    if layer.kind == LayerKind.CONV:
        tensors = {layer.weight_file: variables[0].transpose(3, 2, 0, 1)}  # (Kh,Kw,Cin,Cout) -> (Cout,Cin,Kh,Kw)
    elif layer.kind == LayerKind.DWCONV:
        tensors = {layer.weight_file: variables[0][:, :, :, 0].transpose(2, 0, 1)}  # (Kh,Kw,C,1) -> (C,Kh,Kw)
    elif layer.kind == LayerKind.BN:
        tensors = {layer.weight_file: np.stack(variables)}  # gamma, beta, moving_mean, moving_variance
    else:
        tensors = {layer.weight_file: variables[0].T}  # (Din,Dout) -> (Dout,Din)
    if layer.bias_file:
        tensors[layer.bias_file] = variables[1]
    return {name: np.ascontiguousarray(value, dtype=np.float32) for name, value in tensors.items()}
