"""The simulated microcontrollers as engines of ``mobile-lenet demo``: the firmware answers over its serial protocol.

Each target of ``simulate`` (``cortex-m0plus``, ``cortex-m4f``, ``atmega2560``, ``esp32``) whose cross compiler and
simulator are installed, and whose chip the model fits, is an engine named after the target. Its ``McuEngine``
builds the model's firmware (float or int8, as the model) at the first request for it, starts one simulator,
keeps it running for the next requests and stops it with the server (``close``). Each image goes over the
simulated UART with the device client (``apps.device``): the firmware's reply carries the digit, its confidence
(4 decimals) and the firmware's own clock reading, not the other nine probabilities.

The firmware is the profile build (``c/ml_trace.h``, ML_PROFILE): the simulator's counter (instructions in QEMU,
cycles in simavr) is read at a mark after every layer, and the marks of each image are read live from the run's
marks file after its reply. Their sum exceeds the plain firmware's count by the marks' own cost (a call of a few
instructions each). The ATmega2560 runs the int8 network row by row, where the layers interleave: there only the
whole image is counted.

Threads: requests run in the server's worker threads, which come and go, while Linux sends a simulator its
parent-death signal when the *thread* that forked it ends. So every simulator is started from one long-lived
thread (``SimulatorStarter``), and lives until ``close`` or the process' end. One request at a time per target:
another waits at most ``BUSY_WAIT_S``, then gets ``SimulatorUnavailable`` (the demo's 503). A simulator that
died or stopped answering is stopped, and started again by the next request.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.apps.device import DeviceError, DeviceLink
from mobile_lenet.apps.simulate import layer_names, missing_tools, work_folder
from mobile_lenet.codegen import memory
from mobile_lenet.codegen.mcu_firmware import TARGETS, Target, build_firmware, get_target
from mobile_lenet.engines.mcu_simulators import SimulatorRun, mark_intervals
from mobile_lenet.engines.registry import is_int8
from mobile_lenet.errors import UserError

BUSY_WAIT_S = 10.0  # a request for a target busy with another request waits this long, then gets a 503
REPLY_TIMEOUT_S = 60.0  # one image's reply (a Cortex-M0+ float image is ~100 M simulated instructions)
MARKS_WAIT_S = 5.0  # after the reply, until the image's marks are all in the marks file (already, in practice)
# A simulator idle this long is started afresh at the next request: an idle firmware prints READY every 3 s, and
# rather than rely on what a simulator does once those unread lines fill the pty's buffer, none is left that long.
IDLE_RESTART_S = 15 * 60.0
STARTER_WAIT_S = 120.0  # for the starter thread to start a simulator (which itself gives up after 30 s)
IMAGES_PER_RUN = 10_000  # then a fresh simulator: the marks file (about 1.4 KB an image) does not grow forever
MEASURE_NOTES = {  # what a target's count is, where the target has no note of its own
    "instructions": "instructions executed, counted in QEMU: not cycles (QEMU models no timing)",
    "cycles": "cycles counted by simavr (cycle-accurate), the timer interrupt included",
}


class SimulatorUnavailable(Exception):
    """The target's simulator cannot answer this request (busy, failed, or its firmware cannot be built)."""


# ------------------------------------------------------------------------------------------------ which targets
def plan_ram_bytes(model, target: Target) -> int:
    """The activation RAM the model's plan needs on ``target``: float32 buffers, int8 buffers, or the int8 rows of a
    target that runs the network row by row (``codegen.memory``), for the family member the model records."""
    arch = spec.architecture_of(model)
    if not is_int8(model):
        return memory.plan(memory.FLOAT32, arch).ram_bytes
    return memory.row_plan(arch).ram_bytes if target.int8_schedule == "rows" else memory.int8_plan(arch).ram_bytes


def target_engines(model) -> tuple[list[str], dict[str, str]]:
    """The targets that can run ``model`` here, and for each other target the one-line reason it cannot: its
    tools are missing, or the model's activations alone exceed the chip's RAM (the float network on the
    ATmega2560's 8 KB)."""
    available, unavailable = [], {}
    for name, target in TARGETS.items():
        why = missing_tools(name)
        if why is None:
            need = plan_ram_bytes(model, target)
            if need > target.ram_bytes:
                precision = "int8" if is_int8(model) else "float32"
                why = (f"the {precision} model does not fit: its activations need {need:,} bytes of RAM, "
                       f"the {target.chip} has {target.ram_bytes:,}")
        if why is None:
            available.append(name)
        else:
            unavailable[name] = why
    return available, unavailable


# ------------------------------------------------------------------------------------------------ the starter
class SimulatorStarter:
    """One long-lived thread that starts every simulator, so that a simulator's parent-death signal (sent when the
    thread that forked it ends) comes only when this thread ends: at ``close``, or with the process."""

    def __init__(self):
        self._calls: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="demo-simulator-starter", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            function, future = call
            try:
                future.set_result(function())
            except BaseException as e:  # handed to the caller, which raises it in its own thread
                future.set_exception(e)

    def call(self, function):
        """``function()`` run in the starter thread; its result, or its exception raised here."""
        if not self._thread.is_alive():
            raise SimulatorUnavailable("the demo is shutting down")
        future: Future = Future()
        self._calls.put((function, future))
        try:
            return future.result(timeout=STARTER_WAIT_S)
        except FutureTimeout:
            raise SimulatorUnavailable(f"no simulator started within {STARTER_WAIT_S:g} s") from None

    def close(self) -> None:
        """End the thread (after the calls already queued)."""
        self._calls.put(None)
        self._thread.join(timeout=30)


# ------------------------------------------------------------------------------------------------ one target
class McuEngine:
    """A target's simulator running the model's profile firmware, shared by the demo's requests."""

    def __init__(self, model, target_name: str, starter: SimulatorStarter, busy_wait_s: float = BUSY_WAIT_S):
        self.model, self.target, self.starter = model, get_target(target_name), starter
        self.busy_wait_s = busy_wait_s
        self.reply_timeout_s = REPLY_TIMEOUT_S
        self.idle_restart_s = IDLE_RESTART_S
        self._last_used = 0.0  # time.monotonic() of the last answer
        self._images = 0  # answered by the running simulator
        self.int8 = is_int8(model)
        # per-layer marks need whole feature maps: not the ATmega2560's row-by-row int8 network
        self.per_layer = not (self.int8 and self.target.int8_schedule != "buffers")
        self.lock = threading.Lock()  # one request at a time talks to the simulator
        self._work: contextlib.ExitStack | None = None
        self._work_dir: Path | None = None
        self._firmware = None
        self._build_error: str | None = None
        self._run: SimulatorRun | None = None
        self._link: DeviceLink | None = None
        self._closed = False

    @property
    def process(self):
        """The running simulator's process (None when none runs)."""
        return self._run.process if self._run is not None else None

    def predict(self, image: np.ndarray) -> dict:
        """The firmware's answer for one uint8 image at the model's input size, with its per-layer counts; SimulatorUnavailable when the
        simulator is busy longer than ``busy_wait_s``, fails, or the firmware cannot be built."""
        if not self.lock.acquire(timeout=self.busy_wait_s):
            raise SimulatorUnavailable(f"{self.target.name} is busy with another request (waited "
                                       f"{self.busy_wait_s:g} s); try again")
        try:
            if self._closed:
                raise SimulatorUnavailable("the demo is shutting down")
            if (self._run is None or self._run.process.poll() is not None  # not started yet, or died
                    or time.monotonic() - self._last_used > self.idle_restart_s or self._images >= IMAGES_PER_RUN):
                self._start()
            try:
                answer = self._classify(image)
                self._last_used, self._images = time.monotonic(), self._images + 1
                return answer
            except (DeviceError, TimeoutError) as e:
                run = self._run
                self._stop_simulator(kill=True)  # the next request starts a fresh one
                crash = run.stack_collision() if run is not None else None
                if crash is not None:  # the chip itself crashed (its stack ran into its static data): every image
                    self._build_error = crash  # would, so no fresh simulator either
                    raise SimulatorUnavailable(crash) from None
                raise SimulatorUnavailable(f"{self.target.name}: the simulator stopped answering ({e}); it is "
                                           f"started again on the next request") from None
        finally:
            self.lock.release()

    # -------------------------------------------------------------------------------------------- start, stop
    def _start(self) -> None:
        self._stop_simulator()
        if self._build_error:  # the same firmware would fail the same way
            raise SimulatorUnavailable(self._build_error)
        if self._work is None:
            stack = contextlib.ExitStack()
            self._work_dir = stack.enter_context(work_folder())  # locked; removed at close, or by the next run
            self._work = stack
        if self._firmware is None:
            try:
                self._firmware = build_firmware(self.model, self.target, self._work_dir / "firmware",
                                                profile=self.per_layer)
            except UserError as e:  # DoesNotFit, or a failed build: one line that names the target
                self._build_error = str(e)
                raise SimulatorUnavailable(self._build_error) from None
        run = SimulatorRun(self._firmware, self._work_dir)
        try:
            self.starter.call(run.__enter__)  # forked by the starter thread, see the module docstring
        except UserError as e:
            raise SimulatorUnavailable(f"{self.target.name}: {e}") from None
        self._run = run
        try:
            self._link = DeviceLink.open(run.port, timeout=self.reply_timeout_s)
            self._link.name = f"{self.target.name} ({self.target.simulator})"
            self._link.image_size = spec.architecture_of(self.model).input_size  # the member's SxS bytes
            self._link.wait_ready()
        except DeviceError as e:
            self._stop_simulator(kill=True)
            raise SimulatorUnavailable(f"{self.target.name}: the firmware did not start ({e})") from None
        run.read_new_marks()  # none yet; from here on, each image's marks
        self._last_used, self._images = time.monotonic(), 0

    def _stop_simulator(self, kill: bool = False) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None
        if self._run is not None:
            self._run.stop(kill)
            self._run = None

    def close(self) -> None:
        """Stop the simulator and remove the work folder (waits for a request in progress, at most its reply's
        time)."""
        got = self.lock.acquire(timeout=self.reply_timeout_s + 5)
        try:
            self._closed = True
            self._stop_simulator()
            if self._work is not None:
                self._work.close()
                self._work = None
        finally:
            if got:
                self.lock.release()

    # -------------------------------------------------------------------------------------------- one image
    def _classify(self, image: np.ndarray) -> dict:
        self._link.timeout = self.reply_timeout_s
        self._link.check_no_extra_reply(-1)  # READY lines since the last image are fine; anything else is not
        reply = self._link.classify(image)
        layer_marks = self._firmware.layer_marks
        marks = self._image_marks(2 + len(layer_marks))
        intervals = mark_intervals([count for count, _ in marks], [skipped for _, skipped in marks])
        target, total = self.target, sum(intervals)
        names = layer_names(self.model)
        layers = [{"layer": number, "name": names[number], "count": count}
                  for number, count in zip(layer_marks, intervals)]
        return {
            "digit": reply.digit, "confidence": reply.confidence, "device_seconds": reply.seconds,
            "target": target.name, "chip": target.chip, "simulator": target.simulator,
            "precision": "int8" if self.int8 else "float32", "counts": target.counts,
            "whole_image": total, "layers": layers, "after_last_layer": intervals[-1] if layer_marks else None,
            "marks": len(layer_marks),
            "per_layer_note": None if self.per_layer else
            f"{target.name} runs the int8 network row by row (c/ml_rows_s8.c): its layers interleave, so only the "
            f"whole image is counted",
            "clock_hz": target.clock_hz, "ms_at_clock": 1000.0 * total / target.clock_hz,
            "latency_assumes": "one cycle per instruction" if target.counts == "instructions" else "measured cycles",
            "measure_note": target.measure_note or MEASURE_NOTES[target.counts],
        }

    def _image_marks(self, expected: int) -> list[tuple[int, int]]:
        """The ``expected`` marks of the image just answered, from the live marks file."""
        marks, deadline = [], time.monotonic() + MARKS_WAIT_S
        while len(marks) < expected:
            marks += self._run.read_new_marks()
            if len(marks) >= expected:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(marks)} of the image's {expected} marks after its reply")
            time.sleep(0.01)
        if len(marks) != expected:  # more marks than one image makes: out of step
            raise TimeoutError(f"{len(marks)} marks for one image, expected {expected}")
        return marks


class McuEngines:
    """The demo's microcontroller engines for one model: which exist, and their simulators (started on demand)."""

    def __init__(self, model, targets: list[str] | None = None, busy_wait_s: float = BUSY_WAIT_S):
        available, self.unavailable = target_engines(model)
        if targets is not None:  # a subset asked for (a target that cannot run here is still left out)
            available = [name for name in available if name in targets]
        self.names = available
        self._model, self._busy_wait_s = model, busy_wait_s
        self._engines: dict[str, McuEngine] = {}
        self._starter: SimulatorStarter | None = None
        self._guard = threading.Lock()
        self._closed = False

    def engine(self, name: str) -> McuEngine:
        """The engine of target ``name`` (created at the first request; its simulator starts with that request)."""
        with self._guard:
            if self._closed:
                raise SimulatorUnavailable("the demo is shutting down")
            if name not in self._engines:
                if self._starter is None:
                    self._starter = SimulatorStarter()
                self._engines[name] = McuEngine(self._model, name, self._starter, self._busy_wait_s)
            return self._engines[name]

    def running(self) -> dict[str, McuEngine]:
        """The engines created so far."""
        with self._guard:
            return dict(self._engines)

    def close(self) -> None:
        """Stop every simulator and the starter thread."""
        with self._guard:
            engines, starter = list(self._engines.values()), self._starter
            self._engines, self._starter, self._closed = {}, None, True
        for engine in engines:
            engine.close()
        if starter is not None:
            starter.close()
