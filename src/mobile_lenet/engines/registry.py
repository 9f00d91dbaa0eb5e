"""The engines, listed once: which can run which model, and one ``logits(model, images, engine)``.

A model is either float weights (Noodle tensors, ``dict``) or a ``QuantizedModel``; its type decides which
engines apply and which code runs:

| engine | float model | int8 model |
|---|---|---|
| ``torch`` | the PyTorch network (``model.network``) | - |
| ``reference`` | the NumPy engine with Noodle's semantics (``engines.reference``) | the integer NumPy engine (``engines.reference_int8``) |
| ``c`` | the generated float C on this host (``engines.host_c``) | the generated int8 C on this host |
"""

from __future__ import annotations

import numpy as np

from mobile_lenet import spec
from mobile_lenet.engines import host_c, reference, reference_int8
from mobile_lenet.errors import UserError
from mobile_lenet.quantization.quantize import QuantizedModel

ENGINES = ("torch", "reference", "c")
FLOAT_ENGINES = ENGINES
INT8_ENGINES = ("reference", "c")


def is_int8(model) -> bool:
    """True for a quantized model, False for float weights."""
    return isinstance(model, QuantizedModel)


def engines_for(model) -> tuple[str, ...]:
    """The engines that can run ``model``, the default first."""
    return INT8_ENGINES if is_int8(model) else FLOAT_ENGINES


def check_engine(model, engine: str | None) -> str:
    """``engine``, or the model's default when None; one clear error when it does not apply to the model."""
    choices = engines_for(model)
    if engine is None:
        return choices[0]
    if engine not in choices:
        kind = "a quantized model" if is_int8(model) else "a float model"
        raise UserError(f"{kind} runs on engine {' or '.join(choices)}, not {engine!r}")
    return engine


def member_images(model, images: np.ndarray) -> np.ndarray:
    """uint8 digits (N, H, W), e.g. 28x28 test images, at the input size of the member ``model`` records,
    resized the way training resizes its images and its validation images (``model.images.resize_digits``);
    images already of that size are returned as they are."""
    from mobile_lenet.model.images import resize_digits

    return resize_digits(images, spec.architecture_of(model).input_size)


def logits(model, images: np.ndarray, engine: str | None = None, arch: spec.Architecture | None = None) -> np.ndarray:
    """The logits (N, 10) of uint8 images (N, S, S): float32, or int8 for a quantized model. A model records its
    family member (S its input size; ``spec.architecture_of``); ``arch`` is for plain tensors that record none."""
    arch = spec.architecture_of(model, arch)
    engine = check_engine(model, engine)
    if engine == "c":
        return host_c.c_logits(model, images, arch=arch)
    if is_int8(model):
        return reference_int8.int8_logits(model, images)
    if engine == "reference":
        return reference.reference_logits(model, images, arch=arch)
    arch.check_images(images)
    from mobile_lenet.model.network import from_noodle, predict_logits  # PyTorch only when this engine runs

    return predict_logits(from_noodle(model, arch), images)


def real_logits(model, images: np.ndarray, engine: str | None = None,
                arch: spec.Architecture | None = None) -> np.ndarray:
    """Real-valued logits (N, 10): an int8 model's are dequantized (for softmax and confidences)."""
    arch = spec.architecture_of(model, arch)
    values = logits(model, images, engine, arch)
    return model.dequantize_logits(values) if is_int8(model) else values
