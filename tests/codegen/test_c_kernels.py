"""The hand-written C on its own: every file of c/ compiles strictly by itself, and the C unit tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from mobile_lenet.codegen import c_library as lib

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")

C_DIR = Path(str(lib.c_folder()))
TEST_DIR = ROOT / "tests" / "c"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off"]
INT8_MODEL_HEADER = """#define MOBILE_LENET_INT8 1
#define MOBILE_LENET_INPUT_HEIGHT 28
#define MOBILE_LENET_INPUT_WIDTH 28
#define MOBILE_LENET_INPUT_SIZE 784
#define MOBILE_LENET_NUM_CLASSES 10
#define MOBILE_LENET_LOGIT_SCALE 0.125f
#define MOBILE_LENET_LOGIT_ZERO_POINT -3
"""


def compile_alone(source: Path, include: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["cc", *STRICT, *extra, f"-I{include}", f"-I{C_DIR}", "-c", str(source), "-o", str(out)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("name", sorted(p.name for p in C_DIR.glob("*.c")))
def test_every_c_file_compiles_on_its_own_for_float_and_int8(name, tmp_path):
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "mobile_lenet_model.h").write_text(INT8_MODEL_HEADER)
    for include in (TEST_DIR, tmp_path / "int8"):
        result = compile_alone(C_DIR / name, include, tmp_path / "x.o")
        assert result.returncode == 0, result.stderr


def test_library_files_compile_freestanding(tmp_path):
    """What a microcontroller build compiles: no POSIX, no hosted C library headers but math.h."""
    for name in ("ml_kernels_f32.c", "ml_kernels_s8.c", "mobile_lenet_api.c", "mobile_lenet_serial.c"):
        result = compile_alone(C_DIR / name, TEST_DIR, tmp_path / "x.o", "-ffreestanding")
        assert result.returncode == 0, (name, result.stderr)


@pytest.mark.parametrize("sanitize", [False, True], ids=["O2", "asan-ubsan"])
def test_c_unit_tests_pass(sanitize, tmp_path):
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"] if sanitize else ["-O2"]
    program = tmp_path / "test_c_units"
    built = subprocess.run(["cc", *STRICT, *flags, f"-I{TEST_DIR}", f"-I{C_DIR}", "-o", str(program),
                            str(TEST_DIR / "test_c_units.c"), "-lm"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    passed = int(last.split()[0])
    assert last.endswith(" passed, 0 failed") and passed >= 40  # every CHECK ran
