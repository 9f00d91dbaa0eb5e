"""A member with another block pattern than the seed's (``--strides``): eight blocks, the first one already of
stride 2 and a third stride-2 block that halves an odd 7x7 map to 4x4. Trained briefly, it goes through every
engine and through the int8 firmware of two simulated chips; each is held to another engine on real test digits,
as the seed's network is. What this catches: code that assumes six blocks, two stride-2 blocks, or even sides."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.engines import host_c, reference, reference_int8
from mobile_lenet.engines.registry import logits
from mobile_lenet.formats.int8_folder import save_quantized
from mobile_lenet.formats.model_files import load_float_model
from mobile_lenet.model.data import load_sample
from mobile_lenet.quantization.quantize import quantize_model

from conftest import train_member_briefly

# channels in fours: the host's fast int8 kernels take pointwise inputs of 4n channels (others: generic only)
PATTERN = spec.Architecture.from_options(channels="4,8,8,8,12,12,16,16,16", strides="2,1,1,2,1,2,1,1")
COUNT = 300  # test digits per engine


@pytest.fixture(scope="module")
def pattern_run(tmp_path_factory, mnist_train):
    """The member trained 3 epochs on 3,000 training images: a network that reads digits, not noise."""
    return train_member_briefly(tmp_path_factory.mktemp("pattern_run"), mnist_train, PATTERN, epochs=3, lr=2e-2)


@pytest.fixture(scope="module")
def pattern(pattern_run):
    tensors, arch = load_float_model(pattern_run)
    assert arch == PATTERN
    return tensors


@pytest.fixture(scope="module")
def pattern_int8(pattern, mnist_train):
    return quantize_model(pattern, mnist_train.images[3000:3300], arch=PATTERN)


def test_the_table_has_the_pattern():
    sides = {layer.name: layer.out_shape[0] for layer in spec.layers(PATTERN) if len(layer.out_shape) == 3}
    assert (sides["stem_conv3x3"], sides["B1_dw3x3_s2"], sides["B4_dw3x3_s2"], sides["B6_dw3x3_s2"]) == (28, 14, 7, 4)
    assert sides["B8_pw1x1"] == 4 and "B9_pw1x1" not in sides


def test_float_engines_agree(pattern, mnist_test):
    images, labels = mnist_test.images[:COUNT], mnist_test.labels[:COUNT]
    torch_logits = logits(pattern, images, "torch", PATTERN)
    assert (torch_logits.argmax(1) == labels).mean() > 0.5  # 86% here; chance: 10%
    ref = reference.reference_logits(pattern, images, arch=PATTERN)
    np.testing.assert_allclose(ref, torch_logits, atol=1e-4)
    for variant in host_c.FLOAT_VARIANTS:
        np.testing.assert_allclose(host_c.c_outputs(pattern, images, variant=variant, arch=PATTERN).logits, ref,
                                   atol=1e-4, err_msg=variant)


def test_int8_engines_agree_exactly(pattern, pattern_int8, mnist_test):
    images = mnist_test.images[:COUNT]
    expected = reference_int8.int8_logits(pattern_int8, images)
    for options in ({"variant": "generic"}, {"variant": "generic", "schedule": "rows"}, {"variant": "fast"}):
        np.testing.assert_array_equal(host_c.c_logits(pattern_int8, images, **options), expected, err_msg=str(options))
    float_digits = reference.reference_logits(pattern, images, arch=PATTERN).argmax(1)
    assert (expected.argmax(1) == float_digits).mean() >= 0.9  # 98% here


@pytest.mark.parametrize("target", ["atmega2560", "esp32"])
def test_the_int8_firmware_runs_the_pattern(target, pattern_int8, tmp_path, capsys):
    """The AVR's row schedule and the ESP32's int8 kernels on the pattern, in their simulators, against the int8
    reference engine."""
    save_quantized(pattern_int8, tmp_path / "q")
    code = main(["simulate", str(tmp_path / "q"), "--target", target, "--dataset", "mnist-sample", "--count", "4",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    oracle = reference_int8.int8_logits(pattern_int8, load_sample("test").images[:4])
    assert report["predictions"] == oracle.argmax(axis=1).tolist() and report["agreement_with_reference"] == 4


def test_report_and_demo_show_every_block(pattern_run, pattern, tmp_path):
    """The report's tables and the demo's stages follow the member's eight blocks (oracle: PyTorch's own output
    shapes of the member)."""
    import torch
    from fastapi.testclient import TestClient

    from mobile_lenet.apps.demo import create_app
    from mobile_lenet.apps.report import build_report
    from mobile_lenet.model.network import MobileLeNet

    html = build_report(pattern_run, dataset="mnist-sample", out=tmp_path / "r" / "index.html", limit=20,
                        log=lambda s: None).read_text()
    with torch.no_grad():
        last = MobileLeNet(PATTERN).forward_all(torch.zeros(1, 1, 28, 28))["B8_pw_relu"].shape  # (N, C, H, W)
    assert f"<td>B8_pw_relu</td><td>ReLU</td><td>{last[2]}×{last[3]}×{last[1]}</td>" in html
    assert "<td>B1–B8</td>" in html and "Each block B1–B8 replaces" in html
    assert "strides 2,1,1,2,1,2,1,1" in html
    with TestClient(create_app(pattern)) as client:
        assert client.get("/api/info").json()["stages"] == ["stem"] + [f"B{i}" for i in range(1, 9)]
