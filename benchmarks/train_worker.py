"""One training run for the training-speed benchmark, in its own process: ``python -m benchmarks.train_worker``.

Trains either the upstream stack (``--stack keras``: Keras 3, PyTorch backend, ``keras.Model.fit``) or our
trainer (``--stack ours``: ``mobile_lenet.model.training.train`` with a ``TrainConfig``) on the same images with the
same batch size, number of epochs and thread count, then scores the trained model on the test images.
Writes one JSON object to ``--result``: wall time of the whole training call, images/second, time per
epoch, the training accuracy the stack reports for its last epoch and test accuracy. For Keras the test
accuracy comes three ways, to show what its BatchNorm moving averages cost after a short run: with the
moving averages (what ``predict`` uses), with batch statistics (training mode) and with the statistics
recalibrated over the training images (timed apart from ``fit``). The parent (``benchmarks.training``) sets
the thread environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load_data(data_dir: str, train_limit: int | None, test_limit: int | None):
    """The training and test sets, each cut to its first ``limit`` images when a limit is given."""
    from mobile_lenet.model.data import Dataset, load_dataset

    train_set, test_set = load_dataset("mnist", "train", data_dir), load_dataset("mnist", "test", data_dir)
    cut = lambda ds, n: ds if n is None else Dataset(ds.images[:n], ds.labels[:n], ds.name)  # noqa: E731
    return cut(train_set, train_limit), cut(test_set, test_limit)


def preload_libraries() -> None:
    """Pay one-time import costs before any clock starts, the same for both stacks.

    Building the first torch optimizer imports ``torch._dynamo`` (seconds), which would otherwise be
    charged to whichever stack builds an optimizer first inside its timed call; ``tqdm`` is our trainer's.
    """
    import torch
    import tqdm  # noqa: F401

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])


def train_keras(args, train_set, test_set) -> dict:
    """Fit the upstream Keras model; time ``fit`` as a whole and epoch by epoch."""
    import keras

    from .keras_model import build_keras_model, compare_with_upstream, recalibrate_keras_batchnorm

    keras.utils.set_random_seed(args.seed)
    model = build_keras_model()
    check = compare_with_upstream(model, args.upstream_keras) if args.upstream_keras else None
    x = (train_set.images.astype(np.float32) / 255.0)[..., None]  # channels last, as the seed
    y = keras.utils.to_categorical(train_set.labels, 10)
    epoch_ends = []

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            epoch_ends.append(time.perf_counter())

    start = time.perf_counter()
    history = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                        callbacks=[EpochClock()])
    seconds = time.perf_counter() - start
    epoch_seconds = np.diff([start] + epoch_ends).tolist()
    x_test = (test_set.images.astype(np.float32) / 255.0)[..., None]
    accuracy = keras_accuracy(model, x_test, test_set.labels)
    # Why a short Keras run scores low: after 5 x 79 updates at momentum 0.99 the moving averages still lag
    # the weights. Score the same weights with batch statistics and with exact statistics of the training images.
    batch_accuracy = keras_batch_statistics_accuracy(model, x_test, test_set.labels, args.batch_size)
    start = time.perf_counter()
    recalibrated_layers = recalibrate_keras_batchnorm(model, x)
    recalibration_seconds = time.perf_counter() - start
    return {"seconds": seconds, "epoch_seconds": epoch_seconds, "test_accuracy": accuracy,
            "train_accuracy_reported": float(history.history["accuracy"][-1]),
            "test_accuracy_batch_statistics": batch_accuracy,
            "test_accuracy_recalibrated": keras_accuracy(model, x_test, test_set.labels),
            "bn_recalibration_seconds": recalibration_seconds, "bn_recalibration_images": len(x),
            "bn_recalibrated_layers": recalibrated_layers,
            "bn_momentum": next(layer.momentum for layer in model.layers
                                if isinstance(layer, keras.layers.BatchNormalization)),
            "upstream_config_check": check, "keras_backend": keras.backend.backend()}


def keras_accuracy(model, x: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of a Keras model in inference mode (BatchNorm with its stored statistics)."""
    probabilities = model.predict(x, batch_size=1000, verbose=0)
    return float((probabilities.argmax(1) == labels).mean())


def keras_batch_statistics_accuracy(model, x: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Accuracy of a Keras model in training mode: each BatchNorm normalizes with the statistics of the batch
    (``batch_size`` test images) itself. The moving averages that training mode updates are restored after."""
    import keras
    import torch

    saved = model.get_weights()
    predictions = []
    with torch.no_grad():
        for begin in range(0, len(x), batch_size):
            probabilities = keras.ops.convert_to_numpy(model(x[begin:begin + batch_size], training=True))
            predictions.append(probabilities.argmax(1))
    model.set_weights(saved)
    return float((np.concatenate(predictions) == labels).mean())


def train_ours(args, train_set, test_set) -> dict:
    """Run our real trainer (``training.train``) with the default TrainConfig except what the benchmark fixes."""
    import csv
    from dataclasses import asdict

    from mobile_lenet.apps.evaluation import evaluate
    from mobile_lenet.model.network import from_noodle
    from mobile_lenet.formats.model_files import load_tensors
    import torch

    from mobile_lenet.model.training import EPOCH_CALIBRATION_IMAGES, TrainConfig, calibrate_batchnorm, train

    # All images train (no validation split), as Keras' fit does here; the model after the last epoch is scored.
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, augment=args.augment, val_fraction=0.0,
                         seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out_dir:
        start = time.perf_counter()
        train(config, train_set, out_dir, progress=False, log=lambda message: None, threads=args.threads)
        seconds = time.perf_counter() - start
        with open(Path(out_dir) / "metrics.csv") as f:
            metrics = list(csv.DictReader(f))
        epoch_seconds = [float(row["seconds"]) for row in metrics]
        tensors = load_tensors(Path(out_dir) / "last.pt")
    result = evaluate(tensors, test_set, engine="torch")
    # Diagnostic: what the trainer's BatchNorm calibrations cost: the per-epoch one (a fixed subset of the
    # training images) and the final one over all of them.
    model = from_noodle(tensors).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    calibrate_batchnorm(model, train_set.images[:EPOCH_CALIBRATION_IMAGES])
    calibration = time.perf_counter() - start
    start = time.perf_counter()
    calibrate_batchnorm(model, train_set.images)
    final_calibration = time.perf_counter() - start
    return {"seconds": seconds, "epoch_seconds": epoch_seconds, "test_accuracy": result["accuracy"],
            "train_accuracy_reported": float(metrics[-1]["train_accuracy"]), "config": asdict(config),
            "bn_calibration_seconds": calibration,
            "bn_calibration_images": min(EPOCH_CALIBRATION_IMAGES, len(train_set)),
            "final_bn_calibration_seconds": final_calibration}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", choices=("keras", "ours"), required=True)
    parser.add_argument("--data-dir", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--augment", action="store_true", help="ours: random affine augmentation on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--upstream-keras", default=None, help="keras: the seed's .keras file to check against")
    parser.add_argument("--result", required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    if args.stack == "keras" and os.environ.get("KERAS_BACKEND") != "torch":
        parser.error("set KERAS_BACKEND=torch (the upstream stack)")
    import torch

    torch.set_num_threads(args.threads)
    train_set, test_set = load_data(args.data_dir, args.train_limit, args.test_limit)
    preload_libraries()
    run = train_keras if args.stack == "keras" else train_ours
    result = run(args, train_set, test_set)
    images = len(train_set) * args.epochs
    result.update(stack=args.stack, epochs=args.epochs, batch_size=args.batch_size, threads=torch.get_num_threads(),
                  train_images=len(train_set), test_images=len(test_set), images_per_second=images / result["seconds"])
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
