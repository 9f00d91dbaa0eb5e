"""The esp32 target's runtime on QEMU's Xtensa core (tests/c/test_xtensa_runtime.c): the MULSH/MULUH emulation,
float division by the FPU's steps and sqrtf against Python's exact arithmetic, and the instruction count of loops
of known length, with the emulation handler left out as ``simulate`` leaves it out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, XTENSA_TOOLS, build_xtensa
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.codegen.mcu_firmware import read_symbols
from mobile_lenet.engines.mcu_simulators import QEMU_MACHINES, XTENSA_USER_VECTOR_OFFSET, qemu_plugin

TARGETS_DIR = Path(str(lib.c_folder())) / "targets"
pytestmark = pytest.mark.skipif(any(shutil.which(tool) is None for tool in XTENSA_TOOLS),
                                reason="no LLVM 22, binutils-xtensa-lx106 or qemu-system-xtensa")


@pytest.fixture(scope="module")
def runtime_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xtensa_runtime")
    elf = build_xtensa([ROOT / "tests" / "c" / "test_xtensa_runtime.c"], folder)
    symbols = read_symbols("xtensa-lx106-elf-nm", elf)
    marks = folder / "marks.txt"
    skip_lo = symbols["_vectors"][0] + XTENSA_USER_VECTOR_OFFSET
    plugin = (f"{qemu_plugin()},mark={symbols['ml_mark'][0]:#x},out={marks},skip_lo={skip_lo:#x},"
              f"skip_hi={symbols['_vectors_end'][0]:#x}")
    result = subprocess.run(["qemu-system-xtensa", *QEMU_MACHINES["esp32"], "-nographic", "-monitor", "none",
                             "-serial", "none", "-semihosting", "-kernel", str(elf), "-plugin", plugin],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines(), marks.read_text().splitlines()


def words(lines, tag):
    return [[int(v, 16) for v in line.split()[1:]] for line in lines if line.startswith(tag + " ")]


def test_mulsh_and_muluh_are_emulated_exactly(runtime_run):
    rows = words(runtime_run[0], "P")
    assert len(rows) == 2 * (49 + 300)
    signed = lambda v: v - (1 << 32) if v >> 31 else v  # noqa: E731
    for op, x, y, high in rows:
        product = x * y if op == 0 else signed(x) * signed(y)
        assert high == (product >> 32) & 0xFFFFFFFF, (op, hex(x), hex(y))


def as_float(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def same_float(got_bits, expected):
    expected_bits = expected.view(np.uint32)
    both_nan = np.isnan(as_float(got_bits)) & np.isnan(expected)
    return (np.array(got_bits, dtype=np.uint32) == expected_bits) | both_nan


def test_division_is_the_correctly_rounded_one(runtime_run):
    rows = np.array(words(runtime_run[0], "D"), dtype=np.uint32)
    assert len(rows) == 144 + 2000
    with np.errstate(all="ignore"):
        expected = as_float(rows[:, 0]) / as_float(rows[:, 1])  # IEEE 754 float32 division, round to nearest
    ok = same_float(rows[:, 2], expected)
    assert ok.all(), [tuple(hex(v) for v in row) for row in rows[~ok][:5]]


def test_sqrtf_is_the_correctly_rounded_one(runtime_run):
    rows = np.array(words(runtime_run[0], "S"), dtype=np.uint32)
    assert len(rows) == 12 + 2000
    with np.errstate(all="ignore"):
        expected = np.sqrt(as_float(rows[:, 0]))
    ok = same_float(rows[:, 1], expected)
    assert ok.all(), [tuple(hex(v) for v in row) for row in rows[~ok][:5]]


def test_loop_counts_are_exact_and_leave_the_emulation_out(runtime_run):
    """run_loop(n): two instructions a turn, or three with a MULSH, which counts once as on an ESP32 although
    QEMU's core runs the handler's few dozen instructions for it; the constant (the marks' calls) cancels out."""
    rows = [line.split() for line in runtime_run[1] if line.startswith("mark ")]
    per_loop = [(int(b[3]) - int(a[3])) - (int(b[5]) - int(a[5])) for a, b in zip(rows[0::2], rows[1::2])]
    skipped = [int(b[5]) - int(a[5]) for a, b in zip(rows[0::2], rows[1::2])]
    assert len(per_loop) == 4
    assert per_loop[1] - per_loop[0] == 2 * 999  # addi, bnez
    assert per_loop[3] - per_loop[2] == 3 * 99_000  # mulsh (once, not the handler's instructions), addi, bnez
    assert skipped[0] == skipped[1] == 0 and skipped[3] > 20 * 100_000  # the handler ran, and was left out
