"""The optimized int8 convolutions (c/ml_kernels_s8_fast.c) against the reference ones, bit for bit:
tests/c/test_kernels_s8.c on the host (strict C99, also under the sanitizers and as a reference-only build; with the
host program's flags, -march=native, which on an x86 with AVX2 selects the x86 paths, and without them) and, when
the ARM toolchain and QEMU are here, on the Cortex-M0+ (plain C path) and the Cortex-M4F (SMLAD path)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.engines import host_c

C_DIR = Path(str(lib.c_folder()))
TARGETS_DIR = C_DIR / "targets"
TEST_SOURCE = ROOT / "tests" / "c" / "test_kernels_s8.c"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off"]
ARM_FLAGS = {"cortex-m0plus": ["-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"],
             "cortex-m4f": ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]}


# The host program's own optimization flags (engines.host_c: -march=native, so on an x86 with AVX2 the x86 paths of
# ml_kernels_s8_fast.c are what it runs), and the same under the sanitizers.
HOST_FLAGS = [flag for flag in host_c.OPTIMIZE_FLAGS if flag not in ("-std=c99", "-ffp-contract=off")]
NATIVE = ["-march=native"] if "-march=native" in host_c.OPTIMIZE_FLAGS else []


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("flags", [["-O2"], ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
                                   ["-O2", "-DML_S8_REFERENCE"], HOST_FLAGS,
                                   ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", *NATIVE],
                                   [*HOST_FLAGS, "-DML_S8_NO_VNNI"], [*HOST_FLAGS, "-DML_S8_NO_X86"]],
                         ids=["O2", "asan-ubsan", "reference-build", "host-flags", "host-flags-asan-ubsan",
                              "host-flags-no-vnni", "host-flags-no-x86"])
def test_fast_kernels_match_the_reference_on_the_host(flags, tmp_path):
    program = tmp_path / "test_kernels_s8"
    built = subprocess.run(["cc", *STRICT, *flags, f"-I{C_DIR}", "-o", str(program), str(TEST_SOURCE)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed") and int(last.split()[0]) >= 6000
    x86_expected = ("-march=native" in flags and "-DML_S8_NO_X86" not in flags and "-DML_S8_REFERENCE" not in flags
                    and compiler_defines_avx2(["-march=native"]))
    assert ("paths: x86 AVX2" in result.stdout) == x86_expected, result.stdout


def compiler_defines_avx2(flags: list[str]) -> bool:
    """Whether ``cc`` with these flags targets AVX2 (then ml_kernels_s8_fast.c takes its x86 paths)."""
    macros = subprocess.run(["cc", *flags, "-dM", "-E", "-"], input="", capture_output=True, text=True).stdout
    return "#define __AVX2__ 1" in macros


@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4f"])
def test_fast_kernels_match_the_reference_in_qemu(target, tmp_path):
    from mobile_lenet.engines.mcu_simulators import QEMU, QEMU_MACHINES

    if shutil.which("arm-none-eabi-gcc") is None or shutil.which(QEMU) is None:
        pytest.skip("no ARM toolchain or QEMU")
    elf = tmp_path / "test_kernels_s8.elf"
    built = subprocess.run(["arm-none-eabi-gcc", *ARM_FLAGS[target], *STRICT, "-O2", "-DML_TEST_BAREMETAL",
                            f"-I{C_DIR}", f"-I{TARGETS_DIR}", str(TEST_SOURCE), str(TARGETS_DIR / "startup_cortexm.c"),
                            f"-T{TARGETS_DIR / (target + '.ld')}", f"-L{TARGETS_DIR}", "-nostartfiles",
                            "--specs=nano.specs", "--specs=nosys.specs", "-o", str(elf)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([QEMU, *QEMU_MACHINES[target], "-nographic", "-monitor", "none", "-serial", "none",
                             "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "all passed" in result.stdout + result.stderr, result.stdout + result.stderr


def test_fast_kernels_match_the_reference_on_the_esp32_in_qemu(tmp_path):
    """The MAC16 paths (Xtensa), bit for bit against the reference kernels, on the ESP32's instruction set."""
    from conftest import XTENSA_TOOLS, build_xtensa
    from mobile_lenet.engines.mcu_simulators import QEMU_MACHINES

    if any(shutil.which(tool) is None for tool in XTENSA_TOOLS):
        pytest.skip("no LLVM 22, binutils-xtensa-lx106 or qemu-system-xtensa")
    elf = build_xtensa([TEST_SOURCE], tmp_path, ("-DML_TEST_BAREMETAL", f"-I{C_DIR}"))
    result = subprocess.run(["qemu-system-xtensa", *QEMU_MACHINES["esp32"], "-nographic", "-monitor", "none",
                             "-serial", "none", "-semihosting", "-kernel", str(elf)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "all passed" in result.stdout + result.stderr, result.stdout + result.stderr
