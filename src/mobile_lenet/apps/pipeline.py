"""The main job, ``mobile-lenet pipeline``: train, evaluate, quantize, simulate, export and report, in one folder.

With ``--dataset auto`` (the default) it uses full MNIST when it is at hand (``--data-dir``, the download
cache, or a download that works) and otherwise the bundled sample, so it runs offline out of the box.
The microcontroller step runs the float and int8 firmware on every target whose toolchain and simulator are
installed, on a few test images (``apps.simulate.DEPLOY_COUNT``), so the job stays a few minutes long, and
profiles each of them on the same images (instructions or cycles per layer, for the report's per-block cost
chart); a target without its tools is one line naming the package, and the job goes on.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from mobile_lenet import spec
from mobile_lenet.apps.evaluation import evaluate, format_report
from mobile_lenet.apps.export import export
from mobile_lenet.apps.quantization import quantize_source
from mobile_lenet.apps.report import DEPLOYMENT_FILE, INT8_EVALUATION_FILE, build_report
from mobile_lenet.apps.simulate import DEPLOY_COUNT, deploy
from mobile_lenet.errors import UserError
from mobile_lenet.files import atomic_write_text, check_writable_folder
from mobile_lenet.formats.model_files import load_tensors
from mobile_lenet.model.config import default_batch_size
from mobile_lenet.model.data import load_dataset, resolve_dataset
from mobile_lenet.model.training import TrainConfig, check_config, read_config, train
from mobile_lenet.quantization.quantize import DEFAULT_CALIBRATION_COUNT

STEPS = 6


def run_pipeline(out: Path, dataset: str = "auto", data_dir: str | None = None, epochs: int = TrainConfig.epochs,
                 seed: int = 0, progress: bool = True, log=print, arch: spec.Architecture = spec.SEED,
                 recipe: dict | None = None) -> dict:
    """Train the family member ``arch`` into ``out``, evaluate best.pt on the test split, quantize it into
    ``out/int8``, run both on the simulated microcontrollers, export both, write the report; returns the float
    evaluation. Every step after training takes the member from the checkpoint.

    ``recipe`` (other ``TrainConfig`` fields, e.g. ``{"lr": 0.01, "augment": False}``) trains another recipe:
    ``search --export`` passes a search trial's."""
    settings = _train_settings(epochs, seed, arch, recipe)
    check_config(TrainConfig(**settings))  # before any data is loaded or downloaded
    check_writable_folder(out)
    dataset = resolve_dataset(dataset, data_dir, log)
    train_set = load_dataset(dataset, "train", data_dir)
    settings.setdefault("batch_size", default_batch_size(len(train_set)))  # smaller for a small training set
    config = check_config(TrainConfig(dataset=dataset, data_dir=data_dir, **settings))
    member = "" if arch.is_seed else f" the member with {arch.describe()}"
    log(f"[1/{STEPS}] training{member} on {dataset}{' from ' + data_dir if data_dir else ''} for {epochs} epochs "
        f"(batch {config.batch_size}) -> {out}")
    resume = (out / "config.json").is_file()  # a run started here (even one killed in its first epoch)
    if resume and read_config(out / "config.json") != config:
        raise UserError(f"{out}: holds a run with other settings; choose another --out")
    train(config, train_set, out, resume=resume, progress=progress, log=log)

    log(f"[2/{STEPS}] evaluating best.pt on the test split")
    tensors = load_tensors(out)
    test_set = load_dataset(dataset, "test", data_dir)
    result = evaluate(tensors, test_set)
    atomic_write_text(out / "evaluation.json", json.dumps(result, indent=2) + "\n")
    log(format_report(result))

    log(f"[3/{STEPS}] quantizing to int8 -> {out / 'int8'}")
    qmodel = quantize_source(out, dataset, data_dir, DEFAULT_CALIBRATION_COUNT, out / "int8")
    result_int8 = evaluate(qmodel, test_set)
    atomic_write_text(out / INT8_EVALUATION_FILE, json.dumps(result_int8, indent=2) + "\n")
    log(f"  int8 accuracy {100 * result_int8['accuracy']:.2f}% (float {100 * result['accuracy']:.2f}%)")

    log(f"[4/{STEPS}] microcontrollers: {DEPLOY_COUNT} test images per firmware in its simulator, then per layer")
    deployment = deploy({"float32": tensors, "int8": qmodel}, test_set.images[:DEPLOY_COUNT],
                        test_set.labels[:DEPLOY_COUNT], log=log)
    deployment["dataset"] = test_set.name
    atomic_write_text(out / DEPLOYMENT_FILE, json.dumps(deployment, indent=2) + "\n")

    log(f"[5/{STEPS}] exporting")
    for line in export_all(out, tensors, qmodel):
        log("  " + line)

    log(f"[6/{STEPS}] report: {build_report(out, dataset=dataset, data_dir=data_dir)}")
    return result


def _train_settings(epochs: int, seed: int, architecture: spec.Architecture, recipe: dict | None) -> dict:
    """The TrainConfig fields of the job's run other than its data: the epochs, seed, member and recipe."""
    settings = {"epochs": epochs, "seed": seed, "architecture": architecture.to_dict()}
    recipe = dict(recipe or {})
    allowed = {f.name for f in fields(TrainConfig)} - {"dataset", "data_dir"} - set(settings)
    if set(recipe) - allowed:  # a caller's mistake, not a user's: the CLI never builds a recipe by hand
        raise TypeError(f"recipe takes TrainConfig fields {sorted(allowed)}, not {sorted(set(recipe) - allowed)}")
    return {**settings, **recipe}


def export_all(out: Path, tensors, qmodel) -> list[str]:
    """Write the weight files, ONNX and the float and int8 C libraries next to the run; returns what was written."""
    written = []
    for folder, model, fmt in (("noodle", tensors, "noodle"), ("onnx", tensors, "onnx"), ("c", tensors, "c"),
                               ("c-int8", qmodel, "c")):
        export(model, fmt, out / folder)
        written.append(f"{folder}: {out / folder}")
    return written
