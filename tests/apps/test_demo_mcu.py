"""The demo's simulated microcontroller engines: the firmware in its simulator answers ``POST /api/predict``.

Oracles: the NumPy reference engines (float and int8) for the digits and confidences; the plain firmware run the
way ``simulate`` runs it (``SimulatorRun`` with its summary, no live reading) for the whole-image counts; the
kernel's /proc for the simulator's life.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx.*deprecated")
    from fastapi.testclient import TestClient

from conftest import live_in_sessions
from mobile_lenet import spec
from mobile_lenet.apps import demo, demo_mcu, simulate
from mobile_lenet.apps.device import DeviceLink, run_on_device
from mobile_lenet.codegen.mcu_firmware import build_firmware, get_target
from mobile_lenet.engines.mcu_simulators import SimulatorRun
from mobile_lenet.engines.reference import reference_probabilities, softmax
from mobile_lenet.engines.reference_int8 import int8_logits

CONFIDENCE_STEP = 1e-4  # the serial reply's confidence has 4 decimals
TIMER_TICK_CYCLES = 100  # above the AVR firmware's millisecond interrupt, entry to return (c/targets/uart_avr.c)

needs_arm = pytest.mark.skipif(simulate.missing_tools("cortex-m4f") is not None,
                               reason=str(simulate.missing_tools("cortex-m4f")))
needs_avr = pytest.mark.skipif(simulate.missing_tools("atmega2560") is not None,
                               reason=str(simulate.missing_tools("atmega2560")))


def in_session(session: int) -> int:
    """Live processes in the session ``session`` (a simulator leads its own): never anything else on the machine."""
    return live_in_sessions((session,))


def png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def plain_firmware_counts(model, target: str, images: np.ndarray, labels: np.ndarray, work: Path) -> list[int]:
    """Instructions (cycles) per image of the firmware without per-layer marks, read from the run's summary when
    it ends: the way ``simulate`` measures, independent of the demo's live reading."""
    firmware = build_firmware(model, get_target(target), work / "plain")
    with SimulatorRun(firmware, work) as run, DeviceLink.open(run.port, timeout=60) as link:
        run_on_device(link, images, labels, progress=False)
    return run.measurements.per_image


@pytest.fixture(scope="module")
def m4f_int8(upstream_int8):
    """The demo of the seed author's int8 model with the cortex-m4f engine; the app shut down at the end."""
    app = demo.create_app(upstream_int8, "int8", targets=["cortex-m4f"])
    with TestClient(app) as client:
        yield client, app.state.demo_model.microcontrollers


@needs_arm
def test_m4f_int8_answers_like_the_int8_engine_with_each_layers_count(m4f_int8, upstream_int8, mnist_test,
                                                                       tmp_path):
    client, microcontrollers = m4f_int8
    info = client.get("/api/info").json()
    assert info["engines"] == ["reference", "c", "cortex-m4f"] and info["microcontrollers"] == ["cortex-m4f"]
    images, labels = mnist_test.images[:3], mnist_test.labels[:3]
    answers = [client.post("/api/predict", json={"pixels": images[0].tolist(), "engine": "cortex-m4f"}),
               client.post("/api/predict", json={"pixels": images[1].tolist(), "engine": "cortex-m4f"}),
               client.post("/api/predict?engine=cortex-m4f", content=png(images[2]),  # the raw image form
                           headers={"Content-Type": "image/png"})]
    assert [a.status_code for a in answers] == [200] * 3, [a.text[:200] for a in answers]
    answers = [a.json() for a in answers]
    expected = softmax(upstream_int8.dequantize_logits(int8_logits(upstream_int8, images)).astype(np.float64))
    names = [" + ".join(layer.rows) for layer in upstream_int8.layers]
    for answer, probabilities in zip(answers, expected):
        digit = int(probabilities.argmax())
        assert answer["engine"] == "cortex-m4f" and answer["prediction"] == digit
        # the reply carries the digit's confidence only, rounded to 4 decimals
        assert answer["probabilities"][digit] == pytest.approx(probabilities[digit], abs=CONFIDENCE_STEP)
        assert [p for i, p in enumerate(answer["probabilities"]) if i != digit] == [None] * 9
        mcu = answer["microcontroller"]
        assert mcu["precision"] == "int8" and mcu["counts"] == "instructions" and mcu["marks"] == len(names)
        assert [row["name"] for row in mcu["layers"]] == names and all(row["count"] > 0 for row in mcu["layers"])
        assert sum(row["count"] for row in mcu["layers"]) + mcu["after_last_layer"] == mcu["whole_image"]
        assert mcu["ms_at_clock"] == pytest.approx(1000 * mcu["whole_image"] / 168e6)
        assert len(answer["stages"]) == 7
    # The plain firmware's counts, measured the normal way: the profile's sum exceeds each only by the marks' own
    # cost (a call of a few instructions each; an image's count depends on its pixels, so this is image by image).
    plain = plain_firmware_counts(upstream_int8, "cortex-m4f", images, labels, tmp_path)
    for answer, count in zip(answers, plain):
        marks_cost = answer["microcontroller"]["whole_image"] - count
        assert 0 < marks_cost <= 8 * len(names), (answer["microcontroller"]["whole_image"], count)
    # one simulator served all three requests
    assert len(microcontrollers.running()) == 1


@needs_arm
def test_a_busy_simulator_is_a_503_not_a_hang(m4f_int8, mnist_test):
    client, microcontrollers = m4f_int8
    engine = microcontrollers.engine("cortex-m4f")
    engine.busy_wait_s = 0.3
    try:
        with engine.lock:  # another request holds the simulator
            start = time.monotonic()
            response = client.post("/api/predict", json={"pixels": mnist_test.images[0].tolist(),
                                                         "engine": "cortex-m4f"})
            waited = time.monotonic() - start
        assert response.status_code == 503 and "busy" in response.json()["error"], response.text[:200]
        assert 0.3 <= waited < 5
        assert client.post("/api/predict", json={"pixels": mnist_test.images[0].tolist(),
                                                 "engine": "cortex-m4f"}).status_code == 200  # free again
    finally:
        engine.busy_wait_s = demo_mcu.BUSY_WAIT_S


@needs_arm
def test_a_dead_or_stuck_simulator_is_started_again(m4f_int8, mnist_test):
    client, microcontrollers = m4f_int8
    engine = microcontrollers.engine("cortex-m4f")
    pixels = {"pixels": mnist_test.images[0].tolist(), "engine": "cortex-m4f"}
    assert client.post("/api/predict", json=pixels).status_code == 200
    first = engine.process
    os.kill(first.pid, signal.SIGKILL)  # died between two requests: this one starts a new simulator
    first.wait(timeout=10)
    assert client.post("/api/predict", json=pixels).status_code == 200
    second = engine.process
    assert second.pid != first.pid and second.poll() is None
    os.kill(second.pid, signal.SIGSTOP)  # alive but silent: the request gets a 503 within the reply's timeout
    engine.reply_timeout_s = 1.0
    try:
        start = time.monotonic()
        response = client.post("/api/predict", json=pixels)
        assert response.status_code == 503 and "stopped answering" in response.json()["error"], response.text[:200]
        assert time.monotonic() - start < 5 and second.poll() is not None  # and it was put down
    finally:
        engine.reply_timeout_s = demo_mcu.REPLY_TIMEOUT_S
    assert client.post("/api/predict", json=pixels).status_code == 200 and engine.process.pid != second.pid
    third = engine.process
    engine.idle_restart_s = 0.0  # idle too long (here: at all): a fresh simulator answers, the old one is gone
    try:
        assert client.post("/api/predict", json=pixels).status_code == 200
    finally:
        engine.idle_restart_s = demo_mcu.IDLE_RESTART_S
    assert engine.process.pid != third.pid and third.poll() is not None


@needs_arm
def test_a_simulator_outlives_the_thread_that_asked_for_it_but_not_the_app(upstream_int8, mnist_test):
    """Linux sends the parent-death signal when the forking *thread* ends: a simulator started by a request's worker
    thread would die with that thread. Started from a thread that ends at once, it must still answer afterwards;
    and it must be gone once the app has shut down, its work folder too."""
    app = demo.create_app(upstream_int8, "int8", targets=["cortex-m4f"])
    with TestClient(app):
        engine = app.state.demo_model.microcontrollers.engine("cortex-m4f")
        answers = []
        asker = threading.Thread(target=lambda: answers.append(engine.predict(mnist_test.images[0])))
        asker.start()
        asker.join(timeout=60)
        assert len(answers) == 1
        process, work = engine.process, engine._work_dir
        time.sleep(0.5)  # the parent-death signal would have come by now
        assert process.poll() is None and in_session(process.pid) >= 1
        assert engine.predict(mnist_test.images[1])["whole_image"] > 0 and engine.process is process
    assert in_session(process.pid) == 0 and process.poll() is not None
    assert not work.exists()


def test_only_the_engines_this_machine_can_run_are_listed(upstream_tensors, monkeypatch):
    """A target whose tools are missing is not listed (and cannot be asked for); nor is a chip the model cannot fit:
    the float network on the ATmega2560, whose stem's output alone (28x28x8 float32) is over its 8 KB of SRAM."""
    stem = next(layer for layer in spec.LAYERS if layer.kind == spec.LayerKind.CONV)
    assert np.prod(stem.out_shape) * 4 > get_target("atmega2560").ram_bytes
    real = demo_mcu.missing_tools
    monkeypatch.setattr(demo_mcu, "missing_tools",
                        lambda name: "esp32-tool not found: install it" if name == "esp32" else real(name))
    client = TestClient(demo.create_app(upstream_tensors, "float"))
    info = client.get("/api/info").json()
    installed = [name for name in ("cortex-m0plus", "cortex-m4f") if real(name) is None]
    assert info["engines"] == ["torch", "reference", "c", *installed]
    assert info["unavailable_microcontrollers"]["esp32"] == "esp32-tool not found: install it"
    assert "does not fit" in info["unavailable_microcontrollers"]["atmega2560"]
    response = client.post("/api/predict", json={"pixels": [[0]], "engine": "esp32"})
    assert response.status_code == 400 and "unknown engine 'esp32'" in response.json()["error"]


@needs_arm
def test_a_float_model_runs_the_float_firmware(upstream_tensors, mnist_test):
    image = mnist_test.images[3]
    with TestClient(demo.create_app(upstream_tensors, "float", targets=["cortex-m4f"])) as client:
        answer = client.post("/api/predict", json={"pixels": image.tolist(), "engine": "cortex-m4f"}).json()
    expected = reference_probabilities(upstream_tensors, image[None])[0]
    digit = int(expected.argmax())
    assert answer["prediction"] == digit
    assert answer["probabilities"][digit] == pytest.approx(expected[digit], abs=CONFIDENCE_STEP)
    mcu = answer["microcontroller"]
    assert mcu["precision"] == "float32"
    stored = [row["name"] for row in mcu["layers"]]  # the table's rows, in order (padding folded away)
    order = [layer.name for layer in spec.LAYERS]
    assert stored == sorted(stored, key=order.index) and stored[-1] == order[-1] and len(stored) > len(order) // 2


@needs_avr
def test_atmega2560_cycles_are_read_live_from_simavr(upstream_int8, mnist_test, tmp_path):
    """The runner writes each mark as it happens: the demo's whole-image cycles equal those of the same firmware run
    the normal way (the runner's summary at exit); the row schedule has no per-layer marks, and says so."""
    images, labels = mnist_test.images[:2], mnist_test.labels[:2]
    with TestClient(demo.create_app(upstream_int8, "int8", targets=["atmega2560"])) as client:
        answers = [client.post("/api/predict", json={"pixels": image.tolist(), "engine": "atmega2560"}).json()
                   for image in images]
    expected = int8_logits(upstream_int8, images).argmax(axis=1)
    assert [a["prediction"] for a in answers] == expected.tolist()
    plain = plain_firmware_counts(upstream_int8, "atmega2560", images, labels, tmp_path)
    live = [a["microcontroller"]["whole_image"] for a in answers]
    # AVR cycles include the 1 kHz timer interrupt, whose phase depends on when the image arrived: a run may see
    # one tick more or less (the handler: about 60 cycles); the two images' counts differ by thousands
    assert abs(plain[0] - plain[1]) > 10 * TIMER_TICK_CYCLES
    assert all(abs(a - b) <= TIMER_TICK_CYCLES for a, b in zip(live, plain)), (live, plain)
    assert all(a["microcontroller"]["counts"] == "cycles" and a["microcontroller"]["layers"] == []
               and "row by row" in a["microcontroller"]["per_layer_note"] for a in answers)


@needs_avr
def test_a_member_whose_stack_does_not_fit_the_atmega2560_says_so(mnist_test):
    """Width 1.5 at 28x28: its row plan fits the 8 KB, so the engine is offered, but the chip crashes when the stack
    runs into the static data. The answer says that (not "stopped answering, started again"), and so does every
    later request, without another simulator."""
    import torch

    from mobile_lenet.model.images import resize_digits
    from mobile_lenet.model.network import MobileLeNet, to_noodle
    from mobile_lenet.quantization.quantize import quantize_model

    arch = spec.Architecture.from_options(1.5, None, 28)
    torch.manual_seed(0)
    qmodel = quantize_model(to_noodle(MobileLeNet(arch).eval()), resize_digits(mnist_test.images[:64], 28), arch=arch)
    started = []
    real_enter = SimulatorRun.__enter__

    def counting_enter(run):
        started.append(run)
        return real_enter(run)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SimulatorRun, "__enter__", counting_enter)
        with TestClient(demo.create_app(qmodel, "int8", targets=["atmega2560"])) as client:
            for _ in range(2):
                response = client.post("/api/predict", json={"pixels": mnist_test.images[0].tolist(),
                                                             "engine": "atmega2560"})
                assert response.status_code == 503, response.text[:300]
                assert "does not fit: its stack ran into the static data" in response.json()["error"]
    assert len(started) == 1
