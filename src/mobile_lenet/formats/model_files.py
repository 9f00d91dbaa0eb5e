"""Resolving a MODEL argument to a model: float weights or a quantized model.

A MODEL may be a checkpoint (``.pt``), a run folder (its ``best.pt``), a folder of Noodle files, a Keras
``.keras`` file, or a quantized model folder (``mobile-lenet quantize``). A float model, whatever its source,
is the common currency: Noodle tensors (file name -> float32 array, see ``spec.noodle_tensors``). A
quantized one is a ``QuantizedModel``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.files import check_readable_file
from mobile_lenet.formats.int8_folder import is_quantized_folder, load_quantized
from mobile_lenet.formats.keras import read_keras
from mobile_lenet.formats.noodle import looks_like_noodle_folder, noodle_architecture, read_noodle_folder
from mobile_lenet.formats.noodle_mega2560 import looks_like_mega2560_folder, read_mega2560_folder
from mobile_lenet.model.checkpoints import load_checkpoint_model
from mobile_lenet.model.network import to_noodle
from mobile_lenet.quantization.quantize import QuantizedModel


def load_tensors(source: str | os.PathLike) -> spec.MemberWeights:
    """The float weights (Noodle tensors) of MODEL, which know their family member (``.architecture``, see
    ``load_float_model``); a quantized folder is refused with one line."""
    return load_float_model(source)[0]


def load_float_model(source: str | os.PathLike) -> tuple[spec.MemberWeights, spec.Architecture]:
    """The float weights (Noodle tensors) of MODEL and the family member they are for (what its checkpoint,
    Noodle manifest or Mega 2560 folder records; a Keras file is the seed's network). The weights carry the
    member too (``MemberWeights.architecture``), so every engine and verb runs them as that member."""
    path = Path(source)
    tensors, arch = _read_tensors(path)
    return spec.MemberWeights(check_batchnorm(tensors, path), arch), arch


def _from_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], spec.Architecture]:
    model = load_checkpoint_model(path)
    return to_noodle(model), model.architecture


def _read_tensors(path: Path) -> tuple[dict[str, np.ndarray], spec.Architecture]:
    if path.is_dir():
        if (path / "best.pt").is_file():
            return _from_checkpoint(path / "best.pt")
        if looks_like_noodle_folder(path):
            return read_noodle_folder(path), noodle_architecture(path)
        if looks_like_mega2560_folder(path):  # upstream's Mega 2560 example: BatchNorm folded
            return read_mega2560_folder(path)
        if is_quantized_folder(path):  # int8 integers, not float weights: only some verbs take it
            raise UserError(f"{path}: an int8 model (mobile-lenet quantize); use it with evaluate, predict, demo, "
                            f"simulate, device --model, or export --format c/platformio --int8")
        raise UserError(f"{path}: neither a run folder (best.pt) nor a folder of Noodle weight files")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    check_readable_file(path)
    if path.suffix == ".keras":
        return read_keras(path), spec.SEED
    return _from_checkpoint(path)


def check_batchnorm(tensors: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """UserError when a BatchNorm's moving variance (row 4 of a ``bn`` tensor) is negative: its square root, and
    so every output after it, would be NaN. Returns ``tensors``."""
    for name, values in tensors.items():
        if name.startswith("bn") and (values[3] < 0).any():
            channel = int(np.argmax(values[3] < 0))
            raise UserError(f"{path}: {name} (BatchNorm) has a negative moving variance ({values[3][channel]:g} in "
                            f"channel {channel}); a variance is never below 0, so the file is damaged or mislabelled")
    return tensors


def load_model(source: str | os.PathLike) -> spec.MemberWeights | QuantizedModel:
    """MODEL as it is: a quantized model from a quantized folder, else the float weights; either knows its
    family member (``.architecture``)."""
    return load_quantized(source) if is_quantized_folder(source) else load_tensors(source)
