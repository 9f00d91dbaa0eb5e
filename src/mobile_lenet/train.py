"""Training: the default recipe, exact BatchNorm statistics, checkpoints and resume.

The recipe (chosen on a validation split of the 10k training subset, see README):
AdamW with a one-cycle learning-rate schedule, cross-entropy with light label smoothing, and small
random affine distortions of the digits (``--augment``, on by default).

BatchNorm: the model trains with Keras' momentum (0.99), whose moving averages lag far behind the
weights in short runs. Before every validation and every checkpoint, ``calibrate_batchnorm`` replaces
them with the exact mean and variance of each BN layer's input over the training images, computed
layer by layer in inference mode, so what we save is what the network really sees.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import read_checkpoint, save_checkpoint
from .data import Dataset, split_validation, to_tensor_input
from .errors import UserError
from .model import MobileLeNet


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as config.json in the run folder)."""

    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    augment: bool = True
    val_fraction: float = 0.1
    seed: int = 0


def set_threads() -> None:
    """Use every core for intra-op parallelism (the network is too small for more)."""
    torch.set_num_threads(max(1, torch.get_num_threads()))


@torch.no_grad()
def calibrate_batchnorm(model: MobileLeNet, images: np.ndarray, chunk: int = 256) -> None:
    """Set every BN layer's moving mean/variance to the exact statistics of its input over ``images``.

    Runs the network one layer at a time over the whole set in inference mode, so each BN sees inputs
    produced with the already-calibrated BN layers before it (exactly what inference will feed it).
    Variance is the population (biased) variance, the one BN normalizes with during training; both
    passes accumulate in float64. Small chunks keep each layer's work in the CPU cache.
    """
    was_training = model.training
    model.eval()
    x = [torch.from_numpy(to_tensor_input(images[i:i + chunk])) for i in range(0, len(images), chunk)]
    for module in model.layers:
        if isinstance(module, nn.BatchNorm2d):
            n = sum(t.shape[0] * t.shape[2] * t.shape[3] for t in x)
            mean = sum(t.sum(dim=(0, 2, 3), dtype=torch.float64) for t in x) / n
            centre = mean.float()[None, :, None, None]
            var = sum(((t - centre) ** 2).sum(dim=(0, 2, 3), dtype=torch.float64) for t in x) / n
            module.running_mean.copy_(mean.float())
            module.running_var.copy_(var.float())
        x = [module(t) for t in x]
    model.train(was_training)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small affine distortions: rotation +-10 deg, scale 0.9..1.1, shift +-2 px, shear +-0.1."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)  # noqa: E731
    angle, scale = u(-10, 10) * math.pi / 180, u(0.9, 1.1)
    shear, tx, ty = u(-0.1, 0.1), u(-2, 2) * 2 / 28, u(-2, 2) * 2 / 28
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def predict_logits(model: MobileLeNet, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, 10) of the model in inference mode for uint8 images (N, 28, 28)."""
    model.eval()
    out = [model(torch.from_numpy(to_tensor_input(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 10), np.float32)


def loss_and_accuracy(model: MobileLeNet, ds: Dataset) -> tuple[float, float]:
    logits = torch.from_numpy(predict_logits(model, ds.images))
    labels = torch.from_numpy(ds.labels.astype(np.int64))
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def train(config: TrainConfig, train_set: Dataset, out_dir: str | Path, resume: bool = False,
          progress: bool = True, log=print) -> dict:
    """Train Mobile-LeNet; writes config.json, metrics.csv, last.pt and best.pt in ``out_dir``.

    Returns the final metrics row. ``resume`` continues from ``out_dir/last.pt`` with the saved config.
    Ctrl-C stops after writing nothing half-done: last.pt always holds the last finished epoch.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    set_threads()
    torch.manual_seed(config.seed)
    model = MobileLeNet()
    generator = torch.Generator().manual_seed(config.seed)
    train_split, val_split = split_validation(train_set, config.val_fraction, config.seed)
    if len(train_split) == 0:
        raise UserError("training set is empty")
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, epochs=config.epochs,
                                                    steps_per_epoch=steps_per_epoch, pct_start=0.2)
    start_epoch, best_val, history = 0, -1.0, []

    if resume:
        state = read_checkpoint(out_dir / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, best_val, history = state["epoch"], state["best_val_accuracy"], state["history"]
        log(f"resuming {out_dir} at epoch {start_epoch + 1}/{config.epochs}" if start_epoch < config.epochs
            else f"{out_dir} already finished all {config.epochs} epochs")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")

    images = torch.from_numpy(to_tensor_input(train_split.images))
    labels = torch.from_numpy(train_split.labels.astype(np.int64))
    row = history[-1] if history else {}
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            order = torch.randperm(len(labels), generator=generator)
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress,
                       leave=False, unit="batch")
            for step in bar:
                idx = order[step * config.batch_size:(step + 1) * config.batch_size]
                x, y = images[idx], labels[idx]
                if config.augment:
                    x = augment_batch(x, generator)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
            bar.close()
            calibrate_batchnorm(model, train_split.images)
            val_loss, val_acc = loss_and_accuracy(model, val_split) if len(val_split) else (float("nan"), 0.0)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                   "val_loss": val_loss, "val_accuracy": val_acc, "lr": scheduler.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            if val_acc > best_val:
                best_val = val_acc
                save_checkpoint(out_dir / "best.pt", model, epoch=epoch + 1, val_accuracy=val_acc)
            save_checkpoint(out_dir / "last.pt", model, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), generator=generator.get_state(), epoch=epoch + 1,
                            best_val_accuracy=best_val, history=history)
            write_metrics(out_dir / "metrics.csv", history)
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                f" | val loss {val_loss:.4f} acc {val_acc:.4f} | {row['seconds']:.1f}s")
    except KeyboardInterrupt:
        done = history[-1]["epoch"] if history else 0
        log(f"interrupted: {out_dir / 'last.pt'} holds epoch {done}; continue with --resume")
        raise
    return row


def write_metrics(path: Path, history: list[dict]) -> None:
    """Per-epoch metrics as CSV (one row per epoch)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
