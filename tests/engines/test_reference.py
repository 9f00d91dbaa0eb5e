"""The NumPy reference engine: kernels against PyTorch, the network against Keras' weights and our own model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import MNIST_10K, UPSTREAM
from mobile_lenet.model.data import to_tensor_input
from mobile_lenet.formats import noodle
from mobile_lenet.engines import reference
from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.engines.registry import logits
from mobile_lenet.formats.keras import read_keras
from mobile_lenet.model.network import from_noodle

MAX_LOGIT_DIFF = 1e-4


def random_float32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def torch_of(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)


# ------------------------------------------------------------------------------------------------ kernels
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c_in=st.integers(1, 4), c_out=st.integers(1, 4), kernel=st.integers(1, 4),
       stride=st.integers(1, 3), padding=st.integers(0, 2), extra=st.tuples(st.integers(0, 6), st.integers(0, 6)),
       use_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_conv2d_matches_torch(n, c_in, c_out, kernel, stride, padding, extra, use_bias, seed):
    rng = np.random.default_rng(seed)
    height, width = max(1, kernel - 2 * padding) + extra[0], max(1, kernel - 2 * padding) + extra[1]
    x, w = random_float32(rng, n, c_in, height, width), random_float32(rng, c_out, c_in, kernel, kernel)
    b = random_float32(rng, c_out) if use_bias else None
    ours = reference.conv2d(x, w, b, stride, padding)
    theirs = F.conv2d(torch_of(x), torch_of(w), None if b is None else torch_of(b), stride, padding).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), channels=st.integers(1, 5), kernel=st.integers(1, 4), stride=st.integers(1, 3),
       padding=st.integers(0, 2), extra=st.tuples(st.integers(0, 6), st.integers(0, 6)), seed=st.integers(0, 2**16))
def test_depthwise_conv2d_matches_torch(n, channels, kernel, stride, padding, extra, seed):
    rng = np.random.default_rng(seed)
    height, width = max(1, kernel - 2 * padding) + extra[0], max(1, kernel - 2 * padding) + extra[1]
    x, w = random_float32(rng, n, channels, height, width), random_float32(rng, channels, kernel, kernel)
    ours = reference.depthwise_conv2d(x, w, stride, padding)
    theirs = F.conv2d(torch_of(x), torch_of(w[:, None]), None, stride, padding, groups=channels).numpy()
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_stride_two_with_padding_one_is_zero_padding_then_valid():
    """The table's ZeroPadding2D(1) + VALID stride 2 equals the device's conv with P=1, S=2."""
    rng = np.random.default_rng(0)
    x, w = random_float32(rng, 2, 3, 14, 14), random_float32(rng, 3, 3, 3)
    np.testing.assert_array_equal(reference.depthwise_conv2d(reference.zero_pad(x, 1), w, stride=2),
                                  reference.depthwise_conv2d(x, w, stride=2, padding=1))
    assert reference.depthwise_conv2d(x, w, stride=2, padding=1).shape == (2, 3, 7, 7)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 3), channels=st.integers(1, 6), size=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_batch_norm_relu_gap_dense_softmax_match_torch(n, channels, size, seed):
    rng = np.random.default_rng(seed)
    x = random_float32(rng, n, channels, size, size)
    gamma, beta, mean = (random_float32(rng, channels) for _ in range(3))
    var = rng.uniform(0.01, 3, channels).astype(np.float32)
    params = np.stack([gamma, beta, mean, var])
    ours = reference.relu(reference.batch_norm(x, params))
    theirs = F.relu(F.batch_norm(torch_of(x), torch_of(mean), torch_of(var), torch_of(gamma), torch_of(beta),
                                 training=False, eps=spec.BN_EPSILON)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    pooled = reference.global_average_pool(ours)
    np.testing.assert_allclose(pooled, torch_of(ours).mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    w, b = random_float32(rng, 10, channels), random_float32(rng, 10)
    logits = reference.dense(pooled, w, b)
    np.testing.assert_allclose(logits, F.linear(torch_of(pooled), torch_of(w), torch_of(b)).numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(reference.softmax(logits), torch.softmax(torch_of(logits), 1).numpy(), atol=1e-6)
    for a in (ours, pooled, logits, reference.softmax(logits)):
        assert a.dtype == np.float32


# ------------------------------------------------------------------------------------------------ the network
def test_every_layer_matches_the_torch_model(mnist_test):
    """Layer by layer, driven by the table, the engine computes what the PyTorch model computes."""
    tensors = noodle.read_noodle_folder(UPSTREAM / "noodle")
    images = mnist_test.images[:16]
    x = to_tensor_input(images)
    with torch.no_grad():
        torch_outputs = from_noodle(tensors).forward_all(torch_of(x.copy()))
    for layer in spec.LAYERS:
        x = reference.run_float_layer(layer, x, tensors)
        expected = torch_outputs[layer.name].numpy()
        assert x.dtype == np.float32 and x.shape == expected.shape, layer.name
        np.testing.assert_allclose(x, expected, rtol=1e-4, atol=2e-5, err_msg=layer.name)


def test_upstream_noodle_files_agree_with_the_keras_model_on_all_test_images(mnist_test):
    """The reference engine on the seed's Noodle files vs PyTorch with the weights read from the .keras file."""
    ref = reference.reference_logits(noodle.read_noodle_folder(UPSTREAM / "noodle"), mnist_test.images)
    torch_logits = logits(read_keras(UPSTREAM / "mobile-lenet-5.keras"), mnist_test.images, "torch")
    assert len(ref) == 10_000 and ref.dtype == np.float32
    max_diff = float(np.abs(ref - torch_logits).max())
    accuracy = float((ref.argmax(1) == mnist_test.labels).mean())
    print(f"upstream: reference vs torch(.keras) max |logit diff| {max_diff:.3g}, accuracy {100 * accuracy:.2f}%")
    assert np.array_equal(ref.argmax(1), torch_logits.argmax(1))
    assert max_diff <= MAX_LOGIT_DIFF
    assert accuracy == pytest.approx(0.9755, abs=1e-4)  # the seed's published Keras accuracy


def test_exported_trained_model_agrees_with_torch_on_all_test_images(tmp_path, trained_tensors, mnist_test):
    noodle.write_noodle_folder(trained_tensors, tmp_path / "export")
    exported = noodle.read_noodle_folder(tmp_path / "export")
    ref = reference.reference_logits(exported, mnist_test.images)
    torch_logits = logits(trained_tensors, mnist_test.images, "torch")
    max_diff = float(np.abs(ref - torch_logits).max())
    print(f"trained: reference(export) vs torch max |logit diff| {max_diff:.3g}, "
          f"accuracy {100 * (ref.argmax(1) == mnist_test.labels).mean():.2f}%")
    assert np.array_equal(ref.argmax(1), torch_logits.argmax(1))
    # float32 rounding grows with the logits' size: a longer-trained model has larger ones
    assert max_diff <= MAX_LOGIT_DIFF + 1e-5 * float(np.abs(torch_logits).max())


def test_batching_does_not_change_the_result(trained_tensors, mnist_test):
    images = mnist_test.images[:50]
    whole = reference.reference_logits(trained_tensors, images, batch_size=50)
    np.testing.assert_allclose(reference.reference_logits(trained_tensors, images, batch_size=7), whole,
                               rtol=0, atol=1e-6)
    assert reference.reference_logits(trained_tensors, images[:0]).shape == (0, 10)
    probs = reference.reference_probabilities(trained_tensors, images)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_evaluate_with_the_reference_engine(capsys):
    args = ["evaluate", str(UPSTREAM / "noodle"), "--engine", "reference", "--dataset", "mnist",
            "--data-dir", str(MNIST_10K), "--limit", "500", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["engine"] == "reference" and result["n"] == 500 and result["accuracy"] > 0.95


def test_cli_evaluate_reference_on_a_broken_folder(tmp_path, capsys):
    noodle.write_noodle_folder(noodle.read_noodle_folder(UPSTREAM / "noodle"), tmp_path / "w")
    (tmp_path / "w" / "bn13.bin").unlink()
    (tmp_path / "w" / "bn13.h").unlink()
    (tmp_path / "w" / "bn13.txt").write_text("1\n2\n")
    (tmp_path / "w" / "manifest.json").unlink()
    args = ["evaluate", str(tmp_path / "w"), "--engine", "reference", "--dataset", "mnist", "--data-dir",
            str(MNIST_10K), "--limit", "10"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bn13.txt" in err and "expected 96 values, found 2" in err


# ------------------------------------------------------------------------------------------------ softmax
@pytest.mark.parametrize("row", [[100.0, 0.0], [1000.0, -1000.0, 0.0], [-1000.0, -1001.0], [88.0, 89.0, 90.0],
                                 [0.5, -0.25, 2.0, 0.0]])
def test_softmax_matches_a_float64_oracle_at_any_scale(row):
    """Large logits (a confident float model easily reaches 100) must not overflow to inf/inf = NaN."""
    logits = np.array([row], np.float32)
    shifted = np.array(row, np.float64) - max(row)  # exact oracle: exp of the gaps to the largest logit
    expected = np.exp(shifted) / np.exp(shifted).sum()
    probs = reference.softmax(logits)
    assert probs.dtype == np.float32 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0], expected, rtol=1e-6, atol=1e-30)
