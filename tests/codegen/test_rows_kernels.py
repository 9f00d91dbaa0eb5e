"""The row kernels of the int8 row schedule (c/ml_rows_s8.c) against plain loops: tests/c/test_rows_s8.c."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from mobile_lenet.codegen import c_library as lib


STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("sanitize", [False, True], ids=["O2", "asan-ubsan"])
def test_row_kernels_match_plain_loops(sanitize, tmp_path):
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"] if sanitize else ["-O2"]
    program = tmp_path / "test_rows_s8"
    built = subprocess.run(["cc", *STRICT, *flags, f"-I{lib.c_folder()}", "-o", str(program),
                            str(ROOT / "tests" / "c" / "test_rows_s8.c")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    checks, failures = result.stdout.strip().splitlines()[-1].split(", ")
    assert int(checks.split()[0]) > 200_000 and failures == "0 failures"


AVR = ["avr-gcc", "-mmcu=atmega2560", "-DF_CPU=16000000UL", "-DML_TEST_AVR", "-O2"]


@pytest.mark.skipif(shutil.which("avr-gcc") is None or not Path("/usr/include/simavr/sim_avr.h").is_file(),
                    reason="no avr-gcc or simavr")
def test_row_kernels_avr_assembly_in_simavr(tmp_path):
    """The AVR assembly row loops (ml_rows_s8.c) against the same plain loops, built for the ATmega2560 and run
    in simavr: every case passes and the assembly ran (its counters are printed)."""
    from mobile_lenet.engines.mcu_simulators import simavr_runner

    program = tmp_path / "test_rows_s8.elf"
    built = subprocess.run([*AVR, *STRICT, f"-I{lib.c_folder()}", "-o", str(program),
                            str(ROOT / "tests" / "c" / "test_rows_s8.c")], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(simavr_runner()), "--stdio", "--max-seconds", "120", str(program)],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert '"stop": "done"' in lines[-1], result.stdout + result.stderr
    match = re.fullmatch(r"(\d+) passed, (\d+) failed, fast paths: (\d+) depthwise rows, "
                         r"(\d+) \+ (\d+) \+ (\d+) pointwise rows", lines[-2])
    assert match, result.stdout
    passed, failed, *fast_rows = map(int, match.groups())
    assert failed == 0, result.stdout
    # each assembly loop ran: 3x3 layer rows (strides 1, 2, interleaved rings, 1 to 3 channels); pointwise 16, 24,
    # ... channels, 8, and the other counts (1..64: groups of eight and the 1..7 left over); the program itself
    # checks that every pointwise row with rq took the assembly (test_pointwise_channels)
    assert passed > 2000 and min(fast_rows) > 10, result.stdout
