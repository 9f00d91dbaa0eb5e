"""The simulators' counters, checked on loops of known length: QEMU's instruction count, simavr's cycles."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.engines.mcu_simulators import QEMU, QEMU_MACHINES, qemu_plugin, simavr_runner

TARGETS_DIR = Path(str(lib.c_folder())) / "targets"
ARM_FLAGS = {"cortex-m0plus": ["-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"],
             "cortex-m4f": ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]}


def marks_of(lines: list[str]) -> list[int]:
    return [int(line.split()[3]) for line in lines if line.startswith("mark ")]


def build_known_loop(target: str, elf: Path, *defines: str) -> Path:
    subprocess.run(["arm-none-eabi-gcc", *ARM_FLAGS[target], "-std=c99", "-O2", *defines, f"-I{TARGETS_DIR}",
                    str(TARGETS_DIR.parent / "sim" / "known_loop.c"), str(TARGETS_DIR / "startup_cortexm.c"),
                    f"-T{TARGETS_DIR / (target + '.ld')}", f"-L{TARGETS_DIR}", "-nostartfiles",
                    "--specs=nano.specs", "--specs=nosys.specs", "-o", str(elf)], check=True)
    return elf


@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4f"])
def test_qemu_plugin_counts_the_instructions_of_a_known_loop_exactly(target, tmp_path):
    """c/sim/known_loop.c: between its two marks, run_loop(n) executes 1 + 2n + 2 instructions (see the file)."""
    elf = build_known_loop(target, tmp_path / "known_loop.elf")
    mark = next(line.split()[0] for line in subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True,
                                                             text=True, check=True).stdout.splitlines()
                if line.endswith(" ml_mark"))
    out = tmp_path / "marks.txt"
    # the function's address as a Thumb symbol's value carries it, with bit 0 set: the plugin ignores that bit
    subprocess.run([QEMU, *QEMU_MACHINES[target], "-nographic", "-monitor", "none", "-serial", "none",
                    "-semihosting-config", "enable=on,target=native", "-kernel", str(elf),
                    "-plugin", f"{qemu_plugin()},mark={int(mark, 16) | 1:#x},out={out}"], check=True, timeout=60)
    marks = marks_of(out.read_text().splitlines())
    assert len(marks) == 6
    between = [after - before for before, after in zip(marks[0::2], marks[1::2])]
    assert between == [1 + 2 * n + 2 for n in (1, 1000, 1_000_000)]


@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4f"])
def test_timer_interrupts_are_left_out_of_the_count_exactly(target, tmp_path):
    """The firmware's measurement path (SimulatorRun: the plugin's skip range over SysTick_Handler, then the
    per-image subtraction) on known_loop.c with the timer's interrupt fired in every iteration. Hand count (see
    the file): 1 + 3n + 2 instructions of the loop per pair of marks, and 5 per interrupt, n interrupts. Its
    first or last handler instruction charged to the loop, or the handler not subtracted, is off by n or more."""
    from mobile_lenet.codegen.mcu_firmware import TARGETS, Firmware, read_symbols
    from mobile_lenet.engines.mcu_simulators import SimulatorRun

    elf = build_known_loop(target, tmp_path / "known_loop.elf", "-DTICK_EVERY_ITERATION")
    firmware = Firmware(TARGETS[target], elf, False, 0, 0, read_symbols("arm-none-eabi-nm", elf))
    with SimulatorRun(firmware, tmp_path) as run:  # no semihosting here: the program ends in a fault loop
        deadline = time.monotonic() + 60
        while len(marks_of(run.marks_file.read_text().splitlines() if run.marks_file.exists() else [])) < 6:
            assert time.monotonic() < deadline, "known_loop did not reach its sixth mark"
            time.sleep(0.05)
    counts = [1, 1000, 1_000_000]
    assert run.measurements.per_image == [1 + 3 * n + 2 for n in counts]
    assert run.measurements.excluded == [5 * n for n in counts]


def test_simavr_runner_counts_the_cycles_of_a_known_loop(tmp_path):
    """tests/c/known_loop_avr.c: run_loop(1001) takes exactly 4 x 1000 cycles more than run_loop(1)."""
    elf = tmp_path / "known_loop_avr.elf"
    subprocess.run(["avr-gcc", "-mmcu=atmega2560", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(elf),
                    str(ROOT / "tests" / "c" / "known_loop_avr.c")], check=True)
    mark = next(line.split()[0] for line in subprocess.run(["avr-nm", str(elf)], capture_output=True, text=True,
                                                             check=True).stdout.splitlines()
                if line.endswith(" ml_mark"))
    result = subprocess.run([str(simavr_runner()), "--stdio", "--mark", f"0x{mark}", "--max-seconds", "30", str(elf)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stop"] == "done" and len(summary["marks"]) == 4
    first, second = (after - before for before, after in zip(summary["marks"][0::2], summary["marks"][1::2]))
    assert second - first == 4 * 1000
    assert 0 < summary["ramend"] - summary["min_sp"] < 64  # a few return addresses deep


def test_simavr_runner_stops_by_itself(tmp_path):
    """A firmware that never ends is stopped at the runner's time limit, with its summary."""
    source = tmp_path / "spin.c"
    source.write_text("int main(void) { for (;;) { __asm__ volatile(\"nop\"); } }\n")
    elf = tmp_path / "spin.elf"
    subprocess.run(["avr-gcc", "-mmcu=atmega2560", "-O1", "-o", str(elf), str(source)], check=True)
    result = subprocess.run([str(simavr_runner()), "--stdio", "--max-seconds", "1", str(elf)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stop"] != "done" and summary["cycles"] > 1000


def test_a_missing_simulator_names_its_debian_package(monkeypatch, tmp_path):
    from mobile_lenet.codegen.mcu_firmware import TARGETS, Firmware
    from mobile_lenet.engines.mcu_simulators import SimulatorRun
    from mobile_lenet.errors import UserError

    firmware = Firmware(TARGETS["cortex-m4f"], tmp_path / "none.elf", False, 0, 0, {})
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="qemu-system-arm not found: install Debian's qemu-system-arm"):
        with SimulatorRun(firmware, tmp_path):
            pass


def _fake_run(tmp_path, command):
    """A SimulatorRun whose 'simulator' is ``command`` (no firmware needed to start it)."""
    from mobile_lenet.codegen.mcu_firmware import TARGETS, Firmware
    from mobile_lenet.engines.mcu_simulators import SimulatorRun

    run = SimulatorRun(Firmware(TARGETS["atmega2560"], tmp_path / "none.elf", False, 0, 0, {}), tmp_path)
    run._simavr_command = lambda: command
    return run


def gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by its new parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


@pytest.mark.parametrize("prints", ["", "starting /dev/pts/"])  # nothing at all; half a line, never ended
def test_a_silent_simulator_is_stopped_at_the_start_timeout(tmp_path, monkeypatch, prints):
    from mobile_lenet.engines import mcu_simulators
    from mobile_lenet.errors import UserError

    monkeypatch.setattr(mcu_simulators, "START_TIMEOUT_S", 0.5)
    run = _fake_run(tmp_path, [sys.executable, "-c", f"import sys, time; sys.stdout.write({prints!r}); "
                                                     "sys.stdout.flush(); time.sleep(60)"])
    started = time.monotonic()
    with pytest.raises(UserError, match="simavr did not start within 0.5 s"):
        with run:
            pass
    assert time.monotonic() - started < 5 and run.process.poll() is not None


PARENT = r"""
import sys, time
from pathlib import Path
sys.path[:0] = sys.argv[2:]
from test_mcu_simulators import _fake_run
run = _fake_run(Path(sys.argv[1]), ["sh", "-c", "echo /dev/pts/0 ready; exec sleep 60"]).__enter__()
print(run.process.pid, flush=True)
time.sleep(60)
"""


def test_a_simulator_dies_with_the_process_that_started_it(tmp_path):
    """kill -9 of the process running a simulator (simulate, the tests) takes the simulator down too."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path), str(Path(__file__).parent), *sys.path],
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert not gone(child)
    finally:
        parent.kill()
        parent.wait()
    assert wait_gone(child, 5), "the simulator outlived the process that started it"


def test_simavr_runner_stops_when_its_parent_dies(tmp_path):
    """The runner itself asks Linux to be told of its parent's death, however it was started."""
    source = tmp_path / "spin.c"
    source.write_text("int main(void) { for (;;) { __asm__ volatile(\"nop\"); } }\n")
    elf = tmp_path / "spin.elf"
    subprocess.run(["avr-gcc", "-mmcu=atmega2560", "-O1", "-o", str(elf), str(source)], check=True)
    shell = subprocess.Popen(["sh", "-c", f"'{simavr_runner()}' --stdio --max-seconds 60 '{elf}' </dev/null "
                                          ">/dev/null & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    try:
        runner = int(shell.stdout.readline())
        time.sleep(0.3)
        assert not gone(runner)
    finally:
        shell.kill()
        shell.wait()
    assert wait_gone(runner, 5), "simavr_runner kept running after its parent was killed"
