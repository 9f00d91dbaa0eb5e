"""The ``mobile-lenet`` command: one verb, one function.

Each ``cmd_*`` function below is one verb; ``build_parser`` declares its flags. Errors the user can fix
(``UserError``) are printed as one line and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from mobile_lenet import spec
# Only what the parser and the light verbs need is imported here; PyTorch, FastAPI and matplotlib load inside the
# verbs that use them, so `--help` and `summary` start in a fraction of a second.
from mobile_lenet.apps import device, simulate
from mobile_lenet.apps.cli_output import USER_OS_ERRORS, GuardedOutput, silence
from mobile_lenet.apps.export import FORMATS as EXPORT_FORMATS
from mobile_lenet.apps.search import DEFAULT_STUDY
from mobile_lenet.apps.summary import summary_dict, summary_text
from mobile_lenet.codegen.mcu_firmware import TARGETS, get_target
from mobile_lenet.codegen.c_int8 import SCHEDULES
from mobile_lenet.codegen.memory import int8_plan, memory_dict, memory_text, row_plan, row_plan_dict, row_plan_text
from mobile_lenet.engines.registry import ENGINES
from mobile_lenet.errors import UserError
from mobile_lenet.files import WriteError, check_writable_file, check_writable_folder
from mobile_lenet.model.config import (SMALL_SET_BATCH_SIZE, SMALL_TRAINING_SET, TrainConfig, check_config,
                                       check_resumed_settings, default_batch_size, read_config)
from mobile_lenet.model.data import DATASETS, load_dataset, resolve_dataset
from mobile_lenet.quantization.quantize import DEFAULT_CALIBRATION_COUNT


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="auto", choices=("auto",) + DATASETS,
                   help="named data set (default auto: mnist when at hand or downloadable, else the bundled "
                        "mnist-sample, which works offline)")
    p.add_argument("--data-dir", help="folder with IDX files, mnist.npz or mnist_{train,test}.csv (overrides "
                                      "the download)")


def _architecture_args(p: argparse.ArgumentParser) -> None:
    """--width, --channels, --input-size and --strides: which member of the Mobile-LeNet family (default the
    seed's)."""
    seed = ",".join(map(str, spec.SEED_CHANNELS))
    seed_strides = ",".join(map(str, spec.SEED_STRIDES))
    p.add_argument("--width", type=float, help="width multiplier alpha: every channel count of the seed's network "
                                               "times this, rounded (default 1)")
    p.add_argument("--channels", help=f"output channels of the stem and of each block (default {seed})")
    p.add_argument("--input-size", type=int, help=f"input images are SxS pixels, {spec.MIN_INPUT_SIZE} to "
                                                  f"{spec.MAX_INPUT_SIZE}; others are resized (default 28)")
    p.add_argument("--strides", help=f"depthwise stride (1 or 2) of each block, which also sets how many blocks "
                                     f"there are; another count than 6 needs --channels (default {seed_strides})")


def architecture_from_args(args) -> spec.Architecture:
    """The member that the --width, --channels, --input-size and --strides flags name."""
    return spec.Architecture.from_options(args.width, args.channels, args.input_size, args.strides)


def _note(line: str) -> None:
    """A note beside a verb's output (stderr, so that --json output stays one JSON object)."""
    print(f"mobile-lenet: {line}", file=sys.stderr)


def _load_images(args, split: str):
    """The ``split`` of the data set ``--dataset`` and ``--data-dir`` name (``auto``: see resolve_dataset)."""
    return load_dataset(resolve_dataset(args.dataset, args.data_dir, log=_note), split, args.data_dir)


# ------------------------------------------------------------------------------------------------ verbs
def cmd_summary(args) -> int:
    """Print the architecture table (or JSON) with parameters and MACs per layer."""
    if args.target and not (args.memory and args.int8):
        raise UserError("--target goes with --memory --int8 (the int8 schedule of that microcontroller)")
    if args.int8 and not args.memory:
        raise UserError("--int8 goes with --memory (the int8 plan next to float); the architecture table is the "
                        "same for both")
    arch = architecture_from_args(args)
    if args.memory and args.target and get_target(args.target).int8_schedule == "rows":
        plan = row_plan(arch)
        print(json.dumps(row_plan_dict(plan), indent=2) if args.json else "\n".join(row_plan_text(plan)))
        return 0
    if args.memory:
        print(json.dumps(memory_dict(args.int8, arch), indent=2) if args.json else memory_text(args.int8, arch))
        return 0
    print(json.dumps(summary_dict(arch), indent=2) if args.json else summary_text(arch))
    return 0


RUN_FLAGS = ("epochs", "batch_size", "lr", "elastic", "ema_decay", "label_smoothing", "distill_epochs", "seed",
             "augment", "data_dir")  # train's flags that set a run's config.json (None: not given)


def cmd_train(args) -> int:
    """Train a model into a run folder."""
    out = Path(args.out)
    check_writable_folder(out)  # before any data is loaded
    if args.resume:
        if not (out / "config.json").is_file():
            raise UserError(f"{out}: nothing to resume (no config.json and last.pt)")
        config = read_config(out / "config.json")
        check_resumed_settings(config, {name: getattr(args, name) for name in RUN_FLAGS},
                               (args.width, args.channels, args.input_size, args.strides), out)
        if (out / "last.pt").exists():  # a damaged one is refused now, before the data is loaded
            from mobile_lenet.model.checkpoints import read_checkpoint
            from mobile_lenet.model.training import resume_refused

            try:
                read_checkpoint(out / "last.pt")
            except UserError as e:
                raise resume_refused(out, str(e)) from None
    else:
        if (out / "last.pt").exists() or (out / "config.json").exists():
            raise UserError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
        config = TrainConfig(dataset="auto", data_dir=args.data_dir, seed=0, augment=True,
                             architecture=architecture_from_args(args).to_dict())
        for name in RUN_FLAGS:
            if getattr(args, name) is not None:
                setattr(config, name, getattr(args, name))
        check_config(config)
        config.dataset = resolve_dataset(args.dataset, args.data_dir, log=_note)  # after the checks: it may download
    train_set = load_dataset(config.dataset, "train", config.data_dir)
    if not args.resume and args.batch_size is None:  # the default recipe's batch for this training set's size
        config.batch_size = default_batch_size(len(train_set))
    from mobile_lenet.model.training import train

    existed = out.exists()
    try:
        train(config, train_set, out, resume=args.resume, progress=not args.quiet)
    except WriteError:  # e.g. a full disk: a new run that saved no epoch leaves no config.json that claims a run
        if not args.resume and not (out / "last.pt").exists():
            (out / "config.json").unlink(missing_ok=True)
            if not existed:
                with contextlib.suppress(OSError):
                    out.rmdir()
        raise
    teacher = f" (teacher: {out / 'teacher.pt'})" if config.distill_epochs else ""
    print(f"wrote {out / 'best.pt'}, {out / 'last.pt'} and {out / 'metrics.csv'}{teacher}")
    return 0


def cmd_evaluate(args) -> int:
    """Accuracy, per-class accuracy and confusion matrix of MODEL on a test set."""
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    from mobile_lenet.apps.evaluation import evaluate, format_report
    from mobile_lenet.engines.registry import check_engine
    from mobile_lenet.formats.model_files import load_model

    model = load_model(args.model)
    engine = check_engine(model, args.engine)
    test_set = _load_images(args, args.split)
    if args.limit is not None:
        test_set.images, test_set.labels = test_set.images[:args.limit], test_set.labels[:args.limit]
    result = evaluate(model, test_set, engine)
    print(json.dumps(result) if args.json else format_report(result))
    return 0


def cmd_predict(args) -> int:
    """Classify image files (PNG/JPEG, any size) with a float or int8 model."""
    from mobile_lenet.engines.reference import softmax
    from mobile_lenet.engines.registry import check_engine, member_images, real_logits
    from mobile_lenet.formats.model_files import load_model
    from mobile_lenet.model.images import load_digit

    model = load_model(args.model)
    engine = check_engine(model, args.engine)
    # MNIST-style 28x28 first, then the member's input size with training's resize (nothing to do for 28x28)
    images = member_images(model, np.stack([load_digit(p, invert=args.invert) for p in args.images]))
    probs = softmax(real_logits(model, images, engine))
    for path, p in zip(args.images, probs):
        if args.json:
            print(json.dumps({"image": str(path), "digit": int(p.argmax()), "probabilities": p.tolist()}))
        else:
            top = " ".join(f"{d}:{p[d]:.3f}" for d in np.argsort(-p)[:3])
            print(f"{path}: {int(p.argmax())} (p={p.max():.4f}; top {top})")
    return 0


def cmd_export(args) -> int:
    """Export MODEL as Noodle weight files, ONNX, a C library or a PlatformIO project."""
    # --int8 takes a quantized model folder (mobile-lenet quantize); without it MODEL holds float weights
    check_writable_folder(args.out)
    from mobile_lenet.apps.export import export
    from mobile_lenet.formats.int8_folder import load_quantized
    from mobile_lenet.formats.model_files import load_float_model

    model = load_quantized(args.model) if args.int8 else load_float_model(args.model)[0]  # each knows its member
    written = export(model, args.format, args.out, layout=args.layout, schedule=args.schedule)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_import(args) -> int:
    """Convert a folder of Noodle files or a Keras .keras file into a checkpoint."""
    if Path(args.out).is_dir():
        raise UserError(f"{args.out}: is a folder; --out names the checkpoint file to write")
    check_writable_file(args.out)
    from mobile_lenet.formats.model_files import load_float_model
    from mobile_lenet.model.checkpoints import read_checkpoint, save_checkpoint
    from mobile_lenet.model.network import from_noodle

    if Path(args.out).exists() or Path(args.out).is_symlink():  # replace only a checkpoint, never another file
        if not Path(args.out).is_file():
            raise UserError(f"{args.out}: exists and is not a file; --out names the checkpoint file to write")
        try:
            read_checkpoint(args.out)
        except UserError:
            raise UserError(f"{args.out}: exists and is not a mobile-lenet checkpoint; choose another --out") from None
    tensors, arch = load_float_model(args.source)
    save_checkpoint(args.out, from_noodle(tensors, arch), imported_from=str(args.source))
    print(f"wrote {args.out}")
    return 0


def cmd_quantize(args) -> int:
    """Quantize MODEL to int8 (BatchNorm folded, calibrated on training images) into a model folder."""
    if args.calibration_count < 1:
        raise UserError("--calibration-count must be at least 1")
    from mobile_lenet.apps.quantization import quantize_source

    qmodel = quantize_source(args.model, args.calibration_data, args.data_dir, args.calibration_count, args.out,
                             log=_note)
    print(f"wrote {args.out}: {len(qmodel.layers)} int8 layers, calibrated on "
          f"{qmodel.metadata['calibration']['count']} training images of {qmodel.metadata['calibration']['dataset']}")
    return 0


def cmd_pipeline(args) -> int:
    """The main job: train, evaluate, quantize, simulate on the microcontrollers, export, report, in one folder."""
    arch = architecture_from_args(args)
    check_config(TrainConfig(epochs=args.epochs, seed=args.seed, architecture=arch.to_dict()))
    check_writable_folder(args.out)
    from mobile_lenet.apps.pipeline import run_pipeline

    run_pipeline(out=Path(args.out), dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
                 seed=args.seed, progress=not args.quiet, arch=arch)
    return 0


def _check_count_and_timeout(args) -> None:
    """--count and --timeout of the verbs that talk to a device (a board or a simulator)."""
    if args.count < 1:
        raise UserError("--count must be at least 1")
    if not math.isfinite(args.timeout) or not 0 < args.timeout <= device.MAX_TIMEOUT_S:
        raise UserError(f"--timeout must be a number of seconds above 0 and at most {device.MAX_TIMEOUT_S:g}, "
                        f"not {args.timeout:g}")


def cmd_device(args) -> int:
    """Classify test images on a board running the exported firmware: accuracy and on-device latency."""
    _check_count_and_timeout(args)
    if not math.isfinite(args.rotate):
        raise UserError(f"--rotate must be a finite number of degrees, not {args.rotate:g}")
    model = None
    if args.model:  # the board's model: its member's input size is what the board reads
        from mobile_lenet.engines.registry import logits, member_images
        from mobile_lenet.formats.model_files import load_model

        model = load_model(args.model)
    test_set = _load_images(args, "test")
    images, labels = device.rotate_images(test_set.images[:args.count], args.rotate), test_set.labels[:args.count]
    if model is not None:
        images = member_images(model, images)
    with device.DeviceLink.open(args.port, timeout=args.timeout) as link:
        link.image_size = images.shape[1]
        result = device.run_on_device(link, images, labels, progress=not args.quiet and not args.json)
    if model is not None:
        host_digits = logits(model, images, "reference").argmax(axis=1)
        result.update(agreement=int((host_digits == result["predictions"]).sum()), agreement_engine="reference")
    result.update(dataset=test_set.name, rotate=args.rotate)
    print(json.dumps(result) if args.json else device.format_report(result))
    return 0


def cmd_simulate(args) -> int:
    """Build MODEL's firmware for a microcontroller, run it in a simulator and measure it."""
    _check_count_and_timeout(args)
    get_target(args.target)
    from mobile_lenet.formats.model_files import load_model

    model = load_model(args.model)
    for flag, wanted in (("--layers", args.layers), ("--profile", args.profile)):
        if wanted:
            simulate.check_whole_maps(model, args.target, flag)  # before anything is built
    test_set = _load_images(args, "test")
    images, labels = test_set.images[:args.count], test_set.labels[:args.count]
    report = simulate.simulate(model, args.target, images, labels, external_ram=args.xmem, timeout=args.timeout,
                               progress=not args.quiet and not args.json)
    report["dataset"] = test_set.name
    text = [simulate.format_report(report)]
    if args.profile:  # per-layer cost, beside the summary
        report["profile"] = simulate.profile_layers(model, args.target, images, labels,
                                                    report[f"{report['counts']}_per_image"]["mean"],
                                                    external_ram=args.xmem, timeout=args.timeout)
        text += ["", f"per layer (mean of {len(images)} images):", simulate.format_profile(report["profile"])]
    if args.layers:  # the layer debugger on the first test image
        report["layers"] = simulate.trace_layers(model, args.target, test_set.images[0], external_ram=args.xmem)
        text += ["", "layer debugger (first test image):", simulate.format_layers(report["layers"])]
    print(json.dumps(report) if args.json else "\n".join(text))
    return 0


def cmd_report(args) -> int:
    """Write an HTML report of a training run: curves, confusion matrix, mistakes, costs, feature maps."""
    from mobile_lenet.apps.report import build_report

    html_path = build_report(args.run_dir, dataset=args.dataset, data_dir=args.data_dir, out=args.out,
                             limit=args.limit)
    print(f"wrote {html_path}")
    return 0


def cmd_search(args) -> int:
    """Search the family and the recipe for a target: the Pareto front of validation accuracy and latency; with
    --export, the main job for one of the search's trials."""
    if args.export is not None:
        return _search_export(args)
    if args.export_out is not None or args.export_epochs is not None:
        raise UserError(f"{'--export-out' if args.export_out is not None else '--export-epochs'} needs --export TRIAL")
    if args.target is None:
        raise UserError("search needs --target (or --export TRIAL to use a finished search)")
    from mobile_lenet.apps.search import search

    result = search(args.target, args.out, trials=20 if args.trials is None else args.trials,
                    timeout_min=args.timeout, dataset=args.dataset, data_dir=args.data_dir, storage=args.storage,
                    study_name=DEFAULT_STUDY if args.study is None else args.study,
                    workers=1 if args.workers is None else args.workers, epochs=args.epochs)
    print(f"{sum(result['trials'].values())} trials ({result['trials']['complete']} trained, "
          f"{result['trials']['pruned']} pruned): {len(result['front'])} on the front; wrote "
          f"{Path(args.out) / 'front.json'} and {Path(args.out) / 'report.html'}")
    return 0


def _search_export(args) -> int:
    """``search --out DIR --export TRIAL``: the main job for a trial of the finished search in DIR."""
    from mobile_lenet.apps.search import export_trial, read_front

    # the search's own settings decide the data and target: a flag that would run or change a search is a mistake
    search_flags = {"--trials": args.trials, "--timeout": args.timeout, "--storage": args.storage,
                    "--study": args.study, "--workers": args.workers, "--epochs": args.epochs,
                    "--data-dir": args.data_dir, "--dataset": None if args.dataset == "auto" else args.dataset}
    given = [flag for flag, value in search_flags.items() if value is not None]
    if given:
        raise UserError(f"--export uses the search's own settings (search.json); drop {', '.join(given)}")
    target = read_front(args.out)["settings"]["target"]
    if args.target is not None and args.target != target:
        raise UserError(f"{args.out}: is a search for {target}, not {args.target}")
    record, run, result = export_trial(args.out, args.export, args.export_out, progress=not args.quiet,
                                       epochs=args.export_epochs)
    print(f"trial {record['trial']}: the main job's run is {run} (test accuracy {100 * result['accuracy']:.2f}%)")
    return 0


def cmd_demo(args) -> int:
    """Serve the browser demo: draw a digit, see the probabilities and the activations of each stage."""
    from mobile_lenet.apps.demo import serve

    serve(model=args.model, host=args.host, port=args.port)
    return 0


# ------------------------------------------------------------------------------------------------ parser
class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors (a bad flag or value) are one line, like every other error."""

    def error(self, message: str):
        verb = self.prog.partition(" ")[2]  # "mobile-lenet evaluate" -> "evaluate"
        raise UserError(f"{verb}: {message}" if verb else message)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()

    parser = OneLineErrorParser(prog="mobile-lenet", description="Mobile-LeNet from training to microcontroller.")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("summary", help="print the architecture table with parameters and MACs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--memory", action="store_true", help="flash and RAM of the microcontroller plan")
    p.add_argument("--int8", action="store_true", help="with --memory: the int8 plan next to float")
    p.add_argument("--target", choices=tuple(TARGETS), help="with --memory --int8: the int8 schedule the firmware of "
                                                           "this microcontroller uses (atmega2560: row by row)")
    _architecture_args(p)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train a model into a run folder")
    _dataset_args(p)
    p.add_argument("--out", required=True, help="run folder (config.json, metrics.csv, best.pt, last.pt)")
    p.add_argument("--epochs", type=int, help=f"number of epochs (default {defaults.epochs})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {defaults.batch_size}; "
                   f"{SMALL_SET_BATCH_SIZE} for a training set under {SMALL_TRAINING_SET:,} images)")
    p.add_argument("--lr", type=float, help=f"peak learning rate of the one-cycle schedule (default {defaults.lr:g})")
    p.add_argument("--seed", type=int, help="random seed (default 0); same seed, same weights")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help="random affine distortions of the training digits (default on)")
    p.add_argument("--elastic", type=float, help=f"elastic distortion strength in pixels, 0 = off "
                                                 f"(default {defaults.elastic:g}; needs --augment)")
    p.add_argument("--ema-decay", type=float, help=f"average the weights with this decay per step, 0 = off "
                                                   f"(default {defaults.ema_decay:g})")
    p.add_argument("--label-smoothing", type=float, help=f"label smoothing (default {defaults.label_smoothing:g})")
    p.add_argument("--distill-epochs", type=int, help="first train a larger teacher network this many epochs on the "
                                                      "same images, then learn from its predictions too; 0 = off "
                                                      f"(default {defaults.distill_epochs})")
    _architecture_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy and confusion matrix of a model on a test set")
    p.add_argument("model", help="checkpoint (.pt), run folder, folder of Noodle files, .keras file, or a "
                                 "quantized model folder (mobile-lenet quantize)")
    _dataset_args(p)
    p.add_argument("--split", default="test", choices=("train", "test"), help="which split (default test)")
    p.add_argument("--engine", choices=ENGINES, help="torch (default), reference (NumPy) or c (generated C on the "
                                                     "host); a quantized model: reference (default, integer NumPy) "
                                                     "or c (int8 C)")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify PNG/JPEG images of digits")
    p.add_argument("model", help="checkpoint (.pt), run folder, folder of Noodle files, .keras file or a quantized "
                                 "model folder (mobile-lenet quantize)")
    p.add_argument("images", nargs="+", help="image files, any size: made MNIST-style 28x28, then resized to the "
                                             "model's input size as training resizes its images")
    p.add_argument("--invert", default="auto", choices=("auto", "yes", "no"),
                   help="dark digit on light background? auto looks at the border (default)")
    p.add_argument("--engine", choices=ENGINES, help="torch (default), reference or c; a quantized model: "
                                                     "reference (default, integer NumPy) or c (int8 C)")
    p.add_argument("--json", action="store_true", help="one JSON line per image")
    p.set_defaults(func=cmd_predict)


    p = sub.add_parser("export", help="export a model: Noodle weight files, ONNX, C library or PlatformIO project")
    p.add_argument("model", help="checkpoint (.pt), run folder, folder of Noodle files or .keras file")
    p.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="what to write")
    p.add_argument("--layout", choices=("standard", "mega2560"), default="standard",
                   help="noodle: the seed's files (standard), or upstream's Arduino Mega 2560 example (mega2560: a "
                        "16x16 model, BatchNorm folded, PROGMEM headers)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--int8", action="store_true", help="int8 C (formats c and platformio); MODEL is then a "
                                                       "quantized model folder (mobile-lenet quantize)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help=f"with --format c --int8: buffers (default; whole feature maps, {int8_plan().ram_bytes:,} bytes "
                        f"of activations) or rows (row by row, {row_plan().ram_bytes:,} bytes: fits 8 KB chips such "
                        f"as the ATmega2560)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="convert a folder of Noodle files or a .keras file into a checkpoint")
    p.add_argument("source", help="folder of Noodle files (.txt, .bin or .h) or Keras .keras file")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.set_defaults(func=cmd_import)


    p = sub.add_parser("quantize", help="int8 quantization: fold BatchNorm, calibrate on training images")
    p.add_argument("model", help="checkpoint (.pt), run folder, folder of Noodle files or .keras file")
    p.add_argument("--calibration-data", default="auto", choices=("auto",) + DATASETS,
                   help="data set whose TRAINING images calibrate the activation ranges (default auto: mnist when "
                        "at hand or downloadable, else the bundled mnist-sample)")
    p.add_argument("--data-dir", help="folder with the data set's files (overrides the download)")
    p.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT,
                   help=f"training images used (default {DEFAULT_CALIBRATION_COUNT}, drawn with a fixed seed)")
    p.add_argument("--out", required=True, help="output folder (int8_tensors.npz and manifest.json)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("pipeline", help="the main job: train, evaluate, quantize, simulate, export and "
                                                  "report into one folder")
    _dataset_args(p)
    p.add_argument("--out", default="runs/main", help="output folder (default runs/main)")
    p.add_argument("--epochs", type=int, default=defaults.epochs, help=f"training epochs (default {defaults.epochs})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _architecture_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("device", help="classify test images on a board over its serial port")
    p.add_argument("--port", required=True, help="serial port of the board, e.g. /dev/ttyUSB0 or COM3")
    _dataset_args(p)
    p.add_argument("--count", type=int, default=100, help="number of test images to send (default 100)")
    p.add_argument("--rotate", type=float, default=0.0, help="rotate the images by DEG degrees first (default 0)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for READY or a reply (default 5)")
    p.add_argument("--model", help="the board's model: its images go at the model's input size (without it, 28x28, "
                                   "the seed's); also classify them on the host with MODEL (reference engine) and "
                                   "report how often the board agrees")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_device)

    p = sub.add_parser("simulate", help="build the firmware for a microcontroller and measure it in a simulator")
    p.add_argument("model", help="checkpoint (.pt), run folder, Noodle folder, .keras file or quantized model folder")
    p.add_argument("--target", required=True, choices=tuple(TARGETS),
                   help="cortex-m0plus (RP2040-class, QEMU), cortex-m4f (STM32F4-class, QEMU), esp32 (Xtensa, QEMU) "
                        "or atmega2560 "
                        "(8 KB SRAM, simavr)")
    _dataset_args(p)
    p.add_argument("--count", type=int, default=10, help="test images to classify in the simulator (default 10)")
    p.add_argument("--layers", action="store_true", help="also the layer debugger: every layer's output for the "
                                                         "first test image, firmware vs host C vs reference engine")
    p.add_argument("--profile", action="store_true", help="also the cost of each layer on the chip: instructions "
                                                          "(cycles on the AVR) between marks after every layer")
    p.add_argument("--xmem", action="store_true", help="atmega2560: link for 64 KB of external SRAM (XMEM "
                                                       "interface; simavr adds no wait states)")
    p.add_argument("--timeout", type=float, default=simulate.REPLY_TIMEOUT_S,
                   help=f"seconds to wait for each reply (default {simulate.REPLY_TIMEOUT_S:g})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("report", help="HTML report of a training run, with plots")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (config.json, metrics.csv, best.pt)")
    p.add_argument("--dataset", choices=DATASETS, help="test set to evaluate on (default: the run's)")
    p.add_argument("--data-dir", help="folder with the test files (default: the run's)")
    p.add_argument("--out", help="HTML file to write; the PNGs go beside it (default RUN_DIR/report/index.html)")
    p.add_argument("--limit", type=int, help="only the first N test images (quicker)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("search", help="search members and recipes for a target: the front of validation accuracy "
                                      "and latency (Optuna)")
    p.add_argument("--target", help=f"microcontroller: {', '.join(TARGETS)} (required, except with --export)")
    p.add_argument("--out", required=True, help="run folder (search.json, study.db, trials/, front.json, report.html)")
    p.add_argument("--trials", type=int, help="finished trials the study should hold (default 20)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many minutes")
    _dataset_args(p)
    p.add_argument("--storage", help="Optuna RDB storage URL shared by workers on many machines, e.g. "
                                     "postgresql://user:password@host/db (default: DIR/study.db, SQLite)")
    p.add_argument("--study", help=f"study name in the storage (default {DEFAULT_STUDY})")
    p.add_argument("--workers", type=int, help="trial processes on this machine (default 1)")
    p.add_argument("--epochs", type=int, help="train every trial this many epochs (default: searched)")
    p.add_argument("--export", metavar="TRIAL", help="run the main job (pipeline) for a trial of the finished search "
                                                     "in --out: its number, or 'best' (the front's most accurate)")
    p.add_argument("--export-out", metavar="RUN", help="the main job's folder with --export (default "
                                                       "DIR/export-NNNN)")
    p.add_argument("--export-epochs", type=int, metavar="N", help="with --export, train the trial's member and "
                                                                   "recipe N epochs (default: the trial's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars (with --export)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("demo", help="browser demo: draw a digit and watch the network classify it")
    p.add_argument("--model", help="checkpoint, run folder, Noodle folder, .keras file or quantized model folder "
                                   "(default runs/main)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    stdout, sys.stdout = sys.stdout, GuardedOutput(sys.stdout)
    try:
        args = parser.parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # here, where a full stdout can still be reported
        return code
    except UserError as e:
        print(f"mobile-lenet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mobile-lenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        silence(stdout)
        return 141
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"mobile-lenet: error: {where}{USER_OS_ERRORS[e.errno]} ({e.strerror})", file=sys.stderr)
        return 2
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
