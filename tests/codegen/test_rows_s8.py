"""The int8 network row by row (c/ml_rows_s8.c, memory.row_plan): the same integers in a few kilobytes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mobile_lenet.apps.cli import main
from mobile_lenet.codegen import c_int8, memory
from mobile_lenet.engines.host_c import build_host_program, run_classify
from mobile_lenet.engines.reference_int8 import int8_logits
from mobile_lenet.model.network import MobileLeNet, to_noodle
from mobile_lenet.quantization.quantize import quantize_model


@pytest.fixture(scope="module")
def qmodel(trained_tensors, mnist_train):
    return quantize_model(trained_tensors, mnist_train.images[:500])


def test_rows_give_the_int8_engine_bit_for_bit_on_every_test_image(qmodel, mnist_test, tmp_path):
    program = build_host_program(qmodel, schedule="rows", cache=tmp_path)
    logits = run_classify(program, mnist_test.images).logits.astype(np.int8)
    np.testing.assert_array_equal(logits, int8_logits(qmodel, mnist_test.images))


def test_rows_agree_under_sanitizers_on_saturating_inputs(mnist_train, tmp_path):
    import torch

    torch.manual_seed(5)
    model = quantize_model(to_noodle(MobileLeNet().eval()), mnist_train.images[:20])
    rng = np.random.default_rng(1)
    images = np.concatenate([np.full((1, 28, 28), 255, np.uint8), np.zeros((1, 28, 28), np.uint8),
                             rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), mnist_train.images[:20]])
    program = build_host_program(model, schedule="rows", sanitize=True, cache=tmp_path)
    np.testing.assert_array_equal(run_classify(program, images).logits.astype(np.int8), int8_logits(model, images))


def test_row_plan_is_the_rings_the_network_declares(qmodel):
    plan = memory.row_plan()
    # the stem's 3 padded image rows, then six blocks, each keeping its depthwise kernel's 3 rows of its input
    # padded by one column on each side ((width + 2) x channels)
    assert [(ring.rows, ring.row_bytes) for ring in plan.rings] == (
        [(3, 30)] + [(3, 30 * 8)] * 3 + [(3, 16 * 16)] * 2 + [(3, 9 * 24)])
    assert plan.ram_bytes == sum(ring.bytes for ring in plan.rings) + 28 * 8 + 4 * 24  # + dw_row, pooling sums
    assert plan.ram_bytes < memory.int8_plan().ram_bytes / 2
    source = c_int8.generate_library(qmodel, "rows")["mobile_lenet.c"]
    assert f"static int8_t ring_stem[{plan.rings[0].bytes}];" in source
    for index, ring in enumerate(plan.rings[1:]):
        assert f"static int8_t ring_{index}[{ring.bytes}];" in source
    assert f"static int8_t dw_row[{plan.dw_row_bytes}];" in source and "activation_a" not in source
    assert "pad_row" not in source  # no buffer the kernels do not use


def test_requant_table_sends_a_layer_with_a_minus_128_weight_to_the_generic_path(qmodel):
    """The AVR loops add two products in 16 bits, which needs |w| <= 127; quantize never makes -128, but a
    layer that has one must not take the fast path."""
    import dataclasses

    layer = next(layer for layer in qmodel.layers if getattr(layer, "weight", None) is not None)
    assert c_int8.requant_table(layer) is not None and layer.weight.min() >= -127
    weight = layer.weight.copy()
    weight.flat[0] = -128
    assert c_int8.requant_table(dataclasses.replace(layer, weight=weight)) is None


def test_folded_biases_carry_the_input_zero_point(qmodel):
    """bias - in_zp * sum of the filter's weights, so the kernels add q * w with no subtraction."""
    source = c_int8.generate_library(qmodel, "rows")["mobile_lenet.c"]
    stem = qmodel.layers[0]
    folded = stem.bias.astype(np.int64) - stem.in_zero_point * stem.weight.astype(np.int64).reshape(8, -1).sum(1)
    assert f"ml_{stem.name}_folded_bias[8] ML_FLASH = {{{', '.join(str(v) for v in folded)}}};" in source


def test_summary_prints_the_atmega2560_row_plan(capsys):
    assert main(["summary", "--memory", "--int8", "--target", "atmega2560", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schedule"] == "rows" and data["ram_bytes"] == memory.row_plan().ram_bytes
    assert main(["summary", "--memory", "--int8", "--target", "atmega2560"]) == 0
    assert f"RAM (activations): {memory.row_plan().ram_bytes:,} bytes" in capsys.readouterr().out
    assert main(["summary", "--target", "atmega2560"]) == 2


AVR_DRIVER = r"""/* Run the int8 network on the images below and print each image's logits on USART0, then stop. */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/sleep.h>
#include <stdio.h>

#include "ml_flash.h"
#include "mobile_lenet.h"

static const uint8_t images[%(count)d * 784] ML_FLASH = {%(pixels)s};

static int uart_put(char c, FILE *stream)
{
    (void)stream;
    while ((UCSR0A & _BV(UDRE0)) == 0) {
    }
    UDR0 = (uint8_t)c;
    return 0;
}

static FILE uart_out = FDEV_SETUP_STREAM(uart_put, NULL, _FDEV_SETUP_WRITE);

int main(void)
{
    static uint8_t image[784];
    int8_t logits[MOBILE_LENET_NUM_CLASSES];
    UCSR0A = _BV(U2X0);
    UBRR0 = 16;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(TXEN0);
    stdout = &uart_out;
    for (int n = 0; n < %(count)d; ++n) {
        for (int i = 0; i < 784; ++i) image[i] = (uint8_t)ML_FLASH_S8(&images[(int32_t)n * 784 + i]);
        mobile_lenet_int8_logits(image, logits);
        for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) printf("%%d ", logits[i]);
        printf("\n");
    }
    while ((UCSR0A & _BV(TXC0)) == 0) {
    }
    cli();
    sleep_enable();
    sleep_cpu();
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("avr-gcc") is None or not Path("/usr/include/simavr/sim_avr.h").is_file(),
                    reason="no avr-gcc or simavr")
@pytest.mark.parametrize("generic", [False, True], ids=["fast-paths", "two-generic-layers"])
def test_rows_on_the_atmega2560_give_the_int8_engine_bit_for_bit(qmodel, mnist_test, tmp_path, generic):
    """The row schedule built for the ATmega2560 (its assembly row loops, flash reads) and run in simavr: the
    logits of the NumPy int8 engine, bit for bit, on test images and saturating ones. Also with a depthwise and
    a pointwise layer on the generic path (a -128 weight, see above; trained members send a layer there when
    its requantization scale needs more than three bytes), whose NULL table once did not compile for the AVR."""
    import dataclasses

    from mobile_lenet.engines.mcu_simulators import simavr_runner

    rng = np.random.default_rng(3)
    images = np.concatenate([np.full((1, 28, 28), 255, np.uint8), np.zeros((1, 28, 28), np.uint8),
                             rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), mnist_test.images[:12]])
    if generic:
        layers = list(qmodel.layers)
        for name in ("B3_dw3x3_s2", "B5_pw1x1"):
            index = next(i for i, layer in enumerate(layers) if layer.name == name)
            weight = layers[index].weight.copy()
            weight.flat[1] = -128
            layers[index] = dataclasses.replace(layers[index], weight=weight)
        qmodel, images = dataclasses.replace(qmodel, layers=layers), images[:6]
    files = c_int8.generate_library(qmodel, "rows")
    fast_tables = files["mobile_lenet.c"].count("static const ml_rows_rq")
    assert fast_tables == sum(1 for layer in qmodel.layers if getattr(layer, "weight", None) is not None
                              and layer.name != "OUT") - (2 if generic else 0)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "driver.c").write_text(AVR_DRIVER % {"count": len(images),
                                                     "pixels": ",".join(map(str, images.reshape(-1).tolist()))})
    sources = [str(tmp_path / name) for name in files if name.endswith(".c")
               and name not in ("mobile_lenet_api.c", "mobile_lenet_serial.c")]
    program = tmp_path / "rows.elf"
    built = subprocess.run(["avr-gcc", "-mmcu=atmega2560", "-DF_CPU=16000000UL", "-std=c99", "-O2",
                            "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-ffunction-sections",
                            "-fdata-sections", "-Wl,--gc-sections", f"-I{tmp_path}", "-o", str(program),
                            str(tmp_path / "driver.c"), *sources], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(simavr_runner()), "--stdio", "--max-seconds", "300", str(program)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=400)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and '"stop": "done"' in lines[-1], result.stdout + result.stderr
    logits = np.array([[int(v) for v in line.split()] for line in lines[:-1]], dtype=np.int8)
    np.testing.assert_array_equal(logits, int8_logits(qmodel, images))
