"""``mobile-lenet simulate --target esp32``: the firmware for the ESP32's Xtensa instruction set (LLVM 22) in QEMU's
de233_fpu core, talked to over its UART like a board."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import XTENSA_TOOLS
from mobile_lenet.apps import simulate
from mobile_lenet.codegen import memory
from mobile_lenet.engines.host_c import c_layer_outputs
from mobile_lenet.engines.reference import reference_logits, softmax
from mobile_lenet.engines.reference_int8 import int8_logits

pytestmark = pytest.mark.skipif(any(shutil.which(tool) is None for tool in XTENSA_TOOLS),
                                reason="no LLVM 22, binutils-xtensa-lx106 or qemu-system-xtensa")


def test_esp32_float_layers_are_bit_exact_with_the_host(upstream_tensors, mnist_test, tmp_path):
    """Every layer's float32 output equals the host C's: the FPU's division steps and sqrtf are correctly rounded."""
    image = mnist_test.images[3]
    firmware = simulate.firmware_layer_outputs(upstream_tensors, "esp32", image, tmp_path)
    host = c_layer_outputs(upstream_tensors, image)
    assert sorted(firmware) == sorted(host) and len(host) == 41
    assert all(firmware[n].tobytes() == host[n].tobytes() for n in host)


def test_esp32_float_is_measured_and_agrees(upstream_tensors, mnist_test, tmp_path):
    images, labels = mnist_test.images[:3], mnist_test.labels[:3]
    report = simulate.simulate(upstream_tensors, "esp32", images, labels, work_dir=tmp_path, progress=False)
    expected = softmax(reference_logits(upstream_tensors, images))
    assert report["predictions"] == expected.argmax(axis=1).tolist() and report["agreement_with_reference"] == 3
    assert report["max_confidence_difference"] <= 0.5e-4 + 1e-6  # the reply's 4 decimals
    assert report["static_ram_bytes"] >= memory.plan().ram_bytes and 0 < report["peak_stack_bytes"] < 8192
    counts = report["instructions_per_image"]
    assert counts["min"] > 452_216 and counts["max"] - counts["min"] < 0.01 * counts["min"]
    assert report["ms_per_image_at_clock"] == pytest.approx(1000 * counts["mean"] / 240e6)
    assert "de233_fpu" in report["measure_note"] and "not ESP32 cycles" in report["measure_note"]


def test_esp32_int8_layers_are_bit_exact_with_the_int8_engine(upstream_int8, mnist_test, tmp_path):
    report = simulate.trace_layers(upstream_int8, "esp32", mnist_test.images[7], tmp_path)
    assert report["firmware_bit_exact_layers"] == len(report["layers"]) == len(upstream_int8.layers)
    assert report["firmware_first_parting"] is None


def test_esp32_int8_agrees_with_the_int8_engine(upstream_int8, mnist_test, tmp_path):
    images, labels = mnist_test.images[20:24], mnist_test.labels[20:24]
    report = simulate.simulate(upstream_int8, "esp32", images, labels, work_dir=tmp_path, progress=False)
    logits = int8_logits(upstream_int8, images)
    assert report["precision"] == "int8" and report["predictions"] == logits.argmax(axis=1).tolist()
    assert report["max_confidence_difference"] <= 0.5e-4 + 1e-6
    assert report["static_ram_bytes"] >= memory.int8_plan().ram_bytes
    assert np.ptp([report["instructions_per_image"]["min"], report["instructions_per_image"]["max"]]) < 1000
