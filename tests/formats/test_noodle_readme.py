"""The README of a Noodle export: its GAP fixes, pasted over the lines of upstream's example as the README says,
compile against both of Noodle's APIs and give the reference answer (averages, dense layer, softmax, argmax)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from mobile_lenet.formats.noodle import readme_text

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")

# Stand-ins for the parts of Noodle's two APIs that the example's last lines call: the float* one of the seed's
# program and the NoodleBuffer one (noodle_buffer.h), with a real dense layer, softmax and argmax, so the test sees
# what the firmware would answer.
SHIM = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
struct FCNMem { const float *weight; const float *bias; int act; };
struct NoodleBuffer { float *data; size_t capacity; };
float *noodle_buffer_require(NoodleBuffer *b, size_t n)
{
    if (b->capacity < n) { b->data = (float *)realloc(b->data, n * sizeof(float)); b->capacity = n; }
    return b->data;
}
uint16_t noodle_fcn(const float *in, uint16_t n, uint16_t m, float *out, const FCNMem &h, void *)
{
    for (uint16_t j = 0; j < m; ++j) {
        float s = h.bias[j];
        for (uint16_t i = 0; i < n; ++i) s += h.weight[j * n + i] * in[i];
        out[j] = s;
    }
    return m;
}
uint16_t noodle_fcn(NoodleBuffer *in, uint16_t n, uint16_t m, NoodleBuffer *out, const FCNMem &h, void *p)
{
    noodle_buffer_require(out, m);
    return noodle_fcn(in->data, n, m, out->data, h, p);
}
uint16_t noodle_soft_max(float *x, uint16_t n)
{
    float top = x[0], sum = 0.0f;
    for (uint16_t i = 1; i < n; ++i) top = x[i] > top ? x[i] : top;
    for (uint16_t i = 0; i < n; ++i) sum += (x[i] = std::exp(x[i] - top));
    for (uint16_t i = 0; i < n; ++i) x[i] /= sum;
    return n;
}
uint16_t noodle_soft_max(NoodleBuffer *x, uint16_t n) { return noodle_soft_max(x->data, n); }
void noodle_find_max(float *x, uint16_t n, float &max_val, uint16_t &max_idx)
{
    max_val = x[0]; max_idx = 0;
    for (uint16_t i = 1; i < n; ++i) if (x[i] > max_val) { max_val = x[i]; max_idx = i; }
}
void noodle_find_max(NoodleBuffer *x, uint16_t n, float &max_val, uint16_t &max_idx)
{
    noodle_find_max(x->data, n, max_val, max_idx);
}
uint16_t noodle_gap(float *x, uint16_t C, uint16_t W)  // as published: in place, from the last channel down
{
    for (int c = C - 1; c >= 0; --c) {
        float s = 0.0f;
        for (uint32_t i = 0; i < (uint32_t)W * W; ++i) s += x[c * W * W + i];
        x[c] = s / (float)(W * W);
    }
    return C;
}
uint16_t noodle_gap(NoodleBuffer *x, uint16_t C, uint16_t W) { return noodle_gap(x->data, C, W); }
static float weights[10 * 24], biases[10];
"""

# The end of upstream's predict() in each API, as examples/mobile-lenet-esp32/src/main.cpp has it (the float* one
# before Noodle's NoodleBuffer API, the NoodleBuffer one at its current head): from the GAP to the line printing
# the answer. The README's snippet replaces the lines from "// ---- GAP" / "// GAP" to the noodle_find_max line.
UPSTREAM_FLOAT = r"""
  // ---- GAP: (W x W x 24) -> (24,) in-place ----
  W = noodle_gap(in, 24, W);
  // ---- Dense: (24,) -> (10,) ----
  W = noodle_fcn(in, W, 10, out, head, nullptr);
  // Softmax in-place on logits
  noodle_soft_max(out, 10);

  // Argmax
  uint16_t pred;
  float max_val;
  noodle_find_max(out, 10, max_val, pred);

  printf("%u %.9g\n", (unsigned)pred, max_val);
"""

UPSTREAM_BUFFER = r"""
  // GAP: (W x W x 24) -> (24,), in-place in `in`.
  uint16_t N = noodle_gap(in->data, 24, W);

  // Dense: 24 -> 10. Logits are written to `out`.
  N = noodle_fcn(in, N, 10, out, head, nullptr);

  noodle_soft_max(out, N);

  uint16_t pred;
  float max_val;
  noodle_find_max(out, N, max_val, pred);

  printf("%u %.9g\n", (unsigned)pred, max_val);
"""

FLOAT_MAIN = r"""
int main()
{
    static float a[24 * 49], b[24 * 49];
    float *in = a, *out = b;
    INIT
    for (int i = 0; i < 24 * 49; ++i) in[i] = INPUT;
    FCNMem head{weights, biases, 0};
    uint16_t W = 7;
PREDICT
    return 0;
}
"""

BUFFER_MAIN = r"""
int main()
{
    NoodleBuffer A{}, B{};
    NoodleBuffer *in = &A, *out = &B;
    INIT
    float *input = noodle_buffer_require(in, 24 * 49);
    for (int i = 0; i < 24 * 49; ++i) input[i] = INPUT;
    FCNMem head{weights, biases, 0};
    uint16_t W = 7;
PREDICT
    return 0;
}
"""

INIT = "for (int i = 0; i < 240; ++i) { weights[i] = (float)((i * 37) % 23 - 11) / 8.0f; } " \
       "for (int j = 0; j < 10; ++j) { biases[j] = 0.1f * j; }"
INPUT = "(float)((i * 7) % 97) / 7.0f"


def expected_answer() -> tuple[int, float, int]:
    """NumPy's digit and probability for the stand-in input (Keras' GAP), and the digit the wrong buffer gives."""
    i = np.arange(240)
    weights = (((i * 37) % 23 - 11) / 8.0).reshape(10, 24)
    planes = (((np.arange(24 * 49) * 7) % 97) / 7.0).reshape(24, 49)
    logits = weights @ planes.mean(axis=1) + 0.1 * np.arange(10)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return int(p.argmax()), float(p.max()), int(planes.mean(axis=1)[:10].argmax())


def snippets() -> list[str]:
    return re.findall(r"```cpp\n(.*?)```", readme_text(), re.S)


def pasted(upstream: str, snippet: str) -> str:
    """``upstream`` with its lines from the GAP comment to the noodle_find_max line replaced by ``snippet``."""
    lines = upstream.splitlines()
    first = next(i for i, line in enumerate(lines) if "GAP" in line)
    last = next(i for i, line in enumerate(lines) if "noodle_find_max(" in line)
    return "\n".join(lines[:first] + snippet.splitlines() + lines[last + 1:])


def compile_and_run(tmp_path, api: str, predict: str) -> tuple[int, float]:
    main = (BUFFER_MAIN if api == "NoodleBuffer" else FLOAT_MAIN).replace("INIT", INIT).replace("INPUT", INPUT)
    source = tmp_path / "fix.cpp"
    source.write_text(SHIM + main.replace("PREDICT", predict))
    program = tmp_path / "fix"
    build = subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-function", "-o",
                            str(program), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    digit, probability = subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout.split()
    return int(digit), float(probability)


@pytest.mark.parametrize("api", ["float", "NoodleBuffer"])
def test_gap_fix_pasted_over_upstream_compiles_and_gives_the_keras_answer(api, tmp_path):
    snippet = next(s for s in snippets() if "GAP" in s and ("NoodleBuffer" in s) == (api == "NoodleBuffer"))
    upstream = UPSTREAM_BUFFER if api == "NoodleBuffer" else UPSTREAM_FLOAT
    digit, probability = compile_and_run(tmp_path, api, pasted(upstream, snippet))
    expected_digit, expected_probability, wrong_buffer_digit = expected_answer()
    assert expected_digit != wrong_buffer_digit  # reading `out` instead of `in` would be seen
    assert digit == expected_digit
    assert probability == pytest.approx(expected_probability, rel=1e-5)


@pytest.mark.parametrize("api", ["float", "NoodleBuffer"])
def test_upstream_as_it_is_averages_channel_0_wrongly(api, tmp_path):
    """The control: the unfixed lines compile here too and answer differently (the in-place GAP overwrote
    channel 0's plane), so the test above tells the fix from the original."""
    upstream = UPSTREAM_BUFFER if api == "NoodleBuffer" else UPSTREAM_FLOAT
    digit, probability = compile_and_run(tmp_path, api, upstream)
    expected_digit, expected_probability, _ = expected_answer()
    assert (digit, probability) != (expected_digit, pytest.approx(expected_probability, rel=1e-5))


def test_readme_documents_the_file_format_flag_the_include_and_the_scores():
    text = readme_text()
    assert "-DNOODLE_FILE_FORMAT=0" in text and "-include noodle_internal.h" in text
    assert "noodle_find_max(in, 10, max_val, pred)" in text and "probabilities are\nleft in `in`" in text
    assert "97.55%" in text and "97.73%" in text
