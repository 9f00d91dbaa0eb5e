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
from mobile_lenet.apps.device import (DeviceError, DeviceLink, latency_summary, parse_reply, rotate_images,
                                      run_on_device)
from mobile_lenet.engines.reference import reference_logits, softmax

TEST_TIMEOUT_MS = 300



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
    assert result["accuracy"] == result["correct"] / 100
    # each reply's confidence is the reference probability rounded to 4 decimals
    assert result["mean_confidence"] == pytest.approx(float(expected.max(axis=1).mean()), abs=6e-5)
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


def test_an_image_that_straddles_the_timeout_is_not_dropped(simulated_device, test_images):
    """Four parts 0.12 s apart: the image takes 0.36 s in all, longer than the 0.3 s timeout, but no gap
    between two bytes reaches it, so each byte restarts the timeout and the image is classified."""
    images, _, expected = test_images
    data = images[8].tobytes()
    with DeviceLink.open(simulated_device, timeout=2.0) as link:
        link.wait_ready()
        start = time.monotonic()
        for part in range(4):
            if part:
                time.sleep(0.12)
            link.port.write(data[part * 196:(part + 1) * 196])
            link.port.flush()
        assert time.monotonic() - start > TEST_TIMEOUT_MS / 1000  # the image straddles the timeout
        line = link.read_line(time.monotonic() + 2.0)
    assert line is not None and line.startswith("PRED "), line  # not READY: nothing was dropped
    assert parse_reply(line).digit == expected[8].argmax()


def test_idle_device_repeats_ready(simulated_device):
    """A host that connects late (pyserial flushes the first READY) still gets one within the timeout."""
    with DeviceLink.open(simulated_device, timeout=2.0) as link:
        start = time.monotonic()
        link.wait_ready()
        link.wait_ready()
        assert time.monotonic() - start < 2.0


# How late a deadline may be met: the client reads in slices of READ_SLICE_S (0.05 s), plus scheduling delays
# on a busy machine. A client that blocks for its whole timeout in one read (0.5 s) overshoots far more.
DEADLINE_SLACK_S = 0.2


def test_device_that_never_answers_times_out(silent_pty):
    with DeviceLink.open(silent_pty.path, timeout=0.5) as link:
        start = time.monotonic()
        with pytest.raises(DeviceError, match="no READY from the device within 0.5 s"):
            link.wait_ready()
        elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 0.5 + DEADLINE_SLACK_S


def test_read_line_keeps_a_deadline_shorter_than_the_timeout(silent_pty):
    """The deadline, not the port's timeout, bounds a read: 0.1 s from now means about 0.1 s."""
    with DeviceLink.open(silent_pty.path, timeout=0.5) as link:
        for wait in (0.1, 0.25):
            start = time.monotonic()
            assert link.read_line(start + wait) is None
            elapsed = time.monotonic() - start
            assert wait <= elapsed < wait + DEADLINE_SLACK_S, (wait, elapsed)


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


class VanishedPort:
    """A USB serial port unplugged mid-run: every call fails the way pyserial's POSIX port then fails."""

    @property
    def in_waiting(self):
        raise OSError(5, "Input/output error")

    def read(self, size):
        raise OSError(5, "Input/output error")

    def write(self, data):
        return len(data)

    def flush(self):
        import termios
        raise termios.error(5, "Input/output error")

    def close(self):
        import termios
        raise termios.error(5, "Input/output error")


def test_a_board_that_disconnects_is_one_device_error():
    link = DeviceLink(VanishedPort(), "/dev/ttyUSB0", timeout=0.5)
    with pytest.raises(DeviceError, match="/dev/ttyUSB0: cannot write to the serial port"):
        link.send_image(np.zeros((28, 28), np.uint8))
    with pytest.raises(DeviceError, match="/dev/ttyUSB0: the serial port failed"):
        link.read_reply(0)
    link.close()  # the port is gone: closing it is no second error


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
    # a quarter turn is exact: counter-clockwise, as np.rot90
    np.testing.assert_array_equal(rotate_images(images, 90), np.rot90(images, 1, axes=(1, 2)))


def test_rotate_images_turns_about_the_centre_counter_clockwise():
    """A bright dot 8 pixels right of the centre, turned 30 degrees, lands 8 * (cos 30, -sin 30) from it
    (row axis pointing down: counter-clockwise on screen moves it up)."""
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 13:15, 21:23] = 255  # a 2x2 dot centred at row 13.5, column 21.5 (pixel indices)
    rotated = rotate_images(image, 30)[0].astype(np.float64)
    rows, cols = np.indices(rotated.shape)
    centroid = np.array([(rows * rotated).sum(), (cols * rotated).sum()]) / rotated.sum()
    angle = np.radians(30)
    expected = np.array([13.5 - 8 * np.sin(angle), 13.5 + 8 * np.cos(angle)])  # the image centre is (13.5, 13.5)
    np.testing.assert_allclose(centroid, expected, atol=0.3)


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


def test_latency_summary_by_hand():
    stats = latency_summary(np.array([0.4, 0.1, 0.3, 0.2, 1.0]))
    assert stats["mean"] == pytest.approx(0.4) and stats["max"] == 1.0 and stats["p50"] == pytest.approx(0.3)
    assert stats["p90"] == pytest.approx(0.76) and stats["p99"] == pytest.approx(0.976)  # linear interpolation
    assert latency_summary(np.array([])) == {}


def test_device_cli_sends_a_members_images_at_its_input_size(member16_run, member16_tensors, tmp_path, capsys):
    """A board running a 16x16 member (here its host program on a pty) reads 256-byte images: with --model, the
    test digits go at the model's input size, and the board's digits are the reference engine's on the digits
    resized with PIL here."""
    from PIL import Image

    from mobile_lenet.model.data import load_sample

    program = host_c.build_host_program(member16_tensors, defines={"ML_TIMEOUT_MS": TEST_TIMEOUT_MS},
                                        cache=tmp_path / "build")
    pty = Pty()
    process = subprocess.Popen([str(program), "serve"], stdin=pty.master, stdout=pty.master)
    try:
        code = main(["device", "--port", pty.path, "--dataset", "mnist-sample", "--count", "5", "--timeout", "2",
                     "--model", str(member16_run), "--json"])
    finally:
        process.kill()
        process.wait()
        pty.close()
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    images = np.stack([np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR))
                       for image in load_sample("test").images[:5]])
    assert result["predictions"] == reference_logits(member16_tensors, images).argmax(axis=1).tolist()
    assert result["agreement"] == 5
