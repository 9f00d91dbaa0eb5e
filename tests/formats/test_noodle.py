"""Noodle weight folders: the three encodings, byte-exact round trips, clear errors, atomic export, CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import UPSTREAM
from mobile_lenet.formats import noodle
from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.errors import UserError

UPSTREAM_NOODLE = UPSTREAM / "noodle"
TENSOR_NAMES = [name for name, _, _ in spec.noodle_tensors()]
finite_float32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def keep_only(folder: Path, ext: str) -> Path:
    """Reduce an export folder to one encoding (and drop the manifest, so files may be edited)."""
    for p in folder.iterdir():
        if p.suffix != ext:
            p.unlink()
    return folder


@pytest.fixture(scope="module")
def upstream_tensors():
    return noodle.read_noodle_folder(UPSTREAM_NOODLE)


@pytest.fixture()
def txt_folder(tmp_path, upstream_tensors):
    """An export of the upstream weights reduced to its .txt files (no manifest)."""
    noodle.write_noodle_folder(upstream_tensors, tmp_path / "export")
    return keep_only(tmp_path / "export", ".txt")


# ------------------------------------------------------------------------------------------------ contents
def test_upstream_folder_reads_with_table_shapes(upstream_tensors):
    assert list(upstream_tensors) == TENSOR_NAMES
    for name, _, shape in spec.noodle_tensors():
        assert upstream_tensors[name].shape == shape and upstream_tensors[name].dtype == np.float32
    assert sum(v.size for v in upstream_tensors.values()) == spec.totals()["total_params"] == 3258


def test_upstream_folder_export_is_byte_identical(tmp_path, upstream_tensors):
    written = noodle.write_noodle_folder(upstream_tensors, tmp_path / "out")
    assert len(written) == 3 * 29 + 2 and all(p.is_file() for p in written)
    for name in TENSOR_NAMES:
        assert (tmp_path / "out" / f"{name}.txt").read_bytes() == (UPSTREAM_NOODLE / f"{name}.txt").read_bytes()


def test_export_files_manifest_and_readme(tmp_path, upstream_tensors):
    out = tmp_path / "out"
    noodle.write_noodle_folder(upstream_tensors, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["file"] for e in manifest["files"]] == [n + ext for n in TENSOR_NAMES for ext in (".txt", ".h", ".bin")]
    table = noodle.tensor_table()
    for entry in manifest["files"]:
        layer, shape = table[entry["tensor"]]
        assert entry["layer"] == layer.name and tuple(entry["shape"]) == shape
        assert entry["length"] == math.prod(shape)
        assert entry["sha256"] == hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
    header = (out / "w14.h").read_text()
    assert header.startswith("#pragma once\n//") and "static const float w14[] = {" in header
    assert "[Dout][Din]" in header and "10 x 24" in header
    assert (out / "w14.bin").stat().st_size == 4 * 240
    readme = (out / "README.md").read_text()
    assert "predict()" in readme and "noodle_dw_pw_block" in readme
    assert "GAP" in readme and "other ping-pong buffer" in readme


def test_header_lines_hold_eight_values(tmp_path, upstream_tensors):
    noodle.write_noodle_folder(upstream_tensors, tmp_path / "out")
    lines = (tmp_path / "out" / "w01.h").read_text().splitlines()
    value_lines = [line for line in lines if line.startswith("  ")]
    assert [line.count("f,") for line in value_lines] == [8] * 9  # 72 values
    assert value_lines[0].split(",")[0].strip() == (UPSTREAM_NOODLE / "w01.txt").read_text().split()[0] + "f"


# ------------------------------------------------------------------------------------------------ round trips
def test_trained_model_export_import_export_is_byte_identical(tmp_path, trained_tensors):
    first, second = tmp_path / "first", tmp_path / "second"
    noodle.write_noodle_folder(trained_tensors, first)
    noodle.write_noodle_folder(noodle.read_noodle_folder(first), second)
    assert folder_bytes(first) == folder_bytes(second)
    # the encodings hold the same numbers: each one alone reads back to the same tensors
    for ext in noodle.ENCODINGS:
        single = tmp_path / ext.lstrip(".")
        noodle.write_noodle_folder(trained_tensors, single)
        tensors = noodle.read_noodle_folder(keep_only(single, ext))
        noodle.write_noodle_folder(tensors, tmp_path / f"again{ext}")
        assert folder_bytes(tmp_path / f"again{ext}") == folder_bytes(first)
    # the export differs from the float32 weights by the 7 significant digits of the text formats only
    for name, value in noodle.read_noodle_folder(first).items():
        np.testing.assert_allclose(value, trained_tensors[name], rtol=6e-7, atol=1e-30)


def test_reader_prefers_txt_then_bin_then_h(tmp_path, upstream_tensors):
    folder = tmp_path / "mixed"
    noodle.write_noodle_folder(upstream_tensors, folder)
    (folder / "manifest.json").unlink()
    # make the encodings of b02 disagree, then remove them one by one
    (folder / "b02.txt").write_text("".join(f"{i}\n" for i in range(10)))
    (folder / "b02.bin").write_bytes(np.full(10, 20, "<f4").tobytes())
    (folder / "b02.h").write_text("static const float b02[] = {" + ",".join(["3.0f"] * 10) + "};\n")
    assert noodle.read_noodle_folder(folder)["b02"].tolist() == list(range(10))
    (folder / "b02.txt").unlink()
    assert noodle.read_noodle_folder(folder)["b02"].tolist() == [20] * 10
    (folder / "b02.bin").unlink()
    assert noodle.read_noodle_folder(folder)["b02"].tolist() == [3] * 10


@given(arrays(np.float32, st.integers(0, 50), elements=finite_float32))
def test_txt_and_h_round_trip_exactly_after_rounding_to_text(values):
    rounded = noodle.round_to_text(values)
    assert np.array_equal(noodle.parse_txt(Path("w.txt"), noodle.encode_txt(rounded)), rounded)
    assert noodle.encode_txt(rounded) == noodle.encode_txt(values)  # rounding never changes the text


@given(arrays(np.float32, st.just(8), elements=finite_float32))
def test_h_round_trip(values):
    rounded = noodle.round_to_text(values)
    assert np.array_equal(noodle.parse_h(Path("b01.h"), noodle.encode_h("b01", rounded)), rounded)


@given(arrays(np.float32, st.integers(0, 50), elements=finite_float32))
def test_bin_round_trip_is_exact(values):
    assert np.array_equal(noodle.parse_bin(Path("w.bin"), noodle.encode_bin(values)), values)


def test_text_rounding_is_idempotent_on_many_values():
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(20000) * 10.0 ** rng.integers(-8, 4, 20000)).astype(np.float32)
    once = noodle.round_to_text(values)
    assert noodle.encode_txt(once) == noodle.encode_txt(values)
    assert np.array_equal(noodle.round_to_text(once), once)


# ------------------------------------------------------------------------------------------------ errors
def expect_error(folder: Path, *fragments: str) -> str:
    with pytest.raises(UserError) as info:
        noodle.read_noodle_folder(folder)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_missing_file(txt_folder):
    (txt_folder / "bn07.txt").unlink()
    expect_error(txt_folder, "missing", "bn07")


def test_unknown_tensor_file(txt_folder):
    (txt_folder / "w15.txt").write_text("1.0\n")
    expect_error(txt_folder, "w15.txt", "not a Mobile-LeNet tensor")


def test_wrong_length(txt_folder):
    lines = (txt_folder / "w09.txt").read_text().splitlines(keepends=True)
    (txt_folder / "w09.txt").write_text("".join(lines[:-1]))
    expect_error(txt_folder, "w09.txt", "expected 256 values, found 255")


def test_manifest_catches_a_changed_file(tmp_path, upstream_tensors):
    noodle.write_noodle_folder(upstream_tensors, tmp_path / "out")
    path = tmp_path / "out" / "w03.txt"
    path.write_text(path.read_text().replace("e", "E", 1))  # still a valid number, but not the exported file
    expect_error(tmp_path / "out", "w03.txt", "sha256", "manifest.json")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(TENSOR_NAMES), st.integers(0, 10_000), st.text(max_size=12))
@example("w01", 0, "0\x1f")  # found by hypothesis: str.split() took \x1c-\x1f for whitespace, so this read as 0
def test_corrupted_txt_value_gives_user_error(txt_folder, name, position, replacement):
    try:
        assume(not math.isfinite(float(replacement)))  # a finite number is a legitimate edit, not corruption
    except ValueError:
        pass
    path = txt_folder / f"{name}.txt"
    original = path.read_bytes()
    lines = original.decode().splitlines(keepends=True)
    i = position % len(lines)
    try:
        path.write_bytes("".join([*lines[:i], replacement + "\n", *lines[i + 1:]]).encode("utf-8"))
        expect_error(txt_folder, f"{name}.txt")
    finally:
        path.write_bytes(original)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_corrupted_bin_gives_user_error(tmp_path, upstream_tensors, data):
    folder = tmp_path / "bin"
    if not folder.exists():
        noodle.write_noodle_folder(upstream_tensors, folder)
        keep_only(folder, ".bin")
    values = np.frombuffer(data[: len(data) // 4 * 4], "<f4")
    assume(len(data) % 4 or len(values) != 10 or not np.all(np.isfinite(values)))
    original = (folder / "b02.bin").read_bytes()
    try:
        (folder / "b02.bin").write_bytes(data)
        expect_error(folder, "b02.bin")
    finally:
        (folder / "b02.bin").write_bytes(original)


@pytest.mark.parametrize("text, fragment", [
    ("static const float w01[] = { 1.0f, x };", "not a number"),
    ("static const float b01[] = { 1.0f };", "declares array 'b01'"),
    ("// no array at all", "expected one"),
    ("static const float b02[] = {" + "nanf, " * 10 + "};", "must be finite"),
    ("static const float w01[] = { 1.0f\x1f, 2.0f };", "not a number"),  # \x1f is no C whitespace
])
def test_bad_header_gives_user_error(tmp_path, upstream_tensors, text, fragment):
    folder = tmp_path / "h"
    noodle.write_noodle_folder(upstream_tensors, folder)
    keep_only(folder, ".h")
    target = "b02.h" if "b02" in text else "w01.h"
    (folder / target).write_text(text)
    expect_error(folder, target, fragment)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e39"])
def test_non_finite_txt_value(txt_folder, value):
    path = txt_folder / "bn01.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([value] + lines[1:]) + "\n")
    expect_error(txt_folder, "bn01.txt", "must be finite")


def test_looks_like_noodle_folder(tmp_path, txt_folder):
    assert noodle.looks_like_noodle_folder(txt_folder)
    assert noodle.looks_like_noodle_folder(UPSTREAM_NOODLE)
    assert not noodle.looks_like_noodle_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert not noodle.looks_like_noodle_folder(tmp_path / "empty")


def test_export_refuses_bad_tensors(tmp_path, upstream_tensors):
    with pytest.raises(UserError, match="w05"):
        noodle.write_noodle_folder({**upstream_tensors, "w05": np.full(64, np.nan, np.float32)}, tmp_path / "x")
    with pytest.raises(UserError, match="bn02"):
        noodle.write_noodle_folder({k: v for k, v in upstream_tensors.items() if k != "bn02"}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ atomicity
def fail_after(monkeypatch, n_files: int):
    """Make Path.write_bytes fail (disk full) after ``n_files`` files."""
    real_write = Path.write_bytes
    calls = []

    def flaky_write(self, data):
        calls.append(self)
        if len(calls) > n_files:
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", flaky_write)


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, upstream_tensors):
    fail_after(monkeypatch, 40)
    with pytest.raises(OSError):
        noodle.write_noodle_folder(upstream_tensors, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no output folder, no temporary folder


def test_failed_export_keeps_the_previous_one(tmp_path, monkeypatch, upstream_tensors, trained_tensors):
    noodle.write_noodle_folder(upstream_tensors, tmp_path / "out")
    before = folder_bytes(tmp_path / "out")
    fail_after(monkeypatch, 40)
    with pytest.raises(OSError):
        noodle.write_noodle_folder(trained_tensors, tmp_path / "out")
    assert folder_bytes(tmp_path / "out") == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_export_import_round_trip(tmp_path, capsys, trained_run):
    assert main(["export", str(trained_run / "best.pt"), "--format", "noodle", "--out", str(tmp_path / "a")]) == 0
    assert "wrote 89 files" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "a"), "--out", str(tmp_path / "a.pt")]) == 0
    assert main(["export", str(tmp_path / "a.pt"), "--format", "noodle", "--out", str(tmp_path / "b")]) == 0
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "b")
    # a Noodle folder is a MODEL everywhere, e.g. as the source of another export
    assert main(["export", str(tmp_path / "a"), "--format", "noodle", "--out", str(tmp_path / "c")]) == 0
    assert folder_bytes(tmp_path / "a") == folder_bytes(tmp_path / "c")


def test_cli_import_of_a_broken_folder_is_one_line_and_status_2(tmp_path, capsys, txt_folder):
    (txt_folder / "w02.txt").write_text("0.5\nhello\n")
    assert main(["import", str(txt_folder), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w02.txt" in err and "not a number" in err
    assert not (tmp_path / "x.pt").exists()


def test_cli_export_of_a_missing_model(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing.pt"), "--format", "noodle", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_cli_refuses_outputs_of_the_wrong_kind(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["export", str(UPSTREAM_NOODLE), "--format", "noodle", "--out", str(tmp_path / "file")]) == 2
    assert main(["import", str(UPSTREAM_NOODLE), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not a folder" in err[0] and "is a folder" in err[1]
