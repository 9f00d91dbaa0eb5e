"""``mobile-lenet export --format onnx``: the float model as one ONNX file, for any ONNX runtime.

The PyTorch model is rebuilt from the Noodle tensors and exported with ``torch.onnx.export`` (the
torch.export-based exporter, which needs ``onnxscript``). Input ``image`` is (batch, 1, S, S) float32 in
[0, 1] (``pixel / 255``); output ``logits`` is (batch, 10), apply softmax for probabilities. The batch
dimension is dynamic; S is the member's input size (28 for the seed's). The exporter folds each BatchNorm into
the convolution before it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.files import check_writable_folder, folder_files, replace_folder

ONNX_FILE = "mobile_lenet.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def write_onnx(tensors: dict[str, np.ndarray], out_dir: str | os.PathLike, arch: spec.Architecture | None = None) -> list[Path]:
    """Write ``out_dir/mobile_lenet.onnx`` (the folder replaced whole, atomically); returns [that path]."""
    arch = spec.architecture_of(tensors, arch)
    check_writable_folder(out_dir)
    if Path(out_dir).is_dir() and not folder_files(Path(out_dir)) <= {ONNX_FILE}:
        replace_folder({ONNX_FILE: b""}, out_dir, what="ONNX export")  # refuses, before the slow export
    import torch  # here, not at the top: the CLI loads this module for every verb

    from mobile_lenet.model.network import from_noodle

    model = from_noodle(tensors, arch).eval()
    example = torch.zeros(2, 1, arch.input_size, arch.input_size)  # batch 2, not 1: torch.export would specialise a batch of 1
    batch = torch.export.Dim("batch")
    with tempfile.TemporaryDirectory() as scratch:
        tmp_path = os.path.join(scratch, ONNX_FILE)
        with _quiet_exporter():
            torch.onnx.export(model, (example,), tmp_path, dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False,
                              verbose=False)
        data = Path(tmp_path).read_bytes()
    return replace_folder({ONNX_FILE: data}, out_dir, what="ONNX export")


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
