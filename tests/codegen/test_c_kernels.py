"""The hand-written C on its own: every file of c/ compiles strictly by itself, and the C unit tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
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


SOFTMAX_PROGRAM = r"""
#include <stdio.h>
#include "mobile_lenet_api.c"
void mobile_lenet_logits(const uint8_t image[MOBILE_LENET_INPUT_SIZE], float logits[MOBILE_LENET_NUM_CLASSES])
{
    (void)image;
    for (int i = 0; i < MOBILE_LENET_NUM_CLASSES; ++i) logits[i] = 0.0f;
}
int main(void)
{
    static const float rows[3][10] = {{100, 0, -1000, 88.5f, 89, 0, 0, 0, 0, 0},
                                      {-1000, -1001, -1002, -1003, -1004, -1005, -1006, -1007, -1008, -1009},
                                      {0.5f, -0.25f, 2, 0, 1, 3, -3, 0.125f, 0, 1}};
    float probs[10];
    for (int r = 0; r < 3; ++r) {
        mobile_lenet_softmax(rows[r], probs);
        for (int i = 0; i < 10; ++i) printf("%.9g ", (double)probs[i]);
        printf("\n");
    }
    return 0;
}
"""


def test_c_softmax_matches_a_float64_oracle_at_large_logits(tmp_path):
    """The device's softmax (mobile_lenet_api.c) at logits whose exp overflows or underflows float32."""
    rows = np.array([[100, 0, -1000, 88.5, 89, 0, 0, 0, 0, 0], -1000 - np.arange(10.0),
                     [0.5, -0.25, 2, 0, 1, 3, -3, 0.125, 0, 1]])
    (tmp_path / "softmax.c").write_text(SOFTMAX_PROGRAM)
    program = tmp_path / "softmax"
    built = subprocess.run(["cc", *STRICT, "-O2", f"-I{TEST_DIR}", f"-I{C_DIR}", "-o", str(program),
                            str(tmp_path / "softmax.c"), "-lm"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    output = subprocess.run([str(program)], capture_output=True, text=True, timeout=60).stdout
    probs = np.array([[float(v) for v in line.split()] for line in output.strip().splitlines()])
    shifted = rows - rows.max(axis=1, keepdims=True)
    expected = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    assert probs.shape == (3, 10) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-30)
