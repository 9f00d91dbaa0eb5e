"""The device client against a simulated device: the host-built C program on a pseudo-terminal.

The simulated device is ``mobile_lenet_host serve`` (the same protocol state machine as the firmware),
built with ``-DML_TIMEOUT_MS=300`` so the timeout tests take a fraction of a second. It sits on the master
side of a pty; the client opens the slave side by its path with pyserial, as it would open /dev/ttyUSB0.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import tty

import numpy as np
import pytest

from conftest import MNIST_10K, UPSTREAM
from mobile_lenet.engines import host_c
from mobile_lenet.apps.cli import main
from mobile_lenet.apps.device import DeviceError, DeviceLink, parse_reply, rotate_images, run_on_device
from mobile_lenet.engines.reference import reference_logits, softmax

TEST_TIMEOUT_MS = 300


@pytest.fixture(scope="session")
def upstream_tensors():
    """The seed author's trained weights (97.55% on MNIST), read from the Noodle text files."""
    from mobile_lenet.formats.model_files import load_tensors

    return load_tensors(UPSTREAM / "noodle")


@pytest.fixture(scope="module")
def device_program(upstream_tensors, tmp_path_factory):
    return host_c.build_host_program(upstream_tensors, defines={"ML_TIMEOUT_MS": TEST_TIMEOUT_MS},
                                       cache=tmp_path_factory.mktemp("device_build"))


class Pty:
    """A pseudo-terminal in raw mode: ``master`` is the device's end, ``path`` the port the client opens."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no line editing: bytes pass unchanged, as on a serial line
        self.path = os.ttyname(self.slave)

    def close(self):
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def simulated_device(device_program):
    """The path of a pty with the C program serving the protocol on its other end."""
    pty = Pty()
    process = subprocess.Popen([str(device_program), "serve"], stdin=pty.master, stdout=pty.master)
    yield pty.path
    process.kill()
    process.wait()
    pty.close()


@pytest.fixture
def silent_pty():
    """A pty with nothing on the other end (a board without the firmware); the test writes its lines."""
    pty = Pty()
    yield pty
    pty.close()


@pytest.fixture(scope="module")
def test_images(mnist_test, upstream_tensors):
    images, labels = mnist_test.images[:100], mnist_test.labels[:100]
    return images, labels, softmax(reference_logits(upstream_tensors, images))


def test_hundred_images_match_the_reference(simulated_device, test_images):
    images, labels, expected = test_images
    with DeviceLink.open(simulated_device, timeout=2.0) as link:
        result = run_on_device(link, images, labels, progress=False)
    assert result["n"] == 100
    assert result["predictions"] == expected.argmax(axis=1).tolist()
    assert result["correct"] == int((expected.argmax(axis=1) == labels).sum())
    latency = result["latency_s"]
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"] < 1.0


def test_reply_format_and_confidence(simulated_device, test_images):
    images, _, expected = test_images
    with DeviceLink.open(simulated_device, timeout=2.0) as link:
        link.wait_ready()
        link.send_image(images[0])
        line = link.read_line(time.monotonic() + 2.0)
    digit, seconds, confidence = line.split(" ")[1:]
    assert line.startswith("PRED ") and len(seconds.split(".")[1]) == 4 and len(confidence.split(".")[1]) == 4
    assert int(digit) == expected[0].argmax()
    assert abs(float(confidence) - expected[0].max()) <= 0.00005 + 1e-6  # rounded to 4 decimals


def test_truncated_image_is_dropped_after_the_timeout(simulated_device, test_images):
    images, _, expected = test_images
    with DeviceLink.open(simulated_device, timeout=2.0) as link:
        link.wait_ready()
        link.port.write(images[5].tobytes()[:300])  # a partial image, then silence
        start = time.monotonic()
        assert link.read_line(start + 2.0) == "READY"
        assert time.monotonic() - start >= TEST_TIMEOUT_MS / 1000 * 0.9
        for index in (6, 7):  # the device is not wedged: full images work again
            assert link.classify(images[index], index).digit == expected[index].argmax()


def test_idle_device_repeats_ready(simulated_device):
    """A host that connects late (pyserial flushes the first READY) still gets one within the timeout."""
    with DeviceLink.open(simulated_device, timeout=2.0) as link:
        start = time.monotonic()
        link.wait_ready()
        link.wait_ready()
        assert time.monotonic() - start < 2.0


def test_device_that_never_answers_times_out(silent_pty):
    start = time.monotonic()
    with DeviceLink.open(silent_pty.path, timeout=0.5) as link:
        with pytest.raises(DeviceError, match="no READY from the device within 0.5 s"):
            link.wait_ready()
    assert time.monotonic() - start < 2.0


def test_ready_but_no_reply_times_out(silent_pty, test_images):
    with DeviceLink.open(silent_pty.path, timeout=0.5) as link:
        os.write(silent_pty.master, b"boot message\r\nREADY\r\n")
        link.wait_ready()
        with pytest.raises(DeviceError, match="no reply to image 3 within 0.5 s"):
            link.classify(test_images[0][0], 3)


def test_malformed_reply_is_reported(silent_pty, test_images):
    with DeviceLink.open(silent_pty.path, timeout=0.5) as link:
        os.write(silent_pty.master, b"READY\r\nPRED 7 0.1 0.99\r\n")
        link.wait_ready()
        with pytest.raises(DeviceError, match=r"malformed reply to image 0: 'PRED 7 0.1 0.99'"):
            link.classify(test_images[0][0], 0)


def test_noise_without_line_ends_is_reported(silent_pty):
    with DeviceLink.open(silent_pty.path, timeout=1.0) as link:
        os.write(silent_pty.master, bytes([0x55, 0xAA, 0xF0, 0x0F]) * 100)  # what a wrong baud rate looks like
        with pytest.raises(DeviceError, match="wrong baud rate"):
            link.wait_ready()


def test_parse_reply():
    assert parse_reply("PRED 3 0.0123 0.9870").digit == 3
    assert parse_reply("PRED 3 0.0123 0.9870").seconds == pytest.approx(0.0123)
    for bad in ("PRED 3 0.0123 0.987", "PRED 10 0.0123 0.9870", "PRED 3 -0.0123 0.9870", "READY", ""):
        assert parse_reply(bad) is None


def test_rotate_images_keeps_shape_and_dtype(test_images):
    images = test_images[0][:3]
    rotated = rotate_images(images, 15)
    assert rotated.shape == images.shape and rotated.dtype == np.uint8 and not np.array_equal(rotated, images)
    assert rotate_images(images, 0) is images


def test_device_cli(simulated_device, capsys):
    code = main(["device", "--port", simulated_device, "--data-dir", str(MNIST_10K), "--count", "20",
                 "--timeout", "2", "--model", str(UPSTREAM / "noodle"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 20 and result["agreement"] == 20 and result["agreement_engine"] == "reference"
    code = main(["device", "--port", simulated_device, "--data-dir", str(MNIST_10K), "--count", "5",
                 "--rotate", "10", "--timeout", "2", "--quiet"])
    assert code == 0
    assert "accuracy" in capsys.readouterr().out


def test_device_cli_errors_are_one_line(silent_pty, tmp_path, capsys):
    assert main(["device", "--port", str(tmp_path / "ttyNOPE"), "--data-dir", str(MNIST_10K), "--count", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mobile-lenet: error:") and "cannot open the serial port" in err and "\n" not in err
    assert main(["device", "--port", silent_pty.path, "--data-dir", str(MNIST_10K), "--count", "1",
                 "--timeout", "0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no READY" in err and "\n" not in err
