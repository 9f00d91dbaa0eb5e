"""Knowledge distillation: a larger CNN, trained first on the same images, teaches Mobile-LeNet.

The teacher is a plain VGG-style network (``TEACHER_STAGES``: 72,666 parameters, 22x Mobile-LeNet). The trainer
(``training.teacher_for``) trains it with the student's recipe (AdamW one-cycle, the same augmentation) for
``TrainConfig.distill_epochs`` epochs and saves it as ``teacher.pt`` in the run folder. Mobile-LeNet then
learns from the teacher's softened predictions for the very same augmented batch as well as from the labels
(``distillation_loss``, Hinton et al. 2015): the soft targets say which other digits a sample resembles.

Measured (BENCHMARKS.md, ablation): trained on the 10k subset, the teacher reaches 99.4% on held-out images,
but the student gains nothing beyond the seed-to-seed noise, at 2.4x the training time, so distillation is an
option of ``train`` (``--distill-epochs``), off by default.

The student's checkpoints (best.pt, last.pt) hold only Mobile-LeNet: the teacher is needed to train, never to
use the result. ``teacher.pt`` stays in the run folder so that ``--resume`` does not train it again.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mobile_lenet.files import atomic_write_bytes, check_readable_file
from mobile_lenet.model.data import Dataset

# (channels, 3x3 conv + BN + ReLU layers) per stage; a 2x2 max-pool between stages; then GAP and a dense layer
TEACHER_STAGES = ((16, 2), (32, 2), (64, 2))
TEMPERATURE = 4.0  # softens both networks' predictions, so the small probabilities of wrong digits count
SOFT_WEIGHT = 0.5  # share of the loss from the teacher's soft targets; the rest is cross-entropy with the labels
SEED_OFFSET = 100  # the teacher's random stream (weights, batches, augmentation) differs from the student's
TEACHER_FILE = "teacher.pt"
TEACHER_FORMAT = "mobile-lenet-teacher/1"


class Teacher(nn.Module):
    """The distillation teacher: stages of 3x3 convolutions (``TEACHER_STAGES``), GAP, dense. Returns logits."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 1
        for i, (width, depth) in enumerate(TEACHER_STAGES):
            if i:
                layers.append(nn.MaxPool2d(2))
            for _ in range(depth):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """(1 - SOFT_WEIGHT) x cross-entropy with the labels + SOFT_WEIGHT x T^2 x KL(teacher || student) at
    temperature T (Hinton et al. 2015; T^2 keeps the soft term's gradients on the scale of the hard one's)."""
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(student_logits / TEMPERATURE, 1), F.log_softmax(teacher_logits / TEMPERATURE, 1),
                    log_target=True, reduction="batchmean")
    return (1 - SOFT_WEIGHT) * hard + SOFT_WEIGHT * TEMPERATURE ** 2 * soft


def data_fingerprint(train_split: Dataset) -> str:
    """Identifies the training images, so a teacher.pt trained on other data is not reused."""
    digest = hashlib.sha256(train_split.images.tobytes())
    digest.update(train_split.labels.tobytes())
    return digest.hexdigest()


def save_teacher(path: Path, teacher: Teacher, **extra) -> None:
    """teacher.pt, written atomically; its own format, so no command mistakes it for a Mobile-LeNet checkpoint."""
    state = {"format": TEACHER_FORMAT, "model": teacher.state_dict(), **extra}
    buffer = io.BytesIO()  # serialized in memory: torch's writer reports a full disk as a RuntimeError
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_teacher(path: Path) -> dict | None:
    """The saved teacher state, or None if ``path`` is missing or not a readable teacher file."""
    try:
        check_readable_file(path)  # a FIFO would block the load
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated or foreign: the caller trains a new teacher  # noqa: BLE001
        return None
    return state if isinstance(state, dict) and state.get("format") == TEACHER_FORMAT else None
