"""The int8 host fast path (codegen.c_int8.generate_host_fast_sources, c/ml_kernels_s8_host.c): bit for bit the NumPy
int8 engine on all 10,000 MNIST test images, with its AVX2 + VNNI loops (the host flags), its AVX2-only ones and its
plain C ones; its kernels against plain loops (tests/c/test_kernels_s8_host.c); its requantization thresholds
against the reference's arithmetic. The ``c`` engine runs it for an int8 model, while ``export --format c --int8``
stays the generic library."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from mobile_lenet.codegen import c_int8
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.engines import host_c
from mobile_lenet.engines.reference_int8 import int8_logits
from mobile_lenet.engines.registry import logits
from mobile_lenet.quantization.arithmetic import requantize

C_DIR = Path(str(lib.c_folder()))
KERNEL_TEST = ROOT / "tests" / "c" / "test_kernels_s8_host.c"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
HOST_FLAGS = [flag for flag in host_c.OPTIMIZE_FLAGS if flag != "-std=c99"]
SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


@pytest.fixture(scope="module")
def c_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("c_cache_int8_fast")


@pytest.fixture(scope="module")
def expected_logits(upstream_int8, mnist_test):
    return int8_logits(upstream_int8, mnist_test.images)


@pytest.mark.parametrize("defines", [None, {"ML_S8_HOST_NO_VNNI": 1}, {"ML_S8_HOST_PORTABLE": 1}],
                         ids=["host-flags", "no-vnni", "portable-c"])
def test_fast_path_is_bit_exact_on_all_test_images(upstream_int8, mnist_test, expected_logits, c_cache, defines):
    got = host_c.c_logits(upstream_int8, mnist_test.images, variant="fast", defines=defines, cache=c_cache)
    assert got.shape == (10_000, 10) and got.dtype == np.int8
    mismatches = np.flatnonzero((got != expected_logits).any(axis=1))
    assert mismatches.size == 0, f"fast path and NumPy int8 engine differ on images {mismatches[:10]}"


def test_fast_path_under_the_sanitizers(upstream_int8, mnist_test, expected_logits, c_cache):
    images = mnist_test.images[:50]
    got = host_c.c_logits(upstream_int8, images, variant="fast", sanitize=True, cache=c_cache)
    np.testing.assert_array_equal(got, expected_logits[:50])


def test_the_c_engine_runs_the_fast_path_and_export_stays_generic(upstream_int8, mnist_test, c_cache):
    images = mnist_test.images[:64]
    fast = host_c.c_outputs(upstream_int8, images, variant="fast", cache=c_cache).logits.astype(np.int8)
    np.testing.assert_array_equal(host_c.c_logits(upstream_int8, images, cache=c_cache), fast)
    np.testing.assert_array_equal(logits(upstream_int8, images, "c"), fast)
    exported = c_int8.generate_sources(upstream_int8)
    assert not set(c_int8.HOST_FAST_KERNEL_FILES) & set(exported)
    assert "ml_s8h_" not in exported[lib.NETWORK_SOURCE]
    assert "ml_s8h_" in c_int8.generate_host_fast_sources(upstream_int8)[lib.NETWORK_SOURCE]
    generic = host_c.build_host_program(upstream_int8, cache=c_cache)
    assert (generic.parent / "ml_kernels_s8.c").is_file() and not (generic.parent / "ml_kernels_s8_host.c").exists()
    with pytest.raises(ValueError, match="variant"):
        host_c.build_host_program(upstream_int8, variant="turbo", cache=c_cache)


def test_a_model_the_fast_kernels_do_not_cover_runs_the_generic_c(upstream_int8, mnist_test, c_cache):
    model = copy.deepcopy(upstream_int8)
    model.layers[1].shift = 26  # beyond the fast path's 32-bit requantization
    with pytest.raises(c_int8.HostFastUnsupported, match="shift"):
        c_int8.host_fast_network_source(model)
    images = mnist_test.images[:32]
    np.testing.assert_array_equal(host_c.c_logits(model, images, cache=c_cache), int8_logits(model, images))


def test_requantization_thresholds_give_the_reference_values(upstream_int8):
    rng = np.random.default_rng(0)
    for layer in upstream_int8.layers:
        if layer.kind.value not in ("conv", "dwconv"):
            continue
        rows = np.array(c_int8.host_fast_requant_rows(layer), dtype=np.int64)
        lo, hi, mult, rnd = (rows[:, i:i + 1] for i in range(4))
        acc = np.concatenate([rng.integers(-2**22, 2**22, (len(rows), 2000)),
                              lo + rng.integers(-300, 300, (len(rows), 600)),
                              hi + rng.integers(-300, 300, (len(rows), 600))], axis=1)
        clamped = np.clip(acc, lo, hi)
        wrapped = (clamped * mult + rnd + 2**31) % 2**32 - 2**31  # int32 arithmetic, as the vector code
        fast = wrapped >> layer.shift
        reference = requantize(acc.T, layer.multiplier, layer.shift, layer.out_zero_point, layer.relu,
                               channel_axis=1).T.astype(np.int64) + 128
        np.testing.assert_array_equal(fast, reference, err_msg=layer.name)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("flags", [HOST_FLAGS, [*HOST_FLAGS, "-DML_S8_HOST_NO_VNNI"], ["-O2", "-DML_S8_HOST_PORTABLE"],
                                   [*SANITIZE, "-march=native"]],
                         ids=["host-flags", "no-vnni", "portable-c", "asan-ubsan"])
def test_kernels_match_plain_loops(flags, tmp_path):
    program = tmp_path / "test_kernels_s8_host"
    built = subprocess.run(["cc", *STRICT, *flags, f"-I{C_DIR}", "-o", str(program), str(KERNEL_TEST)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed") and int(last.split()[0]) >= 10_000
    portable = "-DML_S8_HOST_PORTABLE" in flags or not compiler_defines_avx2(flags)
    assert ("paths: portable C" in result.stdout) == portable, result.stdout


def compiler_defines_avx2(flags: list[str]) -> bool:
    macros = subprocess.run(["cc", *flags, "-dM", "-E", "-"], input="", capture_output=True, text=True).stdout
    return "#define __AVX2__ 1" in macros
