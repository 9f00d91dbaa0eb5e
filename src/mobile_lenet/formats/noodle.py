"""Folders of Noodle weight files: the three encodings, reading and writing (see NOODLE_FORMAT.md).

A Noodle folder holds one file per tensor (w01..w14, b01..b02, bn01..bn13, names and order from
``spec.noodle_tensors``) in any of three encodings of the same float32 numbers:

- ``.txt``: one value per line, printf ``%.6e`` (what the seed author's exporter writes, byte for byte);
- ``.h``:   a C header declaring ``static const float w01[] = { ... };`` (``%.6e`` plus ``f``, 8 per line);
- ``.bin``: raw little-endian float32.

A family member other than the seed's is recorded in ``manifest.json`` (``architecture``), which a reader
needs to give its files their shapes; the seed's folder is as it always was. The text encodings keep 7 significant digits, so before writing, ``write_noodle_folder`` rounds every value to the
float32 nearest its ``%.6e`` text. All three files of a tensor then hold exactly the same numbers, whichever
one a reader picks, and export -> import -> export reproduces every file byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.files import replace_folder
from mobile_lenet.spec import LayerKind

ENCODINGS = (".txt", ".bin", ".h")  # also the reading preference when a tensor exists in several
VALUES_PER_HEADER_LINE = 8
MANIFEST = "manifest.json"
README = "README.md"
MANIFEST_FORMAT = "mobile-lenet-noodle/1"
# Any file named like a Noodle tensor (w07.txt, bn13.h, b02.bin), in the table or not.
_TENSOR_FILE = re.compile(r"^(w|b|bn)\d+\.(txt|bin|h)$")


def tensor_table(arch: spec.Architecture = spec.SEED) -> dict[str, tuple[spec.Layer, tuple]]:
    """Tensor name -> (layer, Noodle shape) of the member ``arch``, in the seed's file order."""
    return {name: (layer, shape) for name, layer, shape in spec.noodle_tensors(arch)}


# ------------------------------------------------------------------------------------------------ encodings
def format_value(value: np.float32) -> str:
    """One value as printf's ``%.6e`` (Python's formatting is correctly rounded, like glibc's printf)."""
    return "%.6e" % float(value)


def round_to_text(values: np.ndarray) -> np.ndarray:
    """The float32 nearest to each value's ``%.6e`` text: what a reader of the .txt or .h file gets back."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    return np.array([float(format_value(v)) for v in flat], dtype=np.float32).reshape(np.shape(values))


def encode_txt(values: np.ndarray) -> bytes:
    """The .txt encoding: one ``%.6e`` value per line, ``\\n`` line ends, no header."""
    return "".join(format_value(v) + "\n" for v in np.asarray(values, np.float32).ravel()).encode("ascii")


def encode_bin(values: np.ndarray) -> bytes:
    """The .bin encoding: raw little-endian float32."""
    return np.asarray(values, dtype="<f4").ravel().tobytes()


def encode_h(name: str, values: np.ndarray, arch: spec.Architecture = spec.SEED) -> bytes:
    """The .h encoding: a C array ``static const float <name>[]`` with comments naming kind, layout and dims."""
    layer, shape = tensor_table(arch)[name]
    kind, layout = _describe(name, layer)
    flat = np.asarray(values, np.float32).ravel()
    lines = [
        "#pragma once",
        f"// {name}: {kind} of layer {layer.name} (Mobile-LeNet, exported by mobile-lenet)",
        f"// layout: {layout}, row-major, float32",
        f"// dims: {' x '.join(str(d) for d in shape)} = {flat.size} values",
        f"static const float {name}[] = {{",
    ]
    for start in range(0, flat.size, VALUES_PER_HEADER_LINE):
        chunk = flat[start:start + VALUES_PER_HEADER_LINE]
        lines.append("  " + ", ".join(format_value(v) + "f" for v in chunk) + ",")
    lines.append("};")
    return ("\n".join(lines) + "\n").encode("ascii")


def _describe(name: str, layer: spec.Layer) -> tuple[str, str]:
    """(kind, layout) of a tensor for the .h comments and the README."""
    if name == layer.bias_file:
        return "bias", "[Cout]"
    return {
        LayerKind.CONV: ("convolution kernel", "[Cout][Cin][Kh][Kw]"),
        LayerKind.DWCONV: ("depthwise kernel", "[C][Kh][Kw]"),
        LayerKind.DENSE: ("dense weights", "[Dout][Din]"),
        LayerKind.BN: ("BatchNorm parameters", "[gamma(C)][beta(C)][moving_mean(C)][moving_var(C)]"),
    }[layer.kind]


# C's isspace() in the "C" locale. Not str.split()'s whitespace, which also takes the ASCII separators
# \x1c-\x1f: a corrupted value such as "0\x1f" would read as 0 instead of being refused.
C_WHITESPACE = " \t\n\v\f\r"
_C_WHITESPACE_RUN = re.compile(f"[{re.escape(C_WHITESPACE)}]+")


def parse_txt(path: Path, data: bytes) -> np.ndarray:
    """Values of a .txt file: one number per line (blank lines ignored)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file of numbers") from None
    return _parse_numbers(path, [token for token in _C_WHITESPACE_RUN.split(text) if token])


def parse_bin(path: Path, data: bytes) -> np.ndarray:
    """Values of a .bin file: raw little-endian float32."""
    if len(data) % 4:
        raise UserError(f"{path}: {len(data)} bytes is not a whole number of float32 values")
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


_C_ARRAY = re.compile(r"\bfloat\s+(\w+)\s*\[\s*\d*\s*\]\s*=\s*\{(.*?)\}\s*;", re.DOTALL)
_C_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


def parse_h(path: Path, data: bytes) -> np.ndarray:
    """Values of a .h file: the one ``float <name>[] = { ... };`` array, which must be named after the file."""
    try:
        text = _C_COMMENT.sub(" ", data.decode("ascii"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a C header") from None
    arrays = _C_ARRAY.findall(text)
    if len(arrays) != 1:
        raise UserError(f"{path}: expected one 'float {path.stem}[] = {{ ... }};' array, found {len(arrays)}")
    name, body = arrays[0]
    if name != path.stem:
        raise UserError(f"{path}: declares array {name!r}, expected {path.stem!r}")
    items = [item.strip(C_WHITESPACE) for item in body.split(",")]
    if items and items[-1] == "":  # a trailing comma is legal C
        items.pop()
    return _parse_numbers(path, [item[:-1] if item[-1:] in ("f", "F") else item for item in items])


# A C / printf number (Python's float() also takes "1_000", which a C reader does not). NaN and infinity parse,
# to be refused as non-finite by read_noodle_folder.
_NUMBER = re.compile(r"[+-]?((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|nan|inf|infinity)", re.IGNORECASE)


def _parse_numbers(path: Path, tokens: list[str]) -> np.ndarray:
    """float32 values of number tokens; one UserError naming the file for anything else."""
    values = np.empty(len(tokens), dtype=np.float32)
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf, reported by read_folder
        for i, token in enumerate(tokens):
            try:
                if not _NUMBER.fullmatch(token):
                    raise ValueError(token)
                values[i] = float(token)
            except ValueError:
                raise UserError(f"{path}: value {i + 1} is not a number: {token[:40]!r}") from None
    return values


PARSERS = {".txt": parse_txt, ".bin": parse_bin, ".h": parse_h}


# ------------------------------------------------------------------------------------------------ reading
def looks_like_noodle_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds any file named like a Noodle tensor (e.g. ``w01.txt``, ``bn03.bin``)."""
    folder = Path(folder)
    return folder.is_dir() and any(_TENSOR_FILE.match(p.name) for p in folder.iterdir())


def noodle_architecture(folder: str | os.PathLike) -> spec.Architecture:
    """The family member a Noodle folder holds: its manifest's ``architecture``, the seed's when there is none
    (the seed author's folders have no manifest)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return spec.SEED
    try:
        record = json.loads(path.read_text()).get("architecture")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{path}: not a mobile-lenet Noodle manifest") from None
    return spec.SEED if record is None else spec.Architecture.from_dict(record, str(path))


def read_noodle_folder(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Noodle tensors from a folder of weight files, each in .txt, .bin or .h (preferred in that order).

    The files are those of the member ``noodle_architecture(folder)``. Every tensor of its table must be present
    with the right number of finite values, and no other tensor-named file may be there; a manifest.json, if
    present, must match the files' sha256. Anything else raises one UserError naming the file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    arch = noodle_architecture(folder)
    table = tensor_table(arch)
    present = {p.name for p in folder.iterdir() if _TENSOR_FILE.match(p.name)}
    not_files = sorted(n for n in present if not (folder / n).is_file())
    if not_files:
        raise UserError(f"{folder / not_files[0]}: is not a file")
    unknown = sorted(n for n in present if n.split(".")[0] not in table)
    if unknown:
        raise UserError(f"{folder / unknown[0]}: not a Mobile-LeNet tensor (expected only {_expected_names()})")
    missing = [n for n in table if not any(n + ext in present for ext in ENCODINGS)]
    if missing:
        raise UserError(f"{folder}: missing weight file(s) {', '.join(missing)} (Mobile-LeNet has "
                        f"{len(table)}: {_expected_names()})")
    checksums = _manifest_checksums(folder)
    tensors = {}
    for name, (_, shape) in table.items():
        ext = next(e for e in ENCODINGS if name + e in present)
        path = folder / (name + ext)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
        if path.name in checksums and hashlib.sha256(data).hexdigest() != checksums[path.name]:
            raise UserError(f"{path}: contents do not match the sha256 in {MANIFEST} (changed or corrupted)")
        values = PARSERS[ext](path, data)
        expected = int(np.prod(shape))
        if values.size != expected:
            member = "" if arch.is_seed else f" (the manifest's {arch.describe()})"
            raise UserError(f"{path}: expected {expected} values{member}, found {values.size}")
        if not np.all(np.isfinite(values)):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise UserError(f"{path}: value {bad + 1} is {values[bad]} (must be finite, within float32's range)")
        tensors[name] = values.reshape(shape)
    return tensors


def _expected_names() -> str:
    return "w01..w14, b01..b02, bn01..bn13"


def _manifest_checksums(folder: Path) -> dict[str, str]:
    """file name -> sha256 from the folder's manifest.json (empty if there is none)."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
        return {entry["file"]: entry["sha256"] for entry in manifest["files"]}
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a mobile-lenet Noodle manifest") from None


# ------------------------------------------------------------------------------------------------ writing
def encode_folder(tensors: dict[str, np.ndarray], arch: spec.Architecture | None = None) -> dict[str, bytes]:
    """Every file of a Noodle export of the member ``arch`` (all three encodings, manifest.json, README.md) as
    file name -> bytes."""
    arch = spec.architecture_of(tensors, arch)
    table = tensor_table(arch)
    files: dict[str, bytes] = {}
    entries = []
    for name, (layer, shape) in table.items():
        if name not in tensors:
            raise UserError(f"cannot export: tensor {name} is missing")
        values = np.asarray(tensors[name], dtype=np.float32)
        if values.size != int(np.prod(shape)):
            raise UserError(f"cannot export: tensor {name} has {values.size} values, expected {int(np.prod(shape))}")
        if not np.all(np.isfinite(values)):
            raise UserError(f"cannot export: tensor {name} holds non-finite values (NaN or infinity)")
        values = round_to_text(values.reshape(shape))  # the same numbers in every encoding (module docstring)
        for ext, data in ((".txt", encode_txt(values)), (".h", encode_h(name, values, arch)),
                          (".bin", encode_bin(values))):
            files[name + ext] = data
            entries.append({"file": name + ext, "tensor": name, "layer": layer.name, "shape": list(shape),
                            "length": int(values.size), "sha256": hashlib.sha256(data).hexdigest()})
    files[MANIFEST] = _manifest_json(entries, arch).encode("ascii")
    files[README] = readme_text(arch).encode("utf-8")
    return files


def _manifest_json(entries: list[dict], arch: spec.Architecture = spec.SEED) -> str:
    """manifest.json with one line per file, so that it reads (and diffs) like a table."""
    lines = ",\n".join("    " + json.dumps(entry) for entry in entries)
    member = "" if arch.is_seed else f'  "architecture": {json.dumps(arch.to_dict())},\n'
    return (f'{{\n  "format": "{MANIFEST_FORMAT}",\n  "model": "Mobile-LeNet",\n{member}'
            f'  "files": [\n{lines}\n  ]\n}}\n')


def write_noodle_folder(tensors: dict[str, np.ndarray], out_dir: str | os.PathLike, arch: spec.Architecture | None = None) -> list[Path]:
    """Export ``tensors`` as a Noodle folder; returns the paths written.

    The folder is written whole into a temporary sibling and swapped in (``files.replace_folder``): a
    failure never leaves a half-written export, and an existing folder is replaced only if it is empty or
    a previous Noodle export (anything else, e.g. a stray ``w15.txt``, is refused with one line).
    """
    arch = spec.architecture_of(tensors, arch)
    return replace_folder(encode_folder(tensors, arch), out_dir, what="Noodle export")


def _predict_lines(arch: spec.Architecture) -> tuple[str, str]:
    """The README's BatchNorm and block calls of the seed's predict() for the member ``arch``."""
    table = spec.layers(arch)
    bn_stem = next(layer for layer in table if layer.name == "stem_bn")
    calls = [f"noodle_bn_relu(FEAT_B, {arch.stem_channels}, W, {bn_stem.weight_file}, 1e-3f);"]
    c_in = arch.stem_channels
    for block, stride, c_out in arch.blocks:
        files = [layer.weight_file for layer in table if layer.block == block and layer.weight_file]
        call = f"W = noodle_dw_pw_block(in, out, W, {c_in}, {c_out}, {stride}, {', '.join(files)});"
        calls.append(f"{call:<71}// {block}")  # the comments in one column
        c_in = c_out
    return "\n".join(calls), str(c_in)


def readme_text(arch: spec.Architecture = spec.SEED) -> str:
    """README.md of an export: the files, how they plug into the seed's predict(), and the GAP pitfall."""
    rows = []
    for name, (layer, shape) in tensor_table(arch).items():
        kind, layout = _describe(name, layer)
        rows.append(f"| `{name}` | `{layer.name}` | {kind} | `{layout}` | {int(np.prod(shape))} |")
    table = "\n".join(rows)
    calls, last = _predict_lines(arch)
    stem, plane = arch.stem_channels, spec.layers(arch)[-2].in_shape[0]  # the GAP's input plane
    return f"""# Mobile-LeNet weights for the Noodle library

Exported by `mobile-lenet export --format noodle`. Every tensor is here in three encodings of the same
float32 numbers:

- `wNN.txt`, `bNN.txt`, `bnNN.txt`: one value per line (`%.6e`), as written by the seed's own exporter;
- `wNN.h`, ...: C headers declaring `static const float wNN[]`, to compile the weights into the firmware;
- `wNN.bin`, ...: raw little-endian float32, to stream from flash or an SD card.

`manifest.json` lists every file with its tensor, layer, shape, length and sha256.

| file | layer | kind | layout (row-major) | values |
|---|---|---|---|---|
{table}

BatchNorm uses epsilon 1e-3: `y = max(0, gamma * (x - mean) / sqrt(var + 1e-3) + beta)`.

## Plugging the files into the seed's `predict()`

Include the headers and the names the seed's program uses are defined:

```cpp
#include "w01.h"  // ... and every other .h file of this folder: w01..w14, b01..b02, bn01..bn13
#include "b01.h"
#include "bn01.h"

// in predict(), exactly as in the seed:
stem.weight = w01;  stem.bias = b01;          // stem conv 3x3, 1 -> {stem}
head.weight = w14;  head.bias = b02;          // dense {last} -> 10, row-major [10][{last}]
{calls}
```

Or copy the `.txt` files where the seed's program reads its weight files from; they are byte-compatible
with the seed author's exporter. Noodle's file reader now expects its binary format by default: build with
`-DNOODLE_FILE_FORMAT=0` to read the `.txt` files (without it every value is read as garbage).

Upstream's own example (`examples/mobile-lenet-esp32/src/main.cpp` at its current head) calls float
routines that its library declares only in `noodle_internal.h`; it compiles with `-include noodle_internal.h`
added to its build flags (PlatformIO: `build_flags = -include noodle_internal.h -DNOODLE_FILE_FORMAT=0`).

## Pitfall: global average pooling in place

The Noodle library's `noodle_gap(in, {last}, W)`, as published, averages in place and writes the {last} averages
from the highest channel down to channel 0. With {plane}x{plane} planes, the averages of channels 1..{int(last) - 1} land on
elements 1..{int(last) - 1} of channel 0's plane before channel 0 itself is averaged, so channel 0's average is wrong.
With the seed's own weights this changes the answer on 46 of the 10,000 MNIST test images. These weights assume the
correct average (Keras' semantics), so compute GAP **into the other ping-pong buffer** instead. Paste the
code below over the example's lines from the `// GAP` comment down to and including its
`noodle_find_max(...)` line: the dense layer now reads `out` and writes `in`, so **the probabilities are
left in `in`**, and the argmax must read `in` (keeping the old `noodle_find_max(out, ...)` compiles and
reads the averages instead). With the fix the upstream model scores 97.55% on the device, the Keras model's
own figure, instead of the 97.73% of the unfixed GAP (which was computing something else).

```cpp
// ---- GAP: (W x W x {last}) -> ({last},) into the other buffer, not in place ----
for (uint16_t c = 0; c < {last}; ++c) {{
  float sum = 0.0f;
  for (uint16_t i = 0; i < W * W; ++i) sum += in[c * W * W + i];
  out[c] = sum / (float)(W * W);
}}
W = {last};
// ---- Dense: ({last},) -> (10,), now reading `out` and writing `in` ----
W = noodle_fcn(out, W, 10, in, head, nullptr);
noodle_soft_max(in, 10);
// ---- Argmax: the probabilities are in `in` ----
uint16_t pred;
float max_val;
noodle_find_max(in, 10, max_val, pred);
```

(Writing the averages from channel 0 upward also works: channel 0 is then read completely before its
plane is overwritten, and the later channels' planes are never overwritten.)

The code above is for the `float *` API of the seed's program (Noodle versions whose `noodle.h` declares
`noodle_gap(float *inout, uint16_t C, uint16_t W)` and no `NoodleBuffer`). Noodle versions with the
`NoodleBuffer` API (`noodle_buffer.h`; `noodle_gap(NoodleBuffer *inout, uint16_t C, uint16_t W)` hands
`inout->data` to the same in-place float routine) take `NoodleBuffer *in, *out` instead; the fix is the same,
written for buffers that may move when one of them grows:

```cpp
// ---- GAP: (W x W x {last}) -> ({last},) from `in` into `out` (NoodleBuffer *), not in place ----
float *avg = noodle_buffer_require(out, {last});  // may move the arena: read in->data after it
const float *x = in->data;
for (uint16_t c = 0; c < {last}; ++c) {{
  float sum = 0.0f;
  for (uint32_t i = 0; i < (uint32_t)W * W; ++i) sum += x[c * W * W + i];
  avg[c] = sum / (float)(W * W);
}}
W = {last};
// ---- Dense: ({last},) -> (10,), now reading `out` and writing `in` ----
W = noodle_fcn(out, W, 10, in, head, nullptr);
noodle_soft_max(in, 10);
// ---- Argmax: the probabilities are in `in` ----
uint16_t pred;
float max_val;
noodle_find_max(in, 10, max_val, pred);
```

(Pasted over upstream's current lines, this also replaces its `uint16_t N` and the `noodle_find_max(out, N,
...)` that used it.)
"""
