"""The Mega 2560 layout (upstream Noodle's ``examples/mobile-lenet-mega2560``): BatchNorm folded, PROGMEM headers,
read back as an equivalent model; the headers built with avr-gcc for the ATmega2560."""

from __future__ import annotations

import shutil
import subprocess

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
