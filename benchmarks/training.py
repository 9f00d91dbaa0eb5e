"""Part 2, training speed against the upstream stack (Keras 3 on the PyTorch backend).

Three runs on the same MNIST training images with the same batch size (``TrainConfig().batch_size``), the
same number of epochs and the same thread count, one after the other, each in its own subprocess
(``benchmarks.train_worker``) so that no library state carries over:

1. ``keras``: the seed's model and recipe in Keras 3 (Adam lr 1e-3, categorical cross-entropy), built from
   our architecture table and checked against the seed's published ``config.json``;
2. ``ours, augmentation off``: our trainer, ``training.train`` with ``TrainConfig`` defaults except
   ``augment=False`` (and no validation split, as Keras' ``fit`` here) - the like-for-like comparison;
3. ``ours, default recipe``: the same with the default augmentation.

Images/second is training images x epochs / wall time of the whole training call (``fit`` / ``train``),
so our final BatchNorm calibration over all training images (no epoch calibrates before it: there is
no validation split) and checkpoints count against us. Each model is then scored on the
official MNIST test set. Keras' model is scored with its BatchNorm moving averages (what ``predict`` uses),
with batch statistics, and with statistics recalibrated over the training images as our ``train`` does at
the end of a run; that recalibration is timed on its own and never counted in Keras' images/second (a
favour to Keras). Our accuracy is compared with Keras' recalibrated accuracy (like for like) and with its
moving-average accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .common import ROOT, Options, not_available

EPOCHS = 5
QUICK = {"epochs": 1, "train_images": 640, "test_images": 500}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# (stack, label, extra worker arguments, threads). This network is so small that one thread trains it faster
# than two on a 2-core machine (for our trainer; measured in train.py), so every stack runs with one thread, and
# Keras also with all the benchmark's threads: ours is compared with the faster of the two Keras runs.
RUNS = (("keras", "Keras 3 (torch backend), upstream recipe, 1 thread", [], 1),
        ("keras", "Keras 3 (torch backend), upstream recipe, all threads", [], None),
        ("ours", "ours, augmentation off, 1 thread", [], 1),
        ("ours", "ours, default recipe, 1 thread", ["--augment"], 1))


def keras_installed() -> bool:
    """Whether the benchmark-only extra (``pip install -e '.[bench]'``) is installed."""
    import importlib.util

    return importlib.util.find_spec("keras") is not None


def run_worker(stack: str, extra_args: list[str], options: Options, epochs: int, batch_size: int,
               threads: int) -> dict:
    """Run one ``train_worker`` subprocess with the thread count pinned; returns its JSON result."""
    limits = ["--train-limit", str(QUICK["train_images"]), "--test-limit", str(QUICK["test_images"])] \
        if options.quick else []
    upstream_keras = options.upstream_dir / "mobile-lenet-5.keras"
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, KERAS_BACKEND="torch", PYTHONPATH=python_path)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as folder:
        result_file = Path(folder) / "result.json"
        command = [sys.executable, "-m", "benchmarks.train_worker", "--stack", stack, "--data-dir",
                   str(options.mnist_dir), "--epochs", str(epochs), "--batch-size", str(batch_size), "--threads",
                   str(threads), "--result", str(result_file), *limits, *extra_args]
        if stack == "keras" and upstream_keras.is_file():
            command += ["--upstream-keras", str(upstream_keras)]
        completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            tail = (completed.stderr.strip().splitlines() or ["no message"])[-1]
            return not_available(f"worker failed (exit {completed.returncode}): {tail}")
        return json.loads(result_file.read_text())


def run(options: Options) -> dict:
    """The training-speed part: Keras vs ours, same data, batch size, epochs and threads."""
    from mobile_lenet.model.training import TrainConfig

    defaults = TrainConfig()
    epochs = QUICK["epochs"] if options.quick else EPOCHS
    rows = []
    for stack, label, extra_args, threads in RUNS:
        threads = threads or options.threads
        if stack == "keras" and not keras_installed():
            row = not_available("keras is not installed (pip install -e '.[bench]')")
        else:
            options.log(f"  training: {label}, {epochs} epochs, batch {defaults.batch_size}, "
                        f"{threads} threads ...")
            row = run_worker(stack, extra_args, options, epochs, defaults.batch_size, threads)
            if row.get("available", True):
                options.log(f"    {row['images_per_second']:.0f} images/s, test accuracy {row['test_accuracy']:.4f}")
                if "test_accuracy_recalibrated" in row:
                    options.log(f"    with BatchNorm statistics recalibrated over the training images "
                                f"{row['test_accuracy_recalibrated']:.4f} ({row['bn_recalibration_seconds']:.1f} s, "
                                f"not counted in images/s), with batch statistics "
                                f"{row['test_accuracy_batch_statistics']:.4f}")
            else:
                options.log(f"    not available: {row['reason']}")
        rows.append({"label": label, "stack": stack, **row})
    keras_rows = [row for row in rows if row["stack"] == "keras" and row.get("available", True)]
    keras_row = max(keras_rows, key=lambda row: row["images_per_second"]) if keras_rows else {"available": False}
    for row in rows:
        if row["stack"] == "ours" and keras_row.get("available", True) and row.get("available", True):
            row["speedup_vs_keras"] = row["images_per_second"] / keras_row["images_per_second"]
            row["accuracy_minus_keras"] = row["test_accuracy"] - keras_row["test_accuracy"]
            row["accuracy_minus_keras_recalibrated"] = row["test_accuracy"] - keras_row["test_accuracy_recalibrated"]
    return {"epochs": epochs, "batch_size": defaults.batch_size, "threads": options.threads, "runs": rows,
            "keras_baseline": keras_row.get("label"), "target_speedup": 1.5}
