"""The inference part's C figures: the library-call timing next to the whole-process one, and the ratios."""

from __future__ import annotations

import pytest

from benchmarks import inference, report


def row(engine, batch, rate, library=None):
    out = {"engine": engine, "batch": batch, "threads": 1, "images": 10, "seconds": 10 / rate,
           "images_per_second": rate, "accuracy": 1.0, "agreement_with_pytorch": 1.0, "bound": "1-thread peak",
           "fraction_of_peak": 0.01}
    if library is not None:
        out["library_call"] = {"images_per_second": library, "fraction_of_peak": 0.02}
    return out


def test_ratios_compare_library_calls_and_processes_within_the_run():
    rows = [row("onnxruntime", 1, 1000.0), row("onnxruntime", inference.torch_batch_size(), 2000.0),
            row(inference.FLOAT_C_NOODLE, 1, 500.0, library=1500.0),
            row(inference.FLOAT_C_FAST, 1, 1000.0, library=6000.0),
            {"engine": inference.INT8_C, "batch": 1, "threads": 1, "available": False, "reason": "no compiler"}]
    ratios = inference.ratios(rows)
    assert ratios["float_fast_library_vs_onnxruntime_batch1"] == pytest.approx(6.0)
    assert ratios["float_fast_process_vs_onnxruntime_batch1"] == pytest.approx(1.0)
    assert ratios["float_fast_library_vs_onnxruntime_batched"] == pytest.approx(3.0)
    assert ratios["float_fast_vs_noodle_library"] == pytest.approx(4.0)
    assert ratios["int8_vs_float_fast_library"] is None  # not available: no made-up ratio

    entry = {"date": "2026-01-01T00:00:00+00:00", "command": "python -m benchmarks", "quick": False, "threads": 2,
             "seconds": 3.0, "machine": {}, "result": {
                 "weights": "w", "test_images": 10, "macs_per_image": 100,
                 "peak": {"single_core": {"matmul": "torch.mm", "flops": 1e9, "threads": 1},
                          "all_cores": {"matmul": "torch.mm", "flops": 2e9, "threads": 2}},
                 "engines": rows, "ratios": ratios}}
    text = "\n".join(report.inference_section(entry))
    fast_row = next(line for line in text.splitlines() if line.startswith(f"| {inference.FLOAT_C_FAST}"))
    assert "6,000 (2.00% of the 1-thread peak)" in fast_row
    assert "**6.00x** library calls only (1.00x whole process) (target >= 2x)" in text
    assert "int8 C / float C, host fast path: not measured" in text
