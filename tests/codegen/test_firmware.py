"""The PlatformIO project: its files, and its src/ compiled and run on the host against a minimal Arduino shim.

What this verifies: main.cpp compiles as C++ (-Wall -Wextra -Werror) with the generated C library against
the Arduino API subset it uses (Serial.begin/available/read/println, millis, micros), and, driven by a fake
clock and a byte stream, answers the protocol exactly, with the default 3 s timeout. What it cannot verify:
the real toolchains (xtensa-esp32, arm-none-eabi), the real Arduino cores, flash/RAM fit, or timing on a board.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import UPSTREAM
from mobile_lenet.codegen import c_float
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.codegen import firmware
from mobile_lenet.apps.cli import main
from mobile_lenet.engines.reference import reference_logits, softmax

ARDUINO_H = r"""
// Minimal host stand-in for the Arduino API that main.cpp uses.
#pragma once
#include <stddef.h>
#include <stdint.h>

unsigned long millis(void);
unsigned long micros(void);

class HardwareSerial {
public:
    void begin(unsigned long baud);
    int available(void);
    int read(void);
    size_t print(const char *text);
    size_t println(const char *text);
};

extern HardwareSerial Serial;
"""

# Runs setup() once and loop() until the input is used up and 4 s of fake time have passed. The input
# comes from stdin; argv[1] (optional) is a byte offset where the "host" pauses for 3.5 s of fake time.
# Every loop() pass advances the clock by 1 ms; each micros() call advances it by 1234 us.
SHIM_MAIN_CPP = r"""
#include "Arduino.h"
#include <stdio.h>
#include <stdlib.h>
#include <vector>

HardwareSerial Serial;
static std::vector<unsigned char> input;
static size_t next_byte = 0, pause_at = (size_t)-1;
static unsigned long now_ms = 0, fake_us = 0, baud = 0;

unsigned long millis(void) { return now_ms; }
unsigned long micros(void) { fake_us += 1234; return fake_us; }
void HardwareSerial::begin(unsigned long rate) { baud = rate; }
int HardwareSerial::available(void)
{
    const size_t end = pause_at < input.size() ? pause_at : input.size();
    return (int)(end - next_byte);
}
int HardwareSerial::read(void) { return next_byte < input.size() ? input[next_byte++] : -1; }
size_t HardwareSerial::print(const char *text) { return (size_t)fputs(text, stdout); }
size_t HardwareSerial::println(const char *text) { print(text); return print("\r\n"); }

void setup(void);
void loop(void);

int main(int argc, char **argv)
{
    int c;
    unsigned long paused_since = 0, idle_since = 0;
    while ((c = getchar()) != EOF) input.push_back((unsigned char)c);
    if (argc > 1) pause_at = (size_t)atol(argv[1]);
    setup();
    for (;;) {
        loop();
        now_ms += 1;
        if (next_byte == pause_at) {
            if (paused_since == 0) paused_since = now_ms;
            if (now_ms - paused_since >= 3500) pause_at = (size_t)-1;
        }
        if (next_byte == input.size()) {
            if (idle_since == 0) idle_since = now_ms;
            if (now_ms - idle_since >= 4000) break;
        }
    }
    fprintf(stderr, "baud %lu\n", baud);
    return 0;
}
"""



def test_project_layout(upstream_tensors, tmp_path):
    written = firmware.write_platformio_project(upstream_tensors, tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in written)
    assert names == sorted(["platformio.ini", "README.md", "src/main.cpp"] +
                           [f"src/{n}" for n in lib.library_file_names("float32")])
    ini = configparser.ConfigParser()
    ini.read(tmp_path / "platformio.ini")
    assert ini["env"]["framework"] == "arduino" and ini["env"]["monitor_speed"] == "115200"
    assert ini["env:esp32dev"]["platform"] == "espressif32" and ini["env:esp32dev"]["board"] == "esp32dev"
    assert ini["env:pico"]["platform"] == "raspberrypi" and ini["env:pico"]["board"] == "pico"
    # the firmware carries exactly the library the host tests run
    library = c_float.generate_library(upstream_tensors)
    for name, text in library.items():
        assert (tmp_path / "src" / name).read_text() == text
    assert "mobile_lenet_host" not in " ".join(names)  # no second main() in the firmware


def test_export_cli(tmp_path, capsys):
    assert main(["export", str(UPSTREAM / "noodle"), "--format", "platformio", "--out", str(tmp_path / "fw")]) == 0
    assert (tmp_path / "fw" / "src" / "main.cpp").is_file()


@pytest.fixture(scope="module")
def firmware_on_host(upstream_tensors, tmp_path_factory):
    """The project's src/ built for the host with the Arduino shim: an executable fed through stdin."""
    return build_project_on_host(upstream_tensors, tmp_path_factory.mktemp("firmware"))


def build_project_on_host(model, folder):
    """Write ``model``'s PlatformIO project into ``folder`` and build its src/ for the host with the Arduino shim."""
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    firmware.write_platformio_project(model, folder)
    shim = folder / "shim"
    shim.mkdir()
    (shim / "Arduino.h").write_text(ARDUINO_H)
    (shim / "shim_main.cpp").write_text(SHIM_MAIN_CPP)
    src = folder / "src"
    objects = []
    for c_file in sorted(src.glob("*.c")):
        obj = folder / (c_file.stem + ".o")
        subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-c", str(c_file), "-o", str(obj)],
                       check=True)
        objects.append(str(obj))
    program = folder / "firmware_sim"
    result = subprocess.run([cxx, "-std=c++11", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{shim}", f"-I{src}",
                             str(src / "main.cpp"), str(shim / "shim_main.cpp"), *objects, "-lm", "-o",
                             str(program)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return program


def test_firmware_answers_the_protocol(firmware_on_host, upstream_tensors, mnist_test):
    images = mnist_test.images[:3]
    expected = softmax(reference_logits(upstream_tensors, images))
    # image 0, then 300 bytes of image 1 and a 3.5 s pause (the board must drop them), then image 2
    stream = images[0].tobytes() + images[1].tobytes()[:300] + images[2].tobytes()
    result = subprocess.run([str(firmware_on_host), str(784 + 300)], input=stream, capture_output=True, timeout=60)
    assert result.returncode == 0 and result.stderr.decode().strip() == "baud 115200"
    lines = result.stdout.decode().split("\r\n")
    assert lines[-1] == ""  # every line ends with \r\n, like Arduino's println
    lines = lines[:-1]
    assert lines[0] == "READY" and lines[2] == "READY" and lines[4] == "READY", lines
    assert len(lines) == 5
    for line, probs in ((lines[1], expected[0]), (lines[3], expected[2])):
        match = re.fullmatch(r"PRED (\d) (\d+\.\d{4}) (\d+\.\d{4})", line)
        assert match, line
        assert int(match[1]) == probs.argmax()
        assert match[2] == "0.0012"  # the shim's micros() advances 1234 us per call
        assert abs(float(match[3]) - probs.max()) <= 0.00005 + 1e-6


def test_firmware_survives_garbage(firmware_on_host):
    """Random bytes (not a multiple of 784) never wedge it: one PRED per full 784 bytes, READY after silence."""
    noise = np.random.default_rng(0).integers(0, 256, 784 * 2 + 500, dtype=np.uint8).tobytes()
    result = subprocess.run([str(firmware_on_host)], input=noise, capture_output=True, timeout=60)
    lines = result.stdout.decode().split("\r\n")[:-1]
    assert lines[0] == "READY" and lines[-1] == "READY"
    assert sum(line.startswith("PRED ") for line in lines) == 2


def test_member_project_reads_images_of_its_input_size(member16_tensors, mnist_test, tmp_path):
    """A family member's project (16x16 inputs): the firmware reads 256-byte images (the size comes from the
    generated model header) and answers as the NumPy reference engine does on the same digits, resized here
    with PIL directly."""
    from PIL import Image

    program = build_project_on_host(member16_tensors, tmp_path)
    images = np.stack([np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR))
                       for image in mnist_test.images[:4]])
    expected = softmax(reference_logits(member16_tensors, images))
    result = subprocess.run([str(program)], input=images.tobytes(), capture_output=True, timeout=60)
    lines = result.stdout.decode().split("\r\n")[:-1]
    replies = [re.fullmatch(r"PRED (\d) \d+\.\d{4} (\d+\.\d{4})", line) for line in lines if line.startswith("PRED")]
    assert len(replies) == len(images) and all(replies), lines  # one answer per 256 bytes, no more, no fewer
    assert [int(m[1]) for m in replies] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([float(m[2]) for m in replies], expected.max(axis=1), atol=0.00005 + 1e-6)


def test_int8_project_builds_each_environment_with_its_schedule(trained_tensors, mnist_train, tmp_path):
    """The int8 project's sources, compiled as PlatformIO's environments would (with the firmware main of the
    simulated targets instead of Arduino's): the Mega 2560 gets the row schedule and fits its 8 KB; an ARM
    board gets the whole-map schedule."""
    from mobile_lenet.codegen import mcu_firmware, memory
    from mobile_lenet.quantization.quantize import quantize_model

    qmodel = quantize_model(trained_tensors, mnist_train.images[:200])
    firmware.write_platformio_project(qmodel, tmp_path / "pio")
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(tmp_path / "pio" / "platformio.ini")
    assert ini["env:megaatmega2560"]["board"] == "megaatmega2560"
    assert "-DML_ROWS_SCHEDULE" in ini["env:megaatmega2560"]["build_flags"]
    src = tmp_path / "pio" / "src"
    for target, flags in (("atmega2560", "EXTRA_CFLAGS=-DML_ROWS_SCHEDULE"), ("cortex-m4f", "EXTRA_CFLAGS=")):
        built = mcu_firmware._make(mcu_firmware.TARGETS[target], src, tmp_path / target, flags)
        assert built.returncode == 0, built.stderr
        symbols = mcu_firmware.read_symbols(mcu_firmware.TARGETS[target].nm_tool, tmp_path / target / "firmware.elf")
        assert ("ring_0" in symbols) == (target == "atmega2560") and ("activation_a" in symbols) != (target == "atmega2560")
    size = subprocess.run(["avr-size", str(tmp_path / "atmega2560" / "firmware.elf")], capture_output=True, text=True,
                          check=True).stdout.splitlines()[1].split()
    assert int(size[1]) + int(size[2]) < 8192 - 1024 and int(size[1]) + int(size[2]) >= memory.row_plan().ram_bytes
    assert "ml_schedule_not_built_here" in (src / "mobile_lenet_rows.c").read_text()
    float_project = firmware.project_files(trained_tensors)
    assert "megaatmega2560" not in float_project["platformio.ini"] and "src/mobile_lenet_rows.c" not in float_project


@pytest.mark.skipif(any(shutil.which(tool) is None for tool in ("clang-22", "llc-22", "llvm-mc-22", "xtensa-lx106-elf-ld")),
                    reason="no LLVM 22 or binutils-xtensa-lx106")
def test_esp32dev_sources_compile_for_the_esp32(trained_tensors, mnist_train, tmp_path):
    """The model library of the PlatformIO project (the sources the esp32dev environment builds), float and int8,
    compiled for -mcpu=esp32 by LLVM and linked with the esp32 target's bare-metal main instead of the
    Arduino-ESP32 core (which is not available here)."""
    from mobile_lenet.codegen import mcu_firmware
    from mobile_lenet.quantization.quantize import quantize_model

    target = mcu_firmware.TARGETS["esp32"]
    for name, model in (("float", trained_tensors), ("int8", quantize_model(trained_tensors, mnist_train.images[:200]))):
        firmware.write_platformio_project(model, tmp_path / name)
        ini = configparser.ConfigParser(interpolation=None)
        ini.read(tmp_path / name / "platformio.ini")
        assert ini["env:esp32dev"]["platform"] == "espressif32" and "-ffp-contract=off" in ini["env"]["build_flags"]
        built = mcu_firmware._make(target, tmp_path / name / "src", tmp_path / f"{name}-build")
        assert built.returncode == 0, built.stderr
        symbols = mcu_firmware.read_symbols(target.nm_tool, tmp_path / f"{name}-build" / "firmware.elf")
        assert "mobile_lenet_predict" in symbols and ("mobile_lenet_int8_logits" in symbols) == (name == "int8")
