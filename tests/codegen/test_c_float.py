"""The C generator: code follows the table, weights are exact, it compiles strictly and runs clean under sanitizers."""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest

from conftest import UPSTREAM
from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.codegen import c_float, memory
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.engines import host_c
from mobile_lenet.engines.reference import reference_logits, softmax
from mobile_lenet.errors import UserError
from mobile_lenet.files import write_text_files

STRICT_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]



@pytest.fixture(scope="module")
def sources(upstream_tensors):
    return c_float.generate_sources(upstream_tensors)


def test_layer_sequence_is_generated_from_the_table(sources):
    body = sources[lib.NETWORK_SOURCE].split("void mobile_lenet_logits", 1)[1].split("\n}\n", 1)[0]
    # every row of the table, in order, named in a comment
    named = re.findall(r"/\*\s*(\d+) (\w+) \(", body)
    assert [(int(i), name) for i, name in named] == [(layer.index, layer.name) for layer in spec.LAYERS]
    # one kernel call per stored row (the padding rows are folded into the convolution after them)
    calls = re.findall(r"^\s+ml_(conv2d|depthwise_conv2d|batch_norm|relu|global_average_pool|dense)_f32\(", body, re.M)
    kinds = {"conv": "conv2d", "dwconv": "depthwise_conv2d", "bn": "batch_norm", "relu": "relu",
             "gap": "global_average_pool", "dense": "dense"}
    assert calls == [kinds[layer.kind] for layer in spec.LAYERS if layer.kind != "pad"]
    # GAP reads one buffer and writes the other
    assert "ml_global_average_pool_f32(activation_b, 24, 49, activation_a);" in body


def test_buffers_come_from_the_planner(sources):
    plan = memory.plan()
    text = sources[lib.NETWORK_SOURCE]
    assert f"static float activation_a[{plan.buffer_values}];" in text
    assert f"static float activation_b[{plan.buffer_values}];" in text
    assert "ml_depthwise_conv2d_f32(activation_b, 28, 28, 8, activation_a, 14, 14, 3, 2, 1, ml_w06);" in text


def test_library_needs_nothing_but_math_h(sources):
    for name in lib.library_file_names("float32"):
        text = sources[name]
        system_includes = set(re.findall(r"#include <([\w./]+)>", text))
        # avr/pgmspace.h: only under #if defined(__AVR__) (c/ml_flash.h), where the weights are PROGMEM
        assert system_includes <= {"math.h", "stdint.h", "stddef.h", "avr/pgmspace.h"}, name
        assert not re.search(r"\b(malloc|calloc|realloc|free|printf|sprintf|memcpy)\s*\(", text), name


def test_weight_literals_read_back_exactly(upstream_tensors, sources):
    text = sources[lib.WEIGHTS_SOURCE]
    arrays = dict(re.findall(r"const float ml_(\w+)\[\d+\] ML_FLASH = \{(.*?)\};", text, re.S))
    assert sorted(arrays) == sorted(name for name, _, _ in spec.noodle_tensors())
    for name, body in arrays.items():
        literals = [v.strip().rstrip("f") for v in body.replace("\n", " ").split(",") if v.strip()]
        values = np.array([np.float32(v) for v in literals], dtype=np.float32)
        expected = np.asarray(upstream_tensors[name], dtype=np.float32).ravel()
        assert values.tobytes() == expected.tobytes(), name


def test_c_float_is_exact_for_awkward_values():
    for value in [0.1, -0.0, 1e-40, 3.4028235e38, 1 / 3, -2.5e-8]:
        literal = c_float.c_float(np.float32(value))
        assert literal.endswith("f")
        assert np.float32(literal[:-1]).tobytes() == np.float32(value).tobytes()


def test_bad_weights_are_user_errors(upstream_tensors):
    missing = dict(upstream_tensors)
    del missing["bn07"]
    with pytest.raises(UserError, match="bn07"):
        c_float.generate_sources(missing)
    broken = dict(upstream_tensors)
    broken["w03"] = np.full_like(broken["w03"], np.nan)
    with pytest.raises(UserError, match="w03"):
        c_float.generate_sources(broken)


def test_export_cli_writes_the_library(tmp_path, capsys):
    """The library alone at the top (it compiles into a firmware with its own main()), the host program in host/,
    built with the README's own command."""
    out = tmp_path / "c"
    assert main(["export", str(UPSTREAM / "noodle"), "--format", "c", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(list(lib.library_file_names("float32")) + ["host", "README.md"])
    assert sorted(p.name for p in (out / "host").iterdir()) == [lib.HOST_PROGRAM]
    readme = (out / "README.md").read_text()
    assert "GAP" in readme and "13,032 bytes of weights" in readme  # the README's figures say what they count
    firmware_main = tmp_path / "firmware_main.c"
    firmware_main.write_text('#include "mobile_lenet.h"\nint main(void) { static unsigned char image[784]; '
                             'float p[10]; return mobile_lenet_predict(image, p) < 0; }\n')
    top = sorted(str(p) for p in out.glob("*.c"))
    result = subprocess.run(["cc", "-std=c99", f"-I{out}", "-o", str(tmp_path / "fw"), str(firmware_main), *top, "-lm"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr  # no second main(): the top folder is the library alone
    build = next(line for line in readme.splitlines() if line.startswith("cc "))
    result = subprocess.run(build, shell=True, cwd=out, capture_output=True, text=True)
    assert result.returncode == 0 and (out / "mobile_lenet_host").is_file(), result.stderr


def test_compiles_strictly_as_c99_hosted_and_freestanding(tmp_path, sources):
    write_text_files(sources, tmp_path)
    c_files = [str(tmp_path / n) for n in sources if n.endswith(".c")]
    result = subprocess.run(["cc", *STRICT_FLAGS, "-O2", f"-I{tmp_path}", "-o", str(tmp_path / "host.out"), *c_files,
                             "-lm"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # the library alone, as a microcontroller build compiles it (no POSIX, no main)
    library = [str(tmp_path / n) for n in lib.library_file_names("float32") if n.endswith(".c")]
    result = subprocess.run(["cc", *STRICT_FLAGS, "-ffreestanding", "-c", *library], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sanitizers_run_clean_and_agree_with_reference(tmp_path, upstream_tensors, mnist_test):
    """AddressSanitizer and UndefinedBehaviorSanitizer on 300 test images and on the serial mode."""
    program = host_c.build_host_program(upstream_tensors, sanitize=True, cache=tmp_path)
    images = mnist_test.images[:300]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    result = subprocess.run([str(program), "classify", "-"], input=images.tobytes(), capture_output=True, env=env)
    assert result.returncode == 0 and b"runtime error" not in result.stderr, result.stderr.decode()[-2000:]
    outputs = host_c.parse_classify_output(result.stdout.decode(), len(images))
    expected = softmax(reference_logits(upstream_tensors, images))
    assert (outputs.digits == expected.argmax(axis=1)).all()
    assert np.abs(outputs.probs - expected).max() <= 1e-5
    # serial mode: two images, then a partial one and the end of the input
    stream = images[0].tobytes() + images[1].tobytes() + images[2].tobytes()[:100]
    result = subprocess.run([str(program), "serve"], input=stream, capture_output=True, env=env, timeout=30)
    assert result.returncode == 0 and b"runtime error" not in result.stderr, result.stderr.decode()[-2000:]
    lines = result.stdout.decode().split("\r\n")
    assert lines[0] == "READY" and lines[1].startswith(f"PRED {expected[0].argmax()} ")
    assert lines[2].startswith(f"PRED {expected[1].argmax()} ")
