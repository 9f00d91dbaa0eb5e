"""The generated C on the host: ``mobile-lenet evaluate MODEL --engine c``, float or int8.

``build_host_program`` writes the C export of a model (``codegen.c_float`` or ``codegen.c_int8``) into a cache
folder named by a hash of the sources and compiler flags, and compiles ``mobile_lenet_host`` (``c/``) with the
system C compiler (``$CC``, else ``cc``). Building again with the same weights and flags reuses the binary.

The program has three modes: ``classify -`` reads raw images on stdin and prints, per image, the digit, 10
logits (an int8 library: its 10 int8 logits) and 10 probabilities with ``%.9g`` (so the float32 values come
back exactly); ``time - [REPEATS]`` reads the images first, then times only the library calls (``run_time``:
images/s without process start, input or text output); ``serve`` is the microcontroller's serial protocol on
stdin/stdout, the simulated device of the ``device`` tests.

Float models come in two variants (``FLOAT_VARIANTS``): ``"noodle"``, the library ``export --format c`` writes
(Noodle semantics, bit for bit the NumPy reference), and ``"fast"``, the host-only fast path
(``codegen.c_float.generate_host_fast_sources``: BatchNorm folded, fused multiply-adds, AVX2 on x86), held by
the tests to the reference's predictions on all 10,000 test images with |dp| <= 1e-5. ``build_host_program``
and ``c_outputs`` build the Noodle one unless asked; ``c_logits`` (the ``c`` engine) runs the fast one.

Int8 models likewise (``INT8_VARIANTS``): ``"generic"``, the library ``export --format c --int8`` writes (and the
firmware runs), and ``"fast"``, the host-only fast path (``codegen.c_int8.generate_host_fast_sources``: HCW byte
maps with zero-point borders, AVX2 / VNNI on x86), bit for bit the NumPy int8 engine. ``c_logits`` runs the fast
one (the generic one where the fast kernels do not cover the model, or with a ``schedule``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.codegen import c_float, c_int8
from mobile_lenet.errors import UserError
from mobile_lenet.files import temporary_beside, write_text_files
from mobile_lenet.quantization.quantize import QuantizedModel

PROGRAM_NAME = "mobile_lenet_host"
# -ffp-contract=off: no fused multiply-adds, so every product is rounded to float32 as in the reference.
# -funroll-loops: the kernels' inner loops are short rows (7 to 28 values); unrolling them is ~7% faster on
# the host and portable (no instruction set assumed), and it changes no result.
# -flto: the kernels live in their own file (c/ml_kernels_*.c); link-time optimization lets the compiler inline
# them into the layer calls with their constant sizes, as when they were in one file (measured 1.45x faster on
# 10,000 images, same output bytes).
# -march=native: the host program runs on the machine that builds it (the cache folder's hash includes this
# CPU's model and flags, see cpu_identity), so the compiler may use its vector instructions (AVX2 / AVX-512 on
# x86: the x86 paths of ml_kernels_s8_fast.c and ml_kernels_f32_host.c); -ffp-contract=off still forbids fusing
# the Noodle kernels' multiply-adds, so their results do not change. Host-only: the firmware builds do not use
# these flags.
OPTIMIZE_FLAGS = ("-std=c99", "-O3", "-ffp-contract=off", "-funroll-loops", "-flto", "-march=native")
FLOAT_VARIANTS = ("noodle", "fast")
ENGINE_FLOAT_VARIANT = "fast"  # what c_logits (the ``c`` engine) runs for a float model
INT8_VARIANTS = ("generic", "fast")
ENGINE_INT8_VARIANT = "fast"  # what c_logits runs for an int8 model (the generic C where fast does not cover it)
WARNING_FLAGS = ("-Wall", "-Wextra", "-Werror", "-pedantic")
# -O1 (after -O3, so it wins): sanitizer builds at -O3 take several times longer to compile.
SANITIZE_FLAGS = ("-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                  "-g")


@dataclass
class COutputs:
    """What the host program prints per image."""

    digits: np.ndarray  # (N,) int
    logits: np.ndarray  # (N, 10) float32
    probs: np.ndarray  # (N, 10) float32


def cache_root() -> Path:
    """Where host builds go: ``<cache>/c`` with the package's cache folder ($MOBILE_LENET_CACHE or the user's)."""
    env = os.environ.get("MOBILE_LENET_CACHE")
    return Path(env) / "c" if env else Path.home() / ".cache" / "mobile-lenet" / "c"


def compiler() -> str:
    """The C compiler: $CC, else ``cc``."""
    name = os.environ.get("CC", "cc")
    if shutil.which(name) is None:
        raise UserError(f"no C compiler found ({name}); install one (e.g. gcc) or set CC")
    return name


def cpu_identity() -> str:
    """This machine's CPU as -march=native sees it (model name and feature flags from /proc/cpuinfo, else the
    platform's description): part of a build's cache key, so a cache shared between machines never runs a
    binary built for another CPU."""
    import platform

    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        lines = []
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(dict.fromkeys(wanted)) or f"{platform.machine()} {platform.processor()}"


def compile_flags(sanitize: bool = False, defines: dict | None = None) -> list[str]:
    """The flags of a host build: C99, warnings as errors, optional sanitizers, ``-DNAME=VALUE`` defines."""
    flags = list(OPTIMIZE_FLAGS + WARNING_FLAGS)
    if sanitize:
        flags += SANITIZE_FLAGS
    flags += [f"-D{name}={value}" for name, value in sorted((defines or {}).items())]
    return flags


def build_cached_program(sources: dict[str, str], program_name: str, *, flavour: str = "",
                         sanitize: bool = False, defines: dict | None = None, cache: str | Path | None = None) -> Path:
    """Write generated ``sources`` into a cache folder named by a hash of the sources and compiler flags, and
    compile their ``.c`` files into ``program_name``; returns the executable, reused when already built.

    ``flavour`` (e.g. ``"int8"``) prefixes the cache folder's name and names the C in a compile error."""
    cc = compiler()
    flags = compile_flags(sanitize, defines)
    digest = hashlib.sha256()
    for part in [cc, *flags, cpu_identity()] + [f"{name}\0{text}" for name, text in sorted(sources.items())]:
        digest.update(part.encode() + b"\0")
    folder_name = (f"{flavour}-" if flavour else "") + digest.hexdigest()[:20]
    folder = (Path(cache) if cache is not None else cache_root()) / folder_name
    program = folder / program_name
    if program.is_file():
        return program
    write_text_files(sources, folder)  # also removes what a killed build left there
    c_files = sorted(str(folder / name) for name in sources if name.endswith(".c"))
    # Compile to a temporary name, then rename: another process may be building the same folder.
    partial = temporary_beside(program)
    # -I: a program in a subfolder (an export's host/) includes the library's headers
    result = subprocess.run([cc, *flags, f"-I{folder}", "-o", str(partial), *c_files, "-lm"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        first_error = (result.stderr.strip().splitlines() or ["no message"])[0]
        generated = f"generated {flavour} C" if flavour else "generated C"
        raise UserError(f"compiling the {generated} failed ({cc}): {first_error}")
    os.replace(partial, program)
    return program


def model_architecture(model: dict[str, np.ndarray] | QuantizedModel,
                       arch: spec.Architecture | None = None) -> spec.Architecture:
    """The family member of ``model`` (``spec.architecture_of``): an int8 model and loaded float weights know
    their own; plain float tensors are the member ``arch`` (default the seed's)."""
    return spec.architecture_of(model, arch)


def build_host_program(model: dict[str, np.ndarray] | QuantizedModel, *, sanitize: bool = False,
                       defines: dict | None = None, cache: str | Path | None = None,
                       schedule: str = "buffers", variant: str | None = None,
                       arch: spec.Architecture | None = None) -> Path:
    """Generate and compile the host program for a float or an int8 model; returns the executable (cached).
    ``schedule`` (int8): "buffers" or "rows" (``codegen.c_int8.SCHEDULES``); ``variant``: float "noodle" (the
    exported library, the default) or "fast" (the host fast path), see ``FLOAT_VARIANTS``; int8 "generic" (the
    exported library, the default) or "fast" (its host fast path, raising ``c_int8.HostFastUnsupported`` for a
    model its kernels do not cover), see ``INT8_VARIANTS``. ``arch``: the member float tensors are for."""
    arch = spec.architecture_of(model, arch)
    int8 = isinstance(model, QuantizedModel)
    variants = INT8_VARIANTS if int8 else FLOAT_VARIANTS
    variant = variant or variants[0]  # the exported library
    if variant not in variants:
        raise ValueError(f"unknown {'int8' if int8 else 'float'} variant {variant!r}, expected one of {variants}")
    fast = variant == "fast"
    if int8:
        sources = c_int8.generate_host_fast_sources(model) if fast else c_int8.generate_sources(model, schedule)
        flavour = "int8-fast" if fast else "int8"
    else:
        sources = (c_float.generate_host_fast_sources(model, arch) if fast
                   else c_float.generate_sources(model, arch))
        flavour = "fast" if fast else ""
    return build_cached_program(sources, PROGRAM_NAME, flavour=flavour, sanitize=sanitize, defines=defines,
                                cache=cache)


def check_images(images: np.ndarray, arch: spec.Architecture = spec.SEED) -> np.ndarray:
    """uint8 images (N, S, S), C-contiguous, S the member's input size (28 for the seed's)."""
    images = np.asarray(images)
    h, w, _ = arch.input_shape
    if images.ndim != 3 or images.shape[1:] != (h, w) or images.dtype != np.uint8:
        raise UserError(f"images must be uint8 of shape (N, {h}, {w}), got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images)


def parse_classify_output(text: str, count: int) -> COutputs:
    """Parse ``classify`` lines: digit, 10 logits, 10 probabilities."""
    n = spec.NUM_CLASSES
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if len(rows) != count or any(len(row) != 1 + 2 * n for row in rows):
        raise UserError(f"the C program printed {len(rows)} well-formed lines for {count} images")
    table = np.array(rows, dtype=np.float64)
    return COutputs(table[:, 0].astype(np.int64), table[:, 1:1 + n].astype(np.float32),
                    table[:, 1 + n:].astype(np.float32))


def run_classify(program: Path, images: np.ndarray, arch: spec.Architecture = spec.SEED) -> COutputs:
    """Classify ``images`` with a built host program of the member ``arch``."""
    images = check_images(images, arch)
    result = subprocess.run([str(program), "classify", "-"], input=images.tobytes(), capture_output=True)
    if result.returncode != 0:
        raise UserError(f"the C program failed: {result.stderr.decode(errors='replace').strip()}")
    return parse_classify_output(result.stdout.decode("ascii"), len(images))


def run_time(program: Path, images: np.ndarray, repeats: int = 5, arch: spec.Architecture = spec.SEED) -> dict:
    """Time the library calls of a built host program on ``images`` (its ``time`` mode: images read first, one
    warm-up pass, best of ``repeats`` passes, clock_gettime around the calls only): images, repeats,
    best_seconds, images_per_second and checksum (sum of the predicted digits)."""
    images = check_images(images, arch)
    result = subprocess.run([str(program), "time", "-", str(repeats)], input=images.tobytes(), capture_output=True)
    if result.returncode != 0:
        raise UserError(f"the C program failed: {result.stderr.decode(errors='replace').strip()}")
    words = result.stdout.decode("ascii").split()
    fields = dict(zip(words[0::2], words[1::2]))
    return {"images": int(fields["images"]), "repeats": int(fields["repeats"]),
            "best_seconds": float(fields["best_seconds"]),
            "images_per_second": float(fields["images_per_second"]), "checksum": int(fields["checksum"])}


def c_outputs(model: dict[str, np.ndarray] | QuantizedModel, images: np.ndarray, **build_options) -> COutputs:
    """Digits, logits and probabilities of ``images`` computed by the generated C, built on this host."""
    return run_classify(build_host_program(model, **build_options), images,
                        model_architecture(model, build_options.get("arch")))


def c_logits(model: dict[str, np.ndarray] | QuantizedModel, images: np.ndarray, **build_options) -> np.ndarray:
    """Logits (N, 10) from the generated C: float32, or int8 for a quantized model (printed as integers: exact).
    A float model runs the ``ENGINE_FLOAT_VARIANT`` (the host fast path) unless ``variant`` says otherwise; an
    int8 one the ``ENGINE_INT8_VARIANT`` unless ``variant`` or ``schedule`` is given or its kernels do not cover
    the model (then the generic int8 C)."""
    if not isinstance(model, QuantizedModel):
        build_options.setdefault("variant", ENGINE_FLOAT_VARIANT)
    elif "variant" not in build_options and "schedule" not in build_options:
        try:
            c_int8.host_fast_network_source(model)
            build_options["variant"] = ENGINE_INT8_VARIANT
        except c_int8.HostFastUnsupported:
            build_options["variant"] = "generic"
    logits = c_outputs(model, images, **build_options).logits
    return logits.astype(np.int8) if isinstance(model, QuantizedModel) else logits


# ------------------------------------------------------------------------------------------------ layer trace
TRACE_PREFIX = "LAYER "


def parse_trace_line(line: str, int8: bool) -> tuple[int, np.ndarray]:
    """``LAYER <number> <count> <hex>...`` (``c/ml_trace.h``) -> (number, values: float32 or int8)."""
    parts = line.split()
    try:
        number, count, values = int(parts[1]), int(parts[2]), parts[3:]
        if len(values) != count:
            raise ValueError(f"{len(values)} values for {count}")
        bits = np.array([int(v, 16) for v in values], dtype=np.uint32)
    except (IndexError, ValueError) as e:
        raise UserError(f"malformed layer trace line ({e}): {line[:60]!r}") from None
    return number, bits.astype(np.uint8).view(np.int8) if int8 else bits.view(np.float32)


def c_layer_outputs(model: dict[str, np.ndarray] | QuantizedModel, image: np.ndarray,
                    cache: str | Path | None = None, arch: spec.Architecture | None = None) -> dict[int, np.ndarray]:
    """Every stored layer's output for one image, from the host C built with the layer debugger (-DML_TRACE):
    layer number (table row; int8: quantized layer) -> flat values in the C buffer's order (CHW)."""
    arch = spec.architecture_of(model, arch)
    program = build_host_program(model, defines={"ML_TRACE": 1}, cache=cache, arch=arch)
    image = check_images(image[None], model_architecture(model, arch))
    result = subprocess.run([str(program), "classify", "-"], input=image.tobytes(),
                            capture_output=True)
    if result.returncode != 0:
        raise UserError(f"the C program failed: {result.stderr.decode(errors='replace').strip()}")
    lines = [line for line in result.stdout.decode("ascii").splitlines() if line.startswith(TRACE_PREFIX)]
    return dict(parse_trace_line(line, isinstance(model, QuantizedModel)) for line in lines)
