"""Resolving a MODEL argument to weights.

A MODEL may be a checkpoint (``.pt``) or a run folder (its ``best.pt``); the interop module adds folders of
Noodle files and Keras ``.keras`` files. Whatever the source, ``load_tensors`` returns the common currency:
Noodle tensors (file name -> float32 array, see ``spec.noodle_tensors``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mobile_lenet.model.checkpoints import load_checkpoint_model
from mobile_lenet.errors import UserError
from mobile_lenet.model.network import MobileLeNet, from_noodle, to_noodle


def load_tensors(source: str | os.PathLike) -> dict[str, np.ndarray]:
    """Noodle tensors from any supported MODEL source."""
    path = Path(source)
    if path.is_dir():
        if (path / "best.pt").is_file():
            return to_noodle(load_checkpoint_model(path / "best.pt"))
        from mobile_lenet.formats import noodle

        if noodle.looks_like_noodle_folder(path):
            return noodle.read_folder(path)
        from mobile_lenet.quantization.quantize import is_quantized_folder

        if is_quantized_folder(path):  # int8 integers, not float weights: only some verbs take it
            raise UserError(f"{path}: an int8 model (mobile-lenet quantize); use it with evaluate, or export "
                            f"--format c/platformio --int8")
        raise UserError(f"{path}: neither a run folder (best.pt) nor a folder of Noodle weight files")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.suffix == ".keras":
        from mobile_lenet.formats import keras as keras_import

        return keras_import.read_keras(path)
    return to_noodle(load_checkpoint_model(path))


def load_model(source: str | os.PathLike) -> MobileLeNet:
    """A PyTorch model in eval mode from any supported MODEL source."""
    return from_noodle(load_tensors(source))
