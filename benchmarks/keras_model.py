"""The upstream stack: Mobile-LeNet in Keras 3, built from our architecture table.

The seed trained this network with Keras 3 on the PyTorch backend. ``build_keras_model`` builds it from
``spec.LAYERS`` with the upstream choices (He-normal kernels, Glorot-uniform softmax head, BatchNorm
momentum 0.99 and epsilon 1e-3, Adam lr 1e-3, categorical cross-entropy), and
``compare_with_upstream`` checks it layer by layer against ``config.json`` inside the seed's published
``mobile-lenet-5.keras``, so the comparison in the training benchmark is against the seed's real model.
``recalibrate_keras_batchnorm`` gives a trained model's BatchNorm layers the exact statistics of their inputs
over a set of images (what our trainer does at the end of every run), to tell a lagging moving average from
a badly trained network.

Import this module only with ``KERAS_BACKEND=torch`` set (the training worker does).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from mobile_lenet import spec

# Config keys that name or place a layer rather than define its computation.
IGNORED_KEYS = {"name", "dtype", "trainable", "build_config"}


def _padding_mode(layer: spec.Layer) -> str:
    """Keras' padding for a convolution row: "same" when the row pads by (k-1)/2, else "valid"."""
    return "same" if layer.padding == (layer.kernel - 1) // 2 else "valid"


def keras_layer(layer: spec.Layer):
    """The Keras layer for one row of the architecture table."""
    import keras

    if layer.kind == "conv":
        return keras.layers.Conv2D(layer.out_channels, layer.kernel, strides=layer.stride,
                                   padding=_padding_mode(layer), use_bias=layer.bias,
                                   kernel_initializer="he_normal", name=layer.name)
    if layer.kind == "dwconv":
        return keras.layers.DepthwiseConv2D(layer.kernel, strides=layer.stride, padding=_padding_mode(layer),
                                            use_bias=layer.bias, depthwise_initializer="he_normal",
                                            name=layer.name)
    if layer.kind == "bn":
        return keras.layers.BatchNormalization(momentum=spec.BN_MOMENTUM_KERAS, epsilon=spec.BN_EPSILON,
                                               name=layer.name)
    if layer.kind == "relu":
        return keras.layers.ReLU(name=layer.name)
    if layer.kind == "pad":
        return keras.layers.ZeroPadding2D(layer.padding, name=layer.name)
    if layer.kind == "gap":
        return keras.layers.GlobalAveragePooling2D(name=layer.name)
    if layer.kind == "dense":
        return keras.layers.Dense(layer.out_channels, activation="softmax", use_bias=layer.bias, name=layer.name)
    raise ValueError(f"unknown layer kind {layer.kind!r}")


def build_keras_model(learning_rate: float = 1e-3):
    """The compiled Keras model: the seed's layers, Adam(lr), categorical cross-entropy, accuracy metric."""
    import keras

    model = keras.Sequential([keras.Input(spec.INPUT_SHAPE)] + [keras_layer(layer) for layer in spec.LAYERS])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def read_upstream_config(keras_file: str | Path) -> dict:
    """The model config.json stored inside a ``.keras`` zip."""
    with zipfile.ZipFile(keras_file) as archive:
        return json.loads(archive.read("config.json"))


def _normalized(value):
    """A config value with names and seeds dropped and initializers reduced to their class name."""
    if isinstance(value, dict):
        if value.get("module") == "keras.initializers":
            return value["class_name"]
        return {k: _normalized(v) for k, v in value.items() if k not in IGNORED_KEYS}
    if isinstance(value, (list, tuple)):
        return [_normalized(v) for v in value]
    return value


def compare_with_upstream(model, keras_file: str | Path) -> dict:
    """Compare ``model`` layer by layer with the seed's ``.keras`` config (types and computation settings).

    Returns {"layers": number compared, "mismatches": [descriptions], "optimizer": ..., "loss": ...}; keys
    present in only one of the two configs (new Keras versions add some) are ignored.
    """
    upstream = read_upstream_config(keras_file)
    theirs = [layer for layer in upstream["config"]["layers"] if layer["class_name"] != "InputLayer"]
    ours = model.layers
    mismatches = []
    if len(theirs) != len(ours):
        mismatches.append(f"{len(ours)} layers, upstream has {len(theirs)}")
    for index, (mine, their) in enumerate(zip(ours, theirs), start=1):
        if type(mine).__name__ != their["class_name"]:
            mismatches.append(f"layer {index}: {type(mine).__name__} vs upstream {their['class_name']}")
            continue
        a, b = _normalized(mine.get_config()), _normalized(their["config"])
        for key in sorted(set(a) & set(b)):
            if a[key] != b[key]:
                mismatches.append(f"layer {index} ({their['config']['name']}) {key}: {a[key]!r} vs {b[key]!r}")
    compile_config = upstream.get("compile_config") or {}
    their_optimizer = compile_config.get("optimizer", {})
    their_lr = their_optimizer.get("config", {}).get("learning_rate")
    our_lr = float(model.optimizer.learning_rate)
    if their_optimizer.get("class_name") != type(model.optimizer).__name__:
        mismatches.append(f"optimizer {type(model.optimizer).__name__} vs upstream {their_optimizer.get('class_name')}")
    if their_lr is not None and abs(their_lr - our_lr) > 1e-9:
        mismatches.append(f"learning rate {our_lr} vs upstream {their_lr}")
    if compile_config.get("loss") != model.loss:
        mismatches.append(f"loss {model.loss!r} vs upstream {compile_config.get('loss')!r}")
    return {"layers": min(len(theirs), len(ours)), "mismatches": mismatches,
            "optimizer": f"{their_optimizer.get('class_name')} lr {their_lr}", "loss": compile_config.get("loss")}


def channel_moments(chunks) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population (biased) variance over every pixel of channels-last arrays.

    ``chunks`` are arrays of shape (..., C) (e.g. (N, H, W, C) pieces of one set); sums and sums of squares
    are accumulated in float64 so that many chunks lose nothing. Returns two float64 arrays of length C.
    """
    total = squares = 0.0
    count = 0
    for chunk in chunks:
        pixels = np.asarray(chunk, dtype=np.float64).reshape(-1, chunk.shape[-1])
        total = total + pixels.sum(axis=0)
        squares = squares + (pixels * pixels).sum(axis=0)
        count += len(pixels)
    if count == 0:
        raise ValueError("no pixels to take statistics of")
    mean = total / count
    return mean, np.maximum(squares / count - mean * mean, 0.0)  # clamp: rounding can dip below 0


def recalibrate_sequential(layers, images: np.ndarray, forward, is_batchnorm, set_statistics,
                           chunk: int = 256) -> int:
    """Set each BatchNorm layer of a sequential network to the exact statistics of its input over ``images``.

    The network runs in inference mode from one BatchNorm layer to the next, so each one is measured on
    inputs made with the already-recalibrated layers before it (what inference will feed it); only the
    current layer's input is kept for the whole set. ``forward(layer, x)`` runs one layer in inference mode
    and returns a NumPy array, ``is_batchnorm(layer)`` picks the BatchNorm layers and
    ``set_statistics(layer, mean, variance)`` stores their new statistics. Returns how many were set.
    """
    activations = [images[start:start + chunk] for start in range(0, len(images), chunk)]
    pending = []  # the layers from the previous BatchNorm (included) up to the next one
    recalibrated = 0
    for layer in layers:
        if is_batchnorm(layer):
            for earlier in pending:
                activations = [forward(earlier, x) for x in activations]
            pending = []
            set_statistics(layer, *channel_moments(activations))
            recalibrated += 1
        pending.append(layer)
    return recalibrated


def recalibrate_keras_batchnorm(model, images: np.ndarray, chunk: int = 256) -> int:
    """Replace the moving averages of a Keras Sequential model's BatchNorm layers with the exact statistics
    of their inputs over ``images`` ((N, H, W, C) float32, scaled as in training). Returns the number of
    BatchNorm layers set. Needs ``KERAS_BACKEND=torch``."""
    import keras
    import torch

    def forward(layer, x):
        return keras.ops.convert_to_numpy(layer(x, training=False))

    def set_statistics(layer, mean, variance):
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign(variance.astype(np.float32))

    with torch.no_grad():  # the variables are trainable torch parameters: no autograd graph for 10,000 images
        return recalibrate_sequential(model.layers, images, forward,
                                      lambda layer: isinstance(layer, keras.layers.BatchNormalization),
                                      set_statistics, chunk)
