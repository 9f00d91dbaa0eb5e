"""The quantized model folder: how an int8 model (``quantization.quantize``) is stored and read back.

A folder holds ``int8_tensors.npz`` (int8 weights, int32 biases, int16 multipliers, one array each per
layer) and ``manifest.json`` (format, layers with shift, scales and zero points, calibration details, the
npz's sha256). A family member other than the seed's is recorded in the manifest's ``architecture`` (the
seed's manifest is as it always was). It is written into a temporary folder renamed into place, and read back
only if the hash and every array's type and shape match the architecture.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.files import check_writable_folder, replace_folder
from mobile_lenet.quantization.arithmetic import INPUT_ZERO_POINT, INT8_MAX, INT8_MIN
from mobile_lenet.quantization.quantize import INPUT_SCALE, MAX_SHIFT, QLayer, QuantizedModel, fold_batchnorm
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


def manifest_hash(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its own ``manifest_sha256``: covers every layer's
    shift, scales and zero points (the npz has its own hash, ``npz_sha256``, inside what this covers)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def save_quantized(qmodel: QuantizedModel, out: str | os.PathLike) -> list[Path]:
    """Write the model folder atomically: built in a temporary sibling folder, then renamed onto ``out``.

    An existing ``out`` must be empty or a quantized model folder (replaced whole); anything else is refused."""
    out = Path(out)
    if out.exists() and not is_quantized_folder(out) and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"{out}: exists and is not a quantized model; choose another --out")
    check_writable_folder(out)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"{layer.name}.{key}": value for layer in qmodel.layers
                        for key, value in layer.arrays().items()})
    npz = buffer.getvalue()
    manifest = {"format": FORMAT, "scheme": "int8 activations (per tensor), int8 weights (symmetric, per "
                "output channel), int32 biases, int16 multiplier per channel + shift per layer, "
                "rounding half up; see mobile_lenet.quantization.quantize",
                "input": {"scale": INPUT_SCALE, "zero_point": INPUT_ZERO_POINT, "from": "pixel - 128"},
                "output": {"scale": qmodel.output_scale, "zero_point": qmodel.output_zero_point},
                "npz": NPZ_NAME, "npz_sha256": hashlib.sha256(npz).hexdigest(),
                **({} if qmodel.architecture.is_seed else {"architecture": qmodel.architecture.to_dict()}),
                **qmodel.metadata, "layers": [_layer_manifest(layer) for layer in qmodel.layers]}
    manifest = json.loads(json.dumps(manifest))  # plain JSON types, as a reader will see them
    manifest["manifest_sha256"] = manifest_hash(manifest)
    validate_manifest(manifest, out / MANIFEST_NAME)  # never write what load_quantized would refuse
    return replace_folder({NPZ_NAME: npz, MANIFEST_NAME: json.dumps(manifest, indent=1) + "\n"}, out,
                          what="quantized model", replaceable=is_quantized_folder)


def is_quantized_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder written by ``save_quantized``."""
    manifest = Path(path) / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _fail(where, message: str):
    raise UserError(f"{where}: {message}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_manifest(manifest, where: Path) -> None:
    """Check a manifest against its schema and the architecture: types, ranges (shifts the C can do, zero
    points within int8, positive finite scales), each layer's structure; UserError naming what is wrong."""
    if not isinstance(manifest, dict):
        _fail(where, "not a JSON object")
    if manifest.get("npz") != NPZ_NAME:  # no other path: the model cannot point outside its folder
        _fail(where, f'"npz" must be {NPZ_NAME!r}, not {str(manifest.get("npz"))[:60]!r}')
    if not isinstance(manifest.get("npz_sha256"), str) or not isinstance(manifest.get("manifest_sha256"), str):
        _fail(where, '"npz_sha256" and "manifest_sha256" must be sha256 strings')
    for key in ("input", "output"):
        part = manifest.get(key)
        if not isinstance(part, dict) or not _is_number(part.get("scale")) or not part["scale"] > 0 \
                or not _is_int(part.get("zero_point")) or not INT8_MIN <= part["zero_point"] <= INT8_MAX:
            _fail(where, f'"{key}" needs a positive finite "scale" and an integer "zero_point" in -128..127')
    entries = manifest.get("layers")
    if not isinstance(entries, list):
        _fail(where, 'no "layers" list')
    ops = expected_ops(manifest_architecture(manifest, where))
    if len(entries) != len(ops):
        _fail(where, f"{len(entries)} layers, Mobile-LeNet has {len(ops)}")
    for i, (entry, op) in enumerate(zip(entries, ops)):
        at = f"layer {i + 1}"
        if not isinstance(entry, dict):
            _fail(where, f"{at} is not an object")
        expected = {"name": op.name, "kind": str(op.kind), "kernel": op.kernel, "stride": op.stride,
                    "padding": op.padding, "relu": op.relu, "rows": list(op.rows), "in_shape": list(op.in_shape),
                    "out_shape": list(op.out_shape)}
        for key, value in expected.items():
            if key not in entry:
                _fail(where, f'{at} ({op.name}) has no "{key}"')
            if entry[key] != value or type(entry[key]) is not type(value):
                _fail(where, f'{at} ({op.name}): "{key}" is {str(entry[key])[:40]}, Mobile-LeNet has {value}')
        if not _is_int(entry.get("shift")) or not 1 <= entry["shift"] <= MAX_SHIFT:
            _fail(where, f'{at} ({op.name}): "shift" must be an integer from 1 to {MAX_SHIFT}, '
                         f'not {str(entry.get("shift"))[:40]}')
        for key in ("in_zero_point", "out_zero_point"):
            if not _is_int(entry.get(key)) or not INT8_MIN <= entry[key] <= INT8_MAX:
                _fail(where, f'{at} ({op.name}): "{key}" must be an integer from -128 to 127')
        for key in ("in_scale", "out_scale"):
            if not _is_number(entry.get(key)) or not entry[key] > 0:
                _fail(where, f'{at} ({op.name}): "{key}" must be a positive finite number')
        scale = entry.get("weight_scale")
        if scale is not None and (not isinstance(scale, list) or not all(_is_number(v) for v in scale)):
            _fail(where, f'{at} ({op.name}): "weight_scale" must be a list of finite numbers')
    # The chain of scales and zero points: the pixels' fixed quantization (what the engines compute), each
    # layer's output read by the next, the last layer's output as the "output".
    if (manifest["input"]["scale"], manifest["input"]["zero_point"]) != (INPUT_SCALE, INPUT_ZERO_POINT):
        _fail(where, f'"input" must be scale 1/255 and zero point {INPUT_ZERO_POINT} (pixel - 128)')
    written = [(manifest["input"]["scale"], manifest["input"]["zero_point"], "input")]
    written += [(entry["out_scale"], entry["out_zero_point"], entry["name"]) for entry in entries]
    for entry, (scale, zero_point, source) in zip(entries, written):
        if (entry["in_scale"], entry["in_zero_point"]) != (scale, zero_point):
            _fail(where, f'{entry["name"]}: "in_scale"/"in_zero_point" differ from the output of {source}')
    if (manifest["output"]["scale"], manifest["output"]["zero_point"]) != written[-1][:2]:
        _fail(where, f'"output" differs from the output of {written[-1][2]}')


def manifest_architecture(manifest: dict, where) -> spec.Architecture:
    """The family member a manifest records (the seed's when it records none)."""
    record = manifest.get("architecture")
    return spec.SEED if record is None else spec.Architecture.from_dict(record, str(where))


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    """Read a quantized model folder: the manifest checked against its schema and its hash, the npz (only
    ``int8_tensors.npz`` in the folder itself) against its hash, every array against the architecture."""
    path = Path(path)
    if not is_quantized_folder(path):
        raise UserError(f"{path}: not a quantized model folder (no {MANIFEST_NAME} of format {FORMAT}); make one "
                        f"with: mobile-lenet quantize MODEL --calibration-data mnist --out Q")
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest_path}: cannot read ({e})") from None
    validate_manifest(manifest, manifest_path)
    if manifest_hash(manifest) != manifest["manifest_sha256"]:
        raise UserError(f"{manifest_path}: contents do not match its manifest_sha256 (damaged or edited)")
    npz_path = path / NPZ_NAME
    if npz_path.is_symlink() or not npz_path.is_file():
        raise UserError(f"{npz_path}: missing (or not a plain file in the model folder)")
    try:
        raw = npz_path.read_bytes()
    except OSError as e:
        raise UserError(f"{npz_path}: cannot read ({e.strerror})") from None
    if hashlib.sha256(raw).hexdigest() != manifest["npz_sha256"]:
        raise UserError(f"{npz_path}: contents do not match the manifest's sha256 (damaged or edited)")
    entries = manifest["layers"]
    architecture = manifest_architecture(manifest, manifest_path)
    layers = []
    try:
        arrays = dict(np.load(io.BytesIO(raw), allow_pickle=False))  # the bytes that were hashed
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{npz_path}: not a readable .npz file ({type(e).__name__})") from None
    for entry, (name, kind, shapes) in zip(entries, expected_arrays(architecture)):
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
    return QuantizedModel(layers, meta, architecture)


@functools.lru_cache(maxsize=8)
def expected_ops(arch: spec.Architecture = spec.SEED) -> tuple:
    """The folded operations of the member ``arch`` (structure only: names, kinds, kernels, shapes)."""
    zeros = {name: np.zeros(shape, np.float32) for name, _, shape in spec.noodle_tensors(arch)}
    for name, _, shape in spec.noodle_tensors(arch):
        if name.startswith("bn"):
            zeros[name][3] = 1.0  # unit variance keeps the folding finite
    return tuple(fold_batchnorm(zeros, arch))


def expected_arrays(arch: spec.Architecture = spec.SEED) -> list[tuple[str, str, dict]]:
    """(name, kind, {array: (dtype, shape)}) of every quantized layer, derived from the member's architecture."""
    out = []
    for op in expected_ops(arch):
        if op.kind == LayerKind.GAP:
            out.append((op.name, op.kind, {"multiplier": (np.int16, (1,))}))
        else:
            c_out = op.weight.shape[0]
            out.append((op.name, op.kind, {"multiplier": (np.int16, (c_out,)), "weight": (np.int8, op.weight.shape),
                                           "bias": (np.int32, (c_out,))}))
    return out
