"""Every verb that writes survives a kill -9 at any moment (issue 24): its output is then the old one whole or the
new one whole, never half, and the next run leaves no temporary behind.

Each verb writes an "old" output, then a run that would write a different "new" one is killed with SIGKILL at a
random moment of its run (drawn over the length of an uninterrupted run, so some kills fall while it writes), and
the output is compared, byte for byte, with the old and the new one. Then the old output is written again
uninterrupted: the folder must then hold exactly the old output, no temporary (``.NAME.PID.mobile-lenet-*.tmp``)
and no parked folder. ``train`` keeps a run folder, not one output: ``tests/model/test_resume_after_kill.py`` kills
it at random moments and checks its files and what ``--resume`` makes of them. ``simulate`` writes no output of its
own, only its cache and a work folder; both are checked the same way.

Runs are forked from a zygote (``conftest.Zygote``) so they start at once and a kill lands where it was aimed. The
first kills of each verb run by default; the rest are marked slow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import Zygote, write_idx_set

FAST_KILLS = 3  # per verb, in every run of the suite
SLOW_KILLS = 2  # per verb, more, among the slow tests (CI runs them too: the suite must stay under 10 minutes)
SIMULATE_KILLS = 2  # a firmware build and a simulator start per kill
REPORT_KILLS = 2  # a report draws for about 10 s a run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two models (so the old and the new output differ), their Noodle folders, data and a finished run."""
    import torch

    from mobile_lenet.formats.noodle import write_noodle_folder
    from mobile_lenet.model.checkpoints import save_checkpoint
    from mobile_lenet.model.network import MobileLeNet, to_noodle

    root = tmp_path_factory.mktemp("kill-inputs")
    rng = np.random.default_rng(24)
    images, labels = rng.integers(0, 256, (120, 28, 28), dtype=np.uint8), np.arange(120, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        write_idx_set(root / "data", images, labels, prefix)
    for name, seed in (("old", 0), ("new", 1)):
        torch.manual_seed(seed)
        model = MobileLeNet().eval()
        save_checkpoint(root / f"{name}.pt", model)
        write_noodle_folder(to_noodle(model), root / f"{name}-noodle")
    run = root / "run"
    run.mkdir()
    shutil.copy(root / "old.pt", run / "best.pt")
    (run / "metrics.csv").write_text("epoch,train_loss,train_accuracy,val_loss,val_accuracy\n1,2.2,0.2,2.1,0.25\n"
                                     "2,1.9,0.35,1.8,0.4\n")
    (run / "config.json").write_text(f'{{"dataset": "mnist", "data_dir": "{root / "data"}"}}')
    return root


# verb -> (its command for the old or the new output, given the inputs and the case folder; what it writes there)
VERBS = {
    "quantize": (lambda a, which, case: ["quantize", a / f"{which}.pt", "--calibration-data", "mnist", "--data-dir",
                                         a / "data", "--calibration-count", "20", "--out", case / "out"]),
    "export-noodle": (lambda a, which, case: ["export", a / f"{which}.pt", "--format", "noodle", "--out",
                                              case / "out"]),
    "export-c": (lambda a, which, case: ["export", a / f"{which}.pt", "--format", "c", "--out", case / "out"]),
    "import": (lambda a, which, case: ["import", a / f"{which}-noodle", "--out", case / "model.pt"]),
    "report": (lambda a, which, case: ["report", a / "run", "--limit", "40" if which == "old" else "100", "--out",
                                       case / "index.html"]),
}


def contents(folder: Path) -> dict:
    """Every file under ``folder`` (hidden ones too) with a hash of its bytes."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def visible(snapshot: dict) -> dict:
    """What a reader of the output sees: the snapshot less the writers' hidden temporaries."""
    return {name: digest for name, digest in snapshot.items()
            if not any(part.startswith(".") and ".mobile-lenet-" in part for part in name.split("/"))}


def run_whole(zygote: Zygote, argv: list) -> float:
    """Run ``argv`` to its end; its duration in seconds."""
    started = time.monotonic()
    zygote.start(argv)
    status = zygote.wait()
    assert os.waitstatus_to_exitcode(status) == 0, argv
    return time.monotonic() - started


def kill_and_check(tmp_path: Path, inputs: Path, verb: str, kills: int, seed: int) -> list[str]:
    command = VERBS[verb]
    rng = np.random.default_rng(seed)
    zygote = Zygote()
    outcomes = []
    try:
        case = tmp_path / "case"
        case.mkdir()
        run_whole(zygote, command(inputs, "new", case))
        new = contents(case)
        shutil.rmtree(case)
        case.mkdir()
        duration = run_whole(zygote, command(inputs, "old", case))
        old = contents(case)
        assert old != new and old == visible(old) and new == visible(new)
        duration = max(duration, run_whole(zygote, command(inputs, "new", case)))
        assert contents(case) == new  # the verb replaces its own output, and does so the same way every time
        for i in range(kills):
            run_whole(zygote, command(inputs, "old", case))
            assert contents(case) == old, (i, "the next write left temporaries or lost files")
            pid = zygote.start(command(inputs, "new", case))
            time.sleep(rng.uniform(0, duration * 1.05))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = zygote.wait()
            seen = visible(contents(case))
            assert seen in (old, new), (i, "half an output", sorted(seen))
            outcomes.append(("killed, " if os.WIFSIGNALED(status) else "finished, ") +
                            ("old" if seen == old else "new"))
        run_whole(zygote, command(inputs, "old", case))
        assert contents(case) == old, "the next write left temporaries or lost files"
    finally:
        zygote.close()
    return outcomes


@pytest.mark.parametrize("verb", [pytest.param(verb, marks=pytest.mark.slow) if verb == "report" else verb
                                  for verb in VERBS])  # a report draws for 10 s a run
def test_a_kill_leaves_the_old_output_or_the_new_one(tmp_path, inputs, verb):
    kill_and_check(tmp_path, inputs, verb, REPORT_KILLS if verb == "report" else FAST_KILLS, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("verb", [verb for verb in VERBS if verb != "report"])  # report: its own test's kills
def test_more_kills_leave_the_old_output_or_the_new_one(tmp_path, inputs, verb):
    outcomes = kill_and_check(tmp_path, inputs, verb, SLOW_KILLS, seed=2)
    print(verb, {o: outcomes.count(o) for o in set(outcomes)})


SIMULATORS = {"cortex-m0plus": "qemu-system-arm", "atmega2560": "simavr"}


@pytest.mark.slow
@pytest.mark.parametrize("target", SIMULATORS)
def test_a_killed_simulate_leaves_its_cache_whole_and_no_work_folder(tmp_path, inputs, target):
    """simulate, killed while it builds its tools and firmware or while the simulator runs, each time with an empty
    cache: the next run finds the cache usable and leaves it as an uninterrupted run does (the same files, no
    partial build), and no work folder is left in its temporary folder (TMPDIR, its own here)."""
    if shutil.which(SIMULATORS[target]) is None:
        pytest.skip(f"{SIMULATORS[target]} not installed")
    cache, scratch = tmp_path / "cache", tmp_path / "tmp"
    scratch.mkdir()
    argv = ["simulate", inputs / "old.pt", "--target", target, "--data-dir", inputs / "data", "--count", "2",
            "--quiet"] + (["--xmem"] if target == "atmega2560" else [])  # a float model needs its 64 KB
    rng = np.random.default_rng(3)
    zygote = Zygote(env={**os.environ, "MOBILE_LENET_CACHE": str(cache), "TMPDIR": str(scratch)})
    try:
        duration = run_whole(zygote, argv)
        clean = sorted(contents(cache))
        assert clean and list(scratch.iterdir()) == []
        for i in range(SIMULATE_KILLS):
            shutil.rmtree(cache)
            pid = zygote.start(argv)
            time.sleep(rng.uniform(0, duration * 1.05))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            zygote.wait()
            run_whole(zygote, argv)
            assert sorted(contents(cache)) == clean, i
            assert list(scratch.iterdir()) == [], i
    finally:
        zygote.close()
