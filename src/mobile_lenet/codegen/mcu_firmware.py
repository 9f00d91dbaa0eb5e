"""Firmware for real microcontroller instruction sets: the model's C library, built with Debian's cross compilers.

Each target is a core and the memory of a real chip class; ``build_firmware`` writes the model's C library
(``c_float`` or ``c_int8``) into a build folder and links it with the bare-metal main, the board's UART and
clock, and the target's linker script (``c/targets/``, built by its Makefile, which holds the compiler flags),
then reads flash and static RAM from the ELF. A model that does not fit is a one-line error naming the memory
and the bytes over.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_lenet.codegen import c_float, c_int8
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.errors import UserError
from mobile_lenet.files import write_text_files
from mobile_lenet.quantization.quantize import QuantizedModel

BUILD_TIMEOUT_S = 300
XMEM_RAM_BYTES = 0xFE00  # ATmega2560 with external SRAM: data space 0x200-0xFFFF (c/targets/Makefile)


@dataclass(frozen=True)
class Target:
    """A microcontroller: its core, its chip class's memory and clock, its toolchain and simulator."""

    name: str
    chip: str  # the chip class whose memory and clock the target has
    flash_bytes: int
    ram_bytes: int
    clock_hz: int
    fpu: bool  # a hardware float unit: float results are then bit-exact with the host's
    compiler: str
    size_tool: str
    nm_tool: str
    compiler_package: str  # Debian packages that provide the toolchain
    simulator: str  # "qemu" or "simavr"
    simulator_package: str
    counts: str  # what the simulator measures per image: "instructions" or "cycles"
    int8_schedule: str = "buffers"  # c_int8.SCHEDULES: "rows" where whole feature maps do not fit the RAM
    more_tools: tuple = ()  # (tool, Debian package) the build needs besides the compiler and size tool
    measure_note: str = ""  # what the per-image figure is and is not, where it differs from a real chip


ARM = dict(compiler="arm-none-eabi-gcc", size_tool="arm-none-eabi-size", nm_tool="arm-none-eabi-nm",
           compiler_package="gcc-arm-none-eabi libnewlib-arm-none-eabi", simulator="qemu",
           simulator_package="qemu-system-arm", counts="instructions")
TARGETS = {
    "cortex-m0plus": Target("cortex-m0plus", "RP2040-class Cortex-M0+", 2 * 1024 * 1024, 264 * 1024, 133_000_000,
                            False, **ARM),
    "cortex-m4f": Target("cortex-m4f", "STM32F4-class Cortex-M4F", 1024 * 1024, 128 * 1024, 168_000_000, True, **ARM),
    "atmega2560": Target("atmega2560", "ATmega2560 (AVR)", 256 * 1024, 8 * 1024, 16_000_000, False,
                         compiler="avr-gcc", size_tool="avr-size", nm_tool="avr-nm",
                         compiler_package="gcc-avr avr-libc", simulator="simavr", simulator_package="simavr",
                         counts="cycles", int8_schedule="rows"),
    # The seed's own chip. LLVM compiles for its instruction set (Debian's GCC has no Xtensa target with its
    # options); QEMU's de233_fpu core runs the code (the ESP32 has no QEMU model in Debian): the same ISA
    # options but for MUL32_HIGH, emulated by the firmware's exception handler (c/targets/startup_xtensa.S).
    "esp32": Target("esp32", "ESP32-class Xtensa LX6", 4 * 1024 * 1024, 320 * 1024, 240_000_000, True,
                    compiler="clang-22", size_tool="xtensa-lx106-elf-size", nm_tool="xtensa-lx106-elf-nm",
                    compiler_package="clang-22", simulator="qemu", simulator_package="qemu-system-misc",
                    counts="instructions",
                    more_tools=(("llc-22", "llvm-22"), ("llvm-mc-22", "llvm-22"),
                                ("xtensa-lx106-elf-ld", "binutils-xtensa-lx106"),
                                ("xtensa-lx106-elf-size", "binutils-xtensa-lx106")),
                    measure_note="instructions counted on QEMU's de233_fpu Xtensa core, code from LLVM 22; not "
                                 "ESP32 cycles: no flash cache, wait states or pipeline timing"),
}


@dataclass(frozen=True)
class Firmware:
    """A built firmware image and what its ELF says."""

    target: Target
    elf: Path
    int8: bool
    flash_bytes: int  # text + data: code, constants and the initial values of variables
    static_ram_bytes: int  # data + bss: variables, activation buffers, the serial link
    symbols: dict  # name -> (address, size)
    external_ram: bool = False  # ATmega2560 linked for 64 KB of external SRAM
    layer_marks: tuple = ()  # profile builds: the layer numbers whose ends are marked, in the order they run


class DoesNotFit(UserError):
    """The model's firmware is larger than the chip's flash or RAM (the message names which and by how much)."""


def get_target(name: str) -> Target:
    """The target named ``name``, or one clear error listing the others."""
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r} (choose from {', '.join(TARGETS)})")
    return TARGETS[name]


def check_toolchain(target: Target) -> None:
    """One line naming the Debian package to install when a tool of the target's toolchain is missing."""
    size_package = dict(target.more_tools).get(target.size_tool, target.compiler_package)
    for tool, package in ((target.compiler, target.compiler_package), (target.size_tool, size_package),
                          *target.more_tools, ("make", "make")):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} not found: install Debian's {package} (apt-get install {package})")


def read_symbols(nm_tool: str, elf: Path) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the ELF's symbols (``nm -S``; size 0 when nm gives none)."""
    out = subprocess.run([nm_tool, "-S", str(elf)], capture_output=True, text=True, check=True).stdout
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            symbols[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
        elif len(parts) == 3:
            symbols[parts[2]] = (int(parts[0], 16), 0)
    return symbols


def _section_sizes(target: Target, elf: Path) -> tuple[int, int, int]:
    out = subprocess.run([target.size_tool, str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return text, data, bss


def _make(target: Target, library: Path, build: Path, *options: str) -> subprocess.CompletedProcess:
    command = ["make", "-s", "-C", str(Path(str(lib.c_folder())) / "targets"), f"TARGET={target.name}",
               f"LIB={library}", f"BUILD={build}", *options]
    # The compilers' own temporaries go into the build folder, so they go with it (a killed build's too).
    scratch = build / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                              env={**os.environ, "TMPDIR": str(scratch)})
    except subprocess.TimeoutExpired:
        raise UserError(f"{target.name}: the firmware build took over {BUILD_TIMEOUT_S} s") from None


def _does_not_fit(target: Target, library: Path, build: Path, log: str, int8: bool) -> DoesNotFit | None:
    """The one-line error of a link that failed for lack of memory (None if the failure is something else)."""
    precision = "int8" if int8 else "float32"
    over = re.search(r"region [`'](\w+)' overflowed by (\d+) bytes", log)
    if over and target.simulator == "qemu":
        memory = {"FLASH": ("flash", target.flash_bytes), "RAM": ("RAM", target.ram_bytes)}.get(over[1])
        if memory:
            return DoesNotFit(f"{target.name}: the {precision} model does not fit: {memory[0]} overflowed by "
                             f"{int(over[2]):,} bytes ({target.chip}: {memory[1]:,} bytes)")
    if target.name == "atmega2560" and re.search(r"not within region [`']data'|region [`']data' overflowed", log):
        # Link once more with the external-RAM option to learn how much SRAM the program needs.
        probe = _make(target, library, build / "probe", "AVR_MEMORY=xmem")
        if probe.returncode == 0:
            _, data, bss = _section_sizes(target, build / "probe" / "firmware.elf")
            need = data + bss
            return DoesNotFit(f"{target.name}: the {precision} model does not fit: static RAM needs {need:,} bytes, "
                             f"{need - target.ram_bytes:,} over the chip's {target.ram_bytes:,} bytes of SRAM")
    if over or "will not fit in region" in log:
        return DoesNotFit(f"{target.name}: the {precision} model does not fit: {_first_error(log)}")
    return None


def _first_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if "error" in line.lower() or "overflow" in line]
    return (lines or [line.strip() for line in log.splitlines() if line.strip()] or ["no message"])[0]


def build_firmware(model: dict[str, np.ndarray] | QuantizedModel, target: Target, build: Path,
                   trace: bool = False, external_ram: bool = False, c_standard: str = "c99",
                   reference_kernels: bool = False, schedule: str | None = None, profile: bool = False) -> Firmware:
    """Build the firmware of a float or int8 ``model`` for ``target`` in the folder ``build``.

    ``trace``: with the layer debugger (every layer's output sent over the UART). ``external_ram``
    (ATmega2560 only): link for 64 KB of data memory, the chip's external-SRAM interface fully populated.
    ``c_standard``: the C dialect (``gnu99`` is GCC's and PlatformIO's default; the results must not change).
    ``reference_kernels`` and ``schedule`` (int8): the plain reference kernels instead of the fast ones, and
    another schedule than the target's (``c_int8.SCHEDULES``), to compare with the defaults.
    ``profile``: the measurement marker after every layer (``c/ml_trace.h``, ML_PROFILE), for per-layer counts.
    """
    check_toolchain(target)
    if external_ram and target.name != "atmega2560":
        raise UserError(f"--xmem is an ATmega2560 option, not one of {target.name}")
    int8 = isinstance(model, QuantizedModel)
    schedule = schedule or target.int8_schedule
    library = c_int8.generate_library(model, schedule) if int8 else c_float.generate_library(model)
    write_text_files(library, build / "lib")
    options = [f"STD={c_standard}"] + (["TRACE=1"] if trace else []) + (["AVR_MEMORY=xmem"] if external_ram else [])
    extra_flags = (["-DML_S8_REFERENCE"] if reference_kernels else []) + (["-DML_PROFILE"] if profile else [])
    options += [f"EXTRA_CFLAGS={' '.join(extra_flags)}"] if extra_flags else []
    # the layers whose ends the profile marks: the network's trace hooks, in the order they run (no loops there)
    layer_marks = (tuple(int(n) for n in re.findall(r"ML_TRACE_LAYER\((\d+),", library[lib.NETWORK_SOURCE]))
                   if profile else ())
    result = _make(target, build / "lib", build, *options)
    if result.returncode != 0:
        log = result.stdout + result.stderr
        raise _does_not_fit(target, build / "lib", build, log, int8) or UserError(
            f"{target.name}: building the firmware failed: {_first_error(log)}")
    elf = build / "firmware.elf"
    symbols = read_symbols(target.nm_tool, elf)
    text, data, bss = _section_sizes(target, elf)
    if "_sbss" in symbols and "_ebss" in symbols:  # ARM: .bss without the stack reserved after it
        bss = symbols["_ebss"][0] - symbols["_sbss"][0]
    return Firmware(target, elf, int8, text + data, data + bss, symbols, external_ram, layer_marks)
