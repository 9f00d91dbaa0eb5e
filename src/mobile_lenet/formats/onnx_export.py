"""``mobile-lenet export --format onnx``: the float model as one ONNX file, for any ONNX runtime.

The PyTorch model is rebuilt from the Noodle tensors and exported with ``torch.onnx.export`` (the
torch.export-based exporter, which needs ``onnxscript``). Input ``image`` is (batch, 1, 28, 28) float32 in
[0, 1] (``pixel / 255``); output ``logits`` is (batch, 10), apply softmax for probabilities. The batch
dimension is dynamic. The exporter folds each BatchNorm into the convolution before it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from mobile_lenet.errors import UserError
from mobile_lenet.files import atomic_write
from mobile_lenet.formats.noodle import umasked
from mobile_lenet.model.network import from_noodle

ONNX_FILE = "mobile_lenet.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def write_onnx(tensors: dict[str, np.ndarray], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``out_dir/mobile_lenet.onnx`` (atomically); returns [that path]."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    model = from_noodle(tensors).eval()
    example = torch.zeros(2, 1, 28, 28)  # batch 2, not 1: torch.export would specialise a batch of 1
    batch = torch.export.Dim("batch")
    path = Path(out_dir) / ONNX_FILE

    def export(tmp_path: str) -> None:
        with _quiet_exporter():
            torch.onnx.export(model, (example,), tmp_path, dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False,
                              verbose=False)
        os.chmod(tmp_path, umasked(0o666))  # the temp file is private; the export is an ordinary file

    atomic_write(path, export)
    return [path]


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter that is not about our model (missing torchvision ops, deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)
