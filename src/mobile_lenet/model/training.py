"""Training: the default recipe, exact BatchNorm statistics, checkpoints and resume.

The recipe (chosen on validation images, see README and the ablation in BENCHMARKS.md): AdamW with a
one-cycle learning-rate schedule (peak 2e-2) over 60 epochs of batch 128, cross-entropy, and small random
affine distortions of the digits (``--augment``, on by default). More levers are here as options, off by
default because they did not help this 3,258-parameter network on validation: elastic distortions
(``elastic``), an exponential moving average of the weights (``ema_decay``), label smoothing, and
distillation from a larger teacher (``distill_epochs``, see ``model.teacher``).

BatchNorm: the model trains with Keras' momentum (0.99), whose moving averages lag far behind the
weights in short runs. Before every validation, and for the checkpoints a finished or interrupted run
leaves, ``calibrate_batchnorm`` replaces them with the exact mean and variance of each BN layer's input
over training images (a fixed 2,048 for the per-epoch validation, all of them for the checkpoints),
computed layer by layer in inference mode, so what we save is what the network really sees.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.files import WriteError, atomic_write, clean_stale_tmp
# the run's settings live in model.config (no PyTorch there); these names stay importable from here
from mobile_lenet.model.config import ELASTIC_SIGMA, TrainConfig, check_config, read_config, write_config  # noqa: F401
from mobile_lenet.model.checkpoints import check_finite_state, load_checkpoint_model, read_checkpoint, save_checkpoint
from mobile_lenet.model.data import Dataset, split_validation, to_tensor_input
from mobile_lenet.model.images import resize_digits
from mobile_lenet.model.network import MobileLeNet, predict_logits
from mobile_lenet.model.teacher import (SEED_OFFSET, TEACHER_FILE, TEACHER_STAGES, Teacher, data_fingerprint,
                                        distillation_loss, read_teacher, save_teacher)
from mobile_lenet.progress import progress_bar


RESUME_KEYS = ("model", "optimizer", "scheduler", "generator", "epoch", "best_val_accuracy", "history")


# Measured on a 2-core machine (batch 64): one thread with channels-last tensors trains ~1.1x faster than two
# threads with the default layout, and ~1.6x faster than one thread with it. The network is so small that
# splitting its work between threads costs more than it gains, and depthwise kernels prefer channels last.
TRAIN_THREADS = 1
# The shortest one-cycle schedule: its warm-up must span at least one step (0.2 x 10 - 1 = 1)
MIN_SCHEDULE_STEPS = 10
# Images whose exact BN statistics are used for the per-epoch validation (the final checkpoints get all).
EPOCH_CALIBRATION_IMAGES = 2048


def set_threads(threads: int = TRAIN_THREADS) -> None:
    """Set PyTorch's intra-op thread count (also used by the benchmark, so both stacks run alike)."""
    torch.set_num_threads(threads)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: np.ndarray, chunk: int = 256) -> None:
    """Set every BN layer's moving mean/variance to the exact statistics of its input over ``images``.

    ``model`` is Mobile-LeNet or the distillation teacher: a network whose ``layers`` run in sequence.

    Runs the network over the whole set in inference mode, from one BN layer to the next, so each BN sees
    inputs produced with the already-calibrated BN layers before it (exactly what inference will feed it).
    Only each BN's input is kept for the whole set; the layers between two BNs run chunk by chunk, which
    keeps the work in the CPU cache. Variance is the population (biased) variance, the one BN normalizes
    with during training; sums and sums of squares are accumulated in float64 across chunks.
    """
    was_training = model.training
    model.eval()
    x = [torch.from_numpy(to_tensor_input(images[i:i + chunk])).contiguous(memory_format=torch.channels_last)
         for i in range(0, len(images), chunk)]
    pending = []  # the layers between the previous BN (included) and the next one
    for module in model.layers:
        if isinstance(module, nn.BatchNorm2d):
            x = [nn.Sequential(*pending)(t) for t in x]
            pending = []
            total = sq_total = 0
            for t in x:
                pixels = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])  # (N*H*W, C), a view when NHWC
                # float32 sums within a chunk (at most 256 images), float64 across chunks
                total = total + pixels.sum(dim=0).double()
                sq_total = sq_total + (pixels * pixels).sum(dim=0).double()
            n = sum(t.shape[0] * t.shape[2] * t.shape[3] for t in x)
            mean = total / n
            module.running_mean.copy_(mean.float())
            module.running_var.copy_((sq_total / n - mean * mean).clamp_(min=0).float())
        pending.append(module)
    model.train(was_training)


def augment_batch(x: torch.Tensor, generator: torch.Generator, elastic: float = 0.0) -> torch.Tensor:
    """Random small affine distortions: rotation +-10 deg, scale 0.9..1.1, shift +-2 px, shear +-0.1; with
    ``elastic`` > 0 also an elastic distortion of that strength (one resampling does both)."""
    n, _, height, width = x.shape
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=generator)  # noqa: E731
    angle, scale = u(-10, 10) * math.pi / 180, u(0.9, 1.1)
    shear, tx, ty = u(-0.1, 0.1), u(-2, 2) * 2 / width, u(-2, 2) * 2 / height
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if elastic:
        pixels = elastic_displacement(n, height, width, elastic, generator)  # (n, 2, H, W), x then y
        grid = grid + (pixels * torch.tensor([2 / width, 2 / height]).view(1, 2, 1, 1)).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic_displacement(n: int, height: int, width: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Simard's elastic field: uniform noise in [-1, 1] per pixel and axis, Gaussian-smoothed (sigma
    ELASTIC_SIGMA, separable, reflected borders), times ``alpha``; in pixels, shape (n, 2, H, W)."""
    radius = math.ceil(2 * ELASTIC_SIGMA)
    taps = torch.exp(-torch.arange(-radius, radius + 1.0) ** 2 / (2 * ELASTIC_SIGMA ** 2))
    taps = (taps / taps.sum()).repeat(2, 1)  # one filter per axis channel
    field = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
    field = F.conv2d(F.pad(field, (radius, radius, 0, 0), mode="reflect"), taps.view(2, 1, 1, -1), groups=2)
    field = F.conv2d(F.pad(field, (0, 0, radius, radius), mode="reflect"), taps.view(2, 1, -1, 1), groups=2)
    return alpha * field


class WeightAverage:
    """Exponential moving average of a model's weights, updated after every optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so a short run's average is not
    dominated by the random initial weights. BatchNorm statistics are not averaged: the trainer calibrates
    them exactly for the averaged weights before they are validated or saved.
    """

    def __init__(self, model: MobileLeNet, decay: float, updates: int = 0):
        self.model = copy.deepcopy(model)
        self.decay, self.updates = decay, updates

    @torch.no_grad()
    def update(self, model: MobileLeNet) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, current in zip(self.model.parameters(), model.parameters()):
            average.lerp_(current, 1 - decay)
        self.updates += 1


def loss_and_accuracy(model: nn.Module, ds: Dataset) -> tuple[float, float]:
    logits = torch.from_numpy(predict_logits(model, ds.images))
    labels = torch.from_numpy(ds.labels.astype(np.int64))
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


def train(config: TrainConfig, train_set: Dataset, out_dir: str | Path, resume: bool = False,
          progress: bool = True, log=print, threads: int = TRAIN_THREADS) -> dict:
    """Train Mobile-LeNet; writes config.json, metrics.csv, last.pt and best.pt in ``out_dir``.

    Returns the final metrics row. ``resume`` continues from ``out_dir/last.pt`` with the saved config.
    Ctrl-C stops after writing nothing half-done: last.pt always holds the last finished epoch, usable as is.
    The network is the member ``config.architecture``; images are resized to its input size first.
    """
    out_dir = Path(out_dir)
    set_threads(threads)
    torch.manual_seed(config.seed)
    architecture = config.member
    train_set = Dataset(resize_digits(train_set.images, architecture.input_size), train_set.labels, train_set.name)
    model = MobileLeNet(architecture).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(config.seed)
    train_split, val_split = split_validation(train_set, config.val_fraction, config.seed)
    if len(train_split) == 0:
        raise UserError("training set is empty")
    steps_per_epoch = math.ceil(len(train_split) / config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = one_cycle(optimizer, config.lr, config.epochs * steps_per_epoch)
    start_epoch, best_val, history = 0, -1.0, []
    average = WeightAverage(model, config.ema_decay) if config.ema_decay else None

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"{out_dir}: cannot make the run folder ({e.strerror or e})") from None
    clean_stale_tmp(out_dir)  # what a kill during a write left
    if resume:
        why = resume_problem(out_dir / "last.pt", config, scheduler.total_steps, steps_per_epoch)
        if why is None:
            state = read_checkpoint(out_dir / "last.pt")
            model.load_state_dict(state["trained_model"] if average else state["model"])
            if average:
                average.model.load_state_dict(state["model"])
                average.updates = state["epoch"] * steps_per_epoch
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            start_epoch, best_val, history = state["epoch"], state["best_val_accuracy"], state["history"]
            # a kill after last.pt but before metrics.csv leaves the csv an epoch short: last.pt's history decides
            write_metrics(out_dir / "metrics.csv", history)
            log(f"resuming {out_dir} at epoch {start_epoch + 1}/{config.epochs}" if start_epoch < config.epochs
                else f"{out_dir} already finished all {config.epochs} epochs")
        elif (out_dir / "last.pt").exists():  # never replace a run's checkpoints with a fresh start unasked
            raise resume_refused(out_dir, why)
        else:
            log(f"cannot resume {out_dir} ({why}): starting it again from epoch 1")
    write_config(out_dir, config)
    teacher = teacher_for(config, train_split, val_split, out_dir, progress, log) if config.distill_epochs else None

    images = torch.from_numpy(to_tensor_input(train_split.images))
    labels = torch.from_numpy(train_split.labels.astype(np.int64))
    row = history[-1] if history else {}
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            t0, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            bar = progress_bar(epoch_batches(images, labels, config, generator), progress, total=steps_per_epoch,
                               desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch")
            for x, y in bar:
                logits = model(x)
                if teacher is None:
                    loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                else:  # the teacher's view of this very augmented batch
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                    loss = distillation_loss(logits, teacher_logits, y, config.label_smoothing)
                take_step(loss, optimizer, scheduler, lambda: f"training diverged in epoch {epoch + 1}; lower --lr "
                          f"(now {config.lr:g}); {out_dir} keeps the epochs finished before")
                if average:
                    average.update(model)
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
            bar.close()
            val_loss, val_acc = float("nan"), float("nan")
            result = average.model if average else model  # the network this run validates and saves
            if len(val_split):  # exact statistics first, or validation would measure lagging moving averages
                calibrate_batchnorm(result, train_split.images[:EPOCH_CALIBRATION_IMAGES])
                val_loss, val_acc = loss_and_accuracy(result, val_split)
            row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                   "val_loss": val_loss, "val_accuracy": val_acc, "lr": scheduler.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0}
            history.append(row)
            if not len(val_split) or val_acc > best_val:  # without a validation split, the last epoch is best
                best_val = val_acc if len(val_split) else best_val
                save_checkpoint(out_dir / "best.pt", result, epoch=epoch + 1, val_accuracy=val_acc)
            # with weight averaging, "model" is the average (what a user runs) and the raw weights go along
            trained = {"trained_model": model.state_dict()} if average else {}
            save_checkpoint(out_dir / "last.pt", result, optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), generator=generator.get_state(), epoch=epoch + 1,
                            best_val_accuracy=best_val, history=history, **trained)
            write_metrics(out_dir / "metrics.csv", history)
            log(f"epoch {epoch + 1}/{config.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
                f" | val loss {val_loss:.4f} acc {val_acc:.4f} | {row['seconds']:.1f}s")
    except KeyboardInterrupt:
        done = history[-1]["epoch"] if history else 0
        if done:
            finalize_checkpoints(out_dir, train_split, val_split)
        log(f"interrupted: {out_dir / 'last.pt'} holds epoch {done}, ready to use; continue with --resume")
        raise
    finalize_checkpoints(out_dir, train_split, val_split)
    return row


def epoch_batches(images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, generator: torch.Generator):
    """One epoch of shuffled batches (x, y), augmented as ``config`` says, x channels last (what both the
    student's and the teacher's training loops consume; ``generator`` draws the order and the distortions)."""
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(labels), config.batch_size):
        idx = order[start:start + config.batch_size]
        x = images[idx]
        if config.augment:
            x = augment_batch(x, generator, config.elastic)
        yield x.contiguous(memory_format=torch.channels_last), labels[idx]


def take_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, diverged) -> None:
    """One optimizer and schedule step down ``loss``'s gradient. A loss that is not finite stops training first,
    before NaN reaches the weights, with the one-line error ``diverged()`` (the loss value appended)."""
    value = loss.item()
    if not math.isfinite(value):
        raise UserError(f"{diverged()} (loss {value})")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


def one_cycle(optimizer: torch.optim.Optimizer, peak_lr: float, steps: int):
    """The one-cycle learning-rate schedule (20% warm-up) over ``steps`` optimizer steps.

    OneCycleLR needs a few steps to lay out its two phases: a run shorter than that (a handful of images) walks
    the first steps of a MIN_SCHEDULE_STEPS-step schedule."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak_lr, total_steps=max(steps, MIN_SCHEDULE_STEPS),
                                               pct_start=0.2)


def teacher_for(config: TrainConfig, train_split: Dataset, val_split: Dataset, out_dir: Path, progress: bool = True,
                log=print) -> Teacher:
    """The run's distillation teacher, in inference mode: out_dir/teacher.pt when it was trained with these
    settings on these images (a resumed run), else trained now for ``config.distill_epochs`` epochs with the
    student's recipe (optimizer, schedule, augmentation) and saved there, with its size, training time and
    accuracy on the run's validation split."""
    key = {"epochs": config.distill_epochs, "batch_size": config.batch_size, "lr": config.lr,
           "weight_decay": config.weight_decay, "augment": config.augment, "elastic": config.elastic,
           "seed": config.seed, "stages": [list(stage) for stage in TEACHER_STAGES],
           "data": data_fingerprint(train_split)}
    path = out_dir / TEACHER_FILE

    def new_teacher() -> Teacher:
        with torch.random.fork_rng():  # the teacher's initial weights leave the global random state alone
            torch.manual_seed(config.seed + SEED_OFFSET)
            return Teacher().to(memory_format=torch.channels_last)

    saved = read_teacher(path)
    if saved is not None and saved.get("key") == key:
        try:
            teacher = new_teacher()
            teacher.load_state_dict(saved["model"])
            log(f"teacher: {path} reused (trained in {float(saved['seconds']) / 60:.1f} min)")
            return teacher.eval()
        except (KeyError, TypeError, ValueError, RuntimeError):  # damaged inside: train it again
            pass
    teacher = new_teacher()

    parameters = sum(p.numel() for p in teacher.parameters())
    epochs = f"{config.distill_epochs} epoch{'s' if config.distill_epochs > 1 else ''}"
    log(f"teacher: training a {parameters:,}-parameter CNN for {epochs} first (distillation)")
    generator = torch.Generator().manual_seed(config.seed + SEED_OFFSET)
    images = torch.from_numpy(to_tensor_input(train_split.images))
    labels = torch.from_numpy(train_split.labels.astype(np.int64))
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = one_cycle(optimizer, config.lr, config.distill_epochs * steps_per_epoch)
    start = time.perf_counter()
    teacher.train()
    for epoch in range(config.distill_epochs):
        bar = progress_bar(epoch_batches(images, labels, config, generator), progress, total=steps_per_epoch,
                           desc=f"teacher epoch {epoch + 1}/{config.distill_epochs}", leave=False, unit="batch")
        for x, y in bar:
            take_step(F.cross_entropy(teacher(x), y), optimizer, scheduler,
                      lambda: f"the distillation teacher diverged in its epoch {epoch + 1}; lower --lr "
                              f"(now {config.lr:g})")
        bar.close()
    calibrate_batchnorm(teacher, train_split.images)  # exact statistics, as for the student
    seconds = time.perf_counter() - start
    val_accuracy = loss_and_accuracy(teacher, val_split)[1] if len(val_split) else None
    save_teacher(path, teacher, key=key, seconds=seconds, parameters=parameters, val_accuracy=val_accuracy)
    log(f"teacher: trained in {seconds / 60:.1f} min" + (f", validation accuracy {val_accuracy:.4f}" if len(val_split)
                                                        else "") + f" -> {path}")
    return teacher.eval()


def resume_refused(out_dir: Path, why: str) -> UserError:
    """The error of a resume whose last.pt is there but unusable (a fresh start would replace the run's files)."""
    return UserError(f"cannot resume {out_dir} ({why}); to train it again from epoch 1, delete "
                     f"{Path(out_dir) / 'last.pt'} first")


def resume_problem(path: Path, config: TrainConfig, total_steps: int, steps_per_epoch: int) -> str | None:
    """Why ``path`` (a run's last.pt) cannot be resumed with ``config``, or None if it can."""
    if not path.is_file():
        return f"no {path.name}: killed before its first epoch ended?"
    try:
        state = read_checkpoint(path)
    except UserError as e:
        return str(e).removeprefix(f"{path}: ")
    missing = [k for k in RESUME_KEYS + (("trained_model",) if config.ema_decay else ()) if k not in state]
    if missing:
        return f"{path.name} has no {missing[0]!r}: not a training state (a copy of best.pt?)"
    epoch, history = state["epoch"], state["history"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 1 <= epoch <= config.epochs \
            or not isinstance(history, list) or len(history) != epoch:
        return f"{path.name} holds an epoch count that does not fit this run"
    try:
        # the schedule's length alone can agree by chance (a short run's is padded to MIN_SCHEDULE_STEPS): the
        # steps taken so far must be this run's steps per epoch times the epochs done
        if int(state["scheduler"]["total_steps"]) != total_steps \
                or int(state["scheduler"]["last_epoch"]) != epoch * steps_per_epoch:
            return f"{path.name} was made with another data set size or batch size"
        if state.get("architecture", spec.SEED.to_dict()) != config.architecture:
            return f"{path.name} holds another architecture than its config.json"
        model = MobileLeNet(config.member).to(memory_format=torch.channels_last)
        model.load_state_dict(state["model"])
        check_finite_state(path, state["model"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        optimizer.load_state_dict(state["optimizer"])
        torch.Generator().set_state(state["generator"])
        float(state["best_val_accuracy"])
    except UserError as e:
        return str(e).removeprefix(f"{path}: ")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        return f"{path.name} is not a usable training state ({type(e).__name__})"
    return None


def finalize_checkpoints(out_dir: Path, train_split: Dataset, val_split: Dataset) -> None:
    """Give best.pt and last.pt BatchNorm statistics exact over the whole training split.

    During training, each epoch with a validation split calibrates on the first EPOCH_CALIBRATION_IMAGES
    images of the (shuffled) split, which is plenty to validate and pick the best epoch; the checkpoints a
    finished or interrupted run leaves carry the statistics of every training image. best.pt's val_accuracy
    is measured again afterwards.
    """
    calibrated = {}  # weights already calibrated -> their BN statistics (best and last are often one epoch)
    for name in ("best.pt", "last.pt"):
        state = read_checkpoint(out_dir / name)
        if state.get("bn_calibration") == "full":
            continue
        model = load_checkpoint_model(out_dir / name).train().to(memory_format=torch.channels_last)
        key = tuple(p.detach().numpy().tobytes() for p in model.parameters())
        if key not in calibrated:
            calibrate_batchnorm(model, train_split.images)
            calibrated[key] = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(calibrated[key])
        extra = {k: v for k, v in state.items() if k not in ("format", "model")}
        if name == "best.pt" and len(val_split):
            extra["val_accuracy"] = loss_and_accuracy(model, val_split)[1]
        save_checkpoint(out_dir / name, model, **extra, bn_calibration="full")


def write_metrics(path: Path, history: list[dict]) -> None:
    """Per-epoch metrics as CSV (one row per epoch)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(history[0]))
            writer.writeheader()
            writer.writerows(history)

    atomic_write(path, write)
