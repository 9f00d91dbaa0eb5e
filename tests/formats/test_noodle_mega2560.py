"""The Mega 2560 layout (upstream Noodle's ``examples/mobile-lenet-mega2560``): BatchNorm folded, PROGMEM headers,
read back as an equivalent model; the headers built with avr-gcc for the ATmega2560."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.engines.reference import reference_logits
from mobile_lenet.errors import UserError
from mobile_lenet.formats.model_files import load_float_model
from mobile_lenet.formats.noodle import parse_txt
from mobile_lenet.formats.noodle_mega2560 import MEMBER, write_mega2560_folder
from mobile_lenet.model.checkpoints import save_checkpoint
from mobile_lenet.model.images import resize_digits
from mobile_lenet.model.network import MobileLeNet, from_noodle, to_noodle
from mobile_lenet.spec import LayerKind


@pytest.fixture(scope="module")
def member_tensors():
    """A 16x16 member with random weights and BatchNorm statistics far from the identity (folding must matter)."""
    torch.manual_seed(3)
    tensors = to_noodle(MobileLeNet(MEMBER))
    rng = np.random.default_rng(3)
    for name in tensors:
        if name.startswith("bn"):
            channels = tensors[name].shape[1]
            tensors[name] = np.stack([rng.uniform(0.5, 2, channels), rng.normal(0, 0.3, channels),
                                      rng.normal(0, 0.5, channels), rng.uniform(0.2, 3, channels)]).astype(np.float32)
        elif name.startswith("b"):
            tensors[name] = rng.normal(0, 0.2, tensors[name].shape).astype(np.float32)
    return tensors


def test_files_hold_the_folded_network(member_tensors, tmp_path):
    write_mega2560_folder(member_tensors, tmp_path / "m")
    data = tmp_path / "m" / "data"
    assert sorted(p.name for p in data.glob("*.txt")) == [f"{k}{n:02d}.txt" for k in "bw" for n in range(1, 15)]
    # the oracle: the folding written out here in float64 from the seed's table (w03 is B1's pointwise conv,
    # bn03 its BatchNorm; w01 the stem with its bias b01 and bn01)
    for w, bn, bias in (("w03", "bn03", None), ("w02", "bn02", None), ("w01", "bn01", "b01")):
        gamma, beta, mean, var = member_tensors[bn].astype(np.float64)
        scale = gamma / np.sqrt(var + 1e-3)
        weight = member_tensors[w].astype(np.float64)
        expected_w = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        c = member_tensors[bias].astype(np.float64) if bias else 0.0
        expected_b = (c - mean) * scale + beta
        number = w[1:]
        got_w = parse_txt(data / f"w{number}.txt", (data / f"w{number}.txt").read_bytes()).reshape(weight.shape)
        got_b = parse_txt(data / f"b{number}.txt", (data / f"b{number}.txt").read_bytes())
        np.testing.assert_allclose(got_w, expected_w, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(got_b, expected_b, rtol=2e-6, atol=1e-6)
    assert (data / "w14.txt").read_bytes() == b"".join(b"%.6e\n" % v for v in
                                                         member_tensors["w14"].astype(np.float64).ravel())
    weights_h = (tmp_path / "m" / "include" / "weights.h").read_text()
    assert weights_h.count("PROGMEM = {") == 14 and "#include <avr/pgmspace.h>" in weights_h
    assert "bn" not in " ".join(p.name for p in (tmp_path / "m").rglob("*"))


def test_reading_the_folder_back_computes_the_same_digits(member_tensors, mnist_test, tmp_path):
    write_mega2560_folder(member_tensors, tmp_path / "m")
    tensors, arch = load_float_model(tmp_path / "m")
    assert arch == MEMBER
    images = resize_digits(mnist_test.images[:300], 16)
    original = reference_logits(member_tensors, images, arch=MEMBER)
    folded = reference_logits(tensors, images, arch=MEMBER)
    assert np.array_equal(original.argmax(1), folded.argmax(1))
    np.testing.assert_allclose(folded, original, rtol=1e-4, atol=1e-4 * np.abs(original).max())


def test_cli_export_and_import(member_tensors, tmp_path, capsys):
    save_checkpoint(tmp_path / "m16.pt", from_noodle(member_tensors, MEMBER))
    assert main(["export", str(tmp_path / "m16.pt"), "--format", "noodle", "--layout", "mega2560",
                 "--out", str(tmp_path / "mega")]) == 0
    assert (tmp_path / "mega" / "include" / "biases.h").is_file()
    assert main(["import", str(tmp_path / "mega"), "--out", str(tmp_path / "back.pt")]) == 0
    capsys.readouterr()
    # the seed's 28x28 network is not upstream's Mobile-LeNet-16: one line
    seed = to_noodle(MobileLeNet(spec.SEED))
    with pytest.raises(UserError, match="Mega 2560 layout is upstream's Mobile-LeNet-16"):
        write_mega2560_folder(seed, tmp_path / "seed", spec.SEED)
    assert main(["export", str(tmp_path / "m16.pt"), "--format", "onnx", "--layout", "mega2560",
                 "--out", str(tmp_path / "x")]) == 2
    assert "layout of float Noodle files" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("avr-gcc") is None, reason="no avr-gcc")
def test_progmem_headers_build_for_the_atmega2560_and_stay_in_flash(member_tensors, tmp_path):
    """weights.h and biases.h in a program for the ATmega2560 that reads every value with pgm_read_float: it
    builds, and every folded float (weights, and a bias per output channel) sits in flash, not in the SRAM."""
    write_mega2560_folder(member_tensors, tmp_path / "m")
    names = [f"{k}{n:02d}" for k in "wb" for n in range(1, 15)]
    source = tmp_path / "read.c"
    source.write_text('#include <avr/pgmspace.h>\n#include "weights.h"\n#include "biases.h"\n'
                      "volatile float sink;\nint main(void) {\n"
                      + "".join(f"    for (unsigned i = 0; i < sizeof {n} / sizeof {n}[0]; ++i) sink += "
                                f"pgm_read_float(&{n}[i]);\n" for n in names) + "    return 0;\n}\n")
    elf = tmp_path / "read.elf"
    subprocess.run(["avr-gcc", "-mmcu=atmega2560", "-Os", "-std=gnu99", "-Wall", "-Werror",
                    f"-I{tmp_path / 'm' / 'include'}", str(source), "-o", str(elf)], check=True)
    text, data, bss = (int(v) for v in subprocess.run(["avr-size", str(elf)], capture_output=True, text=True,
                                                       check=True).stdout.splitlines()[1].split()[:3])
    folded_values = sum(member_tensors[f"w{n:02d}"].size for n in range(1, 15)) + sum(
        member_tensors[f"bn{n:02d}"].shape[1] for n in range(1, 14)) + member_tensors["b02"].size
    assert text >= 4 * folded_values and data + bss < 64  # every float in flash; SRAM holds only `sink`


def folded_network_source(arch: spec.Architecture) -> str:
    """``mobile_lenet_logits`` of upstream's folded network as the Mega 2560 headers hold it: the call sequence
    from the member's table, one kernel call per convolution with its folded weights ``wNN`` (weights.h), then the
    folded bias ``bNN`` (biases.h) and ReLU; global average pooling; the dense layer ``w14``/``b14``."""
    table = spec.layers(arch)
    largest = max(int(np.prod(layer.out_shape)) for layer in table)
    lines = ["#include <stddef.h>", '#include "mobile_lenet.h"', '#include "ml_kernels_f32.h"',
             '#include "ml_bias_relu_f32.h"', '#include "weights.h"', '#include "biases.h"', "",
             f"static float buffer_a[{largest}], buffer_b[{largest}];", "",
             "void mobile_lenet_logits(const uint8_t image[MOBILE_LENET_INPUT_SIZE],",
             "                         float logits[MOBILE_LENET_NUM_CLASSES])",
             "{", "    float *in = buffer_a, *out = buffer_b, *swap;",
             "    for (int i = 0; i < MOBILE_LENET_INPUT_SIZE; ++i) in[i] = (float)image[i] / 255.0f;"]
    number, padding = 0, 0
    for layer in table:
        h, w, c = (1, 1) * (len(layer.in_shape) == 1) + layer.in_shape
        out = layer.out_shape
        if layer.kind == LayerKind.PAD:  # the explicit zero padding goes into the convolution after it
            padding = layer.padding
            continue
        if layer.kind in (LayerKind.CONV, LayerKind.DWCONV):
            number += 1
            h, w, c = (h - 2 * padding, w - 2 * padding, c) if padding else (h, w, c)
            pad = layer.padding + padding
            call = (f"ml_conv2d_f32(in, {h}, {w}, {c}, out, {out[0]}, {out[1]}, {out[2]}, {layer.kernel}, "
                    f"{layer.stride}, {pad}, w{number:02d}, NULL)" if layer.kind == LayerKind.CONV else
                    f"ml_depthwise_conv2d_f32(in, {h}, {w}, {c}, out, {out[0]}, {out[1]}, {layer.kernel}, "
                    f"{layer.stride}, {pad}, w{number:02d})")
            lines += [f"    {call};", f"    ml_bias_relu_f32(out, {out[2]}, {out[0] * out[1]}, b{number:02d});",
                      "    swap = in; in = out; out = swap;"]
            padding = 0
        elif layer.kind == LayerKind.GAP:
            lines += [f"    ml_global_average_pool_f32(in, {c}, {h * w}, out);", "    swap = in; in = out; out = swap;"]
        elif layer.kind == LayerKind.DENSE:
            number += 1
            lines.append(f"    ml_dense_f32(in, {c}, logits, {out[0]}, w{number:02d}, b{number:02d});")
    return "\n".join(lines + ["}", ""])


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("avr-gcc", "simavr")), reason="no avr-gcc or simavr")
def test_folded_network_from_the_headers_runs_on_the_simulated_atmega2560(member_tensors, mnist_test, tmp_path):
    """The network upstream's example runs, built for the ATmega2560 from the export's PROGMEM weights.h and
    biases.h (weights read from flash) with the project's float kernels and serial firmware, in simavr: its digits
    are the reference engine's on real test images (resized to 16x16 with PIL here), its confidences within a
    rounding error (folding changes the order of the float operations). 16 KB of float activations need the
    external-SRAM link (upstream streams them through an SD card instead)."""
    from PIL import Image

    from mobile_lenet.apps.device import DeviceLink, run_on_device
    from mobile_lenet.codegen import c_float, c_library as lib, mcu_firmware
    from mobile_lenet.engines.mcu_simulators import SimulatorRun
    from mobile_lenet.engines.reference import softmax
    from mobile_lenet.files import write_text_files

    write_mega2560_folder(member_tensors, tmp_path / "m")
    library = c_float.generate_library(member_tensors, MEMBER)  # the kernels, API and serial protocol only:
    for name in (lib.NETWORK_SOURCE, lib.WEIGHTS_SOURCE, lib.WEIGHTS_HEADER):  # the network and its weights are
        del library[name]  # the Mega 2560 headers'
    library[lib.NETWORK_SOURCE] = folded_network_source(MEMBER)
    for name in ("ml_bias_relu_f32.c", "ml_bias_relu_f32.h"):
        library[name] = (Path(__file__).parents[1] / "c" / name).read_text()
    for name in ("weights.h", "biases.h"):
        library[name] = (tmp_path / "m" / "include" / name).read_text()
    write_text_files(library, tmp_path / "lib")
    target = mcu_firmware.TARGETS["atmega2560"]
    built = mcu_firmware._make(target, tmp_path / "lib", tmp_path / "build", "AVR_MEMORY=xmem")
    assert built.returncode == 0, built.stderr
    elf = tmp_path / "build" / "firmware.elf"
    symbols = mcu_firmware.read_symbols(target.nm_tool, elf)
    assert symbols["w01"][0] < 0x800000  # the weights stay in flash (AVR data addresses start at 0x800000)
    firmware = mcu_firmware.Firmware(target, elf, False, 0, 0, symbols, external_ram=True)
    images = np.stack([np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR))
                       for image in mnist_test.images[:3]])
    with SimulatorRun(firmware, tmp_path) as run, DeviceLink.open(run.port, timeout=60) as link:
        link.image_size = 16
        device = run_on_device(link, images, mnist_test.labels[:3], progress=False)
    expected = softmax(reference_logits(member_tensors, images, arch=MEMBER))
    assert device["predictions"] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose(device["confidences"], expected.max(axis=1), atol=2e-4)
