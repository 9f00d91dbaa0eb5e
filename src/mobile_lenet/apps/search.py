"""``mobile-lenet search``: which family member, trained how, is the most accurate one that fits a chip and answers
in time. An Optuna study with two objectives, validation accuracy (up) and latency on the target (down).

Each trial draws a member (width multiplier, input size, where the two stride-2 blocks sit) and a recipe (epochs,
peak learning rate, augmentation); a member whose int8 memory plan (``codegen.memory``) does not fit the target's
flash or RAM is pruned before any training, and so is one whose firmware, simulated for its latency, does not fit
(the plan counts activations only: on the ATmega2560 width 1.5 at 28x28 fits its plan, but its stack runs into
the static data), judged with untrained weights. The latency is ``simulate``'s instruction or cycle count for one
image at the chip's clock of the int8 firmware of the trained member, quantized as ``mobile-lenet quantize`` does:
the kernels branch little on the image (the seed's network: 14 instructions apart over 4 images on the
Cortex-M4F), but the weights matter, and trained ones can send a layer to the generic requantization path (a
scale above three bytes; on the AVR also a -128 weight), which is slower and larger, so a trained member whose
firmware no longer fits is pruned then. Every member, whatever its input size, is measured so.

Storage: with no ``--storage`` the study is ``DIR/study.db`` (SQLite); any URL Optuna's RDB storage takes (e.g.
``postgresql://``) lets workers on many machines share one study. Each worker is the same command: it runs
trials until the study holds ``--trials`` finished ones, trains each into ``DIR/trials/NNNN/`` on its own machine,
and when it stops writes ``DIR/front.json`` and ``DIR/report.html`` from every trial of the study. Heartbeats
mark a trial whose worker died (Ctrl-C, kill -9, a lost machine) as failed and queue it again once; finished
trials are never lost or run twice.

``search --export TRIAL`` (a trial number, or ``best``: the front's most accurate member) runs the main job
(``apps.pipeline.run_pipeline``) for that trial's member and recipe on the search's data set, into
``DIR/export-NNNN`` or the folder the user names; ``--export-epochs N`` trains it N epochs instead of the trial's.
"""

from __future__ import annotations

import html
import json
import math
import multiprocessing
import os
import shlex
import socket
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from mobile_lenet import spec
from mobile_lenet.codegen.mcu_firmware import DoesNotFit, Target, get_target
from mobile_lenet.codegen.memory import int8_plan, row_plan
from mobile_lenet.errors import UserError
from mobile_lenet.files import atomic_write_text, check_writable_folder
from mobile_lenet.model.config import MAX_EPOCHS, default_batch_size

# The search space. Widths, input sizes and block strides are short lists, so every front member is a
# reproducible command.
WIDTHS = (0.5, 0.75, 1.0, 1.5, 2.0)
INPUT_SIZES = (16, 20, 24, 28)
# Where the seed's two stride-2 blocks sit: the seed's place, then earlier. The parameters stay; an earlier stride
# leaves more blocks on the smaller maps (at the seed's channels 452 k, 372 k, 313 k and 233 k MACs per image).
STRIDES = (",".join(map(str, spec.SEED_STRIDES)), "1,2,1,1,2,1", "1,2,1,2,1,1", "2,1,1,2,1,1")
EPOCHS = (5, 10, 20, 40)  # searched unless --epochs fixes them
LR_RANGE = (3e-3, 5e-2)  # peak learning rate of the one-cycle schedule, drawn log-uniformly
ELASTIC = (0.0, 1.0, 2.0)  # elastic distortion on top of the affine augmentation (pixels)
SEED_EPOCHS = 20  # the seed's trial when the epochs are searched (its default recipe is 60: too long to search)
DEFAULT_STUDY = "mobile-lenet-search"
SETTINGS_FILE = "search.json"  # marks DIR as a search folder; the settings the study was created with
HEARTBEAT_S, GRACE_S = 20, 60  # a running trial without a heartbeat for GRACE_S seconds failed (its worker died)
SETTINGS_WAIT_S = 30  # a worker joining a study just created waits this long for its creator's settings
SCHEMA_TRIES = 5  # workers started at once on an empty database race to create Optuna's tables


@dataclass(frozen=True)
class Settings:
    """What defines a study: a study created with other settings is refused (``check_settings``)."""

    target: str
    dataset: str
    data_dir: str | None
    epochs: int | None  # None: searched over EPOCHS
    space: str = "v1"  # the search space's version: a study made with another space is refused too


def storage_url(out: Path, storage: str | None) -> str:
    """The study's storage: ``--storage``, or SQLite in the run folder."""
    return storage if storage else f"sqlite:///{(out / 'study.db').resolve()}"


def _redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.split(':')[0]}:***@{host}" if at and ":" in credentials else url


def open_storage(url: str):
    """Optuna's RDB storage at ``url``, with heartbeats; one UserError when it cannot be opened."""
    import optuna

    # heartbeats and their retry callback are marked experimental; they are what makes a kill -9 recoverable
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    import sqlalchemy.exc

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(SCHEMA_TRIES):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
        except sqlalchemy.exc.IntegrityError as e:  # another worker is creating the tables: there next time
            if attempt == SCHEMA_TRIES - 1:
                raise _storage_error(url, e) from None
            time.sleep(1 + attempt)
        except Exception as e:  # SQLAlchemy's errors: a bad URL, a server that does not answer, a refused login
            raise _storage_error(url, e) from None


def _storage_error(url: str, e: Exception) -> UserError:
    """The one-line error of a storage that cannot be opened."""
    if isinstance(e, ImportError):  # the URL's database driver is missing (Optuna wraps the ModuleNotFoundError)
        name = getattr(e.__cause__, "name", None) or e.name or "its database driver"
        return UserError(f"--storage {_redacted(url)}: needs the Python package {name!r} (for PostgreSQL: "
                         f"pip install 'mobile-lenet[postgres]', which installs psycopg)")
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return UserError(f"cannot open the study storage {_redacted(url)} ({first})")


def check_settings(study, settings: Settings, name: str) -> None:
    """The study's settings are ``settings`` (recorded now if it is new); else one UserError naming what differs."""
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", asdict(settings))
        return
    differs = [f"{key} {saved.get(key)!r} (now {value!r})" for key, value in asdict(settings).items()
               if saved.get(key) != value]
    if differs:
        raise UserError(f"study {name!r} was created with other settings: {', '.join(differs)}; use the same "
                        f"--target/--dataset/--data-dir/--epochs, or another --study or --out")


# ------------------------------------------------------------------------------------------------ one trial
def memory_needs(arch: spec.Architecture, target: Target) -> dict:
    """Flash (int8 weights) and RAM (activations) of ``arch``'s int8 plan on ``target``, in bytes: the plan its
    firmware uses (whole buffers, or rows on the ATmega2560)."""
    plan = row_plan(arch) if target.int8_schedule == "rows" else int8_plan(arch)
    return {"flash_bytes": plan.flash_bytes, "ram_bytes": plan.ram_bytes}


def measure_latency(arch: spec.Architecture, target: Target, images, trained: Path | None = None) -> dict:
    """``simulate``'s count per image of ``arch``'s int8 firmware on ``target`` (one image): of the model in
    ``trained`` (a best.pt), quantized as ``mobile-lenet quantize`` does it (calibrated on training images), or
    with untrained weights (``trained`` None) to see whether the member fits before it is trained."""
    import numpy as np
    import torch

    from mobile_lenet.apps.simulate import simulate
    from mobile_lenet.formats.model_files import load_tensors
    from mobile_lenet.model.images import resize_digits
    from mobile_lenet.model.network import MobileLeNet, to_noodle
    from mobile_lenet.quantization.quantize import DEFAULT_CALIBRATION_COUNT, pick_calibration_images, quantize_model

    if trained is None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            tensors = to_noodle(MobileLeNet(arch).eval())
        calibration = resize_digits(images[:64], arch.input_size)
    else:
        tensors = load_tensors(trained)
        calibration = resize_digits(pick_calibration_images(images, DEFAULT_CALIBRATION_COUNT), arch.input_size)
    report = simulate(quantize_model(tensors, calibration, arch=arch), target.name, calibration[:1],
                      np.zeros(1, np.uint8), progress=False)
    return {"latency_ms": report["ms_per_image_at_clock"], "count": report[f"{target.counts}_per_image"]["mean"],
            "latency_source": f"simulate ({target.simulator}, {target.counts})",
            "firmware_flash_bytes": report["flash_bytes"], "firmware_static_ram_bytes": report["static_ram_bytes"]}


def trial_params(trial, settings: Settings) -> dict:
    """Draw one member and recipe."""
    params = {"width": trial.suggest_categorical("width", WIDTHS),
              "input_size": trial.suggest_categorical("input_size", INPUT_SIZES),
              "strides": trial.suggest_categorical("strides", STRIDES),
              "epochs": settings.epochs or trial.suggest_categorical("epochs", EPOCHS),
              "lr": float(f"{trial.suggest_float('lr', *LR_RANGE, log=True):.3g}"),  # a short, exact flag value
              "augment": trial.suggest_categorical("augment", (True, False))}
    params["elastic"] = trial.suggest_categorical("elastic", ELASTIC) if params["augment"] else 0.0
    return params


def train_command(params: dict, settings: Settings, out: str) -> str:
    """The ``mobile-lenet train`` command that trains exactly this trial's network (same data, seed and split)."""
    words = ["mobile-lenet", "train", "--dataset", settings.dataset]
    if settings.data_dir:
        words += ["--data-dir", settings.data_dir]
    words += ["--out", out, "--width", f"{params['width']:g}", "--input-size", str(params["input_size"])]
    if params["strides"] != STRIDES[0]:
        words += ["--strides", params["strides"]]
    words += ["--epochs", str(params["epochs"]), "--lr", f"{params['lr']:g}", "--seed", "0",
              "--augment" if params["augment"] else "--no-augment"]
    if params["elastic"]:
        words += ["--elastic", f"{params['elastic']:g}"]
    return shlex.join(words)


def objective(trial, settings: Settings, out: Path, train_set) -> tuple[float, float]:
    """Prune a member that does not fit, measure its latency, train it; (validation accuracy, latency in ms)."""
    import optuna

    from mobile_lenet.model.training import TrainConfig, train

    target = get_target(settings.target)
    params = trial_params(trial, settings)
    arch = spec.Architecture.from_options(params["width"], None, params["input_size"], params["strides"])
    needs = memory_needs(arch, target)
    trial.set_user_attr("params", params)
    trial.set_user_attr("architecture", arch.to_dict())
    trial.set_user_attr("parameters", spec.totals(arch)["total_params"])
    trial.set_user_attr("memory_plan", needs)
    if needs["flash_bytes"] > target.flash_bytes or needs["ram_bytes"] > target.ram_bytes:
        raise optuna.TrialPruned(f"does not fit {target.name}: {needs}")
    try:
        measure_latency(arch, target, train_set.images)  # untrained: is it worth training?
    except DoesNotFit as e:  # the plan fits, the firmware does not (on the AVR: the stack runs into static data)
        raise optuna.TrialPruned(str(e)) from None
    run = out / "trials" / f"{trial.number:04d}"
    config = TrainConfig(dataset=settings.dataset, data_dir=settings.data_dir, epochs=params["epochs"],
                         lr=params["lr"], augment=params["augment"], elastic=params["elastic"], seed=0,
                         architecture=arch.to_dict(), batch_size=default_batch_size(len(train_set)))  # as train
    train(config, train_set, run, progress=False, log=lambda _: None)
    trial.set_user_attr("run", str(run))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which machine holds its run folder
    trial.set_user_attr("command", train_command(params, settings, f"runs/trial-{trial.number:04d}"))
    try:  # the latency of what the user gets: the trained model, quantized as `quantize` does
        measured = measure_latency(arch, target, train_set.images, run / "best.pt")
    except DoesNotFit as e:  # its weights took a slower, larger path (generic requantization) than the untrained
        raise optuna.TrialPruned(f"trained, but {e}") from None
    for key, value in measured.items():
        trial.set_user_attr(key, value)
    accuracy = _best_val(run)
    print(f"trial {trial.number}: {arch.describe()}, epochs {params['epochs']}, lr {params['lr']:g}: "
          f"validation {100 * accuracy:.2f}%, {measured['latency_ms']:.2f} ms on {target.name}", flush=True)
    return accuracy, measured["latency_ms"]


def _best_val(run: Path) -> float:
    """best.pt's validation accuracy (the epoch the run keeps)."""
    from mobile_lenet.model.checkpoints import read_checkpoint

    return float(read_checkpoint(run / "best.pt").get("val_accuracy", float("nan")))


# ------------------------------------------------------------------------------------------------ workers
def _seed_params(settings: Settings) -> dict:
    """The seed's network and default recipe (epochs as searched or fixed): always the study's first trial."""
    params = {"width": 1.0, "input_size": 28, "strides": STRIDES[0], "lr": 2e-2, "augment": True, "elastic": 0.0}
    return params if settings.epochs else {**params, "epochs": SEED_EPOCHS}


def run_worker(settings: Settings, out: Path, url: str, study_name: str, trials: int, timeout_s: float | None) -> None:
    """One worker: runs trials of the study until it holds ``trials`` finished ones (or ``timeout_s`` passes)."""
    import optuna

    from mobile_lenet.model.data import load_dataset
    from mobile_lenet.model.training import set_threads

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    set_threads()
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    train_set = load_dataset(settings.dataset, "train", settings.data_dir)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=finished)) >= trials:
        return
    study.optimize(lambda trial: objective(trial, settings, out, train_set), n_trials=trials, timeout=timeout_s,
                   callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)], catch=(UserError,))


def _worker_process(*args) -> None:
    """A child process' worker (``--workers``): a UserError is its one line, like the CLI's."""
    try:
        run_worker(*args)
    except UserError as e:
        print(f"mobile-lenet: error: {e}", flush=True)
    except KeyboardInterrupt:
        pass


def search(target: str, out: str | os.PathLike, trials: int = 20, timeout_min: float | None = None,
           dataset: str = "mnist", data_dir: str | None = None, storage: str | None = None,
           study_name: str = DEFAULT_STUDY, workers: int = 1, epochs: int | None = None) -> dict:
    """``mobile-lenet search``: create or join the study, run ``workers`` worker processes here, then write
    ``out/front.json`` and ``out/report.html`` from every trial of the study; returns the front."""
    import optuna

    get_target(target)
    if trials < 1 or workers < 1:
        raise UserError("--trials and --workers must be at least 1")
    if timeout_min is not None and not (math.isfinite(timeout_min) and timeout_min > 0):
        raise UserError(f"--timeout must be a number of minutes above 0, not {timeout_min:g}")
    if epochs is not None and not 1 <= epochs <= 10_000:
        raise UserError(f"--epochs must be from 1 to 10,000, not {epochs}")
    out = Path(out)
    check_writable_folder(out)
    if out.is_dir() and any(out.iterdir()) and not (out / SETTINGS_FILE).is_file():
        raise UserError(f"{out}: is not empty and holds no search ({SETTINGS_FILE}); choose another --out")
    # "auto" is resolved once, here, and the study records what it became: a worker (or a later --export) on a
    # machine where it would resolve otherwise is then refused for its other settings, not trained on other data
    from mobile_lenet.model.data import resolve_dataset

    dataset = resolve_dataset(dataset, data_dir, log=lambda line: print(line, file=sys.stderr))
    settings = Settings(target, dataset, None if data_dir is None else os.path.realpath(data_dir), epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage:  # a remote storage is opened before anything is written here
        study = _create_study(open_storage(storage_url(out, storage)), study_name, settings)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, storage)
    if not storage:
        study = _create_study(open_storage(url), study_name, settings)
    atomic_write_text(out / SETTINGS_FILE, json.dumps({**asdict(settings), "study": study_name,
                                                       "storage": _redacted(url)}, indent=2) + "\n")
    args = (settings, out, url, study_name, trials, None if timeout_min is None else 60 * timeout_min)
    children = [multiprocessing.get_context("spawn").Process(target=_worker_process, args=args)
                for _ in range(workers - 1)]
    try:
        for child in children:
            child.start()
        run_worker(*args)
    finally:
        for child in children:
            child.join()
    return write_front(study, settings, out)


def _create_study(storage, name: str, settings: Settings):
    """The study ``name``, its settings checked. The worker that creates it records the settings and queues the
    seed's trial first; one that joins it waits for the settings (workers started at once on a new study)."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"])
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        for _ in range(SETTINGS_WAIT_S):
            if "settings" in study.user_attrs:
                break
            time.sleep(1)
        check_settings(study, settings, name)
        return study
    check_settings(study, settings, name)
    study.enqueue_trial(_seed_params(settings))
    return study


# ------------------------------------------------------------------------------------------------ results
def trial_record(trial) -> dict:
    """A finished trial as front.json lists it."""
    attrs = trial.user_attrs
    return {"trial": trial.number, "val_accuracy": trial.values[0], "latency_ms": trial.values[1],
            "latency_source": attrs.get("latency_source"), "count": attrs.get("count"), "params": attrs.get("params"),
            "architecture": attrs.get("architecture"), "parameters": attrs.get("parameters"),
            "memory_plan": attrs.get("memory_plan"), "firmware_flash_bytes": attrs.get("firmware_flash_bytes"),
            "firmware_static_ram_bytes": attrs.get("firmware_static_ram_bytes"), "run": attrs.get("run"),
            "worker": attrs.get("worker"),
            "command": attrs.get("command"), "seed_network": spec.Architecture.from_dict(attrs["architecture"]).is_seed}


def write_front(study, settings: Settings, out: Path) -> dict:
    """``out/front.json`` and ``out/report.html`` (with ``front.png``) from every trial of the study."""
    import optuna

    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == states.COMPLETE]
    front_numbers = {t.number for t in study.best_trials} if complete else set()
    front = sorted((trial_record(t) for t in complete if t.number in front_numbers), key=lambda r: r["latency_ms"])
    seed = next((trial_record(t) for t in complete
                 if spec.Architecture.from_dict(t.user_attrs["architecture"]).is_seed), None)
    result = {"study": study.study_name, "settings": asdict(settings),
              "objectives": ["validation accuracy (maximize)", f"latency ms on {settings.target} (minimize)"],
              "trials": {s.name.lower(): sum(t.state == s for t in trials) for s in states},
              "complete": [trial_record(t) for t in complete], "front": front, "seed": seed}
    atomic_write_text(out / "front.json", json.dumps(result, indent=2) + "\n")
    _plot(result, out / "front.png")
    atomic_write_text(out / "report.html", _report_html(result))
    return result


def _plot(result: dict, path: Path) -> None:
    """The Pareto plot: every finished trial, the front joined by a line, the seed's network marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    points = result["complete"]
    ax.scatter([p["latency_ms"] for p in points], [100 * p["val_accuracy"] for p in points], c="0.7", label="trial")
    front = result["front"]
    ax.plot([p["latency_ms"] for p in front], [100 * p["val_accuracy"] for p in front], "o-", c="tab:red",
            label="Pareto front")
    if result["seed"]:
        ax.scatter([result["seed"]["latency_ms"]], [100 * result["seed"]["val_accuracy"]], marker="*", s=250,
                   c="tab:blue", zorder=3, label="seed's network")
    ax.set_xlabel(f"latency on {result['settings']['target']} (ms per image, int8)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _report_html(result: dict) -> str:
    """The report page: the plot and the front's table, each row with the command that reproduces it."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{r['trial']}{' (seed)' if r['seed_network'] else ''}</td><td>{100 * r['val_accuracy']:.2f}%</td>"
        f"<td>{r['latency_ms']:.2f}</td><td>{e(r['latency_source'] or '')}</td>"
        f"<td>{e(spec.Architecture.from_dict(r['architecture']).describe())}</td><td>{r['parameters']:,}</td>"
        f"<td>{r['memory_plan']['flash_bytes']:,} / {r['memory_plan']['ram_bytes']:,}</td>"
        f"<td><code>{e(r['command'])}</code></td></tr>" for r in result["front"])
    counts = ", ".join(f"{n} {state}" for state, n in result["trials"].items() if n)
    s = result["settings"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Mobile-LeNet search: {e(s['target'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Search for {e(s['target'])}</h1>
<p>Study <code>{e(result['study'])}</code> on {e(s['dataset'])}: {e(counts)}. Accuracy is on held-out training
images (10% of the training split), never the test set; latency is the int8 firmware's per-image count at the
chip's clock.</p>
<figure><img src="front.png" alt="validation accuracy against latency"><figcaption>Validation accuracy against
latency; the star is the seed's network.</figcaption></figure>
<h2>Pareto front</h2>
<table><tr><th>trial</th><th>validation</th><th>ms</th><th>latency from</th><th>network</th><th>parameters</th>
<th>flash / RAM (int8 plan, bytes)</th><th>reproduce with</th></tr>{rows}</table>
</body></html>
"""


# ------------------------------------------------------------------------------------------------ export
BEST = "best"  # --export's name for the front's most accurate member
TRIAL_KEYS = ("trial", "val_accuracy", "latency_ms", "params", "architecture")  # what an export reads of a trial


def read_front(folder: str | os.PathLike) -> dict:
    """``folder/front.json`` of a search, checked enough to pick a trial from it; one UserError otherwise."""
    path = Path(folder) / "front.json"
    if not path.is_file():
        raise UserError(f"{folder}: holds no front.json (not a search folder, or no worker of its search has "
                        f"finished yet); run mobile-lenet search --out {folder} first")
    try:
        front = json.loads(path.read_text())
        settings = front["settings"]
        Settings(**settings)
        for record in front["complete"] + front["front"]:
            if any(key not in record for key in TRIAL_KEYS):
                raise KeyError(next(key for key in TRIAL_KEYS if key not in record))
            numbers = (record["trial"], record["val_accuracy"], record["latency_ms"])
            if not isinstance(record["trial"], int) or not all(isinstance(n, (int, float)) for n in numbers):
                raise ValueError(f"trial {record['trial']!r}: its number and objectives must be numbers")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"{path}: damaged or not written by mobile-lenet search ({type(e).__name__}: {e})") from None
    return front


def pick_trial(front: dict, choice: str) -> dict:
    """The finished trial ``choice`` names in ``front`` (``read_front``): its number, or ``best``, the front's most
    accurate member (ties: the faster, then the earlier trial). Every finished trial fits the target's flash and
    RAM (the others were pruned), and any of them may be picked, on the front or not."""
    if choice == BEST:
        if not front["front"]:
            raise UserError("the search has no trained trial yet, so no best one; run more trials")
        return min(front["front"], key=lambda r: (-r["val_accuracy"], r["latency_ms"], r["trial"]))
    try:
        number = int(choice)
    except ValueError:
        raise UserError(f"--export takes a trial number or {BEST!r}, not {choice!r}") from None
    for record in front["complete"]:
        if record["trial"] == number:
            return record
    known = ", ".join(str(r["trial"]) for r in sorted(front["complete"], key=lambda r: r["trial"])) or "none"
    raise UserError(f"trial {number} is not a trained trial of this search (those are: {known}); a pruned or "
                    f"failed trial has no model")


def export_trial(folder: str | os.PathLike, choice: str, out: str | os.PathLike | None = None,
                 progress: bool = True, log=print, epochs: int | None = None) -> tuple[dict, Path, dict]:
    """``search --export``: train the trial ``choice`` names (``pick_trial``) again exactly as the search did
    (same data set, its 10% validation split, seed 0, the trial's member and recipe; the test split plays no part
    in the choice) and run the main job on it into ``out`` (default ``folder/export-NNNN``). ``epochs`` trains
    that many epochs instead of the trial's (a search's short trials rank members; the pick may deserve more),
    by default into ``folder/export-NNNN-E-epochs``. Returns the trial's record, the run folder and the main
    job's evaluation."""
    from mobile_lenet.apps.pipeline import run_pipeline
    from mobile_lenet.model.config import read_config

    front = read_front(folder)
    record = pick_trial(front, choice)
    params = record["params"]
    arch = spec.Architecture.from_dict(record["architecture"], f"{Path(folder) / 'front.json'}: trial "
                                                              f"{record['trial']}")
    if epochs is not None and not (isinstance(epochs, int) and 1 <= epochs <= MAX_EPOCHS):
        raise UserError(f"--export-epochs must be a whole number from 1 to {MAX_EPOCHS:,}, not {epochs}")
    try:
        recipe = {"lr": params["lr"], "augment": params["augment"], "elastic": params["elastic"]}
        trial_epochs = params["epochs"]
    except (KeyError, TypeError):
        raise UserError(f"{Path(folder) / 'front.json'}: trial {record['trial']} has no complete recipe "
                        f"(params); it was not written by mobile-lenet search, or was edited") from None
    longer = epochs is not None and epochs != trial_epochs
    epochs = trial_epochs if epochs is None else epochs
    default_name = f"export-{record['trial']:04d}" + (f"-{epochs}-epochs" if longer else "")
    run = Path(out) if out is not None else Path(folder) / default_name
    check_writable_folder(run)
    if run.is_dir() and any(run.iterdir()) and not (run / "config.json").is_file():
        raise UserError(f"{run}: is not empty and holds no run; choose another --export-out")
    wanted = {"epochs": epochs, "seed": 0, "architecture": arch.to_dict(), **recipe}
    if (run / "config.json").is_file():  # the same export again resumes it; another run is never touched
        saved = asdict(read_config(run / "config.json"))
        differs = [f"{key} {saved[key]!r} (trial {record['trial']}: {value!r})" for key, value in wanted.items()
                   if saved[key] != value]
        if differs:
            raise UserError(f"{run}: holds another run ({', '.join(differs)}); choose another --export-out")
    on_front = any(r["trial"] == record["trial"] for r in front["front"])
    log(f"trial {record['trial']} ({'on the front' if on_front else 'not on the front'}): {arch.describe()}, "
        f"validation {100 * record['val_accuracy']:.2f}%, {record['latency_ms']:.2f} ms on "
        f"{front['settings']['target']}")
    settings = front["settings"]
    evaluation = run_pipeline(run, dataset=settings["dataset"], data_dir=settings["data_dir"],
                              epochs=epochs, seed=0, progress=progress, log=log, arch=arch,
                              recipe=recipe)
    return record, run, evaluation
