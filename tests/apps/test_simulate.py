"""``mobile-lenet simulate``: the firmware in QEMU and simavr, talked to over its UART like a board."""

from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest

from conftest import MNIST_10K, UPSTREAM, live_in_sessions, profile_chart_columns
from mobile_lenet import spec
from mobile_lenet.apps import simulate
from mobile_lenet.apps.report_deployment import deployment_section
from mobile_lenet.apps.cli import main
from mobile_lenet.codegen import memory
from mobile_lenet.engines.host_c import c_layer_outputs
from mobile_lenet.engines.mcu_simulators import SimulatorRun
from mobile_lenet.engines.reference import reference_logits
from mobile_lenet.codegen.mcu_firmware import DoesNotFit
from mobile_lenet.errors import UserError
from mobile_lenet.formats.int8_folder import save_quantized
from mobile_lenet.engines.reference_int8 import int8_logits


STARTED_SESSIONS: list[int] = []  # the simulators this test module started (each leads a session of its own)


@pytest.fixture(autouse=True)
def record_simulators(monkeypatch):
    """Note the session of every simulator the test starts, so that only the test's own are watched."""
    real = SimulatorRun.__enter__

    def entering(self):
        try:
            return real(self)
        finally:
            if self.process is not None:
                STARTED_SESSIONS.append(self.process.pid)

    monkeypatch.setattr(SimulatorRun, "__enter__", entering)
    STARTED_SESSIONS.clear()


def simulators_running() -> int:
    """Live processes in the sessions of the simulators this test started (a simulator and anything it
    spawned, even if orphaned): never anything else on the machine."""
    return live_in_sessions(STARTED_SESSIONS)


def test_cortex_m4f_float_agrees_with_the_reference_and_is_measured(upstream_tensors, mnist_test, tmp_path):
    images, labels = mnist_test.images[:4], mnist_test.labels[:4]
    report = simulate.simulate(upstream_tensors, "cortex-m4f", images, labels, work_dir=tmp_path, progress=False)
    expected = reference_logits(upstream_tensors, images).argmax(axis=1)
    assert report["predictions"] == expected.tolist() and report["agreement_with_reference"] == 4
    assert report["accuracy"] == float((expected == labels).mean())
    assert report["max_confidence_difference"] <= 0.5e-4 + 1e-6  # the reply's 4 decimals
    assert report["static_ram_bytes"] >= memory.plan().ram_bytes and 0 < report["peak_stack_bytes"] < 4096
    counts = report["instructions_per_image"]
    # the same work for every image: the float network has no data-dependent branch but softmax's expf
    assert counts["min"] > 1_000_000 and counts["max"] - counts["min"] < 0.01 * counts["min"]
    assert report["ms_per_image_at_clock"] == pytest.approx(1000 * counts["mean"] / 168e6)
    assert simulators_running() == 0


def test_cortex_m0plus_int8_agrees_with_the_int8_engine(upstream_int8, mnist_test, tmp_path):
    """Two digits the int8 engine reads right and the first it reads wrong: agreement with the reference engine
    (3/3) and accuracy (2/3) are two different figures."""
    predicted = int8_logits(upstream_int8, mnist_test.images[:300]).argmax(axis=1)
    wrong = int(np.flatnonzero(predicted != mnist_test.labels[:300])[0])
    right = [int(i) for i in np.flatnonzero(predicted == mnist_test.labels[:300])[:2]]
    images, labels = mnist_test.images[[wrong, *right]], mnist_test.labels[[wrong, *right]]
    report = simulate.simulate(upstream_int8, "cortex-m0plus", images, labels, work_dir=tmp_path, progress=False)
    assert report["precision"] == "int8" and report["counts"] == "instructions"
    assert report["predictions"] == predicted[[wrong, *right]].tolist()
    assert report["agreement_with_reference"] == 3 and report["accuracy"] == pytest.approx(2 / 3)
    counts = report["instructions_per_image"]  # int8 counts differ from image to image: the mean, not the max
    assert report["ms_per_image_at_clock"] == pytest.approx(1000 * counts["mean"] / 133e6)
    assert report["static_ram_bytes"] >= memory.int8_plan().ram_bytes
    assert report["max_confidence_difference"] <= 0.5e-4 + 1e-6  # the reply's 4 decimals: the logit scale counts


def test_atmega2560_runs_the_int8_network_in_its_8_kb(upstream_int8, mnist_test, tmp_path):
    """The full 28x28 network on the ATmega2560's own SRAM: rows flow through small rings (c/ml_rows_s8.c)."""
    images, labels = mnist_test.images[:2], mnist_test.labels[:2]
    report = simulate.simulate(upstream_int8, "atmega2560", images, labels, work_dir=tmp_path, progress=False)
    assert report["simulator"] == "simavr" and report["counts"] == "cycles" and not report["external_ram"]
    assert report["predictions"] == int8_logits(upstream_int8, images).argmax(axis=1).tolist()
    assert report["max_confidence_difference"] <= 0.5e-4 + 1e-6  # the row schedule's confidences too
    assert report["static_ram_bytes"] + report["peak_stack_bytes"] <= 8192 == report["ram_capacity"]
    cycles = report["cycles_per_image"]
    assert cycles["min"] > 452_216  # more than one cycle per multiply-accumulate on an 8-bit core
    assert report["ms_per_image_at_clock"] == pytest.approx(1000 * cycles["mean"] / 16e6)
    assert simulators_running() == 0


def _untrained_int8(arch, images):
    import torch

    from mobile_lenet.model.images import resize_digits
    from mobile_lenet.model.network import MobileLeNet, to_noodle
    from mobile_lenet.quantization.quantize import quantize_model

    torch.manual_seed(0)
    return quantize_model(to_noodle(MobileLeNet(arch).eval()), resize_digits(images[:64], arch.input_size), arch=arch)


def test_a_stack_that_runs_into_the_static_data_does_not_fit(mnist_test, tmp_path, monkeypatch):
    """Width 1.5 on the ATmega2560: its static RAM fits the 8 KB (the build accepts it) but not with the stack the
    network needs; the core crashes, and that is said in one line with the bytes, not as a lost serial port.
    (Untrained weights: the memory layout is the trained member's; found by the family benchmark.)"""
    import re

    qmodel = _untrained_int8(spec.Architecture.from_options(1.5, None, 28), mnist_test.images)
    with pytest.raises(DoesNotFit) as error:  # as a build too large for the chip: the main job records it
        simulate.simulate(qmodel, "atmega2560", mnist_test.images[:1], mnist_test.labels[:1], work_dir=tmp_path,
                          progress=False)
    found = re.search(r"does not fit: its stack ran into the static data .*static RAM ([\d,]+) bytes plus at least "
                      r"([\d,]+) bytes of stack", str(error.value))
    assert found, error.value
    static, stack = (int(group.replace(",", "")) for group in found.groups())
    assert static <= 8192 < static + stack
    assert simulators_running() == 0
    # the main job's microcontroller step: a row that says so, not a failed pipeline (this target alone, to be short)
    monkeypatch.setattr(simulate, "TARGETS", {"atmega2560": simulate.TARGETS["atmega2560"]})
    deployed = simulate.deploy({"int8": qmodel}, mnist_test.images[:1], mnist_test.labels[:1], log=lambda _: None)
    (row,) = deployed["results"]
    assert row["fits"] is False and row["precision"] == "int8" and "stack ran into the static data" in row["reason"]
    assert simulators_running() == 0


def test_a_stack_that_overwrites_the_static_data_without_a_crash_does_not_fit(mnist_test, tmp_path):
    """Width 1.45 on the ATmega2560: the stack runs into the static data, but the core runs on and answers from
    overwritten data. That is no result either: the same one-line "does not fit" with the bytes (this once
    passed as a run, so a search kept members whose trained firmware then answered wrong)."""
    qmodel = _untrained_int8(spec.Architecture.from_options(1.45, None, 28), mnist_test.images)
    with pytest.raises(DoesNotFit, match=r"does not fit: its stack ran into the static data and overwrote it, so "
                                         r"its answers are void \(static RAM [\d,]+ bytes plus at least"):
        simulate.simulate(qmodel, "atmega2560", mnist_test.images[:1], mnist_test.labels[:1], work_dir=tmp_path,
                          progress=False)
    assert simulators_running() == 0


def test_the_row_schedules_stack_does_not_grow_with_the_blocks(mnist_test, tmp_path):
    """On the ATmega2560 a block's rows go down the network in a loop, not a recursion over the blocks, so twelve
    blocks need the stack of six (the recursion took about 120 bytes a block, on a chip with 8 KB of RAM).
    Oracle: simavr's lowest stack pointer."""
    stacks = []
    for strides in ("1,1,2,1,2,1", "1,1,2,1,1,1,1,1,2,1,1,1"):
        arch = spec.Architecture.from_options(None, ",".join(["8"] * (strides.count(",") + 2)), None, strides)
        report = simulate.simulate(_untrained_int8(arch, mnist_test.images), "atmega2560", mnist_test.images[:1],
                                   mnist_test.labels[:1], work_dir=tmp_path / str(len(stacks)), progress=False)
        assert report["agreement_with_reference"] == 1
        stacks.append(report["peak_stack_bytes"])
    assert abs(stacks[1] - stacks[0]) < 40, stacks


def test_atmega2560_float_needs_external_ram(upstream_tensors, mnist_test, tmp_path):
    images, labels = mnist_test.images[:1], mnist_test.labels[:1]
    with pytest.raises(UserError, match="float32 model does not fit: static RAM needs"):
        simulate.simulate(upstream_tensors, "atmega2560", images, labels, work_dir=tmp_path / "a", progress=False)
    report = simulate.simulate(upstream_tensors, "atmega2560", images, labels, work_dir=tmp_path / "b",
                               external_ram=True, progress=False)
    assert report["predictions"] == reference_logits(upstream_tensors, images).argmax(axis=1).tolist()
    assert report["static_ram_bytes"] > 8192 and report["ram_capacity"] > 60_000


@pytest.mark.parametrize("c_standard", ["c99", "gnu99"])
def test_float_layers_on_the_m4f_are_bit_exact_with_the_host(c_standard, upstream_tensors, mnist_test, tmp_path):
    """The FPU target computes the host's float32 numbers, layer by layer, also in GCC's default dialect."""
    image = mnist_test.images[0]
    firmware = simulate.firmware_layer_outputs(upstream_tensors, "cortex-m4f", image, tmp_path, c_standard=c_standard)
    host = c_layer_outputs(upstream_tensors, image)
    assert sorted(firmware) == sorted(host) and len(host) == 41  # the 43 rows less the two folded paddings
    assert all(firmware[n].tobytes() == host[n].tobytes() for n in host)


def test_layer_debugger_finds_where_a_layer_parts(upstream_int8, mnist_test, tmp_path, monkeypatch):
    image = mnist_test.images[0]
    report = simulate.trace_layers(upstream_int8, "cortex-m0plus", image, tmp_path / "ok")
    assert report["firmware_bit_exact_layers"] == len(report["layers"]) == len(upstream_int8.layers)
    assert report["firmware_first_parting"] is None and report["host_c_first_parting"] is None
    # A firmware whose fifth layer went wrong: the debugger names that layer, not an earlier or later one.
    real = simulate.firmware_layer_outputs

    def broken(*args, **kwargs):
        outputs = real(*args, **kwargs)
        outputs[5] = outputs[5].copy()
        outputs[5][17] = np.int8(outputs[5][17] ^ 1)
        return outputs

    monkeypatch.setattr(simulate, "firmware_layer_outputs", broken)
    report = simulate.trace_layers(upstream_int8, "cortex-m0plus", image, tmp_path / "broken")
    assert report["firmware_first_parting"] == " + ".join(upstream_int8.layers[4].rows)
    assert report["firmware_bit_exact_layers"] == len(upstream_int8.layers) - 1


def test_format_report_by_hand():
    """A hand-made report and its lines written out by hand. 0.57 * 100 is 56.99999999999999 in floating
    point: the count of right answers must be rounded (57/100), not truncated (56/100)."""
    report = {"target": "cortex-m4f", "chip": "STM32F4-class Cortex-M4F", "precision": "int8", "simulator": "qemu",
              "flash_bytes": 16124, "flash_capacity": 1048576, "static_ram_bytes": 13484, "peak_stack_bytes": 1234,
              "ram_capacity": 131072, "counts": "instructions",
              "instructions_per_image": {"mean": 1234567.4, "min": 1234000, "max": 1235000},
              "ms_per_image_at_clock": 7.34861, "clock_hz": 168_000_000, "latency_assumes": "one cycle per instruction",
              "n": 100, "accuracy": 0.57, "agreement_with_reference": 99, "max_confidence_difference": 3.2e-5}
    assert simulate.format_report(report).splitlines() == [
        "cortex-m4f (STM32F4-class Cortex-M4F, int8) in qemu:",
        "  flash 16,124 of 1,048,576 bytes; static RAM 13,484 + peak stack 1,234 of 131,072 bytes",
        "  1,234,567 instructions per image (min 1,234,000, max 1,235,000): 7.3 ms at 168 MHz (one cycle per "
        "instruction)",
        "  accuracy 57.00% (57/100); agrees with the reference engine on 99/100; confidences within 3.2e-05"]
    for accuracy, n, count in ((0.29, 100, "(29/100)"), (0.58, 100, "(58/100)"), (7 / 9, 9, "(7/9)")):
        assert count in simulate.format_report({**report, "accuracy": accuracy, "n": n})


def test_cli_simulate_json_and_errors(upstream_int8, mnist_test, tmp_path, capsys, monkeypatch):
    save_quantized(upstream_int8, tmp_path / "q")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where simulate makes its work folder
    (tmp_path / "tmp").mkdir()
    assert main(["simulate", str(tmp_path / "q"), "--target", "cortex-m4f", "--data-dir", str(MNIST_10K),
                 "--count", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 2 and report["precision"] == "int8" and report["target"] == "cortex-m4f"
    assert STARTED_SESSIONS and simulators_running() == 0
    assert list((tmp_path / "tmp").iterdir()) == []  # its mobile-lenet-simulate-* folder is gone
    # the first two test images, each field against its own oracle: the int8 engine's digits, the labels, the
    # reference softmax (the 4-decimal replies), the chip's clock and the memory plan
    expected = int8_logits(upstream_int8, mnist_test.images[:2]).argmax(axis=1)
    assert report["predictions"] == expected.tolist() and report["agreement_with_reference"] == 2
    assert report["accuracy"] == float((expected == mnist_test.labels[:2]).mean())
    assert report["max_confidence_difference"] <= 0.5e-4 + 1e-6
    counts = report["instructions_per_image"]
    assert report["counts"] == "instructions" and 100_000 < counts["min"] <= counts["mean"] <= counts["max"]
    assert report["ms_per_image_at_clock"] == pytest.approx(1000 * counts["mean"] / 168e6)
    assert memory.int8_plan().flash_bytes < report["flash_bytes"] <= report["flash_capacity"] == 1024 * 1024
    assert memory.int8_plan().ram_bytes < report["static_ram_bytes"] <= report["ram_capacity"] == 128 * 1024
    assert 0 < report["peak_stack_bytes"] < 4096 and report["dataset"]
    assert main(["simulate", str(UPSTREAM / "noodle"), "--target", "atmega2560", "--data-dir", str(MNIST_10K)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "does not fit: static RAM needs" in err and "over the chip's 8,192" in err
    for flags, message in ((["--count", "0"], "--count"), (["--timeout", "nan"], "--timeout"),
                           (["--timeout", "inf"], "--timeout"), (["--xmem"], "ATmega2560 option"),
                           (["--target", "atmega2560", "--layers"], "no layer debugger")):
        assert main(["simulate", str(tmp_path / "q"), "--target", "cortex-m4f", "--data-dir", str(MNIST_10K),
                     *flags]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err


def test_a_simulator_that_does_not_answer_in_time_is_stopped(upstream_tensors, mnist_test, tmp_path):
    """A Cortex-M0+ float image takes about a second in QEMU; a 0.05 s reply timeout gives one clear error
    and leaves no simulator running. (On a loaded machine QEMU may not even boot within 0.05 s: then the wait for
    READY times out instead, just as clearly.)"""
    with pytest.raises(UserError, match=r"(no reply to image 0|no READY from the device) within 0\.05 s"):
        simulate.simulate(upstream_tensors, "cortex-m0plus", mnist_test.images[:1], mnist_test.labels[:1],
                          work_dir=tmp_path, progress=False, timeout=0.05)
    assert simulators_running() == 0


def test_a_cache_that_cannot_be_written_is_one_line(upstream_int8, tmp_path, capsys, monkeypatch):
    """The simulator's host tool cannot be built into the cache (a file in its way, like a read-only folder for a
    user): one line naming the cache and MOBILE_LENET_CACHE, and no work folder left."""
    save_quantized(upstream_int8, tmp_path / "q")
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("MOBILE_LENET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert main(["simulate", str(tmp_path / "q"), "--target", "atmega2560", "--data-dir", str(MNIST_10K),
                 "--count", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MOBILE_LENET_CACHE" in err and str(tmp_path / "cache") in err, err
    assert list((tmp_path / "tmp").iterdir()) == []


def test_profile_and_layers_come_with_the_summary(upstream_int8, mnist_test, tmp_path, capsys):
    """simulate --profile --layers: the normal summary, the layer debugger and the cost of each layer. The
    oracles: the model's own layers, in order; the whole-image count of the build without marks, which the
    per-layer sum exceeds only by the marks' own cost (a call of a few instructions each); two layers of the
    same shapes and code (B1 and B2's depthwise convolutions, 28x28x8) cost the same; GAP and the dense layer
    do about 1,400 of the network's 300,000 multiply-accumulates (spec), so well under 2% of the time."""
    save_quantized(upstream_int8, tmp_path / "q")
    assert main(["simulate", str(tmp_path / "q"), "--target", "cortex-m4f", "--data-dir", str(MNIST_10K),
                 "--count", "2", "--profile", "--layers", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 2 and report["agreement_with_reference"] == 2  # the summary is there
    assert report["layers"]["firmware_first_parting"] is None  # and the layer debugger
    profile = report["profile"]
    layers = profile["layers"]
    assert [row["layer"] for row in layers] == list(range(1, len(upstream_int8.layers) + 1))
    assert [row["name"] for row in layers] == [" + ".join(layer.rows) for layer in upstream_int8.layers]
    assert all(row["count"] > 0 for row in layers) and profile["after_last_layer"] > 0
    assert profile["whole_image"] == report["instructions_per_image"]["mean"]
    total = sum(row["count"] for row in layers) + profile["after_last_layer"]
    assert total == pytest.approx(profile["sum"]) == pytest.approx(profile["whole_image"] + profile["marks_cost"])
    assert 0 < profile["marks_cost"] <= 8 * profile["marks"]
    count = {row["name"].split(" + ")[0]: row["count"] for row in layers}
    assert count["B1_dw3x3_s1"] == pytest.approx(count["B2_dw3x3_s1"], rel=1e-3)
    assert count["GAP"] + count["OUT"] < 0.02 * total
    # the report's chart of this profile, read off its HTML: one row per block of the table, in order; the
    # counts sum to the count of the build without marks plus a few instructions per mark (and the rounding of
    # each cell); the shares are the counts' own; blocks B1 and B2 (same shapes) cost the same; the head is cheap
    page = deployment_section({"count": 2, "results": [{**report, "fits": True}], "skipped": []}, None, None)
    chart = profile_chart_columns(page)[("cortex-m4f", "int8")]
    assert list(chart) == ["stem", *(name for name, _, _ in spec.BLOCKS), "head"]
    shown = sum(count for count, _ in chart.values())
    assert 0 < shown - report["instructions_per_image"]["mean"] <= 8 * profile["marks"] + len(chart)
    for count, share in chart.values():
        assert share == pytest.approx(100 * count / shown, abs=0.06)
    assert chart["B1"][0] == pytest.approx(chart["B2"][0], rel=1e-3) and chart["head"][1] < 2
    assert main(["simulate", str(tmp_path / "q"), "--target", "cortex-m4f", "--data-dir", str(MNIST_10K),
                 "--count", "1", "--profile"]) == 0
    text = capsys.readouterr().out
    assert "instructions per image" in text and "per layer (mean of 1 images)" in text and "B6_pw1x1" in text
    assert main(["simulate", str(tmp_path / "q"), "--target", "atmega2560", "--data-dir", str(MNIST_10K),
                 "--profile"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--profile works on the targets" in err
