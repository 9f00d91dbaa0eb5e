"""The layout of upstream Noodle's Arduino Mega 2560 example ("Mobile-LeNet-16"): BatchNorm folded, PROGMEM headers.

The seed author's second member (NOODLE_FORMAT.md, last section) is the seed's channels at a 16x16 input, with
every BatchNorm folded into the convolution before it: 13 convolutions ``w01``..``w13``, each with a bias
``b01``..``b13`` and a ReLU after it, and the dense layer ``w14``/``b14``. Its folder holds

- ``include/weights.h`` and ``include/biases.h``: every tensor as ``const float wNN[] PROGMEM`` (flash on AVR);
- ``include/wNN.h``, ``include/bNN.h``: one tensor each, ``static const float`` (builds for other chips);
- ``data/wNN.txt``, ``.bin`` (and ``bNN``): the same numbers for file-based builds (SD card);
- ``manifest.json`` (the member and the files' sha256) and ``README.md``.

Folding: a convolution y = W x + c followed by BatchNorm g (y - m) / sqrt(v + eps) + beta is the convolution
with weights s W and bias s (c - m) + beta, s = g / sqrt(v + eps) per output channel. Reading such a folder
back gives an equivalent network in this project's layout: the folded weights, and BatchNorms that add the
folded bias and change nothing else (gamma 1, mean 0, variance 1 - eps, so that sqrt(v + eps) is exactly 1).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.codegen.c_library import template
from mobile_lenet.errors import UserError
from mobile_lenet.files import replace_folder
from mobile_lenet.formats.noodle import (VALUES_PER_HEADER_LINE, encode_bin, encode_txt, format_value, parse_bin,
                                         parse_h, parse_txt, round_to_text)
from mobile_lenet.spec import LayerKind

LAYOUT = "mega2560"
MANIFEST_FORMAT = "mobile-lenet-noodle-mega2560/1"
MEMBER = spec.Architecture(input_size=16)  # the seed's channels at 16x16: upstream's Mobile-LeNet-16


def check_member(arch: spec.Architecture) -> None:
    """One line unless ``arch`` is the member the Mega 2560 example runs."""
    if arch != MEMBER:
        raise UserError(f"the Mega 2560 layout is upstream's Mobile-LeNet-16 ({MEMBER.describe()}); this model is "
                        f"{arch.describe()} (train one with --input-size 16)")


def _folded_names(arch: spec.Architecture) -> list[tuple[spec.Layer, spec.Layer | None]]:
    """(weighted layer, the BatchNorm after it or None) for the 13 convolutions and the dense layer, in order."""
    table = spec.layers(arch)
    pairs = []
    for i, layer in enumerate(table):
        if layer.kind in (LayerKind.CONV, LayerKind.DWCONV, LayerKind.DENSE):
            after = next((t for t in table[i + 1:] if t.kind == LayerKind.BN or t.weight_file), None)
            pairs.append((layer, after if after is not None and after.kind == LayerKind.BN else None))
    return pairs


def fold_batchnorm(tensors: dict[str, np.ndarray], arch: spec.Architecture = MEMBER) -> dict[str, np.ndarray]:
    """The folded tensors ``w01``..``w14``, ``b01``..``b14`` of Noodle ``tensors`` (float32 arithmetic)."""
    folded = {}
    for number, (layer, bn) in enumerate(_folded_names(arch), 1):
        weight = np.asarray(tensors[layer.weight_file], np.float32)
        bias = (np.asarray(tensors[layer.bias_file], np.float32) if layer.bias_file
                else np.zeros(weight.shape[0], np.float32))
        if bn is not None:
            gamma, beta, mean, variance = np.asarray(tensors[bn.weight_file], np.float32)
            scale = gamma / np.sqrt(variance + np.float32(spec.BN_EPSILON))
            weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
            bias = (bias - mean) * scale + beta
        folded[f"w{number:02d}"], folded[f"b{number:02d}"] = weight.astype(np.float32), bias.astype(np.float32)
    return folded


def unfold(folded: dict[str, np.ndarray], arch: spec.Architecture = MEMBER) -> dict[str, np.ndarray]:
    """Noodle tensors of ``arch`` that compute what the folded network computes (see the module docstring)."""
    identity_variance = np.float32(1) - np.float32(spec.BN_EPSILON)
    if identity_variance + np.float32(spec.BN_EPSILON) != np.float32(1):  # sqrt(v + eps) must be exactly 1
        raise AssertionError("1 - eps + eps is not 1 in float32")
    tensors = {}
    for number, (layer, bn) in enumerate(_folded_names(arch), 1):
        weight, bias = folded[f"w{number:02d}"], folded[f"b{number:02d}"]
        tensors[layer.weight_file] = weight
        if bn is None:  # the dense layer: its own bias
            tensors[layer.bias_file] = bias
            continue
        channels = bias.size
        if layer.bias_file:  # the stem: the bias stays on the convolution, the BatchNorm passes through
            tensors[layer.bias_file], beta = bias, np.zeros(channels, np.float32)
        else:
            beta = bias
        tensors[bn.weight_file] = np.stack([np.ones(channels, np.float32), beta, np.zeros(channels, np.float32),
                                            np.full(channels, identity_variance, np.float32)])
    return tensors


# ------------------------------------------------------------------------------------------------ writing
def _array_lines(name: str, values: np.ndarray, declaration: str) -> list[str]:
    flat = np.asarray(values, np.float32).ravel()
    lines = [f"{declaration} {name}[] = {{" if "PROGMEM" not in declaration
             else f"const float {name}[] PROGMEM = {{"]
    for start in range(0, flat.size, VALUES_PER_HEADER_LINE):
        lines.append("  " + ", ".join(format_value(v) + "f" for v in flat[start:start + VALUES_PER_HEADER_LINE]) + ",")
    return lines + ["};"]


def _comment(name: str, layer: spec.Layer, values: np.ndarray) -> list[str]:
    kind = "bias (BatchNorm folded in)" if name.startswith("b") else {
        LayerKind.CONV: "convolution kernel [Cout][Cin][Kh][Kw], BatchNorm folded in",
        LayerKind.DWCONV: "depthwise kernel [C][Kh][Kw], BatchNorm folded in",
        LayerKind.DENSE: "dense weights [Dout][Din]"}[layer.kind]
    return [f"// {name}: {kind} of layer {layer.name}; {values.size} float32 values"]


def encode_mega2560_folder(tensors: dict[str, np.ndarray], arch: spec.Architecture = MEMBER) -> dict[str, bytes]:
    """Every file of the Mega 2560 layout of Noodle ``tensors`` (member ``arch``), as relative path -> bytes."""
    check_member(arch)
    folded = {name: round_to_text(values) for name, values in fold_batchnorm(tensors, arch).items()}
    if not all(np.all(np.isfinite(v)) for v in folded.values()):
        raise UserError("cannot export: folding the BatchNorms gave non-finite values (a variance of -eps?)")
    layers = {f"{kind}{number:02d}": layer for number, (layer, _) in enumerate(_folded_names(arch), 1)
              for kind in ("w", "b")}
    files: dict[str, bytes] = {}
    progmem: dict[str, list[str]] = {"w": [], "b": []}  # the arrays of weights.h and biases.h
    for name, values in folded.items():
        comment = _comment(name, layers[name], values)
        progmem[name[0]] += [""] + comment + _array_lines(name, values, "PROGMEM")
        files[f"include/{name}.h"] = ("\n".join(["#pragma once"] + comment + _array_lines(name, values, "static const float"))
                                      + "\n").encode("ascii")
        files[f"data/{name}.txt"], files[f"data/{name}.bin"] = encode_txt(values), encode_bin(values)
    for header, kind, what in (("weights.h", "w", "weights"), ("biases.h", "b", "biases")):
        files[f"include/{header}"] = template("mega2560_progmem.h.in").substitute(
            what=what, arrays="\n".join(progmem[kind])).encode("ascii")
    entries = [{"file": path, "sha256": hashlib.sha256(data).hexdigest()} for path, data in sorted(files.items())]
    manifest = {"format": MANIFEST_FORMAT, "model": "Mobile-LeNet-16", "layout": LAYOUT,
                "architecture": arch.to_dict(), "files": entries}
    files["manifest.json"] = (json.dumps(manifest, indent=1) + "\n").encode("ascii")
    files["README.md"] = README.encode("utf-8")
    return files


def write_mega2560_folder(tensors: dict[str, np.ndarray], out_dir: str | os.PathLike,
                          arch: spec.Architecture = MEMBER) -> list[Path]:
    """Export ``tensors`` in the Mega 2560 layout, written whole or not at all (``files.replace_folder``)."""
    return replace_folder(encode_mega2560_folder(tensors, arch), out_dir, what="Noodle Mega 2560 export")


# ------------------------------------------------------------------------------------------------ reading
def looks_like_mega2560_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is laid out like upstream's Mega 2560 example (``include/weights.h`` or ``data/w01.*``)."""
    folder = Path(folder)
    return folder.is_dir() and ((folder / "include" / "weights.h").is_file() or (folder / "data").is_dir()
                                and any((folder / "data" / f"w01{ext}").is_file() for ext in (".txt", ".bin")))


def read_mega2560_folder(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], spec.Architecture]:
    """The equivalent Noodle tensors (``unfold``) of a Mega 2560 folder, and its member: each tensor from
    ``data/NAME.txt``, ``.bin`` or ``include/NAME.h``, in that order of preference."""
    folder = Path(folder)
    arch = MEMBER
    folded = {}
    for number, (layer, _) in enumerate(_folded_names(arch), 1):
        for kind in ("w", "b"):
            name = f"{kind}{number:02d}"
            candidates = [(folder / "data" / f"{name}.txt", parse_txt), (folder / "data" / f"{name}.bin", parse_bin),
                          (folder / "include" / f"{name}.h", parse_h)]
            path, parse = next(((p, f) for p, f in candidates if p.is_file()), (None, None))
            if path is None:
                raise UserError(f"{folder}: no {name} (data/{name}.txt, .bin or include/{name}.h) for Mobile-LeNet-16")
            values = parse(path, path.read_bytes())
            shape = (layer.out_channels,) if kind == "b" else {
                LayerKind.CONV: (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel),
                LayerKind.DWCONV: (layer.out_channels, layer.kernel, layer.kernel),
                LayerKind.DENSE: (layer.out_channels, layer.in_channels)}[layer.kind]
            if values.size != int(np.prod(shape)):
                raise UserError(f"{path}: expected {int(np.prod(shape))} values for Mobile-LeNet-16, found {values.size}")
            if not np.all(np.isfinite(values)):
                raise UserError(f"{path}: holds a value that is not finite")
            folded[name] = values.reshape(shape)
    return unfold(folded, arch), arch


README = """# Mobile-LeNet-16 for upstream Noodle's Arduino Mega 2560 example

Written by `mobile-lenet export MODEL --format noodle --layout mega2560` for a model trained with
`--input-size 16` (the seed's channels on 16x16 digits: upstream's `examples/mobile-lenet-mega2560`).

Every BatchNorm is folded into the convolution before it (weights scaled per output channel, the bias
adjusted): `w01`..`w13` with biases `b01`..`b13` (a ReLU follows each), the dense layer `w14`/`b14`
(softmax follows). Layouts: convolution `[Cout][Cin][K][K]`, depthwise `[C][K][K]`, dense `[Dout][Din]`.

- `include/weights.h`, `include/biases.h`: every tensor as `const float ...[] PROGMEM` (flash on the
  ATmega2560; read with `pgm_read_float`). Copy them over the example's `include/` files.
- `include/wNN.h`, `include/bNN.h`: one tensor each as `static const float` (other chips).
- `data/*.txt` (`%.6e`, one value a line) and `data/*.bin` (little-endian float32): the same numbers for the
  example's SD-card build (`.txt` files need `-DNOODLE_FILE_FORMAT=0`: Noodle's default file format is binary).

The host resizes each 28x28 digit to 16x16 (bilinear, rounded to uint8) and sends 256 bytes; the device scales
them by 1/255. `mobile-lenet import` reads this folder back as an equivalent model.
"""
