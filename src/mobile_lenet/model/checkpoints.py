"""Checkpoints: written atomically (temp file + rename), read without unpickling code.

A checkpoint is a ``torch.save`` of plain tensors, numbers and strings, loaded with ``weights_only=True``.
It records the family member its weights are for (``architecture``, see ``spec.Architecture``); one
without that record, as written before the family existed, holds the seed's network.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.files import atomic_write_bytes, check_readable_file
from mobile_lenet.model.network import MobileLeNet


def save_checkpoint(path: str | os.PathLike, model: MobileLeNet, **extra) -> None:
    """Save the model's state dict plus any extra plain data (optimizer state, epoch, metrics, ...)."""
    state = {"format": "mobile-lenet-checkpoint/1", "model": model.state_dict(),
             "architecture": model.architecture.to_dict(), **extra}
    buffer = io.BytesIO()  # serialized in memory: torch's writer reports a full disk as a RuntimeError
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint dict safely; raises UserError naming the file if it is not one of ours."""
    path = Path(path)
    check_readable_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != "mobile-lenet-checkpoint/1":
        raise UserError(f"{path}: not a mobile-lenet checkpoint")
    return state


def check_finite_state(path, state_dict: dict) -> None:
    """UserError naming the first tensor holding NaN or infinity (such a model must not be used or exported)."""
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{path}: weight {name} holds NaN or infinity (a diverged run?); not a usable model")


def checkpoint_architecture(path, state: dict) -> spec.Architecture:
    """The member a checkpoint records (the seed's when it records none)."""
    record = state.get("architecture")
    return spec.SEED if record is None else spec.Architecture.from_dict(record, str(path))


def load_checkpoint_model(path: str | os.PathLike) -> MobileLeNet:
    """A model in eval mode from a checkpoint file; its weights must fit its architecture and be finite."""
    state = read_checkpoint(path)
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise UserError(f"{path}: its \"model\" is not a dict of tensors")
    architecture = checkpoint_architecture(path, state)
    model = MobileLeNet(architecture)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        member = "Mobile-LeNet" if architecture.is_seed else f"its architecture ({architecture.describe()})"
        raise UserError(f"{path}: weights do not fit {member} "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    check_finite_state(path, weights)
    return model.eval()
