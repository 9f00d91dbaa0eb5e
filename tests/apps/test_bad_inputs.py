"""The bad-input corpus (issue 13): every verb and the demo API against inputs a new user might give them.

Each case builds its broken input in its own temporary folder, runs the verb in-process (``main([...])``) and
asserts: exit status 2, exactly one line on stderr naming the file or flag, no traceback, no warning, and
nothing left behind (the case's folder holds exactly what it held before: no partial or half-replaced
output). The demo cases assert a 4xx answer with a one-line JSON error. Control cases run the same commands
on the unbroken inputs and must succeed, so every broken case fails because of what was broken.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobile_lenet.apps.cli import main
from mobile_lenet.formats.int8_folder import MANIFEST_NAME, NPZ_NAME, manifest_hash, save_quantized
from mobile_lenet.formats.noodle import write_noodle_folder
from mobile_lenet.model.checkpoints import save_checkpoint
from mobile_lenet.model.data import write_idx
from mobile_lenet.model.network import MobileLeNet, to_noodle
from mobile_lenet.quantization.quantize import quantize_model

RNG = np.random.default_rng(13)
IMAGES = RNG.integers(0, 256, (40, 28, 28), dtype=np.uint8)
LABELS = (np.arange(40) % 10).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ assets
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Good inputs, never modified by a case: a data folder, a checkpoint, a Noodle folder, an int8 folder."""
    root = tmp_path_factory.mktemp("assets")
    data = root / "data"
    data.mkdir()
    for prefix in ("train", "t10k"):
        write_idx(data / f"{prefix}-images-idx3-ubyte", IMAGES)
        write_idx(data / f"{prefix}-labels-idx1-ubyte", LABELS)
    torch.manual_seed(0)
    model = MobileLeNet().eval()
    save_checkpoint(root / "model.pt", model)
    tensors = to_noodle(model)
    write_noodle_folder(tensors, root / "noodle")
    save_quantized(quantize_model(tensors, IMAGES[:20], {"source": "test"}), root / "q")
    Image.fromarray(IMAGES[0]).save(root / "digit.png")
    return root


def snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder`` with a hash of its bytes (what "nothing left behind" compares)."""
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(folder.rglob("*"))}


def run_refused(capsys, tmp_path, argv, fragment):
    """Run ``argv``; assert a clean refusal (see the module docstring) whose one line contains ``fragment``."""
    capsys.readouterr()
    before = snapshot(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code} for {argv}\nstdout: {out[-500:]}\nstderr: {err[-500:]}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mobile-lenet: error: "), err
    assert "Traceback" not in err and "Warning" not in err
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert [str(w.message) for w in caught] == []
    assert snapshot(tmp_path) == before, "the command left something behind or changed its inputs"


# ------------------------------------------------------------------------------------------------ data files
def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x803 if array.ndim == 3 else 0x801
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _csv(rows: list[list]) -> bytes:
    return "".join(",".join(str(v) for v in row) + "\n" for row in rows).encode()


GOOD_ROW = [3] + [0] * 784


def _corrupt_middle(data: bytes) -> bytes:
    data = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    return bytes(data)


# variant -> (files as name -> bytes, written for both splits where the name has {p}; fragment in the error)
DATA_VARIANTS = {
    "idx-bad-magic": ({"{p}-images-idx3-ubyte": b"\x00\x00\x09\x03" + _idx(IMAGES)[4:],
                       "{p}-labels-idx1-ubyte": _idx(LABELS)}, "bad magic"),
    "idx-truncated-header": ({"{p}-images-idx3-ubyte": _idx(IMAGES)[:10], "{p}-labels-idx1-ubyte": _idx(LABELS)},
                             "truncated header"),
    "idx-truncated-body": ({"{p}-images-idx3-ubyte": _idx(IMAGES)[:-5], "{p}-labels-idx1-ubyte": _idx(LABELS)},
                           "truncated"),
    "idx-trailing-bytes": ({"{p}-images-idx3-ubyte": _idx(IMAGES) + b"x", "{p}-labels-idx1-ubyte": _idx(LABELS)},
                           "trailing bytes"),
    "idx-empty-file": ({"{p}-images-idx3-ubyte": b"", "{p}-labels-idx1-ubyte": _idx(LABELS)}, "truncated header"),
    "idx-32x32": ({"{p}-images-idx3-ubyte": _idx(np.zeros((40, 32, 32))), "{p}-labels-idx1-ubyte": _idx(LABELS)},
                  "32x32"),
    "idx-label-10": ({"{p}-images-idx3-ubyte": _idx(IMAGES), "{p}-labels-idx1-ubyte": _idx(np.full(40, 10))},
                     "label 10"),
    "idx-label-255": ({"{p}-images-idx3-ubyte": _idx(IMAGES), "{p}-labels-idx1-ubyte": _idx(np.full(40, 255))},
                      "label 255"),
    "idx-count-mismatch": ({"{p}-images-idx3-ubyte": _idx(IMAGES), "{p}-labels-idx1-ubyte": _idx(LABELS[:39])},
                           "40 images but"),
    "idx-zero-images": ({"{p}-images-idx3-ubyte": _idx(IMAGES[:0]), "{p}-labels-idx1-ubyte": _idx(LABELS[:0])},
                        "holds no images"),
    "idx-labels-are-images": ({"{p}-images-idx3-ubyte": _idx(IMAGES), "{p}-labels-idx1-ubyte": _idx(IMAGES)},
                              "holds images, not labels"),
    "idx-images-are-labels": ({"{p}-images-idx3-ubyte": _idx(LABELS), "{p}-labels-idx1-ubyte": _idx(LABELS)},
                              "holds labels, not images"),
    "idx-huge-count": ({"{p}-images-idx3-ubyte": _idx(IMAGES)[:4] + (10 ** 9).to_bytes(4, "big") + _idx(IMAGES)[8:],
                        "{p}-labels-idx1-ubyte": _idx(LABELS)}, "items"),
    "idx-missing-labels": ({"{p}-images-idx3-ubyte": _idx(IMAGES)}, "labels-idx1-ubyte"),
    "gz-corrupt-middle": ({"{p}-images-idx3-ubyte.gz": _corrupt_middle(_gz(_idx(RNG.integers(0, 256, (400, 28, 28))))),
                           "{p}-labels-idx1-ubyte.gz": _gz(_idx(LABELS))}, "images-idx3-ubyte.gz"),
    "gz-truncated": ({"{p}-images-idx3-ubyte.gz": _gz(_idx(IMAGES))[:-30], "{p}-labels-idx1-ubyte.gz": _gz(_idx(LABELS))},
                     "images-idx3-ubyte.gz"),
    "gz-not-gzip": ({"{p}-images-idx3-ubyte.gz": _idx(IMAGES), "{p}-labels-idx1-ubyte.gz": _gz(_idx(LABELS))},
                    "images-idx3-ubyte.gz"),
    # expands far beyond what its header declares: refused after reading only the declared size (+1 byte)
    "gz-bomb": ({"{p}-images-idx3-ubyte.gz": _gz(_idx(IMAGES) + bytes(64 * 1024 * 1024)),
                 "{p}-labels-idx1-ubyte.gz": _gz(_idx(LABELS))}, "trailing bytes"),
    "npz-string-labels": ({"mnist.npz": _npz(x_train=IMAGES, y_train=LABELS.astype(str), x_test=IMAGES,
                                             y_test=LABELS.astype(str))}, "mnist.npz"),
    "npz-scalar-labels": ({"mnist.npz": _npz(x_train=IMAGES, y_train=np.int64(3), x_test=IMAGES, y_test=np.int64(3))},
                          "mnist.npz"),
    "npz-2d-labels": ({"mnist.npz": _npz(x_train=IMAGES, y_train=LABELS[:, None], x_test=IMAGES,
                                         y_test=LABELS[:, None])}, "mnist.npz"),
    "npz-float-images": ({"mnist.npz": _npz(x_train=IMAGES / 255, y_train=LABELS, x_test=IMAGES / 255,
                                            y_test=LABELS)}, "dtype float64"),
    "npz-label-10": ({"mnist.npz": _npz(x_train=IMAGES, y_train=LABELS + 10, x_test=IMAGES, y_test=LABELS + 10)},
                     "out of range"),
    "npz-label-negative": ({"mnist.npz": _npz(x_train=IMAGES, y_train=-LABELS.astype(np.int64) - 1, x_test=IMAGES,
                                              y_test=-LABELS.astype(np.int64) - 1)}, "out of range"),
    "npz-missing-array": ({"mnist.npz": _npz(x_train=IMAGES, x_test=IMAGES)}, "no array"),
    "npz-random-bytes": ({"mnist.npz": RNG.integers(0, 256, 3000, dtype=np.uint8).tobytes()}, "mnist.npz"),
    "npz-pickled-object": ({"mnist.npz": _npz(x_train=np.array([{"a": 1}], dtype=object), y_train=LABELS,
                                              x_test=np.array([{"a": 1}], dtype=object), y_test=LABELS)}, "mnist.npz"),
    "csv-short-row": ({"mnist_{s}.csv": _csv([GOOD_ROW, [3, 0, 0]])}, "line 2"),
    "csv-label-10": ({"mnist_{s}.csv": _csv([GOOD_ROW, [10] + [0] * 784])}, "line 2"),
    "csv-pixel-256": ({"mnist_{s}.csv": _csv([GOOD_ROW, [1, 256] + [0] * 783])}, "line 2"),
    "csv-not-integer": ({"mnist_{s}.csv": _csv([GOOD_ROW, [1, "x"] + [0] * 783])}, "line 2"),
    "csv-empty": ({"mnist_{s}.csv": b""}, "no data rows"),
    "csv-binary": ({"mnist_{s}.csv": b"\xff\xfe\x00" * 100}, "mnist_"),
    "folder-empty": ({}, "no "),
}


def write_variant(folder: Path, variant: str) -> Path:
    files, _ = DATA_VARIANTS[variant]
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        for prefix, split in (("train", "train"), ("t10k", "test")):
            (folder / name.format(p=prefix, s=split)).write_bytes(data)
    return folder


DATA_VERBS = {
    "evaluate": lambda a, d, t: ["evaluate", a / "model.pt", "--data-dir", d],
    "train": lambda a, d, t: ["train", "--data-dir", d, "--epochs", 1, "--out", t / "run", "--quiet"],
    "quantize": lambda a, d, t: ["quantize", a / "model.pt", "--calibration-data", "mnist", "--data-dir", d,
                                 "--out", t / "q"],
    "pipeline": lambda a, d, t: ["pipeline", "--data-dir", d, "--epochs", 1, "--out", t / "main", "--quiet"],
    "device": lambda a, d, t: ["device", "--port", t / "no-such-port", "--data-dir", d],
}


@pytest.mark.parametrize("verb", DATA_VERBS)
@pytest.mark.parametrize("variant", DATA_VARIANTS)
def test_bad_data(capsys, tmp_path, assets, verb, variant):
    data = write_variant(tmp_path / "data", variant)
    fragment = DATA_VARIANTS[variant][1]
    run_refused(capsys, tmp_path, DATA_VERBS[verb](assets, data, tmp_path), fragment)


def test_data_control(capsys, tmp_path, assets):
    """The same verbs on the good data folder get past the data (evaluate succeeds)."""
    assert main(["evaluate", str(assets / "model.pt"), "--data-dir", str(assets / "data")]) == 0
    assert "accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ checkpoints
def _state(assets) -> dict:
    return torch.load(assets / "model.pt", weights_only=True)


class Payload:
    """Pickles into a call of os.system: what weights_only loading must refuse."""

    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def _checkpoint(assets, path: Path, variant: str) -> None:
    state = _state(assets)
    weights = state["model"]
    first = next(k for k, v in weights.items() if v.is_floating_point())
    if variant == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif variant == "empty-file":
        path.write_bytes(b"")
    elif variant == "model-is-list":
        torch.save({**state, "model": [1, 2, 3]}, path)
    elif variant == "model-is-none":
        torch.save({**state, "model": None}, path)
    elif variant == "model-missing":
        torch.save({k: v for k, v in state.items() if k != "model"}, path)
    elif variant == "wrong-format":
        torch.save({**state, "format": "something-else/1"}, path)
    elif variant == "not-a-dict":
        torch.save([state], path)
    elif variant in ("nan-weight", "inf-weight"):
        value = weights[first].clone()
        value.view(-1)[0] = float("nan") if variant == "nan-weight" else float("inf")
        torch.save({**state, "model": {**weights, first: value}}, path)
    elif variant == "wrong-shape":
        torch.save({**state, "model": {**weights, first: torch.zeros(3, 3)}}, path)
    elif variant == "missing-weight":
        torch.save({**state, "model": {k: v for k, v in weights.items() if k != first}}, path)
    elif variant == "extra-weight":
        torch.save({**state, "model": {**weights, "extra.weight": torch.zeros(1)}}, path)
    elif variant == "string-weight":
        torch.save({**state, "model": {**weights, first: "zeros"}}, path)
    elif variant == "pickle-payload":
        torch.save({**state, "model": Payload()}, path)
    elif variant == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:-100])
    elif variant == "random-zip":
        buffer = io.BytesIO()
        import zipfile
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x05junk")
        path.write_bytes(buffer.getvalue())
    else:
        raise AssertionError(variant)


CHECKPOINT_VARIANTS = {"garbage": "not a readable checkpoint", "empty-file": "not a readable checkpoint",
                       "model-is-list": "model", "model-is-none": "model", "model-missing": "model",
                       "wrong-format": "not a mobile-lenet checkpoint", "not-a-dict": "not a mobile-lenet checkpoint",
                       "nan-weight": "NaN or infinity", "inf-weight": "NaN or infinity",
                       "wrong-shape": "do not fit", "missing-weight": "do not fit", "extra-weight": "do not fit",
                       "string-weight": "model", "pickle-payload": "not a readable checkpoint",
                       "truncated": "not a readable checkpoint", "random-zip": "not a readable checkpoint"}

MODEL_VERBS = {
    "evaluate": lambda a, m, t: ["evaluate", m, "--data-dir", a / "data"],
    "predict": lambda a, m, t: ["predict", m, a / "digit.png"],
    "export-noodle": lambda a, m, t: ["export", m, "--format", "noodle", "--out", t / "out"],
    "export-onnx": lambda a, m, t: ["export", m, "--format", "onnx", "--out", t / "out"],
    "export-c": lambda a, m, t: ["export", m, "--format", "c", "--out", t / "out"],
    "quantize": lambda a, m, t: ["quantize", m, "--calibration-data", "mnist", "--data-dir", a / "data",
                                 "--out", t / "q"],
    "import": lambda a, m, t: ["import", m, "--out", t / "imported.pt"],
}


@pytest.mark.parametrize("verb", ["evaluate", "predict", "export-noodle", "export-onnx", "quantize"])
@pytest.mark.parametrize("variant", CHECKPOINT_VARIANTS)
def test_bad_checkpoint(capsys, tmp_path, assets, verb, variant):
    path = tmp_path / "model.pt"
    _checkpoint(assets, path, variant)
    run_refused(capsys, tmp_path, MODEL_VERBS[verb](assets, path, tmp_path), CHECKPOINT_VARIANTS[variant])
    assert "pwned" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ Noodle folders
def _noodle(assets, folder: Path, variant: str) -> None:
    shutil.copytree(assets / "noodle", folder)
    for p in folder.iterdir():  # keep only the .txt encoding (no manifest) unless the variant needs more
        if p.suffix != ".txt":
            p.unlink()
    w05 = folder / "w05.txt"
    if variant == "w05-is-a-folder":
        w05.unlink()
        w05.mkdir()
    elif variant == "underscore-number":
        w05.write_text(w05.read_text().replace("\n", "\n1_000\n", 1).rsplit("\n", 2)[0] + "\n")
    elif variant == "nan-value":
        lines = w05.read_text().splitlines()
        w05.write_text("\n".join(["nan"] + lines[1:]) + "\n")
    elif variant == "word-value":
        lines = w05.read_text().splitlines()
        w05.write_text("\n".join(["zero"] + lines[1:]) + "\n")
    elif variant == "too-few-values":
        w05.write_text("".join(w05.read_text().splitlines(keepends=True)[:-1]))
    elif variant == "too-many-values":
        w05.write_text(w05.read_text() + "1.0\n")
    elif variant == "missing-file":
        w05.unlink()
    elif variant == "stale-w15":
        (folder / "w15.txt").write_text("1.0\n")
    elif variant == "binary-txt":
        w05.write_bytes(b"\xff\xfe" * 50)
    elif variant == "huge-value":
        lines = w05.read_text().splitlines()
        w05.write_text("\n".join(["1e999"] + lines[1:]) + "\n")
    elif variant == "negative-variance":  # the fourth row of a BatchNorm file: its moving variances
        lines = (folder / "bn03.txt").read_text().splitlines()
        lines[3 * len(lines) // 4] = "-0.5"
        (folder / "bn03.txt").write_text("\n".join(lines) + "\n")
    elif variant == "bad-bin":
        w05.unlink()
        (folder / "w05.bin").write_bytes(b"\x00" * 7)
    elif variant == "bad-manifest":
        (folder / "manifest.json").write_text("{not json")
    elif variant == "edited-under-manifest":
        shutil.copy(assets / "noodle" / "manifest.json", folder / "manifest.json")
        w05.write_text(w05.read_text().replace("e", "E", 1))
    else:
        raise AssertionError(variant)


NOODLE_VARIANTS = {"w05-is-a-folder": "w05.txt", "underscore-number": "w05.txt", "nan-value": "w05.txt",
                   "word-value": "w05.txt", "too-few-values": "w05.txt", "too-many-values": "w05.txt",
                   "missing-file": "w05", "stale-w15": "w15.txt", "binary-txt": "w05.txt", "huge-value": "w05.txt",
                   "bad-bin": "w05.bin", "negative-variance": "bn03 (BatchNorm) has a negative moving variance",
                   "bad-manifest": "manifest.json", "edited-under-manifest": "w05.txt"}


@pytest.mark.parametrize("verb", ["evaluate", "predict", "export-c", "import"])
@pytest.mark.parametrize("variant", NOODLE_VARIANTS)
def test_bad_noodle_folder(capsys, tmp_path, assets, verb, variant):
    folder = tmp_path / "noodle"
    _noodle(assets, folder, variant)
    run_refused(capsys, tmp_path, MODEL_VERBS[verb](assets, folder, tmp_path), NOODLE_VARIANTS[variant])


def test_model_controls(capsys, tmp_path, assets):
    """The good checkpoint and Noodle folder pass through the same verbs."""
    folder = tmp_path / "noodle"
    _noodle(assets, folder, "too-many-values")
    (folder / "w05.txt").write_text("".join((assets / "noodle" / "w05.txt").read_text()))
    for verb in ("predict", "import", "export-c"):
        assert main([str(a) for a in MODEL_VERBS[verb](assets, folder, tmp_path)]) == 0, verb
        assert main([str(a) for a in MODEL_VERBS[verb](assets, assets / "model.pt", tmp_path / "2")]) == 0, verb


# ------------------------------------------------------------------------------------------------ int8 folders
def _rehash(manifest: dict) -> dict:
    manifest["manifest_sha256"] = manifest_hash(manifest)
    return manifest


def _quantized(assets, folder: Path, variant: str) -> None:
    shutil.copytree(assets / "q", folder)
    path = folder / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    layers = manifest["layers"]
    rehash = True
    if variant == "no-layers":
        del manifest["layers"]
    elif variant == "layers-not-list":
        manifest["layers"] = {"a": 1}
    elif variant == "layer-without-rows":
        del layers[2]["rows"]
    elif variant == "shift-not-number":
        layers[0]["shift"] = "twelve"
    elif variant == "shift-200":
        layers[1]["shift"] = 200
    elif variant == "shift-0":
        layers[1]["shift"] = 0
    elif variant == "shift-float":
        layers[1]["shift"] = 12.5
    elif variant == "zero-point-300":
        layers[3]["out_zero_point"] = 300
    elif variant == "scale-negative":
        layers[3]["out_scale"] = -1.0
    elif variant == "scale-nan":
        layers[3]["out_scale"] = float("nan")
    elif variant == "kernel-changed":
        layers[0]["kernel"] = 5
    elif variant == "layer-dropped":
        layers.pop()
    elif variant == "layer-is-string":
        layers[0] = "conv"
    elif variant == "relu-as-int":
        layers[0]["relu"] = 1
    elif variant == "npz-outside":
        manifest["npz"] = "../" + NPZ_NAME
    elif variant == "npz-absolute":
        manifest["npz"] = str(folder / NPZ_NAME)
    elif variant == "input-zero-point":
        manifest["input"]["zero_point"] = -129
    elif variant == "zero-points-not-chained":  # layer 5 reads a zero point that layer 4 does not write
        layers[4]["in_zero_point"] = layers[3]["out_zero_point"] + (1 if layers[3]["out_zero_point"] < 127 else -1)
    elif variant == "first-layer-input-zero-point":
        layers[0]["in_zero_point"] = -127
    elif variant == "output-not-last-layer":
        manifest["output"]["zero_point"] = layers[-1]["out_zero_point"] + (1 if layers[-1]["out_zero_point"] < 127
                                                                           else -1)
    elif variant == "edited-without-rehash":
        layers[1]["shift"] -= 1
        rehash = False
    elif variant == "npz-random-bytes":
        data = RNG.integers(0, 256, 2000, dtype=np.uint8).tobytes()
        (folder / NPZ_NAME).write_bytes(data)
        manifest["npz_sha256"] = hashlib.sha256(data).hexdigest()
    elif variant == "npz-missing-array":
        with np.load(folder / NPZ_NAME) as z:
            arrays = {k: z[k] for k in z.files if not k.endswith(".bias")}
        data = _npz(**arrays)
        (folder / NPZ_NAME).write_bytes(data)
        manifest["npz_sha256"] = hashlib.sha256(data).hexdigest()
    elif variant == "npz-int32-weights":  # right names and shapes, wrong type
        with np.load(folder / NPZ_NAME) as z:
            arrays = {k: z[k].astype(np.int32) if k.endswith(".weight") else z[k] for k in z.files}
        data = _npz(**arrays)
        (folder / NPZ_NAME).write_bytes(data)
        manifest["npz_sha256"] = hashlib.sha256(data).hexdigest()
    elif variant == "npz-edited":
        (folder / NPZ_NAME).write_bytes((folder / NPZ_NAME).read_bytes()[:-8])
        rehash = False
    elif variant == "npz-is-a-folder":
        (folder / NPZ_NAME).unlink()
        (folder / NPZ_NAME).mkdir()
        rehash = False
    elif variant == "manifest-is-list":
        path.write_text('[{"format": "mobile-lenet-int8/1"}]')
        return
    else:
        raise AssertionError(variant)
    path.write_text(json.dumps(_rehash(manifest) if rehash else manifest))


QUANTIZED_VARIANTS = {"no-layers": "layers", "layers-not-list": "layers", "layer-without-rows": "rows",
                      "shift-not-number": "shift", "shift-200": "shift", "shift-0": "shift", "shift-float": "shift",
                      "zero-point-300": "out_zero_point", "scale-negative": "out_scale", "scale-nan": "out_scale",
                      "kernel-changed": "kernel", "layer-dropped": "layers", "layer-is-string": "layer 1",
                      "relu-as-int": "relu", "npz-outside": "npz", "npz-absolute": "npz",
                      "input-zero-point": "input", "zero-points-not-chained": "in_zero_point",
                      "first-layer-input-zero-point": "output of input", "output-not-last-layer": '"output"',
                      "edited-without-rehash": "manifest_sha256", "npz-random-bytes": NPZ_NAME,
                      "npz-missing-array": "bias", "npz-int32-weights": "weight should be int8", "npz-edited": "sha256",
                      "npz-is-a-folder": NPZ_NAME, "manifest-is-list": "/q: "}

INT8_VERBS = {
    "evaluate": lambda a, q, t: ["evaluate", q, "--data-dir", a / "data"],
    "export-c": lambda a, q, t: ["export", q, "--format", "c", "--int8", "--out", t / "out"],
    "export-platformio": lambda a, q, t: ["export", q, "--format", "platformio", "--int8", "--out", t / "out"],
}


@pytest.mark.parametrize("verb", INT8_VERBS)
@pytest.mark.parametrize("variant", QUANTIZED_VARIANTS)
def test_bad_quantized_folder(capsys, tmp_path, assets, verb, variant):
    folder = tmp_path / "q"
    _quantized(assets, folder, variant)
    run_refused(capsys, tmp_path, INT8_VERBS[verb](assets, folder, tmp_path), QUANTIZED_VARIANTS[variant])


def test_quantized_control(capsys, tmp_path, assets):
    folder = tmp_path / "q"
    shutil.copytree(assets / "q", folder)
    assert main(["evaluate", str(folder), "--data-dir", str(assets / "data")]) == 0
    assert main(["export", str(folder), "--format", "c", "--int8", "--out", str(tmp_path / "out")]) == 0
    assert oct((folder).stat().st_mode & 0o777) == oct((tmp_path / "out").stat().st_mode & 0o777)


# ------------------------------------------------------------------------------------------------ flags and outputs
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (gray), with a tiny body: decoding would need GBs."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def _setup(t: Path, a: Path) -> None:
    """Files the flag cases refer to."""
    (t / "file").write_text("a file")
    (t / "nonempty").mkdir()
    (t / "nonempty" / "mine.txt").write_text("keep me")
    (t / "stale").mkdir()
    (t / "stale" / "w15.txt").write_text("1.0\n")
    (t / "big.png").write_bytes(_png_header_only(30000, 30000))
    (t / "wide.png").write_bytes(_png_header_only(5000, 10))
    (t / "notimage.png").write_bytes(b"hello")
    (t / "empty.png").write_bytes(b"")
    Image.fromarray(IMAGES[0]).save(t / "cut.png")
    (t / "cut.png").write_bytes((t / "cut.png").read_bytes()[:60])
    Image.fromarray(np.full((28, 28), np.nan, np.float32), "F").save(t / "nan.tiff")  # PIL reads NaN as 0
    for name, config in (("good-config", None), ("damaged-last", None), ("empty-config", ""), ("list-config", "[]"),
                         ("nan-config", None),
                         ("extra-key", None), ("missing-key", None), ("string-epochs", None), ("zero-epochs", None)):
        run = t / name
        run.mkdir()
        good = {"dataset": "mnist", "data_dir": str(a / "data"), "epochs": 2, "batch_size": 16, "lr": 0.01,
                "weight_decay": 0.0001, "label_smoothing": 0.0, "augment": False, "val_fraction": 0.1, "seed": 0}
        if config is None:
            if name == "nan-config":
                good["lr"] = float("nan")
            elif name == "extra-key":
                good["momentum"] = 0.9
            elif name == "missing-key":
                del good["lr"]
            elif name == "string-epochs":
                good["epochs"] = "2"
            elif name == "zero-epochs":
                good["epochs"] = 0
            config = json.dumps(good)
        (run / "config.json").write_text(config)
    (t / "damaged-last" / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    (t / "notarun").mkdir()
    for name, metrics in (("done-run", GOOD_METRICS), ("nan-run", GOOD_METRICS + "nan,nan,nan,nan,nan\n")):
        _finished_run(t / name, a, metrics)
    (t / "u").mkdir()
    (t / "u" / "curves.png").write_bytes(b"a user's own figure")
    (t / "dangling").symlink_to(t / "missing" / "report.html")
    shutil.copytree(a / "noodle", t / "noodle-copy")


OUT_VERBS = {  # verb -> argv writing to the given --out
    "train": lambda t, a, out: _train(t, a, "--epochs", "1")[:-2] + ["--out", out],
    "export": lambda t, a, out: ["export", a / "model.pt", "--format", "noodle", "--out", out],
    "quantize": lambda t, a, out: ["quantize", a / "model.pt", "--calibration-data", "mnist", "--data-dir",
                                   a / "data", "--out", out],
    "import": lambda t, a, out: ["import", a / "noodle", "--out", out],
    "pipeline": lambda t, a, out: ["pipeline", "--data-dir", a / "data", "--epochs", "1", "--quiet", "--out", out],
    "report": lambda t, a, out: ["report", t / "done-run", "--out", out],
}
GOOD_METRICS = "epoch,train_loss,train_accuracy,val_loss,val_accuracy\n1,2.0,0.3,1.9,0.35\n2,1.5,0.5,1.4,0.55\n"


def _finished_run(run: Path, a: Path, metrics: str) -> Path:
    """A run folder as train leaves it (config.json, metrics.csv, best.pt), for report."""
    run.mkdir()
    shutil.copy(a / "model.pt", run / "best.pt")
    (run / "metrics.csv").write_text(metrics)
    (run / "config.json").write_text(json.dumps({"dataset": "mnist", "data_dir": str(a / "data")}))
    return run


def _train(t, a, *flags):
    return ["train", "--data-dir", a / "data", "--quiet", "--out", t / "run", *flags]


FLAG_CASES = {
    "train-lr-nan": (lambda t, a: _train(t, a, "--lr", "nan"), "--lr"),
    "train-lr-inf": (lambda t, a: _train(t, a, "--lr", "inf"), "--lr"),
    "train-lr-negative": (lambda t, a: _train(t, a, "--lr", "-0.1"), "--lr"),
    "train-lr-zero": (lambda t, a: _train(t, a, "--lr", "0"), "--lr"),
    "train-lr-huge": (lambda t, a: _train(t, a, "--lr", "1e6"), "--lr"),
    "train-lr-word": (lambda t, a: _train(t, a, "--lr", "fast"), "--lr"),
    "train-epochs-0": (lambda t, a: _train(t, a, "--epochs", "0"), "--epochs"),
    "train-epochs-negative": (lambda t, a: _train(t, a, "--epochs", "-2"), "--epochs"),
    "train-epochs-huge": (lambda t, a: _train(t, a, "--epochs", "100000000"), "--epochs"),
    "train-epochs-float": (lambda t, a: _train(t, a, "--epochs", "1.5"), "--epochs"),
    "train-batch-0": (lambda t, a: _train(t, a, "--batch-size", "0"), "--batch-size"),
    "train-batch-huge": (lambda t, a: _train(t, a, "--batch-size", "10000000"), "--batch-size"),
    "train-seed-negative": (lambda t, a: _train(t, a, "--seed", "-1"), "--seed"),
    "train-elastic-negative": (lambda t, a: _train(t, a, "--elastic", "-1"), "--elastic"),
    "train-elastic-nan": (lambda t, a: _train(t, a, "--elastic", "nan"), "--elastic"),
    "train-elastic-huge": (lambda t, a: _train(t, a, "--elastic", "1e9"), "--elastic"),
    "train-ema-one": (lambda t, a: _train(t, a, "--ema-decay", "1"), "--ema-decay"),
    "train-ema-negative": (lambda t, a: _train(t, a, "--ema-decay", "-0.5"), "--ema-decay"),
    "train-label-smoothing-one": (lambda t, a: _train(t, a, "--label-smoothing", "1"), "--label-smoothing"),
    "train-distill-negative": (lambda t, a: _train(t, a, "--distill-epochs", "-1"), "--distill-epochs"),
    "train-distill-float": (lambda t, a: _train(t, a, "--distill-epochs", "2.5"), "--distill-epochs"),
    "train-distill-huge": (lambda t, a: _train(t, a, "--distill-epochs", "100000000"), "--distill-epochs"),
    "train-out-is-file": (lambda t, a: ["train", "--data-dir", a / "data", "--out", t / "file"], "file"),
    "train-out-under-file": (lambda t, a: ["train", "--data-dir", a / "data", "--out", t / "file" / "run"], "file"),
    "train-resume-nothing": (lambda t, a: ["train", "--resume", "--out", t / "notarun"], "nothing to resume"),
    "train-resume-empty-config": (lambda t, a: ["train", "--resume", "--out", t / "empty-config"], "config.json"),
    "train-resume-list-config": (lambda t, a: ["train", "--resume", "--out", t / "list-config"], "config.json"),
    "train-resume-nan-lr": (lambda t, a: ["train", "--resume", "--out", t / "nan-config"], "lr"),
    "train-resume-extra-key": (lambda t, a: ["train", "--resume", "--out", t / "extra-key"], "momentum"),
    "train-resume-missing-key": (lambda t, a: ["train", "--resume", "--out", t / "missing-key"], "'lr'"),
    "train-resume-string-epochs": (lambda t, a: ["train", "--resume", "--out", t / "string-epochs"], "epochs"),
    "train-resume-zero-epochs": (lambda t, a: ["train", "--resume", "--out", t / "zero-epochs"], "epochs"),
    "train-resume-other-epochs": (lambda t, a: ["train", "--resume", "--epochs", "5", "--out", t / "extra-key"],
                                  "config.json"),
    "train-existing-run": (lambda t, a: _train(t, a)[:-2] + ["--out", t / "extra-key"], "--resume"),
    # a resumed run keeps its settings: a different one is refused, not ignored; a damaged last.pt is not replaced
    "train-resume-new-lr": (lambda t, a: ["train", "--resume", "--lr", "0.5", "--out", t / "good-config"],
                            "--lr 0.01"),
    "train-resume-new-elastic": (lambda t, a: ["train", "--resume", "--elastic", "2", "--out", t / "good-config"],
                                 "--elastic"),
    "train-resume-new-ema": (lambda t, a: ["train", "--resume", "--ema-decay", "0.9", "--out", t / "good-config"],
                             "--ema-decay"),
    "train-resume-new-augment": (lambda t, a: ["train", "--resume", "--augment", "--out", t / "good-config"],
                                 "--no-augment"),
    "train-resume-new-seed": (lambda t, a: ["train", "--resume", "--seed", "3", "--out", t / "good-config"],
                              "--seed 0"),
    "train-resume-new-data-dir": (lambda t, a: ["train", "--resume", "--data-dir", t, "--out", t / "good-config"],
                                  "--data-dir"),
    "train-resume-damaged-last": (lambda t, a: ["train", "--resume", "--out", t / "damaged-last"],
                                  "not a readable checkpoint"),
    "train-elastic-no-augment": (lambda t, a: _train(t, a, "--elastic", "2", "--no-augment"), "--augment"),
    "summary-int8-without-memory": (lambda t, a: ["summary", "--int8"], "--memory"),
    "train-missing-data-dir": (lambda t, a: ["train", "--data-dir", t / "nope", "--out", t / "run"], "nope"),
    "pipeline-epochs-0": (lambda t, a: ["pipeline", "--data-dir", a / "data", "--epochs", "0", "--out", t / "m"],
                          "--epochs"),
    "pipeline-epochs-negative": (lambda t, a: ["pipeline", "--data-dir", a / "data", "--epochs", "-1", "--out",
                                               t / "m"], "--epochs"),
    "pipeline-seed-negative": (lambda t, a: ["pipeline", "--data-dir", a / "data", "--seed", "-5", "--out", t / "m"],
                               "--seed"),
    "pipeline-out-is-file": (lambda t, a: ["pipeline", "--data-dir", a / "data", "--epochs", "1", "--out",
                                           t / "file"], "file"),
    "pipeline-other-settings": (lambda t, a: ["pipeline", "--data-dir", a / "data", "--epochs", "1", "--out",
                                              t / "extra-key"], "config.json"),
    "device-timeout-nan": (lambda t, a: ["device", "--port", t / "p", "--data-dir", a / "data", "--timeout", "nan"],
                           "--timeout"),
    "device-timeout-inf": (lambda t, a: ["device", "--port", t / "p", "--data-dir", a / "data", "--timeout", "inf"],
                           "--timeout"),
    "device-timeout-zero": (lambda t, a: ["device", "--port", t / "p", "--data-dir", a / "data", "--timeout", "0"],
                            "--timeout"),
    "device-timeout-negative": (lambda t, a: ["device", "--port", t / "p", "--timeout", "-1"], "--timeout"),
    "device-timeout-huge": (lambda t, a: ["device", "--port", t / "p", "--timeout", "1e9"], "--timeout"),
    "device-count-0": (lambda t, a: ["device", "--port", t / "p", "--count", "0"], "--count"),
    "device-rotate-nan": (lambda t, a: ["device", "--port", t / "p", "--rotate", "nan"], "--rotate"),
    "device-no-port": (lambda t, a: ["device", "--port", t / "p", "--data-dir", a / "data"], "p"),
    "evaluate-limit-0": (lambda t, a: ["evaluate", a / "model.pt", "--data-dir", a / "data", "--limit", "0"],
                         "--limit"),
    "evaluate-missing-model": (lambda t, a: ["evaluate", t / "nope.pt", "--data-dir", a / "data"], "nope.pt"),
    "evaluate-not-a-run": (lambda t, a: ["evaluate", t / "notarun", "--data-dir", a / "data"], "notarun"),
    "evaluate-int8-torch": (lambda t, a: ["evaluate", a / "q", "--data-dir", a / "data", "--engine", "torch"],
                            "engine reference or c"),
    "predict-bomb-png": (lambda t, a: ["predict", a / "model.pt", t / "big.png"], "big.png"),
    "predict-wide-png": (lambda t, a: ["predict", a / "model.pt", t / "wide.png"], "wide.png"),
    "predict-not-image": (lambda t, a: ["predict", a / "model.pt", t / "notimage.png"], "notimage.png"),
    "predict-empty-image": (lambda t, a: ["predict", a / "model.pt", t / "empty.png"], "empty.png"),
    "predict-truncated-png": (lambda t, a: ["predict", a / "model.pt", t / "cut.png"], "cut.png"),
    "predict-nan-tiff": (lambda t, a: ["predict", a / "model.pt", t / "nan.tiff"], "NaN or infinite"),
    "predict-missing-image": (lambda t, a: ["predict", a / "model.pt", t / "nope.png"], "nope.png"),
    "predict-folder-image": (lambda t, a: ["predict", a / "model.pt", t / "notarun"], "notarun"),
    "predict-int8-torch": (lambda t, a: ["predict", a / "q", a / "digit.png", "--engine", "torch"],
                           "engine reference or c"),
    "export-out-is-file": (lambda t, a: ["export", a / "model.pt", "--format", "c", "--out", t / "file"], "file"),
    "export-out-under-file": (lambda t, a: ["export", a / "model.pt", "--format", "noodle", "--out",
                                            t / "file" / "x"], "file"),
    "export-c-nonempty": (lambda t, a: ["export", a / "model.pt", "--format", "c", "--out", t / "nonempty"],
                          "nonempty"),
    "export-noodle-nonempty": (lambda t, a: ["export", a / "model.pt", "--format", "noodle", "--out",
                                             t / "nonempty"], "nonempty"),
    "export-noodle-stale-w15": (lambda t, a: ["export", a / "model.pt", "--format", "noodle", "--out", t / "stale"],
                                "w15.txt"),
    "export-onnx-nonempty": (lambda t, a: ["export", a / "model.pt", "--format", "onnx", "--out", t / "nonempty"],
                             "nonempty"),
    "export-pio-nonempty": (lambda t, a: ["export", a / "model.pt", "--format", "platformio", "--out",
                                          t / "nonempty"], "nonempty"),
    "export-int8-noodle": (lambda t, a: ["export", a / "q", "--format", "noodle", "--int8", "--out", t / "o"],
                           "noodle"),
    "export-int8-float-model": (lambda t, a: ["export", a / "model.pt", "--format", "c", "--int8", "--out", t / "o"],
                                "model.pt"),
    "import-out-is-folder": (lambda t, a: ["import", a / "noodle", "--out", t / "notarun"], "notarun"),
    "import-out-under-file": (lambda t, a: ["import", a / "noodle", "--out", t / "file" / "x.pt"], "file"),
    "import-missing-source": (lambda t, a: ["import", t / "nope", "--out", t / "x.pt"], "nope"),
    "quantize-out-is-file": (lambda t, a: ["quantize", a / "model.pt", "--calibration-data", "mnist", "--data-dir",
                                           a / "data", "--out", t / "file"], "file"),
    "quantize-out-under-file": (lambda t, a: ["quantize", a / "model.pt", "--calibration-data", "mnist",
                                              "--data-dir", a / "data", "--out", t / "file" / "q"], "file"),
    "quantize-out-nonempty": (lambda t, a: ["quantize", a / "model.pt", "--calibration-data", "mnist", "--data-dir",
                                            a / "data", "--out", t / "nonempty"], "nonempty"),
    "quantize-count-0": (lambda t, a: ["quantize", a / "model.pt", "--calibration-data", "mnist", "--data-dir",
                                       a / "data", "--calibration-count", "0", "--out", t / "q"],
                         "--calibration-count"),
    "report-not-a-run": (lambda t, a: ["report", t / "notarun"], "notarun"),
    "report-missing": (lambda t, a: ["report", t / "nope"], "nope"),
    "report-bad-config": (lambda t, a: ["report", t / "empty-config"], "empty-config"),
    # the report's page and figures never replace a run's own files, a user's page or an unrelated PNG
    "report-out-best-pt": (lambda t, a: ["report", t / "done-run", "--out", t / "done-run" / "best.pt"],
                           "not a mobile-lenet report"),
    "report-out-metrics-csv": (lambda t, a: ["report", t / "done-run", "--out", t / "done-run" / "metrics.csv"],
                               "not a mobile-lenet report"),
    "report-out-beside-user-png": (lambda t, a: ["report", t / "done-run", "--out", t / "u" / "report.html"],
                                   "curves.png: exists and is not a figure"),
    "report-out-named-as-figure": (lambda t, a: ["report", t / "done-run", "--out", t / "v" / "curves.png"],
                                   "one of the report's figures"),
    "report-out-dangling-symlink": (lambda t, a: ["report", t / "done-run", "--out", t / "dangling"],
                                    "symbolic link to a missing"),
    "report-nan-metrics-row": (lambda t, a: ["report", t / "nan-run", "--out", t / "r" / "index.html"],
                               "epoch of row 3 is nan"),
    # the edges of the file system: a symbolic link to nothing, a 300-character name, a folder that cannot be made
    **{f"{verb}-out-dangling-symlink": (lambda t, a, verb=verb: OUT_VERBS[verb](t, a, t / "dangling"),
                                        "symbolic link to a missing") for verb in ("train", "export", "quantize",
                                                                                   "import", "pipeline")},
    **{f"{verb}-out-300-characters": (lambda t, a, verb=verb: OUT_VERBS[verb](t, a, t / ("o" * 300)), "long")
       for verb in ("train", "export", "quantize", "import", "pipeline", "report")},
    "predict-image-300-characters": (lambda t, a: ["predict", a / "model.pt", t / ("i" * 300 + ".png")], "long"),
    "evaluate-model-300-characters": (lambda t, a: ["evaluate", t / ("m" * 300), "--data-dir", a / "data"], "long"),
    "evaluate-data-300-characters": (lambda t, a: ["evaluate", a / "model.pt", "--data-dir", t / ("d" * 300)],
                                     "long"),
    "train-out-in-proc": (lambda t, a: _train(t, a, "--epochs", "1")[:-2] + ["--out", "/proc/mobile-lenet-x"],
                          "/proc/mobile-lenet-x"),
    "import-out-weight-file": (lambda t, a: ["import", t / "noodle-copy", "--out", t / "noodle-copy" / "w01.txt"],
                               "not a mobile-lenet checkpoint"),
    "demo-port-0": (lambda t, a: ["demo", "--model", a / "model.pt", "--port", "0"], "--port"),
    "demo-port-huge": (lambda t, a: ["demo", "--model", a / "model.pt", "--port", "70000"], "--port"),
    "demo-missing-model": (lambda t, a: ["demo", "--model", t / "nope.pt", "--port", "8123"], "nope.pt"),
    "unknown-verb": (lambda t, a: ["frobnicate"], "frobnicate"),
    "unknown-flag": (lambda t, a: ["summary", "--colour"], "--colour"),
    "bad-engine": (lambda t, a: ["predict", a / "model.pt", a / "digit.png", "--engine", "gpu"], "gpu"),
}


@pytest.mark.parametrize("case", FLAG_CASES)
def test_bad_flag_or_output(capsys, tmp_path, assets, case):
    _setup(tmp_path, assets)
    build, fragment = FLAG_CASES[case]
    run_refused(capsys, tmp_path, build(tmp_path, assets), fragment)


def test_report_replaces_only_a_previous_report(capsys, tmp_path, assets):
    """Control of the report cases: a report is written, written again over itself, and keeps a user's other
    files in its folder; a run without a validation split (NaN validation columns) has a report too."""
    no_validation = GOOD_METRICS.replace("1.9,0.35", "nan,nan").replace("1.4,0.55", "nan,nan")
    run = _finished_run(tmp_path / "run", assets, no_validation)
    out = tmp_path / "u" / "report.html"
    out.parent.mkdir()
    (out.parent / "notes.txt").write_text("keep")
    for _ in range(2):
        assert main(["report", str(run), "--out", str(out)]) == 0
    assert "no validation split" in out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["notes.txt", "report.html", "curves.png",
                                                                  "confusion.png", "misclassified.png",
                                                                  "architecture.png", "block_costs.png",
                                                                  "feature_maps.png"])
    assert (out.parent / "notes.txt").read_text() == "keep"


# ------------------------------------------------------------------------------------------------ full disks
def _disk_full_for(fragment: str):
    """Path.write_bytes failing with ENOSPC for the files whose name holds ``fragment`` (what a full disk does)."""
    import errno
    real = Path.write_bytes

    def write_bytes(self, data):
        if fragment in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    return write_bytes


@pytest.mark.parametrize("verb", ["train", "import", "export", "quantize"])
def test_a_full_disk_is_one_line_and_leaves_nothing(capsys, tmp_path, assets, monkeypatch, verb):
    """The disk fills while the checkpoint (train, import) or the folder (export, quantize) is written: one line,
    and no half-written output, temporary or run folder claiming a run (train's config.json) is left."""
    _setup(tmp_path, assets)
    monkeypatch.setattr(Path, "write_bytes", _disk_full_for(".pt." if verb in ("train", "import") else ""))
    out = tmp_path / ("x.pt" if verb == "import" else "out")
    run_refused(capsys, tmp_path, OUT_VERBS[verb](tmp_path, assets, out), "No space left on device")


def test_a_full_stdout_is_one_line():
    """``summary --json >/dev/full``: one line on stderr, exit 2, and no second complaint at exit."""
    import os
    import subprocess
    import sys

    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-c", "import sys; from mobile_lenet.apps.cli import main; "
                                 "sys.exit(main(sys.argv[1:]))", "summary", "--json"], stdout=full,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                                timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["mobile-lenet: error: cannot write the output (No space left on device)"]


# ------------------------------------------------------------------------------------------------ FIFOs
FIFO_CASES = {  # a named pipe where a file is read: refused before it is opened (opening it would block)
    "predict-image": lambda a, f, t: ["predict", a / "model.pt", f],
    "predict-model": lambda a, f, t: ["predict", f, a / "digit.png"],
    "export": lambda a, f, t: ["export", f, "--format", "c", "--out", t / "out"],
    "quantize": lambda a, f, t: ["quantize", f, "--calibration-data", "mnist", "--data-dir", a / "data",
                                 "--out", t / "q"],
    "import": lambda a, f, t: ["import", f, "--out", t / "x.pt"],
    "import-keras": lambda a, f, t: ["import", f.rename(f.with_suffix(".keras")), "--out", t / "x.pt"],
    "simulate": lambda a, f, t: ["simulate", f, "--target", "cortex-m4f", "--data-dir", a / "data"],
    "evaluate-data": lambda a, f, t: ["evaluate", a / "model.pt", "--data-dir",
                                      _data_with_fifo(a, f, "t10k-images-idx3-ubyte")],
    "quantize-data-npz": lambda a, f, t: ["quantize", a / "model.pt", "--calibration-data", "mnist", "--data-dir",
                                          _data_with_fifo(a, f, "mnist.npz", idx=False), "--out", t / "q"],
}


def _data_with_fifo(a: Path, fifo: Path, name: str, idx: bool = True) -> Path:
    folder = fifo.parent / "data"
    folder.mkdir()
    if idx:
        for prefix in ("train", "t10k"):
            shutil.copy(a / "data" / f"{prefix}-labels-idx1-ubyte", folder)
            shutil.copy(a / "data" / f"{prefix}-images-idx3-ubyte", folder)
    fifo.rename(folder / name)
    return folder


@pytest.mark.parametrize("case", FIFO_CASES)
def test_a_fifo_given_as_input_is_refused_without_blocking(capsys, tmp_path, assets, case):
    import os
    import threading
    import time

    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    argv = FIFO_CASES[case](assets, fifo, tmp_path)
    fifos = [p for p in tmp_path.rglob("*") if p.is_fifo()]
    done, unblocked = threading.Event(), []

    def watchdog():  # a reader blocked on the FIFO after 20 s gets end-of-file, so the test fails, not hangs
        deadline = time.monotonic() + 20
        while not done.wait(0.1):
            if time.monotonic() > deadline:
                for path in fifos:
                    try:
                        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                        unblocked.append(path)
                    except OSError:
                        pass

    thread = threading.Thread(target=watchdog, daemon=True)
    thread.start()
    try:
        run_refused(capsys, tmp_path, argv, "not a regular file")
    finally:
        done.set()
        thread.join()
    assert not unblocked, "the command blocked on the FIFO"


def test_export_keeps_a_users_file_that_looks_like_a_temporary(capsys, tmp_path, assets):
    """A user's ``.notes.40000.keep.tmp`` beside the export is not taken for a killed writer's temporary."""
    (tmp_path / ".notes.40000.keep.tmp").write_text("mine")
    assert main(["export", str(assets / "model.pt"), "--format", "noodle", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / ".notes.40000.keep.tmp").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ demo API
def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    import base64
    return "data:image/png;base64," + base64.b64encode(data).decode()


DEMO_CASES = {
    "pixels-3d": ({"json": {"pixels": [[[1, 2]]]}}, 400),
    "pixels-deep-nesting": ({"content": b"[" * 100_000, "headers": {"content-type": "application/json"}}, 400),
    "pixels-deep-object": ({"content": b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                            "headers": {"content-type": "application/json"}}, 400),
    "pixels-numeric-strings": ({"json": {"pixels": [["1", "2"], ["3", "4"]]}}, 400),
    "pixels-booleans": ({"json": {"pixels": [[True, False], [False, True]]}}, 400),
    "pixels-null": ({"json": {"pixels": [[None, 1], [1, 1]]}}, 400),
    "pixels-nan": ({"content": b'{"pixels": [[NaN, 1], [1, 1]]}', "headers": {"content-type": "application/json"}},
                   400),
    "pixels-infinity": ({"content": b'{"pixels": [[Infinity, 1], [1, 1]]}',
                         "headers": {"content-type": "application/json"}}, 400),
    "pixels-negative": ({"json": {"pixels": [[-1, 0], [0, 0]]}}, 400),
    "pixels-256": ({"json": {"pixels": [[256, 0], [0, 0]]}}, 400),
    "pixels-huge-number": ({"content": b'{"pixels": [[1e999, 1], [1, 1]]}',
                            "headers": {"content-type": "application/json"}}, 400),
    "pixels-bigint": ({"content": b'{"pixels": [[' + b"9" * 400 + b', 1], [1, 1]]}',
                       "headers": {"content-type": "application/json"}}, 400),
    "pixels-empty": ({"json": {"pixels": []}}, 400),
    "pixels-empty-rows": ({"json": {"pixels": [[], []]}}, 400),
    "pixels-ragged": ({"json": {"pixels": [[1, 2], [3]]}}, 400),
    "pixels-not-list": ({"json": {"pixels": "0,0,0"}}, 400),
    "pixels-dict-rows": ({"json": {"pixels": [{"a": 1}]}}, 400),
    "pixels-too-many-rows": ({"json": {"pixels": [[0]] * 1025}}, 413),
    "image-not-base64": ({"json": {"image": "data:image/png;base64,!!!!"}}, 400),
    "image-not-data-url-base64": ({"json": {"image": "data:image/png,abc"}}, 400),
    "image-not-string": ({"json": {"image": 12}}, 400),
    "image-empty-string": ({"json": {"image": ""}}, 400),
    "image-not-an-image": ({"json": {"image": _data_url(b"hello")}}, 400),
    "image-bomb-header": ({"json": {"image": _data_url(_png_header_only(30000, 30000))}}, 400),
    "image-too-wide": ({"json": {"image": _data_url(_png_header_only(5000, 10))}}, 413),
    "image-truncated": ({"json": {"image": _data_url(_png_bytes(IMAGES[0])[:60])}}, 400),
    "both-image-and-pixels": ({"json": {"image": "x", "pixels": [[0]]}}, 400),
    "neither": ({"json": {"engine": "torch"}}, 400),
    "json-array": ({"json": [1, 2, 3]}, 400),
    "json-invalid": ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400),
    "json-not-utf8": ({"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 400),
    "empty-body": ({"content": b"", "headers": {"content-type": "application/json"}}, 400),
    "text-plain": ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
    "no-content-type": ({"content": b"hello", "headers": {"content-type": ""}}, 415),
    "engine-unknown": ({"json": {"pixels": [[0, 255], [255, 0]], "engine": "gpu"}}, 400),
    "engine-list": ({"json": {"pixels": [[0, 255], [255, 0]], "engine": ["torch"]}}, 400),
    "engine-dict": ({"json": {"pixels": [[0, 255], [255, 0]], "engine": {"a": 1}}}, 400),
    "invert-bad": ({"json": {"pixels": [[0, 255], [255, 0]], "invert": "maybe"}}, 400),
    "invert-list": ({"json": {"pixels": [[0, 255], [255, 0]], "invert": []}}, 400),
    "body-image-garbage": ({"content": b"\x89PNG garbage", "headers": {"content-type": "image/png"}}, 400),
    "body-octet-garbage": ({"content": b"\x00" * 100, "headers": {"content-type": "application/octet-stream"}}, 400),
    "body-image-bad-engine": ({"content": _png_bytes(IMAGES[0]), "headers": {"content-type": "image/png"},
                               "params": {"engine": "gpu"}}, 400),
    "body-too-large": ({"content": b"\x00" * (2 * 1024 * 1024 + 1), "headers": {"content-type": "image/png"}}, 413),
}


@pytest.fixture(scope="module")
def demo_client(assets):
    from fastapi.testclient import TestClient

    from mobile_lenet.apps.demo import create_app
    from mobile_lenet.formats.model_files import load_tensors

    with TestClient(create_app(load_tensors(assets / "model.pt")), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("case", DEMO_CASES)
def test_demo_bad_request(demo_client, case):
    request, status = DEMO_CASES[case]
    response = demo_client.post("/api/predict", **request)
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and "internal error" not in error


def test_demo_control_and_rgba_alpha_ink(demo_client, capsys, tmp_path, assets):
    """A good request succeeds; a white digit on a transparent background reads the same in predict and demo."""
    response = demo_client.post("/api/predict", json={"pixels": IMAGES[0].tolist()})
    assert response.status_code == 200 and len(response.json()["probabilities"]) == 10
    digit = np.zeros((140, 140), np.uint8)
    digit[20:120, 60:80] = 255  # a white "1", drawn as ink in the alpha channel only
    rgba = np.zeros((140, 140, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = digit
    (tmp_path / "alpha.png").write_bytes(_png_bytes(rgba, "RGBA"))
    (tmp_path / "opaque.png").write_bytes(_png_bytes(digit))
    assert main(["predict", str(assets / "model.pt"), str(tmp_path / "alpha.png"), str(tmp_path / "opaque.png"),
                 "--json"]) == 0
    alpha, opaque = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    demo = demo_client.post("/api/predict", content=(tmp_path / "alpha.png").read_bytes(),
                            headers={"content-type": "image/png"}).json()
    np.testing.assert_allclose(alpha["probabilities"], opaque["probabilities"], rtol=0, atol=1e-6)
    assert alpha["digit"] == demo["prediction"]
    np.testing.assert_allclose(alpha["probabilities"], demo["probabilities"], rtol=0, atol=1e-5)


def test_demo_answers_only_at_its_own_address_and_hides_the_model_path(assets, monkeypatch):
    """A page elsewhere reaching the demo by DNS rebinding sends its own Host header: 400, nothing served;
    /api/info names the model's file, not where it sits on the machine."""
    from fastapi.testclient import TestClient

    from mobile_lenet.apps import demo

    apps = []

    class NoServer:  # what serve hands to uvicorn, kept instead of served (and no port of the machine taken)
        def __init__(self, config):
            apps.append(config.app)

        def run(self):
            pass

    monkeypatch.setattr(demo.uvicorn, "Server", NoServer)
    monkeypatch.setattr(demo, "port_is_free", lambda host, port: True)  # 8123 may be in use on this machine
    demo.serve(model=str(assets / "model.pt"), host="127.0.0.1", port=8123)
    with TestClient(apps[0], base_url="http://127.0.0.1:8123") as client:
        info = client.get("/api/info")
        assert info.status_code == 200 and info.json()["model"] == "model.pt"
        assert client.get("/api/info", headers={"host": "localhost:8123"}).status_code == 200
        for host in ("evil.example:8123", "127.0.0.1:9999", "evil.example", ""):
            response = client.get("/api/info", headers={"host": host})
            assert response.status_code == 400 and "Host" in response.json()["error"], host
            assert client.post("/api/predict", json={"pixels": IMAGES[0].tolist()},
                               headers={"host": host}).status_code == 400
    assert demo.allowed_hosts("0.0.0.0", 8000) is None
    assert demo.allowed_hosts("192.168.1.5", 8000) == {"192.168.1.5:8000"}


# ------------------------------------------------------------------------------------------------ device replies
@pytest.mark.parametrize("greeting, replies, fragment", [
    (b"READY\n", b"PRED 7 0.0100 0.9000\nPRED 7 0.0100 0.9000\n", "more than one reply to image 0"),
    (b"READY\n", b"PRED 7 0.0100 0.9000\nhello\n", "more than one reply to image 0"),
    (b"READY\n", b"PRED 12 0.0100 0.9000\n", "malformed reply"),
    (b"READY\n", b"PRED 7 0.0100 9.9999\n", "confidence of 9.9999"),
    (b"READY\n", b"PRED 7 100000000000000000000.0000 0.9000\n", "inference time of 1e+20 s"),
    (b"READY\nPRED 3 0.0100 0.9000\n", b"PRED 7 0.0100 0.9000\n", "a reply before any image was sent"),
])
def test_device_out_of_step_replies_refused(capsys, tmp_path, assets, greeting, replies, fragment):
    """A device answering twice per image, before any image, or with garbage after its answer, a probability
    above 1 or an absurd time is refused, not tallied (out of step)."""
    import os
    import threading
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)

    done = threading.Event()  # the client has finished: the device stops

    def fake_device():
        import select
        while not select.select([master], [], [], 0.2)[0]:  # READY until the client (which opens late) sends
            if done.is_set():
                return
            os.write(master, greeting)
        received = 0
        while received < 784:
            if select.select([master], [], [], 0.1)[0]:
                received += len(os.read(master, 784 - received))
            elif done.is_set():
                return
        os.write(master, replies)

    thread = threading.Thread(target=fake_device, daemon=True)
    thread.start()
    try:
        run_refused(capsys, tmp_path, ["device", "--port", os.ttyname(slave), "--data-dir", assets / "data",
                                       "--count", 1, "--timeout", 2, "--quiet"], fragment)
    finally:
        done.set()
        thread.join(timeout=5)
        os.close(master)
        os.close(slave)
