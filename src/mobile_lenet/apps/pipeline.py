"""The main job, ``mobile-lenet pipeline``: train, evaluate, export and report, in one folder.

With ``--dataset auto`` (the default) it uses full MNIST when it is at hand (``--data-dir``, the download
cache, or a download that works) and otherwise the bundled sample, so it runs offline out of the box.
"""

from __future__ import annotations

import json
from pathlib import Path

from mobile_lenet.apps.evaluation import evaluate, format_report
from mobile_lenet.apps.export import export
from mobile_lenet.apps.report import build_report
from mobile_lenet.errors import UserError
from mobile_lenet.files import atomic_write_text, check_writable_folder
from mobile_lenet.formats.model_files import load_tensors
from mobile_lenet.model.data import DataError, dataset_available_offline, download, load_dataset
from mobile_lenet.model.training import TrainConfig, check_config, read_config, train


def resolve_dataset(dataset: str, data_dir: str | None, log=print) -> str:
    """Pick the data set for ``auto``: MNIST if available or downloadable, else the bundled sample."""
    if dataset != "auto" or data_dir:
        return "mnist" if dataset == "auto" else dataset
    if dataset_available_offline("mnist"):
        return "mnist"
    try:
        download("mnist")
        return "mnist"
    except DataError as e:
        log(f"full MNIST is not at hand ({e}); using the bundled mnist-sample instead")
        return "mnist-sample"


def run_pipeline(out: Path, dataset: str = "auto", data_dir: str | None = None, epochs: int = TrainConfig.epochs, seed: int = 0,
                 progress: bool = True, log=print) -> dict:
    """Train into ``out``, evaluate best.pt on the test split, export it, write the report; returns the evaluation."""
    check_config(TrainConfig(epochs=epochs, seed=seed))  # before any data is loaded or downloaded
    check_writable_folder(out)
    dataset = resolve_dataset(dataset, data_dir, log)
    config = check_config(TrainConfig(dataset=dataset, data_dir=data_dir, epochs=epochs, seed=seed))
    log(f"[1/4] training on {dataset}{' from ' + data_dir if data_dir else ''} for {epochs} epochs -> {out}")
    resume = (out / "config.json").is_file()  # a run started here (even one killed in its first epoch)
    if resume and read_config(out / "config.json") != config:
        raise UserError(f"{out}: holds a run with other settings; choose another --out")
    train(config, load_dataset(dataset, "train", data_dir), out, resume=resume, progress=progress, log=log)

    log("[2/4] evaluating best.pt on the test split")
    tensors = load_tensors(out)
    result = evaluate(tensors, load_dataset(dataset, "test", data_dir))
    atomic_write_text(out / "evaluation.json", json.dumps(result, indent=2) + "\n")
    log(format_report(result))

    log("[3/4] exporting")
    for line in export_all(out, tensors):
        log("  " + line)

    log(f"[4/4] report: {build_report(out, dataset=dataset, data_dir=data_dir)}")
    return result


def export_all(out: Path, tensors) -> list[str]:
    """Write the weight files, ONNX and the C library next to the run; returns what was written."""
    written = []
    for fmt in ("noodle", "onnx", "c"):
        export(tensors, fmt, out / fmt)
        written.append(f"{fmt}: {out / fmt}")
    return written
