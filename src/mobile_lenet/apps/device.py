"""``mobile-lenet device``: classify test images on a board over its serial port and tally the answers.

The board runs the exported firmware (``firmware.py``), which speaks the seed's protocol: it prints
``READY``, reads exactly one image's raw bytes (S x S for a model of input size S: 784 for the seed's 28x28;
the generated model header sets it), answers ``PRED <digit> <seconds> <confidence>``, and repeats
``READY`` when no byte has arrived for 3 s (dropping a partial image). ``DeviceLink`` is the host side of that
protocol; every failure (no READY, no reply, a malformed reply, a vanished port) becomes a one-line
``DeviceError`` instead of a hang or a traceback.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import serial
from PIL import Image

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.progress import progress_bar

try:
    from termios import error as TermiosError  # a vanished USB serial port's tcdrain/tcsetattr raises it
except ImportError:  # not POSIX
    class TermiosError(Exception):
        pass

PORT_ERRORS = (serial.SerialException, OSError, TermiosError)  # what a port that fails or vanishes raises

BAUD_RATE = 115200
IMAGE_BYTES = spec.SEED_INPUT_SIZE ** 2  # the seed's 28x28 image; a family member's is input_size ** 2
REPLY_PATTERN = re.compile(r"PRED ([0-9]) ([0-9]+\.[0-9]{4}) ([0-9]+\.[0-9]{4})")
READ_SLICE_S = 0.05  # how long one read waits, so deadlines are checked often
MAX_LINE_BYTES = 256  # a longer "line" is noise (e.g. a wrong baud rate), not the protocol
MAX_TIMEOUT_S = 3600.0  # --timeout must be finite (a NaN deadline would never pass) and at most an hour
EXTRA_REPLY_WAIT_S = 0.1  # after READY and after the last image: how long an unasked PRED line has to show up
MAX_REPLY_SECONDS = MAX_TIMEOUT_S  # a device-reported inference time above an hour is not a measurement


class DeviceError(UserError):
    """The device did not answer, or answered something that is not the protocol."""


@dataclass(frozen=True)
class Reply:
    """One ``PRED`` line."""

    digit: int
    seconds: float  # inference time measured on the device
    confidence: float  # the softmax probability of ``digit``


def parse_reply(line: str) -> Reply | None:
    """The ``Reply`` of a ``PRED <digit> <seconds> <confidence>`` line, or None if it is not one."""
    match = REPLY_PATTERN.fullmatch(line)
    if match is None:
        return None
    return Reply(int(match[1]), float(match[2]), float(match[3]))


def _show(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")


class DeviceLink:
    """The host side of the serial protocol, over an open pyserial port (or anything with read/write)."""

    max_line_bytes = MAX_LINE_BYTES  # the layer debugger's lines (simulate --layers) are longer
    image_size = spec.SEED_INPUT_SIZE  # the side of the images the firmware's model takes (its input size)

    def __init__(self, port, name: str = "device", timeout: float = 5.0):
        if not (0 < timeout <= MAX_TIMEOUT_S):  # also refuses NaN, which would make every wait endless
            raise DeviceError(f"timeout must be above 0 and at most {MAX_TIMEOUT_S:g} seconds, not {timeout}")
        self.port, self.name, self.timeout = port, name, timeout
        self._pending = b""

    @classmethod
    def open(cls, port_name: str, timeout: float = 5.0) -> "DeviceLink":
        """Open a serial port at 115200 baud."""
        try:
            port = serial.Serial(port_name, BAUD_RATE, timeout=READ_SLICE_S, write_timeout=timeout)
        except (serial.SerialException, OSError, ValueError) as e:
            raise DeviceError(f"{port_name}: cannot open the serial port ({e})") from None
        return cls(port, port_name, timeout)

    def close(self) -> None:
        try:
            self.port.close()
        except PORT_ERRORS:  # the port is gone already; the error that showed it is reported
            pass

    def __enter__(self) -> "DeviceLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_line(self, deadline: float) -> str | None:
        """The next line (without its line end), or None if none is complete by ``deadline`` (monotonic)."""
        while b"\n" not in self._pending:
            if len(self._pending) > self.max_line_bytes:
                raise DeviceError(f"{self.name}: unreadable data from the device, no line end in "
                                  f"{len(self._pending)} bytes (wrong baud rate? expected {BAUD_RATE})")
            if time.monotonic() >= deadline:
                return None
            try:
                self._pending += self.port.read(max(1, self.port.in_waiting))
            except PORT_ERRORS as e:
                raise DeviceError(f"{self.name}: the serial port failed ({e})") from None
        line, _, self._pending = self._pending.partition(b"\n")
        return line.rstrip(b"\r").decode("ascii", errors="replace")

    def wait_ready(self) -> None:
        """Wait for a ``READY`` line, skipping anything else (boot messages)."""
        deadline = time.monotonic() + self.timeout
        skipped = 0
        while (line := self.read_line(deadline)) is not None:
            if line.strip() == "READY":
                return
            skipped += 1
        noise = f" ({skipped} other lines)" if skipped else ""
        raise DeviceError(f"{self.name}: no READY from the device within {self.timeout:g} s{noise}; is the "
                          f"Mobile-LeNet firmware running on it?")

    def send_image(self, image: np.ndarray) -> None:
        """Write one uint8 image of the model's input size (``image_size`` squared raw bytes: 784 for 28x28)."""
        data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        if len(data) != self.image_size ** 2:
            raise ValueError(f"an image is {self.image_size ** 2} bytes, got {len(data)}")
        try:
            self.port.write(data)
            self.port.flush()
        except PORT_ERRORS as e:
            raise DeviceError(f"{self.name}: cannot write to the serial port ({e})") from None

    def read_reply(self, index: int = 0) -> Reply:
        """Wait for the ``PRED`` line answering image ``index``."""
        deadline = time.monotonic() + self.timeout
        readies = 0
        while (line := self.read_line(deadline)) is not None:
            if line.strip() == "READY":  # the device timed out and dropped (part of) an image
                readies += 1
                continue
            reply = parse_reply(line.strip())
            if reply is None:
                raise DeviceError(f"{self.name}: malformed reply to image {index}: {_show(line)} "
                                  f"(expected 'PRED <digit> <seconds> <confidence>')")
            if reply.confidence > 1:
                raise DeviceError(f"{self.name}: reply to image {index} gives a confidence of {reply.confidence:g}, "
                                  f"but a probability is at most 1: {_show(line)}")
            if reply.seconds > MAX_REPLY_SECONDS:
                raise DeviceError(f"{self.name}: reply to image {index} gives an inference time of "
                                  f"{reply.seconds:g} s, over {MAX_REPLY_SECONDS:g} s: not a measurement")
            return reply
        why = (" (the device printed READY: it dropped the image, bytes lost on the link?)" if readies else "")
        raise DeviceError(f"{self.name}: no reply to image {index} within {self.timeout:g} s{why}")

    def check_no_extra_reply(self, index: int, wait: float = 0.0) -> None:
        """DeviceError if a second ``PRED`` line for image ``index`` (index -1: any line before the first image) has
        arrived (within ``wait`` seconds): the replies would go out of step with the images."""
        deadline = time.monotonic() + wait
        while True:
            try:
                waiting = self.port.in_waiting
                if waiting:
                    self._pending += self.port.read(waiting)
            except PORT_ERRORS as e:
                raise DeviceError(f"{self.name}: the serial port failed ({e})") from None
            while b"\n" in self._pending:
                line, _, rest = self._pending.partition(b"\n")
                text = line.rstrip(b"\r").decode("ascii", errors="replace").strip()
                if text == "READY":
                    self._pending = rest
                    continue
                if index < 0:
                    raise DeviceError(f"{self.name}: a reply before any image was sent ({_show(text)} after READY); "
                                      f"the answers would go out of step with the images (reset the board?)")
                raise DeviceError(f"{self.name}: more than one reply to image {index} ({_show(text)} after its "
                                  f"PRED line); the answers would go out of step with the images")
            if time.monotonic() >= deadline:
                return
            time.sleep(min(READ_SLICE_S, max(0.0, deadline - time.monotonic())))

    def classify(self, image: np.ndarray, index: int = 0) -> Reply:
        """Send one image and return the device's answer (refusing a second answer already on the line)."""
        self.send_image(image)
        reply = self.read_reply(index)
        self.check_no_extra_reply(index)
        return reply


def rotate_images(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate every image by ``degrees`` (counter-clockwise, bilinear, black fill): a robustness probe."""
    if not degrees:
        return images

    return np.stack([np.asarray(Image.fromarray(img).rotate(degrees, resample=Image.BILINEAR), dtype=np.uint8)
                     for img in images])


def latency_summary(seconds: np.ndarray) -> dict:
    """Mean, percentiles and maximum of the device-reported inference times (seconds)."""
    if len(seconds) == 0:
        return {}
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99])
    return {"mean": float(np.mean(seconds)), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "max": float(np.max(seconds))}


def run_on_device(link: DeviceLink, images: np.ndarray, labels: np.ndarray, progress: bool = True) -> dict:
    """Wait for READY, classify every image on the device, and tally accuracy and latency."""
    link.wait_ready()
    link.check_no_extra_reply(-1, wait=EXTRA_REPLY_WAIT_S)
    replies, round_trips = [], []
    for index, image in enumerate(progress_bar(images, progress, desc="device", unit="img")):
        start = time.monotonic()
        replies.append(link.classify(image, index))
        round_trips.append(time.monotonic() - start)
    if replies:
        link.check_no_extra_reply(len(replies) - 1, wait=EXTRA_REPLY_WAIT_S)
    digits = np.array([r.digit for r in replies], dtype=np.int64)
    correct = int((digits == labels.astype(np.int64)).sum())
    return {"port": link.name, "n": len(replies), "correct": correct,
            "accuracy": correct / len(replies) if replies else 0.0,
            "latency_s": latency_summary(np.array([r.seconds for r in replies])),
            "round_trip_s": latency_summary(np.array(round_trips)),
            "mean_confidence": float(np.mean([r.confidence for r in replies])) if replies else 0.0,
            "predictions": digits.tolist(), "confidences": [r.confidence for r in replies]}


def format_report(result: dict) -> str:
    """The device run in a few lines."""
    lines = [f"{result['port']}: accuracy {100 * result['accuracy']:.2f}% ({result['correct']}/{result['n']})"]
    if result.get("agreement") is not None:
        lines.append(f"agreement with the {result['agreement_engine']} engine: {result['agreement']}/{result['n']}")
    for key, title in (("latency_s", "inference on the device"), ("round_trip_s", "round trip (transfer too)")):
        stats = result[key]
        if stats:
            lines.append(f"{title}: mean {1000 * stats['mean']:.1f} ms, p50 {1000 * stats['p50']:.1f} ms, "
                         f"p90 {1000 * stats['p90']:.1f} ms, p99 {1000 * stats['p99']:.1f} ms, "
                         f"max {1000 * stats['max']:.1f} ms")
    return "\n".join(lines)
