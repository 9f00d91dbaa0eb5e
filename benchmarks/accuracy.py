"""Part 1, accuracy: the default training recipe on MNIST (3 seeds) and Fashion-MNIST, and the upstream weights.

* MNIST: ``TrainConfig()`` as it is in ``mobile_lenet.model.training`` (the recipe is whatever the defaults are when
  the benchmark runs) on the 10,000-image MNIST training subset, scored on the official 10,000 test images
  with the run's ``best.pt`` (the epoch with the best validation accuracy, as the CLI evaluates a run).
* Fashion-MNIST: the same recipe on all 60,000 training images. If the default number of epochs would not
  fit in the time budget at the training speed measured on MNIST, fewer epochs are run and the table says
  so. The default budget is the time one MNIST seed took, because Fashion-MNIST trains alongside the last
  MNIST seed.
* Upstream: the seed author's published weights (Noodle folder and ``.keras`` file) on the MNIST test set.

Training runs go to separate processes, as many at once as the benchmark has threads, each with one
thread: this tiny network trains faster as two one-thread processes than as one two-thread process, and
accuracy does not depend on timing.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from .common import Options, mean_and_spread, not_available

SEEDS = (0, 1, 2)
QUICK = {"seeds": (0, 1), "epochs": 1, "train_images": 600, "test_images": 500}


def load(name: str, split: str, data_dir: Path | None, count: int | None):
    """One split of a data set, cut to its first ``count`` images when a count is given."""
    from mobile_lenet.model.data import Dataset, load_dataset

    dataset = load_dataset(name, split, data_dir)
    if count is None:
        return dataset
    return Dataset(dataset.images[:count], dataset.labels[:count], f"{dataset.name}[:{count}]")


def train_and_score(config, data: dict, run_dir: Path) -> dict:
    """Train with ``config`` into ``run_dir`` (one thread) and score the run's best.pt on the test split.

    ``data`` names the data set: {"name", "data_dir", "train_images", "test_images"} (counts None for all), or,
    instead of "test_images", "holdout": {"data_dir", "start", "stop"}, training images of another folder that
    the run never sees, to score best.pt on as a validation set (the ablation decides on those, never on the
    test set).
    Runs in a worker process, so it loads the data itself. A run whose result is already in ``run_dir`` (same
    config and data) is not trained again, and an interrupted one resumes from its last.pt (`train_resuming`).
    """
    import torch

    from mobile_lenet.apps.evaluation import evaluate
    from mobile_lenet.formats.model_files import load_tensors
    from mobile_lenet.model.checkpoints import read_checkpoint

    done_file = run_dir / "benchmark-result.json"
    key = json.loads(json.dumps({"config": cache_key(config), "data": data}, default=str))  # folders as text
    torch.set_num_threads(1)
    if done_file.is_file():
        done = json.loads(done_file.read_text())
        if done.get("key") == key:
            if add_diagnostics(done["result"], config, data, run_dir):  # a run finished before these columns
                done_file.write_text(json.dumps(done))
            return done["result"]
    train_set = load(data["name"], "train", data["data_dir"], data["train_images"])
    seconds = train_resuming(config, train_set, run_dir)
    tensors = load_tensors(run_dir)
    trained_images = round(len(train_set) * (1 - config.val_fraction)) * config.epochs
    result = {"seed": config.seed, "epochs": config.epochs, "seconds": seconds,
              "images_per_second": trained_images / seconds, "train_images": len(train_set),
              "val_accuracy": read_checkpoint(run_dir / "best.pt").get("val_accuracy")}
    scored = scored_set(data)
    if "holdout" in data:
        result.update(holdout_images=len(scored),
                      holdout_accuracy=evaluate(tensors, scored, engine="torch")["accuracy"])
    else:
        result.update(test_accuracy=evaluate(tensors, scored, engine="torch")["accuracy"],
                      test_images=len(scored), int8_test_accuracy=int8_accuracy(tensors, train_set, scored))
    add_diagnostics(result, config, data, run_dir, train_set, scored)
    done_file.write_text(json.dumps({"key": key, "result": result}))
    return result


def scored_set(data: dict):
    """The images a run is scored on: the held-out training images, or the test split."""
    from mobile_lenet.model.data import Dataset

    if "holdout" not in data:
        return load(data["name"], "test", data["data_dir"], data["test_images"])
    holdout = load(data["name"], "train", data["holdout"]["data_dir"], data["holdout"]["stop"])
    start = data["holdout"]["start"]
    return Dataset(holdout.images[start:], holdout.labels[start:], "holdout")


def add_diagnostics(result: dict, config, data: dict, run_dir: Path, train_set=None, scored=None) -> bool:
    """Add to ``result`` what it lacks: "fit_accuracy" (see ``fit_accuracy``) and, for a distilled run, "teacher"
    (its size, training time, and accuracy on the run's validation split and on the scored images).
    True if anything was added (results cached before these existed get them without training again)."""
    from mobile_lenet.formats.model_files import load_tensors
    from mobile_lenet.model.teacher import TEACHER_FILE, Teacher, read_teacher
    from mobile_lenet.model.training import loss_and_accuracy

    added = False
    if "fit_accuracy" not in result:
        if train_set is None:
            train_set = load(data["name"], "train", data["data_dir"], data["train_images"])
        result["fit_accuracy"] = fit_accuracy(load_tensors(run_dir), train_set, config)
        added = True
    saved = read_teacher(run_dir / TEACHER_FILE) if config.distill_epochs and "teacher" not in result else None
    if saved is not None:
        teacher = Teacher()
        teacher.load_state_dict(saved["model"])
        scored = scored_set(data) if scored is None else scored
        accuracy = loss_and_accuracy(teacher, scored)[1]
        result["teacher"] = {"parameters": saved["parameters"], "epochs": config.distill_epochs,
                             "seconds": saved["seconds"], "val_accuracy": saved.get("val_accuracy"),
                             ("holdout_accuracy" if "holdout" in data else "test_accuracy"): accuracy}
        added = True
    return added


# Settings added to TrainConfig after runs were first cached, with their "off" value: left out of a run's key
# while off, so the runs finished before them keep their results.
KEY_ADDED_LATER = {"distill_epochs": 0}


def train_resuming(config, train_set, run_dir: Path) -> float:
    """``train`` into ``run_dir`` with one thread, resuming the run an interrupted benchmark left there (its
    last.pt, same settings); a folder left by other settings is trained again from epoch 1. Returns the
    training time in seconds: of this call, or for a resumed run the sum of all its epochs' times."""
    import csv

    from mobile_lenet.errors import UserError
    from mobile_lenet.model.training import train

    start = time.perf_counter()
    try:
        train(config, train_set, run_dir, resume=True, progress=False, log=lambda message: None)
    except UserError:  # its last.pt is of other settings: this benchmark's own folder, so start it again
        for name in ("last.pt", "best.pt"):
            (run_dir / name).unlink(missing_ok=True)
        start = time.perf_counter()
        train(config, train_set, run_dir, progress=False, log=lambda message: None)
    seconds = time.perf_counter() - start
    with open(run_dir / "metrics.csv", newline="") as f:
        epochs = sum(float(row["seconds"]) for row in csv.DictReader(f))
    return max(seconds, epochs)


def cache_key(config) -> dict:
    """The settings that identify a finished run."""
    return {k: v for k, v in asdict(config).items() if not (k in KEY_ADDED_LATER and v == KEY_ADDED_LATER[k])}


def fit_accuracy(tensors, train_set, config) -> float:
    """Accuracy on the very images the run trained on (without augmentation, the validation share left out).

    How well the network fits what it has seen. Test accuracy has stayed below it in every run, so a fit that
    stays low points at the network's capacity rather than at the recipe's regularization."""
    from mobile_lenet.apps.evaluation import evaluate
    from mobile_lenet.model.data import split_validation

    trained_on, _ = split_validation(train_set, config.val_fraction, config.seed)  # the trainer's own split
    return evaluate(tensors, trained_on, engine="torch")["accuracy"]


def int8_accuracy(tensors, train_set, test_set) -> float:
    """Test accuracy of the int8 model quantized from ``tensors`` (calibrated on training images, as
    ``mobile-lenet quantize`` does), run by the integer-only NumPy engine."""
    from mobile_lenet.apps.evaluation import evaluate
    from mobile_lenet.quantization.quantize import DEFAULT_CALIBRATION_COUNT, pick_calibration_images, quantize_model

    qmodel = quantize_model(tensors, pick_calibration_images(train_set.images, DEFAULT_CALIBRATION_COUNT))
    return evaluate(qmodel, test_set, engine="reference")["accuracy"]


def summary(label: str, runs: list[dict], epochs: int, defaults) -> dict:
    """Mean and spread of the test accuracy of a set of runs."""
    return {"dataset": label, "train_images": runs[0]["train_images"], "test_images": runs[0]["test_images"],
            "epochs": epochs, "default_epochs": defaults.epochs, "runs": runs,
            "accuracy": mean_and_spread([run["test_accuracy"] for run in runs]),
            "int8_accuracy": mean_and_spread([run["int8_test_accuracy"] for run in runs]),
            "int8_max_drop": max(run["test_accuracy"] - run["int8_test_accuracy"] for run in runs),
            "fit_accuracy": mean_and_spread([run["fit_accuracy"] for run in runs])}


def fashion_epochs(options: Options, defaults, mnist_runs: list[dict], train_images: int) -> tuple[int, float]:
    """How many of the default epochs fit the Fashion-MNIST budget, at the measured MNIST training speed."""
    rate = sum(run["images_per_second"] for run in mnist_runs) / len(mnist_runs)
    budget = options.fashion_minutes * 60 if options.fashion_minutes else max(run["seconds"] for run in mnist_runs)
    per_epoch = round(train_images * (1 - defaults.val_fraction))
    return min(defaults.epochs, max(1, math.floor(budget * rate / per_epoch))), budget


def train_all(options: Options, defaults) -> tuple[dict, dict]:
    """MNIST over the seeds and Fashion-MNIST once, ``options.threads`` one-thread runs at a time.

    The first batch of MNIST seeds runs first; their measured speed sets Fashion-MNIST's epochs, which then
    trains alongside the remaining seeds.
    """
    from mobile_lenet.model.data import dataset_available_offline

    quick = options.quick
    limits = {"train_images": QUICK["train_images"] if quick else None,
              "test_images": QUICK["test_images"] if quick else None}
    mnist_data = {"name": "mnist", "data_dir": options.mnist_dir, **limits}
    fashion_data = {"name": "fashion-mnist", "data_dir": None, **limits}
    epochs = QUICK["epochs"] if quick else defaults.epochs
    seeds = QUICK["seeds"] if quick else SEEDS
    jobs = max(1, min(options.threads, len(seeds)))
    first, rest = seeds[:jobs], seeds[jobs:]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch thread pool inherited
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        def submit_mnist(seed):
            return pool.submit(train_and_score, replace(defaults, epochs=epochs, seed=seed), mnist_data,
                               options.work_dir / f"mnist-seed{seed}")

        options.log(f"  accuracy: MNIST seeds {', '.join(map(str, first))} ({epochs} epochs, {jobs} at a time) ...")
        mnist_runs = [future.result() for future in [submit_mnist(seed) for seed in first]]
        pending = [submit_mnist(seed) for seed in rest]
        fashion_future = None
        if dataset_available_offline("fashion-mnist"):
            full_size = len(load("fashion-mnist", "train", None, None))
            fashion_epochs_run, budget = fashion_epochs(options, defaults, mnist_runs, full_size)
            if quick:
                fashion_epochs_run = QUICK["epochs"]
            options.log(f"  accuracy: Fashion-MNIST, {fashion_epochs_run} of the {defaults.epochs} default epochs"
                        + (f", alongside MNIST seeds {', '.join(map(str, rest))}" if rest else "") + " ...")
            fashion_future = pool.submit(train_and_score, replace(defaults, dataset="fashion-mnist",
                                                                  epochs=fashion_epochs_run, seed=SEEDS[0]),
                                         fashion_data, options.work_dir / "fashion-seed0")
        mnist_runs += [future.result() for future in pending]
        if fashion_future is None:
            fashion = not_available("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
        else:
            fashion = summary("Fashion-MNIST", [fashion_future.result()], fashion_epochs_run, defaults)
            fashion.update(budget_minutes=budget / 60,
                           epochs_limited_by_budget=not quick and fashion_epochs_run < defaults.epochs)
    for run in mnist_runs:
        options.log(f"    MNIST seed {run['seed']}: test accuracy {run['test_accuracy']:.4f} in {run['seconds']:.0f} s")
    if fashion_future is not None:
        options.log(f"    Fashion-MNIST: test accuracy {fashion['accuracy']['mean']:.4f} "
                    f"in {fashion['runs'][0]['seconds']:.0f} s")
    return summary("MNIST (10k training subset)", mnist_runs, epochs, defaults), fashion


def upstream(options: Options) -> list[dict]:
    """The seed author's published weights on the MNIST test set, read from each published format."""
    from mobile_lenet.apps.evaluation import evaluate
    from mobile_lenet.formats.model_files import load_tensors

    test_set = load("mnist", "test", options.mnist_dir, QUICK["test_images"] if options.quick else None)
    rows = []
    for label, path in (("Noodle folder", options.upstream_dir / "noodle"),
                        (".keras file", options.upstream_dir / "mobile-lenet-5.keras")):
        row = {"source": label, "path": path.name, "test_images": len(test_set)}
        try:
            row["test_accuracy"] = evaluate(load_tensors(path), test_set, engine="torch")["accuracy"]
        except Exception as error:  # importer not written yet, file missing, or a format error: say which
            row.update(not_available(f"{type(error).__name__}: {error}"))
        rows.append(row)
    return rows


def run(options: Options) -> dict:
    """The accuracy part: MNIST over seeds, Fashion-MNIST, upstream weights."""
    from mobile_lenet.model.training import TrainConfig

    defaults = TrainConfig()
    mnist, fashion = train_all(options, defaults)
    return {"recipe": asdict(defaults), "parallel_runs": max(1, min(options.threads, len(SEEDS))),
            "mnist": mnist, "fashion": fashion, "upstream": upstream(options)}
