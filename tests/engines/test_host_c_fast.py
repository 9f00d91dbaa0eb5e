"""The float host fast path (codegen.c_float.generate_host_fast_sources, c/ml_kernels_f32_host.c) and the host
program's time mode: the fast path keeps the reference's predictions on all 10,000 MNIST test images with
|probability difference| <= 1e-5, with its x86 (AVX2) loops and with its portable C ones; the ``c`` engine runs it,
while ``export --format c`` and the default host build stay the Noodle-semantics library."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from mobile_lenet.codegen import c_float
from mobile_lenet.codegen import c_library as lib
from mobile_lenet.engines import host_c
from mobile_lenet.engines.reference import reference_logits, softmax
from mobile_lenet.engines.registry import logits


@pytest.fixture(scope="module")
def c_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("c_cache_fast")


@pytest.fixture(scope="module")
def reference_outputs(upstream_tensors, mnist_test):
    expected_logits = reference_logits(upstream_tensors, mnist_test.images)
    return expected_logits, softmax(expected_logits)


@pytest.mark.parametrize("defines", [None, {"ML_F32_HOST_PORTABLE": 1}], ids=["host-flags", "portable-c"])
def test_fast_path_keeps_the_reference_predictions_on_all_test_images(upstream_tensors, mnist_test,
                                                                      reference_outputs, c_cache, defines):
    expected_logits, expected = reference_outputs
    outputs = host_c.c_outputs(upstream_tensors, mnist_test.images, variant="fast", defines=defines, cache=c_cache)
    assert len(outputs.digits) == 10_000
    mismatches = np.flatnonzero(outputs.digits != expected.argmax(axis=1))
    assert mismatches.size == 0, f"fast path and reference disagree on images {mismatches[:10]}"
    assert np.abs(outputs.probs - expected).max() <= 1e-5
    assert np.abs(outputs.logits - expected_logits).max() <= 1e-3
    assert (outputs.digits == mnist_test.labels).sum() == 9755


def test_the_c_engine_runs_the_fast_path_and_export_stays_noodle(upstream_tensors, mnist_test, c_cache):
    images = mnist_test.images[:64]
    fast = host_c.c_outputs(upstream_tensors, images, variant="fast", cache=c_cache).logits
    np.testing.assert_array_equal(host_c.c_logits(upstream_tensors, images, cache=c_cache), fast)
    np.testing.assert_array_equal(logits(upstream_tensors, images, "c"), fast)
    noodle = host_c.c_outputs(upstream_tensors, images, cache=c_cache).logits
    np.testing.assert_array_equal(host_c.c_logits(upstream_tensors, images, variant="noodle", cache=c_cache), noodle)
    exported = c_float.generate_sources(upstream_tensors)
    assert not set(c_float.HOST_FAST_KERNEL_FILES) & set(exported)
    assert "ml_conv2d_f32(" in exported[lib.NETWORK_SOURCE]
    assert "ml_f32h_" in c_float.generate_host_fast_sources(upstream_tensors)[lib.NETWORK_SOURCE]
    with pytest.raises(ValueError, match="variant"):
        host_c.build_host_program(upstream_tensors, variant="turbo", cache=c_cache)


@pytest.mark.parametrize("variant", ["noodle", "fast", "int8"])
def test_time_mode_times_the_library_calls(variant, upstream_tensors, upstream_int8, mnist_test, c_cache):
    images = mnist_test.images[:100]
    model = upstream_int8 if variant == "int8" else upstream_tensors
    options = {} if variant == "int8" else {"variant": variant}
    program = host_c.build_host_program(model, cache=c_cache, **options)
    timing = host_c.run_time(program, images, repeats=2)
    assert timing["images"] == 100 and timing["repeats"] == 2
    assert timing["best_seconds"] > 0 and timing["images_per_second"] > 0
    digits = host_c.run_classify(program, images).digits
    assert timing["checksum"] == 3 * int(digits.sum())  # the warm-up pass and the two timed ones
    bad = subprocess.run([str(program), "time", "-", "0"], input=images.tobytes(), capture_output=True)
    assert bad.returncode == 2
    truncated = subprocess.run([str(program), "time", "-"], input=images.tobytes()[:-1], capture_output=True)
    assert truncated.returncode == 1 and b"truncated" in truncated.stderr


def test_host_builds_are_keyed_by_this_cpu():
    assert "-march=native" in host_c.OPTIMIZE_FLAGS
    assert host_c.cpu_identity()
