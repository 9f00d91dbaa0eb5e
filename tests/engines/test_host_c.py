"""The generated C built on the host: same answers as the reference engine on all 10,000 MNIST test images."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import UPSTREAM
from mobile_lenet.engines import host_c
from mobile_lenet.apps.cli import main
from mobile_lenet.model.data import write_idx
from mobile_lenet.errors import UserError
from mobile_lenet.engines.reference import reference_logits, softmax



@pytest.fixture(scope="module")
def c_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("c_cache")


def test_c_matches_reference_on_all_mnist_test_images(upstream_tensors, mnist_test, c_cache):
    outputs = host_c.c_outputs(upstream_tensors, mnist_test.images, cache=c_cache)
    expected_logits = reference_logits(upstream_tensors, mnist_test.images)
    expected = softmax(expected_logits)
    assert len(outputs.digits) == 10_000
    mismatches = np.flatnonzero(outputs.digits != expected.argmax(axis=1))
    assert mismatches.size == 0, f"C and reference disagree on images {mismatches[:10]}"
    assert np.abs(outputs.probs - expected).max() <= 1e-5
    assert np.abs(outputs.logits - expected_logits).max() <= 1e-4
    # the printed probabilities are the softmax of the printed logits
    assert np.abs(outputs.probs - softmax(outputs.logits)).max() <= 1e-6
    # Keras' accuracy for these weights; the upstream in-place GAP would give 97.73% (NOODLE_FORMAT.md)
    assert (outputs.digits == mnist_test.labels).sum() == 9755


def test_idx_file_mode_equals_stdin_mode(upstream_tensors, mnist_test, c_cache, tmp_path):
    images = mnist_test.images[:50]
    program = host_c.build_host_program(upstream_tensors, cache=c_cache)
    write_idx(tmp_path / "images-idx3-ubyte", images)
    from_file = subprocess.run([str(program), "classify", str(tmp_path / "images-idx3-ubyte")],
                               capture_output=True, text=True, check=True).stdout
    from_stdin = subprocess.run([str(program), "classify", "-"], input=images.tobytes(), capture_output=True,
                                check=True).stdout.decode()
    assert from_file == from_stdin and len(from_file.splitlines()) == 50
    bad = subprocess.run([str(program), "classify", str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing" in bad.stderr


def test_builds_are_cached_by_source_and_flags(upstream_tensors, c_cache):
    first = host_c.build_host_program(upstream_tensors, cache=c_cache)
    stamp = first.stat().st_mtime_ns
    assert host_c.build_host_program(upstream_tensors, cache=c_cache) == first
    assert first.stat().st_mtime_ns == stamp  # not rebuilt
    other = dict(upstream_tensors)
    other["b02"] = other["b02"] + np.float32(1.0)
    assert host_c.build_host_program(other, cache=c_cache) != first


def test_truncated_input_and_bad_images_are_errors(upstream_tensors, c_cache):
    program = host_c.build_host_program(upstream_tensors, cache=c_cache)
    truncated = subprocess.run([str(program), "classify", "-"], input=bytes(784 + 100), capture_output=True)
    assert truncated.returncode == 1 and b"image 1 is truncated (100 of 784 bytes)" in truncated.stderr
    with pytest.raises(UserError, match="uint8"):
        host_c.run_classify(program, np.zeros((2, 28, 28), np.float32))
    with pytest.raises(UserError, match="uint8"):
        host_c.run_classify(program, np.zeros((2, 28, 27), np.uint8))


def test_missing_compiler_is_a_user_error(monkeypatch, upstream_tensors, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    with pytest.raises(UserError, match="no C compiler"):
        host_c.build_host_program(upstream_tensors, cache=tmp_path)


def test_evaluate_cli_with_the_c_engine(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MOBILE_LENET_CACHE", str(tmp_path))
    results = {}
    for engine in ("c", "reference"):
        assert main(["evaluate", str(UPSTREAM / "noodle"), "--data-dir", str(UPSTREAM.parent / "mnist-10k"),
                     "--engine", engine, "--limit", "500", "--json"]) == 0
        results[engine] = json.loads(capsys.readouterr().out)
    assert results["c"]["engine"] == "c" and results["c"]["n"] == 500
    assert results["c"]["confusion"] == results["reference"]["confusion"]
    assert list((tmp_path / "c").glob("*/mobile_lenet_host"))  # built into $MOBILE_LENET_CACHE/c
