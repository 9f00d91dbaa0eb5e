"""A training run's settings (``config.json`` in the run folder): the default recipe, their ranges and checks.

Apart from ``model.training`` so that the CLI can build its parser and check flags without loading PyTorch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.files import atomic_write_text


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as config.json in the run folder)."""

    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 60
    batch_size: int = 128
    lr: float = 2e-2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: bool = True
    elastic: float = 0.0  # elastic distortion strength (Simard's alpha, in pixels) on top of --augment; 0 = off
    ema_decay: float = 0.0  # exponential moving average of the weights (what is validated and saved); 0 = off
    distill_epochs: int = 0  # > 0: first train a larger teacher this many epochs, then learn from it; 0 = off
    val_fraction: float = 0.1
    seed: int = 0
    architecture: dict = field(default_factory=spec.SEED.to_dict)  # the family member (spec.Architecture)

    @property
    def member(self) -> spec.Architecture:
        """The architecture this run trains."""
        return spec.Architecture.from_dict(self.architecture)


# The recipe for a small training set: at batch 128 a few thousand images give few optimizer steps per run. On the
# bundled sample's 3,000 training images batch 32 scored 0.88 points better on 10,000 held-out training images
# (mean of 3 seeds; `python -m benchmarks --only ablation-small`); the 10k subset the default was tuned on keeps 128.
SMALL_TRAINING_SET = 5_000  # images in the training set (before the validation split)
SMALL_SET_BATCH_SIZE = 32


def default_batch_size(train_images: int) -> int:
    """The default recipe's batch size for a training set of ``train_images`` images (when --batch-size is not
    given): 32 under ``SMALL_TRAINING_SET`` images, else ``TrainConfig.batch_size`` (128)."""
    return SMALL_SET_BATCH_SIZE if train_images < SMALL_TRAINING_SET else TrainConfig.batch_size


# Ranges a run's settings must fall in (checked before any data is loaded, and when config.json is read back).
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_LR = 1.0  # AdamW's peak learning rate; beyond it training only diverges
MAX_ELASTIC = 100.0  # pixels; far beyond it the digits are noise
ELASTIC_SIGMA = 4.0  # smoothing of the elastic displacement field, in pixels (Simard et al. 2003)
# Settings added after runs were first saved: a config.json without them means what it meant then (off).
ADDED_LATER = {"elastic": 0.0, "ema_decay": 0.0, "distill_epochs": 0, "architecture": spec.SEED.to_dict()}


def check_config(config: TrainConfig, where: str = "") -> TrainConfig:
    """UserError (naming ``where``, e.g. a config.json, or the flag) unless every setting is of the right type
    and in range; returns ``config``."""
    def bad(flag: str, message: str):
        raise UserError(f"{where}: {flag} {message}" if where else f"--{flag.replace('_', '-')} {message}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not isinstance(config.dataset, str) or not config.dataset:
        bad("dataset", "must be a data set name")
    if config.data_dir is not None and not isinstance(config.data_dir, str):
        bad("data_dir", "must be a folder name or null")
    if not is_int(config.epochs) or not 1 <= config.epochs <= MAX_EPOCHS:
        bad("epochs", f"must be an integer from 1 to {MAX_EPOCHS:,}, not {config.epochs!r}")
    if not is_int(config.batch_size) or not 1 <= config.batch_size <= MAX_BATCH_SIZE:
        bad("batch_size", f"must be an integer from 1 to {MAX_BATCH_SIZE:,}, not {config.batch_size!r}")
    if not is_real(config.lr) or not 0 < config.lr <= MAX_LR:
        bad("lr", f"must be a finite number above 0 and at most {MAX_LR:g}, not {config.lr!r}")
    if not is_real(config.weight_decay) or not 0 <= config.weight_decay < 1:
        bad("weight_decay", f"must be a finite number from 0 to below 1, not {config.weight_decay!r}")
    if not is_real(config.label_smoothing) or not 0 <= config.label_smoothing < 1:
        bad("label_smoothing", f"must be from 0 to below 1, not {config.label_smoothing!r}")
    if not isinstance(config.augment, bool):
        bad("augment", f"must be true or false, not {config.augment!r}")
    if not is_real(config.elastic) or not 0 <= config.elastic <= MAX_ELASTIC:
        bad("elastic", f"must be from 0 to {MAX_ELASTIC:g} pixels, not {config.elastic!r}")
    if config.elastic and not config.augment:
        bad("elastic", "needs --augment (it distorts the augmented digits); drop --elastic or --no-augment")
    if not is_real(config.ema_decay) or not 0 <= config.ema_decay < 1:
        bad("ema_decay", f"must be from 0 (off) to below 1, not {config.ema_decay!r}")
    if not is_int(config.distill_epochs) or not 0 <= config.distill_epochs <= MAX_EPOCHS:
        bad("distill_epochs", f"must be an integer from 0 (off) to {MAX_EPOCHS}, not {config.distill_epochs!r}")
    if not is_real(config.val_fraction) or not 0 <= config.val_fraction < 1:
        bad("val_fraction", f"must be from 0 to below 1, not {config.val_fraction!r}")
    if not is_int(config.seed) or not 0 <= config.seed < 2 ** 63:
        bad("seed", f"must be a non-negative integer, not {config.seed!r}")
    spec.Architecture.from_dict(config.architecture, where)
    return config


def read_config(path: Path) -> TrainConfig:
    """A run's config.json, checked: a JSON object with exactly TrainConfig's keys, each valid."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({type(e).__name__}); it was not written by mobile-lenet "
                        f"train, or was edited") from None
    names = [f.name for f in fields(TrainConfig)]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with the run's settings")
    data = {**{k: v for k, v in ADDED_LATER.items() if k not in data}, **data}
    extra, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if extra or missing:
        what = f"unknown key {extra[0]!r}" if extra else f"no {missing[0]!r}"
        raise UserError(f"{path}: {what} (expected exactly {', '.join(names)})")
    return check_config(TrainConfig(**data), str(path))


def write_config(out_dir: Path, config: TrainConfig) -> None:
    """config.json of a run, written atomically."""
    atomic_write_text(Path(out_dir) / "config.json", json.dumps(asdict(config), indent=2) + "\n")


def check_resumed_settings(config: TrainConfig, given: dict, member_options: tuple, where: Path) -> None:
    """A resumed run keeps its settings (``config``, from its config.json in ``where``): a setting ``given`` now
    (``train``'s flags by field name, None where not given) that differs, or ``member_options`` (--width,
    --channels, --input-size, --strides) naming another family member, is refused in one line."""
    for name, value in given.items():
        saved, flag = getattr(config, name), "--" + name.replace("_", "-")
        same = value == saved or (name == "data_dir" and None not in (value, saved)
                                  and os.path.realpath(value) == os.path.realpath(saved))
        if value is not None and not same:
            shown = (("--augment" if saved else "--no-augment") if name == "augment"
                     else f"no {flag}" if saved is None else f"{flag} {saved}")
            raise UserError(f"{where} was started with {shown} (its config.json) and a resumed run keeps its "
                            f"settings; resume without {flag}, or start a new run")
    width, channels, input_size, strides = member_options
    if width is None and channels is None and input_size is None and strides is None:
        return
    saved = config.member
    refused = UserError(f"{where} was started with {saved.describe()} (its config.json) and a resumed run keeps its "
                        f"network; resume without --width/--channels/--input-size/--strides, or start a new run")
    try:  # an option given alone is compared on its own: --channels with the saved strides, and so on
        named = spec.Architecture.from_options(
            width, saved.channels if width is None and channels is None else channels,
            saved.input_size if input_size is None else input_size, saved.strides if strides is None else strides)
    except UserError:
        raise refused from None
    if named != saved:
        raise refused
