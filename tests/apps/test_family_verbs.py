"""Every verb with a family member other than the seed's (alpha 0.5, 16x16 inputs): the member comes from what the
model records, never from a flag, and the 28x28 test digits reach it resized as training resizes them.

The oracle throughout: another engine (the NumPy reference, float or int8) run here on the digits resized here
with PIL directly; a verb that ran the seed's network, skipped the resize or sent 28x28 images to the firmware
would not match it (the seed's tensors do not even fit the member's table)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.engines.reference import reference_logits, softmax
from mobile_lenet.engines.reference_int8 import int8_logits
from mobile_lenet.errors import UserError
from mobile_lenet.formats.int8_folder import load_quantized
from mobile_lenet.model.data import load_sample
from mobile_lenet.quantization.quantize import pick_calibration_images, quantize_model

MEMBER = spec.Architecture.from_options(width=0.5, input_size=16)
COUNT = 40  # test images for evaluate


def resized(images: np.ndarray, size: int = 16) -> np.ndarray:
    """The oracle's own resize: PIL's bilinear filter, image by image."""
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for image in images])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sample_test():
    return load_sample("test")


@pytest.fixture(scope="module")
def member_int8(member16_run, tmp_path_factory):
    """``quantize`` of the member (50 calibration images of the bundled sample): a quantized model folder."""
    out = tmp_path_factory.mktemp("member_int8") / "q"
    assert main(["quantize", str(member16_run), "--calibration-data", "mnist-sample", "--calibration-count", "50",
                 "--out", str(out)]) == 0
    return out


def test_quantize_calibrates_on_resized_images(member_int8, member16_tensors):
    qmodel = load_quantized(member_int8)
    assert qmodel.architecture == MEMBER
    calibration = resized(pick_calibration_images(load_sample("train").images, 50))
    again = quantize_model(dict(member16_tensors), calibration, arch=MEMBER)  # plain tensors, the member given
    for ours, theirs in zip(qmodel.layers, again.layers):
        assert ours.in_scale == theirs.in_scale and ours.out_scale == theirs.out_scale
        np.testing.assert_array_equal(ours.weight, theirs.weight)


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_evaluate_resizes_the_test_digits_for_the_member(precision, member16_run, member_int8, member16_tensors,
                                                         sample_test, capsys):
    model = member16_run if precision == "float" else member_int8
    engine = "torch" if precision == "float" else "c"  # not the oracle's engine
    code, out, _ = run(capsys, "evaluate", model, "--dataset", "mnist-sample", "--limit", COUNT, "--engine", engine,
                       "--json")
    assert code == 0
    images = resized(sample_test.images[:COUNT])
    oracle = (reference_logits(dict(member16_tensors), images, arch=MEMBER) if precision == "float"
              else int8_logits(load_quantized(member_int8), images))
    predictions = oracle.argmax(axis=1)
    result = json.loads(out)
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (sample_test.labels[:COUNT], predictions), 1)
    assert result["confusion"] == expected.tolist() and result["n"] == COUNT


def test_predict_makes_an_mnist_style_digit_then_resizes_it(member16_run, member16_tensors, sample_test, tmp_path,
                                                            capsys):
    big = Image.fromarray(sample_test.images[0]).resize((112, 112), Image.NEAREST)  # not 28x28: preprocessed
    big.save(tmp_path / "digit.png")
    small = Image.fromarray(sample_test.images[1])  # 28x28: taken as it is, then resized
    small.save(tmp_path / "mnist.png")
    code, out, _ = run(capsys, "predict", member16_run, tmp_path / "digit.png", tmp_path / "mnist.png", "--engine",
                       "reference", "--json")
    assert code == 0
    from mobile_lenet.model.images import mnist_style

    inputs = resized(np.stack([mnist_style(np.asarray(big)), sample_test.images[1]]))
    expected = softmax(reference_logits(dict(member16_tensors), inputs, arch=MEMBER))
    answers = [json.loads(line) for line in out.splitlines()]
    np.testing.assert_allclose([a["probabilities"] for a in answers], expected, atol=1e-6)


@pytest.mark.parametrize("target,precision", [("cortex-m4f", "int8"), ("cortex-m4f", "float"),
                                              ("atmega2560", "int8")])
def test_simulate_a_member(target, precision, member16_run, member_int8, member16_tensors, sample_test, capsys):
    """The firmware of the member reads 16x16 images (the serial image size from the generated model header) and
    classifies them as the reference engine does; the AVR runs the int8 member row by row in its 8 KB."""
    model = member16_run if precision == "float" else member_int8
    code, out, err = run(capsys, "simulate", model, "--target", target, "--dataset", "mnist-sample", "--count", 4,
                         "--json")
    assert code == 0, err
    report = json.loads(out)
    images = resized(sample_test.images[:4])
    oracle = (reference_logits(dict(member16_tensors), images, arch=MEMBER) if precision == "float"
              else int8_logits(load_quantized(member_int8), images))
    assert report["predictions"] == oracle.argmax(axis=1).tolist() and report["agreement_with_reference"] == 4
    assert report["static_ram_bytes"] + report["peak_stack_bytes"] <= report["ram_capacity"]


def test_a_member_too_large_for_the_avr_is_one_line(member16_run, capsys):
    """The float member needs more than the ATmega2560's 8 KB: the existing one-line "does not fit", with bytes."""
    code, out, err = run(capsys, "simulate", member16_run, "--target", "atmega2560", "--dataset", "mnist-sample",
                         "--count", 1)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "does not fit" in err and "bytes" in err


def test_simulate_layers_of_a_member(member_int8, member16_tensors, capsys):
    code, out, err = run(capsys, "simulate", member_int8, "--target", "cortex-m4f", "--dataset", "mnist-sample",
                         "--count", 1, "--layers", "--json")
    assert code == 0, err
    layers = json.loads(out)["layers"]
    qmodel = load_quantized(member_int8)
    assert len(layers["layers"]) == len(qmodel.layers)  # the member's quantized layers, not the seed's
    assert layers["firmware_first_parting"] is None and layers["firmware_bit_exact_layers"] == len(qmodel.layers)


def test_a_model_that_contradicts_a_given_member_is_refused(member16_tensors):
    with pytest.raises(UserError, match="channels 4,4,4,8,8,12,12, input 16x16, not channels 8,8,8"):
        spec.architecture_of(member16_tensors, spec.SEED)
    assert spec.architecture_of(dict(member16_tensors), MEMBER) == MEMBER  # plain tensors: the member given


def test_report_of_a_member_run(member16_run, member16_tensors, tmp_path):
    import torch

    from mobile_lenet.apps.report import build_report
    from mobile_lenet.model.network import MobileLeNet

    html = build_report(member16_run, dataset="mnist-sample", out=tmp_path / "r" / "index.html", limit=20,
                        log=lambda s: None).read_text()
    model = MobileLeNet(MEMBER)  # PyTorch's own count of the member's parameters
    counted = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert f"<td>parameters</td><td>{counted:,}</td>" in html
    assert "channels 4,4,4,8,8,12,12, input 16x16" in html
    with torch.no_grad():
        last = model.forward_all(torch.zeros(1, 1, 16, 16))["B6_pw_relu"].shape  # (N, C, H, W)
    assert f"<td>B6_pw_relu</td><td>ReLU</td><td>{last[2]}×{last[3]}×{last[1]}</td>" in html


def test_demo_serves_a_member(member16_tensors, sample_test):
    from fastapi.testclient import TestClient

    from mobile_lenet.apps.demo import create_app

    with TestClient(create_app(member16_tensors)) as client:
        assert client.get("/api/info").json()["stages"] == ["stem", "B1", "B2", "B3", "B4", "B5", "B6"]
        answer = client.post("/api/predict", json={"pixels": sample_test.images[2].tolist(),
                                                   "engine": "torch"}).json()
    inputs = resized(sample_test.images[2:3])
    assert answer["input"] == inputs[0].tolist()  # what the network sees: the 16x16 resize of the MNIST digit
    expected = softmax(reference_logits(dict(member16_tensors), inputs, arch=MEMBER))[0]
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
    assert [stage["shape"][:2] for stage in answer["stages"]][-1] == [4, 4]  # 16 -> 8 -> 4 after two stride-2 blocks


def test_the_demo_runs_a_member_on_a_simulated_microcontroller(member_int8, sample_test):
    """The int8 member on the demo's cortex-m4f engine: the firmware gets the member's 16x16 bytes and answers the
    digit the int8 NumPy engine gives for the same resized input."""
    from fastapi.testclient import TestClient

    from mobile_lenet.apps.demo import create_app

    qmodel = load_quantized(member_int8)
    with TestClient(create_app(qmodel, targets=["cortex-m4f"])) as client:
        answers = [client.post("/api/predict", json={"pixels": image.tolist(), "engine": "cortex-m4f"}).json()
                   for image in sample_test.images[:2]]
    expected = int8_logits(qmodel, resized(sample_test.images[:2])).argmax(axis=1)
    assert [answer.get("prediction", answer.get("error")) for answer in answers] == expected.tolist()
    assert all(answer["microcontroller"]["whole_image"] > 0 for answer in answers)


def test_pipeline_refuses_a_bad_member_before_anything(tmp_path, capsys):
    code, out, err = run(capsys, "pipeline", "--out", tmp_path / "p", "--input-size", 40, "--dataset", "mnist-sample")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "input size" in err
    assert not (tmp_path / "p").exists()
