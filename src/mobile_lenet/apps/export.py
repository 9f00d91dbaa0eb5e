"""``mobile-lenet export``: one entry point, one module per format.

Every exporter takes Noodle tensors (the common currency, see ``model.to_noodle``) and an output folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobile_lenet.errors import UserError

FORMATS = ("noodle", "onnx", "c", "platformio")


def export_model(tensors: dict[str, np.ndarray], fmt: str, out_dir: str | Path, **options) -> list[Path]:
    """Write ``tensors`` in format ``fmt`` into ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    if options.pop("int8", False):  # then ``tensors`` is a quantized model (quantize.load_quantized)
        from mobile_lenet.codegen.c_int8 import export_int8

        return export_int8(tensors, fmt, out_dir, **options)
    if fmt == "noodle":
        from mobile_lenet.formats.noodle import write_folder

        return write_folder(tensors, out_dir, **options)
    if fmt == "onnx":
        from mobile_lenet.formats.onnx_export import write_onnx

        return write_onnx(tensors, out_dir, **options)
    if fmt == "c":
        from mobile_lenet.codegen.c_float import write_c_library

        return write_c_library(tensors, out_dir, **options)
    if fmt == "platformio":
        from mobile_lenet.codegen.firmware import write_platformio_project

        return write_platformio_project(tensors, out_dir, **options)
    raise UserError(f"unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
