"""The row kernels of the int8 row schedule (c/ml_rows_s8.c) against plain loops: tests/c/test_rows_s8.c."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT
from mobile_lenet.codegen import c_library as lib

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off"]


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
