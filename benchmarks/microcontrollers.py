"""The microcontroller part: the firmware of every target, float and int8, measured in its simulator.

For each target of ``mobile-lenet simulate`` (Cortex-M0+, Cortex-M4F and ESP32 in QEMU, ATmega2560 in simavr) and each
precision, the seed's published weights (int8: quantized as ``mobile-lenet quantize`` does, on 1,000 training
images) classify the first test images through the firmware's own serial protocol. Rows: flash and static RAM
from the ELF, peak stack, executed instructions (ARM, Xtensa) or cycles (AVR) per image, the latency at the chip's
clock, cycles (or instructions) per multiply-accumulate, and agreement with the reference engine. A model that
does not fit a chip gets its one-line reason; the ATmega2560 is then also run with 64 KB of external SRAM
(its XMEM interface), to measure its speed. For int8 a "reference" row runs the same model with the plain
reference kernels and whole feature maps (the code before the microcontroller optimizations), side by side.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mobile_lenet import spec
from mobile_lenet.apps.simulate import simulate
from mobile_lenet.codegen.mcu_firmware import TARGETS
from mobile_lenet.errors import UserError
from mobile_lenet.model.data import load_dataset
from mobile_lenet.quantization.quantize import DEFAULT_CALIBRATION_COUNT, pick_calibration_images, quantize_model

from .common import Options, not_available
from .inference import benchmark_weights

FULL = {"images": 20, "targets": tuple(TARGETS)}
QUICK = {"images": 1, "targets": ("cortex-m4f",)}


def measure(model, target: str, images, labels, work: Path, external_ram: bool = False, **firmware_options) -> dict:
    """One target and precision: the simulate report's figures, or why it could not run."""
    try:
        report = simulate(model, target, images, labels, work_dir=work, external_ram=external_ram, progress=False,
                          **firmware_options)
    except UserError as error:
        return not_available(str(error))
    per_image = report[f"{report['counts']}_per_image"]
    return {key: report[key] for key in ("flash_bytes", "static_ram_bytes", "peak_stack_bytes", "counts",
                                         "ms_per_image_at_clock", "clock_hz", "n", "accuracy",
                                         "agreement_with_reference")} | {
        "per_image": per_image, "per_mac": per_image["mean"] / spec.totals()["macs"]}


def run(options: Options) -> dict:
    settings = QUICK if options.quick else FULL
    test_set = load_dataset("mnist", "test", options.mnist_dir)
    images, labels = test_set.images[:settings["images"]], test_set.labels[:settings["images"]]
    tensors, weights = benchmark_weights(options)
    train_images = load_dataset("mnist", "train", options.mnist_dir).images
    int8_model = quantize_model(tensors, pick_calibration_images(train_images, DEFAULT_CALIBRATION_COUNT))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mcu-") as work_dir:
        for target in settings["targets"]:
            for precision, model in (("float32", tensors), ("int8", int8_model)):
                options.log(f"  microcontrollers: {target}, {precision} ...")
                work = Path(work_dir) / f"{target}-{precision}"
                row = {"target": target, "chip": TARGETS[target].chip, "precision": precision, "memory": "on chip",
                       "code": "optimized" if precision == "int8" else "float kernels"}
                rows.append(row | measure(model, target, images, labels, work))
                if rows[-1].get("available") is False and target == "atmega2560":
                    rows.append(row | {"memory": "64 KB external SRAM"}
                                | measure(model, target, images, labels, work / "xmem", external_ram=True))
                if precision == "int8":  # before: reference kernels on whole feature maps
                    xmem = target == "atmega2560"  # whole int8 maps need more than its 8 KB
                    rows.append(row | {"code": "reference, whole maps",
                                       "memory": "64 KB external SRAM" if xmem else "on chip"}
                                | measure(model, target, images, labels, work / "reference", external_ram=xmem,
                                          reference_kernels=True, schedule="buffers"))
    return {"weights": weights, "test_images": len(images), "macs_per_image": spec.totals()["macs"], "rows": rows}
