"""Firmware for the microcontroller targets: sizes from the ELF, weights in flash, one-line errors."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from conftest import MNIST_10K, UPSTREAM
from mobile_lenet.apps.cli import main
from mobile_lenet.codegen import mcu_firmware, memory
from mobile_lenet.codegen.mcu_firmware import TARGETS, build_firmware
from mobile_lenet.errors import UserError




SHF_WRITE, SHF_ALLOC, SHT_NOBITS = 0x1, 0x2, 8


def elf_sections(elf: Path) -> list[tuple[str, int, int, int]]:
    """(name, type, flags, size) of every section of a 32-bit little-endian ELF, read from its section headers
    with struct (ARM and AVR ELFs are both): an oracle that does not go through binutils' size."""
    data = elf.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 1 and data[5] == 1  # ELFCLASS32, ELFDATA2LSB
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
    headers = [struct.unpack_from("<10I", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    return [(data[names_at + h[0]:data.index(b"\0", names_at + h[0])].decode(), h[1], h[2], h[5]) for h in headers]


def flash_and_ram_from_section_headers(elf: Path) -> tuple[int, int]:
    """Flash: every allocated section with contents (code, constants, and .data's initial values, copied from
    flash at start-up). Static RAM: every allocated writable section (.data, .bss), less the ARM linker
    script's .stack reservation (the stack is measured separately)."""
    sections = elf_sections(elf)
    flash = sum(size for _, kind, flags, size in sections if flags & SHF_ALLOC and kind != SHT_NOBITS)
    ram = sum(size for name, _, flags, size in sections
              if flags & SHF_ALLOC and flags & SHF_WRITE and name != ".stack")
    return flash, ram


@pytest.mark.parametrize("target", ["cortex-m0plus", "cortex-m4f"])
def test_arm_firmware_holds_the_planned_buffers_and_the_weights(target, upstream_tensors, upstream_int8, tmp_path):
    for model, plan in ((upstream_tensors, memory.plan()), (upstream_int8, memory.int8_plan())):
        firmware = build_firmware(model, TARGETS[target], tmp_path / plan.precision)
        # RAM: the two activation buffers, the serial link's 784-byte image, and a little more
        assert plan.ram_bytes + 784 <= firmware.static_ram_bytes <= plan.ram_bytes + 784 + 1024
        # flash: the weights and the code (the M0+ carries software floating point)
        assert plan.flash_bytes < firmware.flash_bytes < plan.flash_bytes + 32 * 1024
        assert {"ml_mark", "SysTick_Handler", "_estack"} <= set(firmware.symbols)
        sections = {name: size for name, _, _, size in elf_sections(firmware.elf)}
        assert sections[".data"] > 0  # so that flash without the data section would be told apart
        assert (firmware.flash_bytes, firmware.static_ram_bytes) == flash_and_ram_from_section_headers(firmware.elf)


def test_avr_int8_runs_row_by_row_with_its_weights_in_flash(upstream_int8, tmp_path):
    """On the AVR a plain const array would be copied to SRAM: the weights are PROGMEM (addresses below the
    data space's 0x800000); the int8 network keeps rings of rows (memory.row_plan), not whole feature maps,
    so the static RAM is the row plan, the serial link's 784-byte image and a little more."""
    firmware = build_firmware(upstream_int8, TARGETS["atmega2560"], tmp_path)
    weights = {name: address for name, (address, _) in firmware.symbols.items() if name.startswith("ml_B")}
    assert len(weights) > 30 and all(address < 0x800000 for address in weights.values())
    assert firmware.symbols["ring_0"][0] >= 0x800000 and "activation_a" not in firmware.symbols
    plan = memory.row_plan()
    assert plan.ram_bytes + 784 <= firmware.static_ram_bytes <= plan.ram_bytes + 784 + 256
    assert (firmware.flash_bytes, firmware.static_ram_bytes) == flash_and_ram_from_section_headers(firmware.elf)


def test_does_not_fit_names_the_memory_and_the_bytes_over(upstream_tensors, tmp_path):
    with pytest.raises(UserError) as error:
        build_firmware(upstream_tensors, TARGETS["atmega2560"], tmp_path / "avr")
    message = str(error.value)
    need = build_firmware(upstream_tensors, TARGETS["atmega2560"], tmp_path / "x", external_ram=True).static_ram_bytes
    assert need > memory.plan().ram_bytes
    assert message == (f"atmega2560: the float32 model does not fit: static RAM needs {need:,} bytes, "
                       f"{need - 8192:,} over the chip's 8,192 bytes of SRAM")
    # ARM: ask the linker for more stack than the RP2040-class RAM has left
    target = TARGETS["cortex-m0plus"]
    firmware = build_firmware(upstream_tensors, target, tmp_path / "m0")
    stack = target.ram_bytes - firmware.static_ram_bytes + 1000
    result = mcu_firmware._make(target, tmp_path / "m0" / "lib", tmp_path / "m0big",
                                f"EXTRA_LDFLAGS=-Wl,--defsym=__stack_min={stack}")
    assert result.returncode != 0
    error = mcu_firmware._does_not_fit(target, tmp_path / "m0" / "lib", tmp_path, result.stdout + result.stderr, False)
    assert str(error).startswith("cortex-m0plus: the float32 model does not fit: RAM overflowed by ")


def test_missing_toolchain_names_the_debian_package(monkeypatch, upstream_tensors, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match=r"arm-none-eabi-gcc not found: install Debian's gcc-arm-none-eabi"):
        build_firmware(upstream_tensors, TARGETS["cortex-m4f"], tmp_path / "b")
    with pytest.raises(UserError, match=r"avr-gcc not found: install Debian's gcc-avr"):
        build_firmware(upstream_tensors, TARGETS["atmega2560"], tmp_path / "b")


def test_unknown_target_is_one_line(capsys):
    assert main(["simulate", str(UPSTREAM / "noodle"), "--target", "esp8266", "--data-dir", str(MNIST_10K)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'esp8266'" in err


def test_gnu99_contracts_without_the_kernels_pragma(tmp_path):
    """Why the float kernels carry their own fp-contract pragma: GCC in gnu99 fuses a*b+c on the M4F."""
    source = tmp_path / "axpy.c"
    source.write_text("float axpy(float a, float x, float y) { return a * x + y; }\n")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2", "-S", "-o", "-"]
    fused = subprocess.run(["arm-none-eabi-gcc", "-std=gnu99", *flags, str(source)], capture_output=True, text=True)
    assert "vfma" in fused.stdout or "vmla" in fused.stdout
    kernels = subprocess.run(["arm-none-eabi-gcc", "-std=gnu99", *flags, "-I", str(tmp_path),
                              str(Path(str(mcu_firmware.lib.c_folder())) / "ml_kernels_f32.c")], capture_output=True, text=True)
    assert kernels.returncode == 0, kernels.stderr
    assert "vfma" not in kernels.stdout and "vmla" not in kernels.stdout and "vmul.f32" in kernels.stdout
