"""``mobile-lenet quantize``: a float model in, a quantized model folder out."""

from __future__ import annotations

import os
from pathlib import Path

from mobile_lenet.engines.registry import member_images
from mobile_lenet.errors import UserError
from mobile_lenet.files import check_writable_folder
from mobile_lenet.formats.int8_folder import is_quantized_folder, save_quantized
from mobile_lenet.formats.model_files import load_tensors
from mobile_lenet.model.data import load_dataset, resolve_dataset
from mobile_lenet.quantization.quantize import QuantizedModel, pick_calibration_images, quantize_model


def quantize_source(model: str | os.PathLike, calibration_data: str, data_dir: str | None, count: int,
                    out: str | os.PathLike, log=print) -> QuantizedModel:
    """``mobile-lenet quantize``: quantize MODEL with ``count`` images of the TRAINING split, save to ``out``.
    ``calibration_data`` ``auto``: MNIST when at hand, else the bundled sample (said through ``log``)."""
    out = Path(out)
    if out.exists() and not is_quantized_folder(out) and not (out.is_dir() and not any(out.iterdir())):
        raise UserError(f"{out}: exists and is not a quantized model; choose another --out")
    check_writable_folder(out)  # all before the data set is loaded
    if count < 1:
        raise UserError("--calibration-count must be at least 1")
    tensors = load_tensors(model)
    calibration_data = resolve_dataset(calibration_data, data_dir, log, flag="--calibration-data")
    train_set = load_dataset(calibration_data, "train", data_dir, flag="--calibration-data")  # never the test split
    # at the input size of the member the model records, resized as training resized them
    images = member_images(tensors, pick_calibration_images(train_set.images, count))
    metadata = {"source": str(model),
                "calibration": {"dataset": train_set.name, "split": "train", "seed": 0}}
    qmodel = quantize_model(tensors, images, metadata)
    save_quantized(qmodel, out)
    return qmodel
