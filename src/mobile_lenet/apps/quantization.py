"""``mobile-lenet quantize``: a float model in, a quantized model folder out."""

from __future__ import annotations

import os

from mobile_lenet.formats.int8_folder import save_quantized
from mobile_lenet.formats.model_files import load_tensors
from mobile_lenet.model.data import load_dataset
from mobile_lenet.quantization.quantize import QuantizedModel, pick_calibration_images, quantize_model


def quantize_source(model: str | os.PathLike, calibration_data: str, data_dir: str | None, count: int,
                    out: str | os.PathLike) -> QuantizedModel:
    """``mobile-lenet quantize``: quantize MODEL with ``count`` images of the TRAINING split, save to ``out``."""
    tensors = load_tensors(model)
    train_set = load_dataset(calibration_data, "train", data_dir)  # never the test split
    images = pick_calibration_images(train_set.images, count)
    metadata = {"source": str(model),
                "calibration": {"dataset": train_set.name, "split": "train", "seed": 0}}
    qmodel = quantize_model(tensors, images, metadata)
    save_quantized(qmodel, out)
    return qmodel
