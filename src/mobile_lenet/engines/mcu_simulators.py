"""Firmware in simulators: QEMU for the ARM and Xtensa cores, simavr for the AVR, with the UART on a pseudo-terminal.

A ``SimulatorRun`` starts the simulator on a built firmware (``codegen.mcu_firmware``) and gives the path of the
pseudo-terminal its UART is on, so the project's device client talks to it exactly as to a board. When the run
ends, the simulator is stopped (always: a simulator that hangs or crashes never outlives the run) and its
measurements are read:

* ARM (QEMU): a TCG plugin (``c/sim/qemu_insn_plugin.c``) counts every executed instruction and notes the
  count each time the firmware reaches its marker ``ml_mark`` (called right before and right after each
  inference), less the instructions of the 1 kHz SysTick handler (esp32: of the exception handler that emulates
  MULSH/MULUH for QEMU's core, c/targets/startup_xtensa.S); QEMU models no timing, so instructions are
  the measure. Peak stack: the lowest address a store wrote in the stack region.
* AVR (simavr, cycle-accurate): the runner (``c/sim/simavr_runner.c``) notes the cycle count at each marker,
  and the lowest stack pointer seen.

Both write a line per mark into the run's marks file as the mark happens (flushed at once), so a long-lived run
can be read image by image while it goes on (``read_new_marks``: the demo's microcontroller engines).

The two host tools are compiled once with the host's C compiler into the cache (``$MOBILE_LENET_CACHE/sim``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mobile_lenet.codegen import c_library as lib
from mobile_lenet.codegen.mcu_firmware import TARGETS, DoesNotFit, Firmware, Target
from mobile_lenet.engines.host_c import cache_root, compiler
from mobile_lenet.errors import UserError
from mobile_lenet.files import clean_stale_tmp, temporary_beside

QEMU = "qemu-system-arm"
QEMU_MACHINES = {  # the board models with the right cores (see shared facts in MCU_SIMULATION.md)
    "cortex-m0plus": ["-M", "microbit", "-global", "nrf51-soc.sram-size=270336",
                      "-global", "nrf51-soc.flash-size=2097152"],  # nRF51 (Cortex-M0) sized like an RP2040
    "cortex-m4f": ["-M", "netduinoplus2"],  # STM32F405
    # Xtensa: an ESP32-like core (windowed registers, FPU, MAC16, loops; no MUL32_HIGH) on the LX60 board
    # (RAM at 0, ROM at the reset vector, a 16550 UART)
    "esp32": ["-M", "lx60", "-cpu", "de233_fpu"],
}
QEMU_PROGRAMS = {"esp32": "qemu-system-xtensa"}  # the others: QEMU
QEMU_PACKAGES = {"qemu-system-arm": "qemu-system-arm", "qemu-system-xtensa": "qemu-system-misc"}
XTENSA_USER_VECTOR_OFFSET = 0x340  # from the vector base: the MULSH/MULUH emulation (c/targets/startup_xtensa.S)
START_TIMEOUT_S = 30  # until the simulator names its pseudo-terminal
STOP_TIMEOUT_S = 10  # after SIGTERM, before SIGKILL
AVR_TIMER_HANDLER = "__vector_17"  # TIMER1_COMPA: the firmware's millisecond tick (c/targets/uart_avr.c)


@dataclass
class Measurements:
    """What a simulator measured over a run: per image, and the run's peak stack."""

    per_image: list = field(default_factory=list)  # instructions (ARM) or cycles (AVR) of each inference
    excluded: list = field(default_factory=list)  # ARM: timer-interrupt instructions left out, per image
    peak_stack_bytes: int | None = None
    # profile builds, per image: the count from the start to the end of the first marked layer, from there to the
    # end of the next, ..., and last from the last marked layer to the end (softmax, argmax); they sum to per_image
    per_layer: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ host tools
def _build_tool(source_name: str, output_name: str, flags: list[str], libraries: list[str]) -> Path:
    """Compile one of ``c/sim``'s host tools into the cache (reused while its source and flags are the same)."""
    source = Path(str(lib.c_folder())) / "sim" / source_name
    cc = compiler()
    command_tail = [*flags, str(source), *libraries]
    digest = hashlib.sha256(source.read_bytes() + (Path(source).with_name("qemu_plugin_api.h").read_bytes()
                                                  if "qemu" in source_name else b"")
                            + " ".join([cc, *command_tail]).encode()).hexdigest()[:16]
    folder = cache_root().parent / "sim" / digest
    tool = folder / output_name
    if tool.is_file():
        return tool
    try:
        folder.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(folder)  # a partial build of a killed run
        partial = temporary_beside(tool)
    except OSError as e:
        raise UserError(f"{folder}: cannot build {output_name} there ({e.strerror or e}); set MOBILE_LENET_CACHE "
                        f"to a folder you can write") from None
    result = subprocess.run([cc, "-o", str(partial), *command_tail], capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        first = (result.stderr.strip().splitlines() or ["no message"])[0]
        hint = " (install Debian's libsimavr-dev)" if "simavr" in result.stderr else ""
        raise UserError(f"building {source_name} failed{hint}: {first}")
    os.replace(partial, tool)
    return tool


def qemu_plugin() -> Path:
    """The instruction-counting QEMU plugin (a shared library)."""
    return _build_tool("qemu_insn_plugin.c", "libqemu_insn_plugin.so", ["-std=c99", "-O2", "-shared", "-fPIC"], [])


def check_simulator(target: Target) -> None:
    """One line naming the Debian package to install when the target's simulator is missing."""
    if target.simulator == "simavr":
        if not Path("/usr/include/simavr/sim_avr.h").is_file() and shutil.which("simavr") is None:
            raise UserError("simavr not found: install Debian's simavr and libsimavr-dev "
                            "(apt-get install simavr libsimavr-dev)")
        return
    program = QEMU_PROGRAMS.get(target.name, QEMU)
    if shutil.which(program) is None:
        package = QEMU_PACKAGES[program]
        raise UserError(f"{program} not found: install Debian's {package} (apt-get install {package})")


def simavr_runner() -> Path:
    """The simavr runner program."""
    check_simulator(TARGETS["atmega2560"])
    return _build_tool("simavr_runner.c", "simavr_runner", ["-std=c99", "-O2"], ["-lsimavr"])


# ------------------------------------------------------------------------------------------------ runs
def mark_intervals(counts: list[int], skipped: list[int]) -> list[int]:
    """The counts between consecutive marks of one image (its start, each marked layer's end, its end), less
    what the skip range took in each."""
    return [(counts[i + 1] - counts[i]) - (skipped[i + 1] - skipped[i]) for i in range(len(counts) - 1)]


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with_parent():
    """A ``preexec_fn`` that has Linux send the simulator SIGKILL when this process dies (even by ``kill -9``),
    so none is left running; None where there is no prctl. (Linux sends it when the forking *thread* ends:
    a ``SimulatorRun`` lives in one thread.)"""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError, TypeError):
        return None
    parent = os.getpid()

    def set_parent_death_signal():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)

    return set_parent_death_signal


class SimulatorRun:
    """A simulator running a firmware, for the length of a ``with`` block: ``port`` is its UART's pty."""

    def __init__(self, firmware: Firmware, work_dir: Path):
        self.firmware, self.work_dir = firmware, Path(work_dir)
        self.process: subprocess.Popen | None = None
        self.port: str | None = None
        self.measurements = Measurements()
        self._summary_text = self._early_output = ""
        self.marks_file = self.work_dir / "marks.txt"
        self._marks_read = 0  # bytes of the marks file that read_new_marks has returned

    # -------------------------------------------------------------------------------------------- start
    def __enter__(self) -> "SimulatorRun":
        target = self.firmware.target
        if target.simulator == "qemu":
            command = self._qemu_command()
        else:
            command = self._simavr_command()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                                        preexec_fn=_dies_with_parent())
        self.port = self._read_port()
        return self

    def _skip_range(self) -> tuple[int, int]:
        """The code whose instructions are not the inference's: the ARM boards' 1 kHz SysTick handler; on the
        esp32 target the user exception handler, which emulates the MUL32_HIGH instructions the simulated core
        lacks (the trapping instruction itself is counted once, as the ESP32 executes it)."""
        symbols = self.firmware.symbols
        if self.firmware.target.name == "esp32":
            return symbols["_vectors"][0] + XTENSA_USER_VECTOR_OFFSET, symbols["_vectors_end"][0]
        handler, handler_size = symbols["SysTick_Handler"]
        handler &= ~1  # a Thumb function's address has bit 0 set
        return handler, handler + handler_size

    def _qemu_command(self) -> list[str]:
        program = QEMU_PROGRAMS.get(self.firmware.target.name, QEMU)
        check_simulator(self.firmware.target)
        symbols = self.firmware.symbols
        skip_lo, skip_hi = self._skip_range()
        self.marks_file.unlink(missing_ok=True)
        self.stack_top = symbols["_estack"][0]
        plugin = (f"{qemu_plugin()},mark={symbols['ml_mark'][0] & ~1:#x},out={self.marks_file},"
                  f"stack_lo={symbols['_ebss'][0]:#x},stack_hi={self.stack_top:#x},"
                  f"skip_lo={skip_lo:#x},skip_hi={skip_hi:#x}")
        return [program, *QEMU_MACHINES[self.firmware.target.name], "-nographic", "-monitor", "none", "-serial", "pty",
                "-kernel", str(self.firmware.elf), "-plugin", plugin]

    def _simavr_command(self) -> list[str]:
        symbols = self.firmware.symbols
        handler, handler_size = symbols[AVR_TIMER_HANDLER]
        self.marks_file.unlink(missing_ok=True)
        return [str(simavr_runner()), "--mark", f"{symbols['ml_mark'][0]:#x}", "--max-seconds", "3600",
                "--marks-out", str(self.marks_file),
                "--skip", f"{handler:#x}:{handler + handler_size:#x}", *(["--xmem"] if self.firmware.external_ram else []),
                str(self.firmware.elf)]

    def _read_port(self) -> str:
        """The pty the simulator names on its output, waited for at most START_TIMEOUT_S (select, then read what
        is there: a simulator that prints nothing or half a line cannot block the wait past its deadline)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        fd, output = self.process.stdout.fileno(), b""
        while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            output += chunk
            match = re.search(rb"(/dev/pts/\d+)\D", output)
            if match:
                self._early_output = output.decode(errors="replace")
                return match[1].decode()
        self._stop()
        seen = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
        waited = f" within {START_TIMEOUT_S:g} s" if time.monotonic() >= deadline else ""
        raise UserError(f"{self.firmware.target.simulator} did not start{waited}: "
                        f"{' / '.join(seen[-2:]) or 'no output'}")

    def read_new_marks(self) -> list[tuple[int, int]]:
        """(counter, skipped) at each mark the firmware reached since the last call, read from the marks file
        while the simulator runs (both simulators write and flush a line per mark as it happens; a line still
        being written is left for the next call). The counter is instructions (QEMU) or cycles (simavr);
        ``skipped``: what the skip range took so far (0 on the AVR, whose count keeps its timer interrupt)."""
        try:
            with open(self.marks_file, "rb") as marks:
                marks.seek(self._marks_read)
                text = marks.read()
        except FileNotFoundError:  # no mark reached yet
            return []
        complete = text[:text.rfind(b"\n") + 1]
        self._marks_read += len(complete)
        rows = [line.split() for line in complete.decode("ascii", errors="replace").splitlines()
                if line.startswith("mark ")]
        avr = self.firmware.target.simulator == "simavr"
        return [(int(row[3]), 0 if avr else int(row[5])) for row in rows]

    # -------------------------------------------------------------------------------------------- stop
    def __exit__(self, *exc) -> None:
        self._stop()
        # what the host saw (a serial port that went away, or answers from overwritten weights) is a symptom: say
        # what happened on the chip; a DoesNotFit, as a build too large for the chip is (the main job records it,
        # a search prunes it)
        if (reason := self.stack_collision()) is not None:
            raise DoesNotFit(reason) from None
        if exc[0] is None:
            self._read_measurements()

    def stack_collision(self) -> str | None:
        """Why an AVR firmware's results are void, when its stack grew down into its static data (the build's
        static RAM fits the chip, but not together with the stack the network needs): the chip crashed, or ran on
        with overwritten data and answered wrong. One line, or None."""
        if self.firmware.target.simulator != "simavr" or self.firmware.external_ram:
            return None
        summary = self._simavr_summary()
        if summary is None:
            return None
        static_end = self.firmware.symbols["__bss_end"][0] & 0xFFFF  # data addresses carry 0x800000 in an AVR ELF
        if summary["min_sp"] > static_end:
            return None
        stack = summary["ramend"] - summary["min_sp"]
        what = "the chip crashed" if summary.get("stop") == "crashed" else "overwrote it, so its answers are void"
        return (f"{self.firmware.target.name}: the {'int8' if self.firmware.int8 else 'float'} model does not fit: "
                f"its stack ran into the static data and {what} (static RAM "
                f"{self.firmware.static_ram_bytes:,} bytes plus at least {stack:,} bytes of stack, over the chip's "
                f"{self.firmware.target.ram_bytes:,} bytes of SRAM)")

    def stop(self, kill: bool = False) -> None:
        """Stop the simulator now, for a run held open across many requests rather than a ``with`` block; its
        measurements are not read. SIGTERM, then SIGKILL after STOP_TIMEOUT_S; ``kill``: SIGKILL at once (a
        simulator that stopped answering may not heed a SIGTERM either)."""
        if kill and self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self._stop()  # (one that ended already: its output pipe read and closed)

    def _stop(self) -> None:
        if self.process is None or self.process.stdout is None or self.process.stdout.closed:
            return  # not started, or stopped and read already
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        # read what it printed last (simavr_runner's summary) also when it ended by itself, e.g. a crashed core
        try:
            output, _ = self.process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            output, _ = self.process.communicate()
        self._summary_text = self._early_output + (output or "")

    def _read_measurements(self) -> None:
        if self.firmware.target.simulator == "qemu":
            self._read_qemu_marks()
        else:
            self._read_simavr_summary()

    def _read_qemu_marks(self) -> None:
        """``mark <n> insns <I> skipped <S> stack_min <A> interval_stack_min <B>`` lines, two per image."""
        rows = [line.split() for line in self.marks_file.read_text().splitlines() if line.startswith("mark ")]
        self._split_marks([int(row[3]) for row in rows], [int(row[5]) for row in rows])
        exits = [line.split() for line in self.marks_file.read_text().splitlines() if line.startswith("exit ")]
        if exits:
            self.measurements.peak_stack_bytes = self.stack_top - int(exits[-1][6], 16)

    def _split_marks(self, counts: list[int], skipped: list[int]) -> None:
        """The counter at each mark, into images: a mark before and after each inference, and in a profile
        build one after each marked layer between them; what the skip range took is left out."""
        per_image = 2 + len(self.firmware.layer_marks)
        for start in range(0, len(counts) - per_image + 1, per_image):
            count, skip = counts[start:start + per_image], skipped[start:start + per_image]
            intervals = mark_intervals(count, skip)
            self.measurements.per_image.append(sum(intervals))
            self.measurements.excluded.append(skip[-1] - skip[0])
            if self.firmware.layer_marks:
                self.measurements.per_layer.append(intervals)

    def _simavr_summary(self) -> dict | None:
        """The JSON summary simavr_runner printed last (None when it printed none)."""
        lines = [line for line in self._summary_text.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None

    def _read_simavr_summary(self) -> None:
        summary = self._simavr_summary()
        if summary is None:
            raise UserError("simavr_runner ended without its summary")
        # cycles are the chip's time, its timer interrupts included: nothing is left out on the AVR
        self._split_marks(summary["marks"], [0] * len(summary["marks"]))
        self.measurements.peak_stack_bytes = summary["ramend"] - summary["min_sp"]
