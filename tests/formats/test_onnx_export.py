"""ONNX export: a valid model whose outputs, run by onnxruntime on real digits, are PyTorch's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import UPSTREAM
from mobile_lenet.formats import noodle
from mobile_lenet.formats import onnx_export
from mobile_lenet.apps.cli import main
from mobile_lenet.engines.registry import logits
from mobile_lenet.model.data import to_tensor_input


@pytest.fixture(scope="module")
def upstream_onnx(tmp_path_factory):
    """The seed's weights exported to ONNX: (path, tensors)."""
    tensors = noodle.read_noodle_folder(UPSTREAM / "noodle")
    out = tmp_path_factory.mktemp("onnx")
    written = onnx_export.write_onnx(tensors, out)
    assert written == [out / onnx_export.ONNX_FILE]
    return written[0], tensors


def run_onnx(path, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machines are small and shared
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: to_tensor_input(images)})[0]


def test_the_file_is_a_valid_self_contained_model_with_a_dynamic_batch(upstream_onnx):
    path, _ = upstream_onnx
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert [p.name for p in path.parent.iterdir()] == [onnx_export.ONNX_FILE]  # no external data, no temp files
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "image" and graph_output.name == "logits"
    input_dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert isinstance(input_dims[0], str) and input_dims[1:] == [1, 28, 28]


def test_onnxruntime_matches_torch_on_real_digits(upstream_onnx, mnist_test):
    path, tensors = upstream_onnx
    images = mnist_test.images[:2000]
    ours = run_onnx(path, images)
    theirs = logits(tensors, images, "torch")
    print(f"onnxruntime vs torch on 2000 test images: max |logit diff| {np.abs(ours - theirs).max():.3g}")
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_any_batch_size_runs(upstream_onnx, mnist_test, batch):
    path, tensors = upstream_onnx
    images = mnist_test.images[100:100 + batch]
    np.testing.assert_allclose(run_onnx(path, images), logits(tensors, images, "torch"), atol=1e-4)


def test_cli_export_onnx_from_a_noodle_folder(tmp_path, capsys, mnist_test):
    model_folder = UPSTREAM / "noodle"
    assert main(["export", str(model_folder), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert "wrote 1 files" in capsys.readouterr().out
    images = mnist_test.images[:500]
    np.testing.assert_allclose(run_onnx(tmp_path / "onnx" / "mobile_lenet.onnx", images),
                               logits(noodle.read_noodle_folder(model_folder), images, "torch"), atol=1e-4)
