"""``mobile-lenet export --format platformio``: a PlatformIO project that runs the model on a board.

The project (Arduino framework, environments ``esp32dev`` and ``pico``) holds the C library of the model
(``c_float`` or ``c_int8``) in ``src/`` next to a small ``main.cpp`` (``c/arduino_main.cpp``). ``main.cpp``
only moves bytes between ``Serial`` and the protocol state machine of ``mobile_lenet_serial.c``, the same
code the host program runs in the ``device`` tests, so what the tests exercise is what the board runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobile_lenet.codegen import c_float, c_int8, c_library as lib, memory
from mobile_lenet.files import replace_folder
from mobile_lenet.quantization.quantize import QuantizedModel

ENVIRONMENTS = ("esp32dev", "pico")
INT8_NOTE = ("This project runs the int8 model (`export Q --format platformio --int8`): integers only inside "
             "the network; see `mobile-lenet summary --memory --int8`.\n")


def project_files(model: dict[str, np.ndarray] | QuantizedModel) -> dict[str, str]:
    """Every file of the project for a float or an int8 model: relative path -> text."""
    int8 = isinstance(model, QuantizedModel)
    plan = memory.int8_plan() if int8 else memory.plan()
    library = c_int8.generate_library(model) if int8 else c_float.generate_library(model)
    readme = lib.template("platformio_README.md").substitute(
        flash_bytes=f"{plan.flash_bytes:,}", ram_bytes=f"{plan.ram_bytes:,}", precision_note=INT8_NOTE if int8 else "")
    files = {"platformio.ini": lib.template("platformio.ini").template, "src/main.cpp": lib.c_source("arduino_main.cpp"),
             "README.md": readme}
    files.update({f"src/{name}": text for name, text in library.items()})
    return files


def write_platformio_project(model: dict[str, np.ndarray] | QuantizedModel, out_dir: str | Path) -> list[Path]:
    """``export --format platformio [--int8]``: write the project into ``out_dir``; returns the files written."""
    return replace_folder(project_files(model), out_dir, what="PlatformIO export",
                          replaceable=c_float.previous_export(f"src/{lib.MODEL_HEADER}"))
