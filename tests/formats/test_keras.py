"""Importing the seed's Keras 3 .keras file with h5py alone, and rejecting anything that is not Mobile-LeNet."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import UPSTREAM
from mobile_lenet.formats import keras
from mobile_lenet.formats import noodle
from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.errors import UserError
from mobile_lenet.formats.model_files import load_tensors

KERAS_FILE = UPSTREAM / "mobile-lenet-5.keras"


@pytest.fixture(scope="module")
def keras_tensors():
    return keras.read_keras(KERAS_FILE)


def read_parts(path: Path = KERAS_FILE) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_keras(path: Path, parts: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return path


def with_config(tmp_path: Path, edit) -> Path:
    """A copy of the upstream .keras file whose config.json went through ``edit(config)``."""
    parts = read_parts()
    config = json.loads(parts["config.json"])
    edit(config)
    parts["config.json"] = json.dumps(config).encode()
    return write_keras(tmp_path / "edited.keras", parts)


def with_weights(tmp_path: Path, edit) -> Path:
    """A copy of the upstream .keras file whose model.weights.h5 went through ``edit(h5_file)``."""
    parts = read_parts()
    buffer = io.BytesIO(parts["model.weights.h5"])
    with h5py.File(buffer, "r+") as h5:
        edit(h5)
    parts["model.weights.h5"] = buffer.getvalue()
    return write_keras(tmp_path / "edited.keras", parts)


def layer_config(config: dict, name: str) -> dict:
    return next(entry["config"] for entry in config["config"]["layers"] if entry["config"]["name"] == name)


# ------------------------------------------------------------------------------------------------ the upstream file
def test_keras_export_reproduces_upstream_noodle_txt_byte_for_byte(tmp_path, keras_tensors):
    noodle.write_noodle_folder(keras_tensors, tmp_path / "out")
    upstream_txt = sorted((UPSTREAM / "noodle").glob("*.txt"))
    assert len(upstream_txt) == 29
    for path in upstream_txt:
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes(), path.name


def test_keras_tensors_have_table_shapes_and_match_the_noodle_files(keras_tensors):
    upstream = noodle.read_noodle_folder(UPSTREAM / "noodle")
    assert set(keras_tensors) == set(upstream) == set(noodle.tensor_table())
    for name, _, shape in spec.noodle_tensors():
        assert keras_tensors[name].shape == shape and keras_tensors[name].dtype == np.float32
        # the .txt files keep 7 significant digits of these float32 values
        np.testing.assert_allclose(upstream[name], keras_tensors[name], rtol=6e-7, atol=1e-30)


def test_keras_layers_map_by_name_and_by_keras_numbering():
    """Both ways of finding a layer's weights in model.weights.h5 agree on the seed's file."""
    paths = keras._h5_paths()
    assert paths["stem_conv3x3"] == "layers/conv2d" and paths["B2_dw_bn"] == "layers/batch_normalization_3"
    assert paths["B6_pw1x1"] == "layers/conv2d_6" and paths["OUT"] == "layers/dense"
    with h5py.File(io.BytesIO(read_parts()["model.weights.h5"])) as h5:
        for layer in spec.LAYERS:
            if layer.weight_file:
                stored = h5[paths[layer.name] + "/vars"].attrs["name"]
                assert keras.KERAS_NAME_ALIASES.get(stored, stored) == layer.name


def test_sources_resolve_a_keras_file(keras_tensors):
    tensors = load_tensors(KERAS_FILE)
    assert all(np.array_equal(tensors[k], keras_tensors[k]) for k in keras_tensors)


def test_files_without_the_h5_name_attribute_still_import(tmp_path, keras_tensors):
    def drop_names(h5):
        for group in h5["layers"].values():
            del group["vars"].attrs["name"]

    tensors = keras.read_keras(with_weights(tmp_path, drop_names))
    assert all(np.array_equal(tensors[k], keras_tensors[k]) for k in keras_tensors)


# ------------------------------------------------------------------------------------------------ errors
def expect_error(path: Path, *fragments: str) -> None:
    with pytest.raises(UserError) as info:
        keras.read_keras(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"\x89HDF\r\n\x1a\n not really")
    expect_error(path, "not a zip")


def test_zip_without_weights(tmp_path):
    parts = read_parts()
    del parts["model.weights.h5"]
    expect_error(write_keras(tmp_path / "m.keras", parts), "model.weights.h5")


def test_weights_not_hdf5(tmp_path):
    parts = read_parts()
    parts["model.weights.h5"] = b"garbage" * 100
    expect_error(write_keras(tmp_path / "m.keras", parts), "HDF5")


def test_a_member_declaring_an_absurd_size_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """A 1.5 MB .keras file may hold a 1.5 GB member: refused by its declared size, without inflating it."""
    import zipfile

    from mobile_lenet.formats import keras

    parts = read_parts()
    parts["model.weights.h5"] = bytes(keras.MAX_MEMBER_BYTES + 1)  # zeros: a few KB deflated
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    assert path.stat().st_size < 100_000

    def no_read(self, name, pwd=None):
        raise AssertionError(f"{name} was read")

    monkeypatch.setattr(zipfile.ZipFile, "read", no_read)
    expect_error(path, "declares 16,777,217 bytes")


def test_config_not_json(tmp_path):
    parts = read_parts()
    parts["config.json"] = b"{ not json"
    expect_error(write_keras(tmp_path / "m.keras", parts), "config.json")


def test_missing_layer(tmp_path):
    path = with_config(tmp_path, lambda c: c["config"]["layers"].pop(5))
    expect_error(path, "has 42 layers", "not Mobile-LeNet")


def test_renamed_layer(tmp_path):
    path = with_config(tmp_path, lambda c: layer_config(c, "B4_pw1x1").update(name="B4_mix"))
    expect_error(path, "'B4_mix'", "'B4_pw1x1'")


@pytest.mark.parametrize("layer, change, fragment", [
    ("B3_pw1x1", {"filters": 12}, "filters 12"),
    ("B3_dw3x3_s2", {"strides": [1, 1]}, "strides"),
    ("B3_dw3x3_s2", {"padding": "same"}, "padding"),  # Keras' asymmetric 'same' is not the table's P=1
    ("B1_dw3x3_s1", {"kernel_size": [5, 5]}, "kernel_size"),
    ("B1_dw_bn", {"epsilon": 1e-5}, "epsilon"),
    ("B2_pw1x1", {"use_bias": True}, "use_bias"),
    ("B5_pad1", {"padding": [[0, 1], [0, 1]]}, "padding"),
    ("OUT", {"units": 12}, "units"),
    ("B6_dw_relu", {"max_value": 6.0}, "plain ReLU"),
])
def test_architecture_differences_are_rejected(tmp_path, layer, change, fragment):
    path = with_config(tmp_path, lambda c: layer_config(c, layer).update(change))
    expect_error(path, layer, fragment)


def test_wrong_layer_class(tmp_path):
    def swap(config):
        entry = next(e for e in config["config"]["layers"] if e["config"]["name"] == "B2_dw_relu")
        entry["class_name"] = "LeakyReLU"

    expect_error(with_config(tmp_path, swap), "B2_dw_relu", "LeakyReLU")


def test_wrong_weight_shape(tmp_path):
    def shrink(h5):
        del h5["layers/dense/vars/1"]
        h5["layers/dense/vars"].create_dataset("1", data=np.zeros(9, np.float32))

    expect_error(with_weights(tmp_path, shrink), "OUT", "shapes")


def test_missing_weights(tmp_path):
    expect_error(with_weights(tmp_path, lambda h5: h5.__delitem__("layers/conv2d_3")), "B3_pw1x1")


def test_non_finite_weights(tmp_path):
    def poison(h5):
        h5["layers/batch_normalization_4/vars/3"][2] = np.nan

    expect_error(with_weights(tmp_path, poison), "B2_pw_bn", "non-finite")


def test_swapped_weight_groups(tmp_path):
    """Weights stored under another layer's Keras name are caught by the stored layer name."""
    def swap(h5):
        h5.move("layers/conv2d_1", "layers/tmp")
        h5.move("layers/conv2d_2", "layers/conv2d_1")
        h5.move("layers/tmp", "layers/conv2d_2")

    expect_error(with_weights(tmp_path, swap), "stored under")


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_import_keras_then_export_noodle(tmp_path, capsys):
    checkpoint = tmp_path / "upstream.pt"
    assert main(["import", str(KERAS_FILE), "--out", str(checkpoint)]) == 0
    assert str(checkpoint) in capsys.readouterr().out
    assert main(["export", str(checkpoint), "--format", "noodle", "--out", str(tmp_path / "noodle")]) == 0
    for path in (UPSTREAM / "noodle").glob("*.txt"):
        assert (tmp_path / "noodle" / path.name).read_bytes() == path.read_bytes()


def test_cli_import_of_a_foreign_keras_file(tmp_path, capsys):
    path = with_config(tmp_path, lambda c: layer_config(c, "B3_pw1x1").update(filters=12))
    assert main(["import", str(path), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "edited.keras" in err and "B3_pw1x1" in err
    assert not (tmp_path / "x.pt").exists()
