"""The quantized model folder: how an int8 model (``quantization.quantize``) is stored and read back.

A folder holds ``int8_tensors.npz`` (int8 weights, int32 biases, int16 multipliers, one array each per
layer) and ``manifest.json`` (format, layers with shift, scales and zero points, calibration details, the
npz's sha256). It is written into a temporary folder renamed into place, and read back only if the hash and
every array's type and shape match the architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.quantization.arithmetic import INPUT_ZERO_POINT
from mobile_lenet.quantization.quantize import INPUT_SCALE, QLayer, QuantizedModel, fold_batchnorm
from mobile_lenet.spec import LayerKind

FORMAT = "mobile-lenet-int8/1"
NPZ_NAME = "int8_tensors.npz"
MANIFEST_NAME = "manifest.json"


def _layer_manifest(layer: QLayer) -> dict:
    entry = {k: getattr(layer, k) for k in ("name", "kind", "kernel", "stride", "padding", "relu", "shift",
                                            "in_scale", "in_zero_point", "out_scale", "out_zero_point")}
    entry.update(rows=list(layer.rows), in_shape=list(layer.in_shape), out_shape=list(layer.out_shape))
    if layer.weight_scale is not None:
        entry["weight_scale"] = [float(s) for s in layer.weight_scale]
    return entry


def save_quantized(qmodel: QuantizedModel, out: str | os.PathLike) -> list[Path]:
    """Write the model folder atomically: built in a temporary sibling folder, then renamed onto ``out``."""
    out = Path(out)
    if out.exists() and not is_quantized_folder(out) and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"{out}: exists and is not a quantized model; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = None
    try:
        arrays = {f"{layer.name}.{key}": value for layer in qmodel.layers for key, value in layer.arrays().items()}
        np.savez(tmp / NPZ_NAME, **arrays)
        manifest = {"format": FORMAT, "scheme": "int8 activations (per tensor), int8 weights (symmetric, per "
                    "output channel), int32 biases, int16 multiplier per channel + shift per layer, "
                    "rounding half up; see mobile_lenet.quantization.quantize",
                    "input": {"scale": INPUT_SCALE, "zero_point": INPUT_ZERO_POINT, "from": "pixel - 128"},
                    "output": {"scale": qmodel.output_scale, "zero_point": qmodel.output_zero_point},
                    "npz": NPZ_NAME, "npz_sha256": hashlib.sha256((tmp / NPZ_NAME).read_bytes()).hexdigest(),
                    **qmodel.metadata, "layers": [_layer_manifest(layer) for layer in qmodel.layers]}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():  # replace a previous quantized model: move it aside, move the new one in
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return [out / NPZ_NAME, out / MANIFEST_NAME]


def is_quantized_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by ``save_quantized``."""
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    """Read a quantized model folder, checking its hash and every array against the architecture."""
    path = Path(path)
    if not is_quantized_folder(path):
        raise UserError(f"{path}: not a quantized model folder (no {MANIFEST_NAME} of format {FORMAT}); make one "
                        f"with: mobile-lenet quantize MODEL --calibration-data mnist --out Q")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    npz_path = path / manifest.get("npz", NPZ_NAME)
    try:
        raw = npz_path.read_bytes()
    except OSError as e:
        raise UserError(f"{npz_path}: cannot read ({e.strerror})") from None
    if hashlib.sha256(raw).hexdigest() != manifest.get("npz_sha256"):
        raise UserError(f"{npz_path}: contents do not match the manifest's sha256 (damaged or edited)")
    expected = expected_arrays()
    entries = manifest["layers"]
    if [(e["name"], e["kind"]) for e in entries] != [(name, kind) for name, kind, _ in expected]:
        raise UserError(f"{path}: layers do not match Mobile-LeNet's architecture")
    layers = []
    with np.load(npz_path, allow_pickle=False) as arrays:
        for entry, (name, kind, shapes) in zip(entries, expected):
            values = {}
            for key, (dtype, shape) in shapes.items():
                value = arrays.get(f"{name}.{key}")
                if value is None or value.dtype != dtype or value.shape != shape:
                    raise UserError(f"{npz_path}: {name}.{key} should be {np.dtype(dtype).name} {shape}")
                values[key] = value
            scale = entry.get("weight_scale")
            layers.append(QLayer(name=name, kind=LayerKind(kind), rows=tuple(entry["rows"]), in_shape=tuple(entry["in_shape"]),
                                 out_shape=tuple(entry["out_shape"]), kernel=entry["kernel"], stride=entry["stride"],
                                 padding=entry["padding"], relu=entry["relu"], in_scale=entry["in_scale"],
                                 in_zero_point=entry["in_zero_point"], out_scale=entry["out_scale"],
                                 out_zero_point=entry["out_zero_point"], shift=entry["shift"],
                                 weight_scale=None if scale is None else np.array(scale), **values))
    meta = {k: v for k, v in manifest.items() if k in ("source", "calibration")}
    return QuantizedModel(layers, meta)


def expected_arrays() -> list[tuple[str, str, dict]]:
    """(name, kind, {array: (dtype, shape)}) of every quantized layer, derived from the architecture."""
    zeros = {name: np.zeros(shape, np.float32) for name, _, shape in spec.noodle_tensors()}
    for name, _, shape in spec.noodle_tensors():
        if name.startswith("bn"):
            zeros[name][3] = 1.0  # unit variance keeps the folding finite
    out = []
    for op in fold_batchnorm(zeros):
        if op.kind == LayerKind.GAP:
            out.append((op.name, op.kind, {"multiplier": (np.int16, (1,))}))
        else:
            c_out = op.weight.shape[0]
            out.append((op.name, op.kind, {"multiplier": (np.int16, (c_out,)), "weight": (np.int8, op.weight.shape),
                                           "bias": (np.int32, (c_out,))}))
    return out
