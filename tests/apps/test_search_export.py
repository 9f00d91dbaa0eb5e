"""``mobile-lenet search`` on the ATmega2560 (8 KB of SRAM): members whose int8 row plan does not fit the chip are
pruned before any training, and ``search --export`` runs the main job for a trial of a finished search.

One small search serves every test: a study whose first trials are queued (Optuna's ``enqueue_trial``) so that two
are too wide for the chip and one fits, with a recipe other than the default; only that one trains (1 epoch on
1,000 images of the bundled sample)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
import pytest

from mobile_lenet import spec
from mobile_lenet.apps import search
from mobile_lenet.apps.cli import main
from mobile_lenet.codegen.mcu_firmware import TARGETS
from mobile_lenet.codegen.memory import row_plan
from mobile_lenet.model.checkpoints import read_checkpoint
from mobile_lenet.model.data import load_sample

from conftest import write_idx_set

TARGET = "atmega2560"
EPOCHS = 1
# queued first: the seed's member with a recipe other than the default, then the two widest members at 28x28
# and 24x24, whose activations alone take more than the chip's 8 KB
SEED_STRIDES = search.STRIDES[0]  # the seed's, as the search writes them
QUEUED = [{"width": 1.0, "input_size": 28, "strides": SEED_STRIDES, "lr": 0.005, "augment": False},
          {"width": 2.0, "input_size": 28, "strides": SEED_STRIDES, "lr": 0.01, "augment": True, "elastic": 1.0},
          {"width": 2.0, "input_size": 24, "strides": SEED_STRIDES, "lr": 0.01, "augment": False}]
SIMULATORS = ("avr-gcc", "simavr", "arm-none-eabi-gcc", "qemu-system-arm", "clang-22", "qemu-system-xtensa")


def does_not_fit(width: float, input_size: int, strides: str = SEED_STRIDES) -> bool:
    """The member's int8 row plan (the ATmega2560 firmware's) against the chip's flash and SRAM."""
    plan = row_plan(spec.Architecture.from_options(width, None, input_size, strides))
    return plan.ram_bytes > TARGETS[TARGET].ram_bytes or plan.flash_bytes > TARGETS[TARGET].flash_bytes


@pytest.fixture(scope="module")
def mega_search(tmp_path_factory):
    """A finished 3-trial search for the ATmega2560 (the queued trials), its study in a SQLite file of its own, on
    a data folder of 1,000 training and 200 test images of the bundled sample (a short training and report)."""
    base = tmp_path_factory.mktemp("mega")
    data = base / "data"
    for split, count, prefix in (("train", 1000, "train"), ("test", 200, "t10k")):
        images = load_sample(split)
        write_idx_set(data, images.images[:count], images.labels[:count], prefix)
    url = f"sqlite:///{base / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="mega", directions=["maximize", "minimize"])
    # records the settings, as a search creating the study does
    search.check_settings(study, search.Settings(TARGET, "mnist", os.path.realpath(data), EPOCHS), "mega")
    for params in QUEUED:
        study.enqueue_trial(params)
    out = base / "search"
    assert main(["search", *search_flags(data), "--trials", "3", "--storage", url, "--study", "mega",
                 "--out", str(out)]) == 0
    return out, url, data


def search_flags(data: Path, epochs: int = EPOCHS) -> list[str]:
    """The search's target, data and epochs as flags."""
    return ["--target", TARGET, "--dataset", "mnist", "--data-dir", str(data), "--epochs", str(epochs)]


def test_members_that_do_not_fit_are_pruned_untrained(mega_search):
    out, url, _ = mega_search
    study = optuna.load_study(study_name="mega", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3
    states = {t.number: t.state for t in trials}
    pruned = {n for n, state in states.items() if state == optuna.trial.TrialState.PRUNED}
    expected = {t.number for t in trials if does_not_fit(t.params["width"], t.params["input_size"],
                                                         t.params["strides"])}
    assert pruned == expected == {1, 2}
    assert states[0] == optuna.trial.TrialState.COMPLETE
    # none of the pruned ones trained or was simulated: no run folder, no latency
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000"]
    for n in pruned:
        assert "latency_ms" not in trials[n].user_attrs and "run" not in trials[n].user_attrs
    front = json.loads((out / "front.json").read_text())
    assert front["trials"]["pruned"] == 2 and [p["trial"] for p in front["complete"]] == [0]


def test_the_prune_rule_over_the_whole_search_space():
    """Every member of the search space against the row plan: one that does not fit is pruned before the trial
    touches its training images; one that fits gets past the check to them."""
    class NotToBeRead:
        @property
        def images(self):
            raise LookupError("reached the training images")

    outcomes = {}
    space = [(w, s, t) for w in search.WIDTHS for s in search.INPUT_SIZES for t in search.STRIDES]
    for width, size, strides in space:
        trial = optuna.trial.FixedTrial({"width": width, "input_size": size, "strides": strides, "lr": 0.01,
                                         "augment": False})
        try:
            search.objective(trial, search.Settings(TARGET, "mnist-sample", None, EPOCHS), Path("/nonexistent"),
                             NotToBeRead())
        except optuna.TrialPruned:
            outcomes[width, size, strides] = "pruned"
        except LookupError:
            outcomes[width, size, strides] = "kept"
    assert outcomes == {member: "pruned" if does_not_fit(*member) else "kept" for member in space}
    assert "pruned" in outcomes.values() and "kept" in outcomes.values()


def test_a_member_whose_firmware_does_not_fit_is_pruned_untrained(tmp_path):
    """Width 1.5 at 28x28 fits the ATmega2560 by its row plan (activations only) but its firmware does not (the
    stack runs into the static data, seen in simavr when the latency is measured): pruned, with that reason,
    before any training."""
    arch = spec.Architecture.from_options(1.5, None, 28)
    assert not does_not_fit(1.5, 28)  # the plan alone would keep it
    trial = optuna.trial.FixedTrial({"width": 1.5, "input_size": 28, "strides": SEED_STRIDES, "lr": 0.01,
                                     "augment": False})
    train_set = load_sample("train")
    with pytest.raises(optuna.TrialPruned, match="stack ran into the static data"):
        search.objective(trial, search.Settings(TARGET, "mnist-sample", None, EPOCHS), tmp_path, train_set)
    assert not (tmp_path / "trials").exists() and arch.channels == (12, 12, 12, 24, 24, 36, 36)


@pytest.fixture(scope="module")
def exported(mega_search, tmp_path_factory):
    """``search --export best`` of the finished search, its microcontroller step skipped (no simulators on the
    PATH here: the main job's own tests run them) to keep it short."""
    out, _, _ = mega_search
    real_which = shutil.which
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shutil, "which", lambda name, *a, **k: None if name in SIMULATORS else real_which(name, *a, **k))
        assert main(["search", "--out", str(out), "--export", "best", "--quiet"]) == 0
    return out, out / "export-0000", mega_search[2]


def test_export_best_runs_the_main_job_for_that_trial(exported):
    from mobile_lenet.engines.reference import reference_logits
    from mobile_lenet.formats.model_files import load_tensors
    from mobile_lenet.model.data import load_dataset

    out, run, data = exported
    front = json.loads((out / "front.json").read_text())
    best = max(front["front"], key=lambda r: r["val_accuracy"])  # the only trained trial here
    config = json.loads((run / "config.json").read_text())
    params = best["params"]
    assert config["architecture"] == best["architecture"]
    assert (config["lr"], config["augment"], config["elastic"], config["epochs"], config["seed"]) == \
           (params["lr"], params["augment"], params["elastic"], params["epochs"], 0) == (0.005, False, 0.0, 1, 0)
    # trained again on the same images, split, seed and recipe: the trial's own run, epoch for epoch
    assert read_checkpoint(run / "best.pt")["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)
    assert read_checkpoint(run / "best.pt")["architecture"] == best["architecture"]
    # the main job's evaluation is on the test split, checked with the NumPy reference engine
    test_set = load_dataset("mnist", "test", str(data))
    predicted = reference_logits(load_tensors(run / "best.pt"), test_set.images).argmax(axis=1)
    result = json.loads((run / "evaluation.json").read_text())
    assert result["accuracy"] == float((predicted == test_set.labels).mean())
    for path in ("int8/manifest.json", "noodle/w01.txt", "c-int8/mobile_lenet.c", "report/index.html"):
        assert (run / path).is_file(), path


def test_export_epochs_trains_the_pick_longer_into_its_own_folder(mega_search, exported):
    """--export-epochs: the trial's member and recipe, trained that many epochs (the metrics have one row per
    epoch), beside the plain export (which stays as it is)."""
    out, plain, _ = exported
    before = _snapshot(plain)
    real_which = shutil.which
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shutil, "which", lambda name, *a, **k: None if name in SIMULATORS else real_which(name, *a, **k))
        assert main(["search", "--out", str(out), "--export", "0", "--export-epochs", "2", "--quiet"]) == 0
    run = out / "export-0000-2-epochs"
    config = json.loads((run / "config.json").read_text())
    trial = json.loads((out / "front.json").read_text())["complete"][0]
    assert config["epochs"] == 2 != trial["params"]["epochs"]
    assert (config["lr"], config["augment"], config["architecture"]) == \
           (trial["params"]["lr"], trial["params"]["augment"], trial["architecture"])
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 2  # header, two epochs
    assert (run / "evaluation.json").is_file() and _snapshot(plain) == before


def test_export_picks_the_most_accurate_front_member():
    front = {"front": [{"trial": 3, "val_accuracy": 0.91, "latency_ms": 9.0},
                       {"trial": 5, "val_accuracy": 0.97, "latency_ms": 30.0},
                       {"trial": 1, "val_accuracy": 0.95, "latency_ms": 12.0}],
             "complete": []}
    best = max(front["front"], key=lambda r: r["val_accuracy"])
    assert search.pick_trial(front, "best") is best


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra, message", [
    (["--export", "7"], "trial 7 is not a trained trial of this search (those are: 0)"),
    (["--export", "1"], "trial 1 is not a trained trial"),  # pruned
    (["--export", "two"], "--export takes a trial number or 'best'"),
    (["--export", "0", "--target", "cortex-m4f"], "is a search for atmega2560, not cortex-m4f"),
    (["--export", "0", "--trials", "5"], "drop --trials"),
    (["--export-out", "x"], "--export-out needs --export"),
    (["--export-epochs", "3"], "--export-epochs needs --export"),
    (["--export", "0", "--export-epochs", "0"], "--export-epochs must be a whole number from 1"),
])
def test_bad_export_input_is_one_line_and_writes_nothing(mega_search, capsys, extra, message):
    out, _, _ = mega_search
    before = _snapshot(out)
    assert main(["search", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert _snapshot(out) == before


def test_export_needs_a_finished_search(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("user's file")
    assert main(["search", "--out", str(tmp_path), "--export", "best"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no front.json" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_export_never_writes_into_another_run_or_the_users_files(mega_search, tmp_path, capsys):
    from mobile_lenet.model.config import TrainConfig, write_config

    out, _, _ = mega_search
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    other = tmp_path / "other"
    write_config(other, TrainConfig(dataset="mnist-sample", epochs=3))
    for folder, message in ((users, "is not empty and holds no run"), (other, "holds another run (epochs 3")):
        before = _snapshot(folder)
        assert main(["search", "--out", str(out), "--export", "0", "--export-out", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
        assert _snapshot(folder) == before


def test_a_study_with_other_settings_in_a_shared_storage_writes_nothing(mega_search, tmp_path, capsys):
    """With --storage the study is checked before --out is created: other settings are refused, naming them."""
    _, url, data = mega_search
    trials_before = len(optuna.load_study(study_name="mega", storage=url).get_trials(deepcopy=False))
    new = tmp_path / "new"
    assert main(["search", *search_flags(data, epochs=2), "--storage", url, "--study", "mega",
                 "--out", str(new)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epochs 1 (now 2)" in err
    assert not new.exists()
    assert len(optuna.load_study(study_name="mega", storage=url).get_trials(deepcopy=False)) == trials_before
