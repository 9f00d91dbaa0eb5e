"""A family member other than the seed's (alpha 0.5, 16x16 inputs), trained briefly, through every engine and
export: PyTorch, the NumPy reference, the generated float C (both variants), ONNX, Noodle files, int8 (NumPy
and the int8 C of every schedule). The engines are held to each other on real test digits, resized, as they
are for the seed's network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobile_lenet import spec
from mobile_lenet.engines import host_c, reference, reference_int8
from mobile_lenet.engines.registry import logits
from mobile_lenet.errors import UserError
from mobile_lenet.formats import noodle, onnx_export
from mobile_lenet.formats.int8_folder import load_quantized, save_quantized
from mobile_lenet.formats.model_files import load_float_model
from mobile_lenet.model.images import resize_digits
from mobile_lenet.quantization.quantize import quantize_model

from conftest import train_member_briefly

MEMBER = spec.Architecture.from_options(width=0.5, input_size=16)
COUNT = 500  # test images per engine


@pytest.fixture(scope="module")
def member_run(tmp_path_factory, mnist_train):
    """A run folder of the member, trained 6 epochs of batch 32 on 3,000 training images (about 90% accurate)."""
    return train_member_briefly(tmp_path_factory.mktemp("member_run"), mnist_train, MEMBER, epochs=6, lr=1e-2)


@pytest.fixture(scope="module")
def member(member_run):
    tensors, arch = load_float_model(member_run)
    assert arch == MEMBER
    return tensors


@pytest.fixture(scope="module")
def digits(mnist_test):
    return resize_digits(mnist_test.images[:COUNT], MEMBER.input_size), mnist_test.labels[:COUNT]


@pytest.fixture(scope="module")
def member_int8(member, mnist_train):
    return quantize_model(member, resize_digits(mnist_train.images[3000:3300], 16), arch=MEMBER)


def test_float_engines_agree(member, digits):
    images, labels = digits
    torch_logits = logits(member, images, "torch", MEMBER)
    assert (torch_logits.argmax(1) == labels).mean() > 0.7  # a network that reads digits, not noise
    ref = reference.reference_logits(member, images, arch=MEMBER)
    np.testing.assert_allclose(ref, torch_logits, atol=1e-4)
    for variant in host_c.FLOAT_VARIANTS:
        c = host_c.c_outputs(member, images, variant=variant, arch=MEMBER).logits
        np.testing.assert_allclose(c, ref, atol=1e-4, err_msg=variant)
        assert (c.argmax(1) == ref.argmax(1)).mean() >= 0.998, variant


def test_engines_refuse_images_of_another_size(member, mnist_test):
    for engine in ("torch", "reference", "c"):
        with pytest.raises(UserError, match=r"\(N, 16, 16\)"):
            logits(member, mnist_test.images[:2], engine, MEMBER)


def test_int8_engines_agree_exactly(member, member_int8, digits):
    images, _ = digits
    assert member_int8.architecture == MEMBER
    expected = reference_int8.int8_logits(member_int8, images)
    for options in ({"variant": "generic", "schedule": "rows"}, {"variant": "fast"}):
        np.testing.assert_array_equal(host_c.c_logits(member_int8, images, **options), expected, err_msg=str(options))
    float_digits = reference.reference_logits(member, images, arch=MEMBER).argmax(1)
    assert (expected.argmax(1) == float_digits).mean() >= 0.95  # a briefly trained model: 96.6% here


def test_int8_generic_buffers_c_of_a_16x16_member(member_int8, digits):
    np.testing.assert_array_equal(host_c.c_logits(member_int8, digits[0], variant="generic"),
                                  reference_int8.int8_logits(member_int8, digits[0]))


def test_int8_generic_buffers_c_of_a_20x20_member(member, mnist_train, mnist_test):
    arch = spec.Architecture.from_options(width=0.5, input_size=20)
    tensors = dict(member)  # the same weights at another input size: the network is convolutional
    qmodel = quantize_model(tensors, resize_digits(mnist_train.images[3000:3300], 20), arch=arch)
    images = resize_digits(mnist_test.images[:200], 20)
    np.testing.assert_array_equal(host_c.c_logits(qmodel, images, variant="generic"),
                                  reference_int8.int8_logits(qmodel, images))


def test_int8_folder_records_the_member(member_int8, digits, tmp_path):
    save_quantized(member_int8, tmp_path / "q")
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["architecture"] == MEMBER.to_dict()
    again = load_quantized(tmp_path / "q")
    assert again.architecture == MEMBER
    np.testing.assert_array_equal(reference_int8.int8_logits(again, digits[0]),
                                  reference_int8.int8_logits(member_int8, digits[0]))


def test_noodle_folder_records_the_member(member, digits, tmp_path):
    noodle.write_noodle_folder(member, tmp_path / "n", MEMBER)
    manifest = json.loads((tmp_path / "n" / "manifest.json").read_text())
    assert manifest["architecture"] == MEMBER.to_dict()
    assert noodle.noodle_architecture(tmp_path / "n") == MEMBER
    tensors, arch = load_float_model(tmp_path / "n")
    assert arch == MEMBER and set(tensors) == set(member)
    np.testing.assert_allclose(reference.reference_logits(tensors, digits[0], arch=MEMBER),
                               reference.reference_logits(member, digits[0], arch=MEMBER), atol=1e-4)
    readme = (tmp_path / "n" / "README.md").read_text()
    assert "W = noodle_dw_pw_block(in, out, W, 8, 12, 2, w10, bn10, w11, bn11);    // B5" in readme
    assert "noodle_gap(in, 12, W)" in readme and "With 4x4 planes" in readme
    # without its record the files are read as the seed's network, which they do not fit: one line
    manifest.pop("architecture")
    (tmp_path / "n" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="w01.txt: expected 72 values, found 36"):
        load_float_model(tmp_path / "n")


def test_the_seeds_noodle_manifest_has_no_record(upstream_tensors, tmp_path):
    noodle.write_noodle_folder(upstream_tensors, tmp_path / "seed")
    assert "architecture" not in json.loads((tmp_path / "seed" / "manifest.json").read_text())


def test_onnx_of_the_member(member, digits, tmp_path):
    import onnxruntime as ort

    from mobile_lenet.model.data import to_tensor_input

    path, = onnx_export.write_onnx(member, tmp_path, MEMBER)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: to_tensor_input(digits[0][:50])})[0]
    np.testing.assert_allclose(out, logits(member, digits[0][:50], "torch", MEMBER), atol=1e-4)


def test_export_and_import_a_member_from_the_cli(member_run, digits, tmp_path, capsys):
    from mobile_lenet.apps.cli import main
    from mobile_lenet.model.checkpoints import load_checkpoint_model

    assert main(["export", str(member_run), "--format", "noodle", "--out", str(tmp_path / "n")]) == 0
    assert noodle.noodle_architecture(tmp_path / "n") == MEMBER
    assert main(["import", str(tmp_path / "n"), "--out", str(tmp_path / "back.pt")]) == 0
    assert load_checkpoint_model(tmp_path / "back.pt").architecture == MEMBER
    assert main(["export", str(member_run), "--format", "c", "--out", str(tmp_path / "c")]) == 0
    assert "#define MOBILE_LENET_INPUT_SIZE 256" in (tmp_path / "c" / "mobile_lenet_model.h").read_text()
    # the PlatformIO project carries the same member's library (its firmware runs in tests/codegen/test_firmware.py)
    assert main(["export", str(member_run), "--format", "platformio", "--out", str(tmp_path / "p")]) == 0
    assert ((tmp_path / "p" / "src" / "mobile_lenet_model.h").read_text()
            == (tmp_path / "c" / "mobile_lenet_model.h").read_text())
