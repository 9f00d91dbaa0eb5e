"""The README of a Noodle export: its GAP fixes compile against both of Noodle's APIs and average correctly."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from mobile_lenet.formats.noodle import readme_text

pytestmark = pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler")

# Stand-ins for the parts of Noodle's two APIs the snippets call: the float* one of the seed's program, and
# the NoodleBuffer one (noodle_buffer.h), with a dense layer that copies its first input and a softmax that
# does nothing, so the test sees what GAP left for the dense layer.
SHIM = r"""
#include <cstdint>
#include <cstdio>
#include <cstdlib>
struct FCNMem { int unused; };
struct NoodleBuffer { float *data; size_t capacity; };
float *noodle_buffer_require(NoodleBuffer *b, size_t n)
{
    if (b->capacity < n) { b->data = (float *)realloc(b->data, n * sizeof(float)); b->capacity = n; }
    return b->data;
}
static float dense_input[24];
uint16_t noodle_fcn(const float *in, uint16_t n, uint16_t, float *, const FCNMem &, void *)
{
    for (uint16_t i = 0; i < n; ++i) dense_input[i] = in[i];
    return 10;
}
uint16_t noodle_fcn(NoodleBuffer *in, uint16_t n, uint16_t m, NoodleBuffer *out, const FCNMem &h, void *p)
{
    noodle_buffer_require(out, m);
    return noodle_fcn(in->data, n, m, out->data, h, p);
}
uint16_t noodle_soft_max(float *, uint16_t n) { return n; }
uint16_t noodle_soft_max(NoodleBuffer *, uint16_t n) { return n; }
"""

FLOAT_MAIN = r"""
int main()
{
    static float a[24 * 49], b[24 * 49];
    float *in = a, *out = b;
    FCNMem head{};
    uint16_t W = 7;
    for (int i = 0; i < 24 * 49; ++i) in[i] = (float)(i % 97) / 7.0f;
SNIPPET
    for (int c = 0; c < 24; ++c) printf("%.9g\n", dense_input[c]);
    return W == 10 ? 0 : 1;
}
"""

BUFFER_MAIN = r"""
int main()
{
    NoodleBuffer A{}, B{};
    NoodleBuffer *in = &A, *out = &B;
    FCNMem head{};
    uint16_t W = 7;
    float *input = noodle_buffer_require(in, 24 * 49);
    for (int i = 0; i < 24 * 49; ++i) input[i] = (float)(i % 97) / 7.0f;
SNIPPET
    for (int c = 0; c < 24; ++c) printf("%.9g\n", dense_input[c]);
    return W == 10 ? 0 : 1;
}
"""


def snippets() -> list[str]:
    return re.findall(r"```cpp\n(.*?)```", readme_text(), re.S)


@pytest.mark.parametrize("api", ["float", "NoodleBuffer"])
def test_gap_fix_compiles_and_gives_keras_averages(api, tmp_path):
    gap_snippets = [s for s in snippets() if "GAP" in s]
    snippet = next(s for s in gap_snippets if ("NoodleBuffer" in s) == (api == "NoodleBuffer"))
    source = tmp_path / "fix.cpp"
    source.write_text(SHIM + (BUFFER_MAIN if api == "NoodleBuffer" else FLOAT_MAIN).replace("SNIPPET", snippet))
    program = tmp_path / "fix"
    subprocess.run(["c++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-o", str(program), str(source)], check=True)
    averages = np.array(subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout.split(),
                        dtype=np.float64)
    planes = (np.arange(24 * 49) % 97 / 7.0).reshape(24, 49)
    np.testing.assert_allclose(averages, planes.mean(axis=1), rtol=1e-6)
