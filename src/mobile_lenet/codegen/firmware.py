"""``mobile-lenet export --format platformio``: a PlatformIO project that runs the model on a board.

The project (Arduino framework, environments ``esp32dev`` and ``pico``) holds the C library of the model
(``c_float`` or ``c_int8``) in ``src/`` next to a small ``main.cpp`` (``c/arduino_main.cpp``). ``main.cpp``
only moves bytes between ``Serial`` and the protocol state machine of ``mobile_lenet_serial.c``, the same
code the host program runs in the ``device`` tests, so what the tests exercise is what the board runs.

An int8 project also has ``megaatmega2560`` (Arduino Mega 2560: 8 KB of SRAM): that environment builds the
network row by row (``mobile_lenet_rows.c``, ``c/ml_rows_s8.c``) instead of on whole feature maps
(``mobile_lenet.c``); ``-DML_ROWS_SCHEDULE`` in its build flags picks which of the two files is compiled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.codegen import c_float, c_int8, c_library as lib, memory
from mobile_lenet.files import replace_folder
from mobile_lenet.quantization.quantize import QuantizedModel

ENVIRONMENTS = ("esp32dev", "pico")
INT8_ENVIRONMENTS = ENVIRONMENTS + ("megaatmega2560",)
ROWS_NETWORK = "mobile_lenet_rows.c"
ROWS_SWITCH = "ML_ROWS_SCHEDULE"
MEGA_ENVIRONMENT = f"""
[env:megaatmega2560]
; Arduino Mega 2560 (ATmega2560, 8 KB SRAM; int8 only): the network row by row, weights in flash. Measure it
; in a simulator first: mobile-lenet simulate Q --target atmega2560
platform = atmelavr
board = megaatmega2560
build_flags = ${{env.build_flags}} -D{ROWS_SWITCH}
"""
INT8_NOTE = ("This project runs the int8 model (`export Q --format platformio --int8`): integers only inside "
             "the network; see `mobile-lenet summary --memory --int8`. Its `megaatmega2560` environment (Arduino "
             "Mega 2560, 8 KB of SRAM) runs the network row by row (`pio run -e megaatmega2560 -t upload`; "
             "`mobile-lenet summary --memory --int8 --target atmega2560` for its memory).\n")


def _compiled_if(condition: str, text: str) -> str:
    """``text`` compiled only where ``condition`` holds (an empty file is not ISO C: a typedef stands in)."""
    return (f"#if {condition} /* which schedule: see platformio.ini */\n{text}\n#else\n"
            f"typedef int ml_schedule_not_built_here;\n#endif\n")


def project_files(model: dict[str, np.ndarray] | QuantizedModel,
                  arch: spec.Architecture | None = None) -> dict[str, str]:
    """Every file of the project for a float or an int8 model of any family member (the one the model records,
    or ``arch`` for plain tensors): relative path -> text."""
    int8 = isinstance(model, QuantizedModel)
    arch = spec.architecture_of(model, arch)
    plan = memory.int8_plan(arch) if int8 else memory.plan(memory.FLOAT32, arch)
    library = c_int8.generate_library(model) if int8 else c_float.generate_library(model, arch)
    if int8:  # both schedules; each environment compiles one (ML_ROWS_SCHEDULE)
        rows = c_int8.generate_library(model, "rows")
        library[lib.NETWORK_SOURCE] = _compiled_if(f"!defined({ROWS_SWITCH})", library[lib.NETWORK_SOURCE])
        library[ROWS_NETWORK] = _compiled_if(f"defined({ROWS_SWITCH})", rows[lib.NETWORK_SOURCE])
        library.update({name: rows[name] for name in lib.ROWS_FILES})
    readme = lib.template("platformio_README.md").substitute(
        flash_bytes=f"{plan.flash_bytes:,}", ram_bytes=f"{plan.ram_bytes:,}", precision_note=INT8_NOTE if int8 else "")
    ini = lib.template("platformio.ini").substitute(extra_environments=MEGA_ENVIRONMENT if int8 else "")
    files = {"platformio.ini": ini, "src/main.cpp": lib.c_source("arduino_main.cpp"), "README.md": readme}
    files.update({f"src/{name}": text for name, text in library.items()})
    return files


def write_platformio_project(model: dict[str, np.ndarray] | QuantizedModel, out_dir: str | Path,
                             arch: spec.Architecture | None = None) -> list[Path]:
    """``export --format platformio [--int8]``: write the project into ``out_dir``; returns the files written."""
    return replace_folder(project_files(model, arch), out_dir, what="PlatformIO export",
                          replaceable=c_float.previous_export(f"src/{lib.MODEL_HEADER}"))
