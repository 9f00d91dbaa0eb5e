"""``mobile-lenet export``: one entry point; the model's type and the format pick the writer.

A float model (Noodle tensors) exports to every format; a quantized model to the C library and the
PlatformIO project, in int8. Every family member (``spec.Architecture``) exports to each of them: the model
records its member, and the files are written for it.
"""

from __future__ import annotations

from pathlib import Path

from mobile_lenet import spec
from mobile_lenet.codegen.c_float import write_c_library
from mobile_lenet.codegen.c_int8 import write_c_library_int8
from mobile_lenet.codegen.firmware import write_platformio_project
from mobile_lenet.engines.registry import is_int8
from mobile_lenet.errors import UserError
from mobile_lenet.formats.noodle import write_noodle_folder
from mobile_lenet.formats.noodle_mega2560 import write_mega2560_folder
from mobile_lenet.formats.onnx_export import write_onnx

FLOAT_WRITERS = {"noodle": write_noodle_folder, "onnx": write_onnx, "c": write_c_library,
                 "platformio": write_platformio_project}
INT8_WRITERS = {"c": write_c_library_int8, "platformio": write_platformio_project}
FORMATS = tuple(FLOAT_WRITERS)


def export(model, fmt: str, out_dir: str | Path, arch: spec.Architecture | None = None, layout: str = "standard",
           schedule: str | None = None) -> list[Path]:
    """Write a float or int8 ``model`` in format ``fmt`` into ``out_dir``; returns the files written. The files
    are for the member the model records (``spec.architecture_of``; ``arch`` for plain tensors that record
    none). ``layout="mega2560"`` (Noodle only): the files of upstream Noodle's Arduino Mega 2560 example
    (``formats.noodle_mega2560``). ``schedule``: the int8 C library's (``c_int8.SCHEDULES``; default
    "buffers")."""
    member = spec.architecture_of(model, arch)
    if layout != "standard":
        if fmt != "noodle" or is_int8(model):
            raise UserError(f"--layout {layout} is a layout of float Noodle files (--format noodle), not of {fmt}"
                            f"{' --int8' if is_int8(model) else ''}")
        return write_mega2560_folder(model, Path(out_dir), member)
    writers = INT8_WRITERS if is_int8(model) else FLOAT_WRITERS
    if fmt not in writers:
        names = list(writers)
        kind = "--int8 exports" if is_int8(model) else "export writes"
        raise UserError(f"{kind} formats {', '.join(names[:-1])} and {names[-1]}, not {fmt!r}")
    if schedule is not None:
        if not (is_int8(model) and fmt == "c"):
            raise UserError("--schedule goes with --format c --int8 (the PlatformIO project picks each board's own)")
        return write_c_library_int8(model, Path(out_dir), schedule)
    if is_int8(model):
        return writers[fmt](model, Path(out_dir))
    return writers[fmt](model, Path(out_dir), member)
