"""The int8 C library: bit-for-bit agreement with the integer NumPy engine, sanitizers, exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import UPSTREAM
from mobile_lenet.apps.cli import main
from mobile_lenet.codegen import memory
from mobile_lenet.codegen.c_int8 import generate_sources
from mobile_lenet.codegen.firmware import project_files
from mobile_lenet.engines import host_c
from mobile_lenet.engines.host_c import build_host_program, c_logits
from mobile_lenet.engines.reference import softmax
from mobile_lenet.engines.reference_int8 import int8_logits
from mobile_lenet.formats.int8_folder import save_quantized
from mobile_lenet.quantization.quantize import quantize_model

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture(scope="module")
def qmodel(trained_tensors, mnist_train):
    return quantize_model(trained_tensors, mnist_train.images[:500])


def test_c_and_numpy_agree_bit_for_bit_on_every_test_image(qmodel, mnist_test, tmp_path):
    int8_c_logits = c_logits(qmodel, mnist_test.images, cache=tmp_path)
    numpy_logits = int8_logits(qmodel, mnist_test.images)
    assert int8_c_logits.shape == (10000, 10) and int8_c_logits.dtype == np.int8
    np.testing.assert_array_equal(int8_c_logits, numpy_logits)


def test_confidences_match_the_reference_softmax_of_the_dequantized_logits(qmodel, mnist_test, tmp_path):
    """Probabilities, not only digits. Oracle: the int8 NumPy engine's logits dequantized by hand with the last
    layer's scale and zero point, then the reference softmax in float64. The host program's probabilities
    (float32) agree within 1e-5; the replies of its serial device, which go through the library's own
    mobile_lenet_predict, within their 4 decimals. A dropped logit scale would push the confidences near 1."""
    images = mnist_test.images[:40]
    last = qmodel.layers[-1]
    real = (int8_logits(qmodel, images).astype(np.float64) - last.out_zero_point) * last.out_scale
    expected = softmax(real)
    assert expected.max(axis=1).min() < 0.9  # some answers are unsure: the scale shows in the confidences
    program = build_host_program(qmodel, cache=tmp_path, variant="generic")
    np.testing.assert_allclose(host_c.run_classify(program, images).probs, expected, rtol=0, atol=1e-5)
    served = subprocess.run([str(program), "serve"], input=images.tobytes(), capture_output=True, timeout=60)
    replies = re.findall(r"PRED (\d) \d+\.\d{4} (\d\.\d{4})\r\n", served.stdout.decode())
    assert [int(digit) for digit, _ in replies] == expected.argmax(axis=1).tolist()
    confidences = np.array([float(confidence) for _, confidence in replies])
    np.testing.assert_allclose(confidences, expected.max(axis=1), rtol=0, atol=0.5e-4 + 1e-6)


def test_saturating_inputs_agree_under_sanitizers(tmp_path, mnist_train):
    """A freshly initialised network calibrated on a few digits, fed white squares, noise and digits:
    many values saturate at -128 / 127. ASan and UBSan find overflows and bad shifts."""
    from mobile_lenet.model.network import MobileLeNet, to_noodle

    import torch

    torch.manual_seed(3)
    qmodel = quantize_model(to_noodle(MobileLeNet().eval()), mnist_train.images[:20])
    rng = np.random.default_rng(0)
    images = np.concatenate([np.full((2, 28, 28), 255, np.uint8), np.zeros((2, 28, 28), np.uint8),
                             rng.integers(0, 256, (30, 28, 28), dtype=np.uint8), mnist_train.images[100:130]])
    program = build_host_program(qmodel, sanitize=True, cache=tmp_path)
    sanitized_logits = host_c.run_classify(program, images).logits.astype(np.int8)
    numpy_logits = int8_logits(qmodel, images)
    np.testing.assert_array_equal(sanitized_logits, numpy_logits)
    assert (numpy_logits == 127).any() or (numpy_logits == -128).any()  # the clamps were exercised


@pytest.mark.skipif(not (UPSTREAM / "noodle").is_dir(), reason="no upstream model")
def test_upstream_model_agrees_bit_for_bit(mnist_train, mnist_test, tmp_path):
    from mobile_lenet.formats.model_files import load_tensors

    qmodel = quantize_model(load_tensors(UPSTREAM / "noodle"), mnist_train.images[:500])
    images = mnist_test.images[:1000]
    np.testing.assert_array_equal(c_logits(qmodel, images, cache=tmp_path), int8_logits(qmodel, images))


def test_generated_library_keeps_the_float_api_and_the_planned_buffers(qmodel):
    sources = generate_sources(qmodel)
    source, header = sources["mobile_lenet.c"], sources["mobile_lenet.h"] + sources["mobile_lenet_api.c"]
    for name in ("mobile_lenet_predict", "mobile_lenet_logits", "mobile_lenet_softmax", "mobile_lenet_argmax",
                 "mobile_lenet_int8_logits"):
        assert name in header
    assert f"static int8_t activation_a[{memory.int8_plan().buffer_values}];" in source
    assert "float" not in source.split("void mobile_lenet_int8_logits")[1]
    assert "float" not in sources["ml_kernels_s8.c"]
    assert source.count("conv2d_s8(activation") == 13 and "B3_pad1 + B3_dw3x3_s2" in source
    weights = sources["mobile_lenet_weights.c"]
    assert "const int8_t ml_OUT_weight[240]" in weights and "const int16_t ml_GAP_multiplier[1]" in weights
    files = project_files(qmodel)
    # the whole-map network, compiled unless an environment picks the row schedule (megaatmega2560)
    assert source in files["src/mobile_lenet.c"] and files["src/mobile_lenet.c"].startswith("#if !defined(ML_ROWS_SCHEDULE)")
    assert "src/main.cpp" in files and "platformio.ini" in files


@pytest.mark.parametrize("schedule, activation_bytes", [(None, "12,544"), ("rows", "4,754")])
def test_export_c_int8_builds_with_the_readme_command(tmp_path, qmodel, mnist_test, capsys, schedule,
                                                      activation_bytes):
    """Either schedule: the library alone at the top, the host program in host/, built with the README's command
    (strict warnings added), computing the int8 engine's logits; the README's activation figure is the schedule's
    (README.md of the project: 12,544 bytes whole maps, 4,754 row by row)."""
    save_quantized(qmodel, tmp_path / "q")
    out = tmp_path / "c"
    assert main(["export", str(tmp_path / "q"), "--format", "c", "--int8", "--out", str(out),
                 *(["--schedule", schedule] if schedule else [])]) == 0
    assert main(["export", str(tmp_path / "q"), "--format", "platformio", "--int8", "--out",
                 str(tmp_path / "pio")]) == 0
    assert (tmp_path / "pio" / "src" / "mobile_lenet_weights.c").is_file()
    assert [p.name for p in (out / "host").iterdir()] == ["mobile_lenet_host.c"]
    assert ("ml_rows_s8.c" in {p.name for p in out.iterdir()}) == (schedule == "rows")
    readme = (out / "README.md").read_text()
    assert f"{activation_bytes} bytes of activations" in readme and "3,670 bytes of weight data" in readme
    build = next(line for line in readme.splitlines() if line.startswith("cc "))
    compiled = subprocess.run(build.replace("cc ", "cc -Wall -Wextra -Werror -pedantic ", 1), shell=True, cwd=out,
                              capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    images = mnist_test.images[:20]
    outputs = host_c.run_classify(out / "mobile_lenet_host", images)
    np.testing.assert_array_equal(outputs.logits.astype(np.int8), int8_logits(qmodel, images))
    np.testing.assert_allclose(outputs.probs.sum(axis=1), 1, atol=1e-5)
    assert main(["export", str(tmp_path / "q"), "--format", "platformio", "--int8", "--schedule", "rows",
                 "--out", str(tmp_path / "pio2")]) == 2
    assert "--schedule goes with --format c --int8" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "q"), "--format", "onnx", "--int8", "--out", str(tmp_path / "x")]) == 2
    assert "c and platformio" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "q"), "--format", "onnx", "--int8", "--out", str(tmp_path / "x")]) == 2
    assert "c and platformio" in capsys.readouterr().err
