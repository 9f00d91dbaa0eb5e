"""Resume survives anything a kill can leave (issue 13).

``train`` is killed with SIGKILL at 20 random moments (during data loading, in the first epoch, while a
checkpoint or metrics.csv is being written, between files, while the final checkpoints are calibrated);
``train --resume`` must then either resume or (no last.pt yet) start again from epoch 1 saying why in one line, and finish
with a complete run and no temporary file left, 20 times out of 20.

To kill at precise moments without paying PyTorch's import for every run, the runs are forked from a
"zygote" subprocess that has imported the CLI once (``conftest.Zygote``).
"""

from __future__ import annotations

import csv
import os
import signal
import time

import numpy as np
import pytest

from conftest import Zygote, write_idx_set
from mobile_lenet.apps.cli import main
from mobile_lenet.model.checkpoints import read_checkpoint

EPOCHS = 4
KILLS = 20

def check_complete(run) -> None:
    """A finished run: last.pt at the final epoch, best.pt usable, one metrics row per epoch, no temporaries."""
    assert read_checkpoint(run / "last.pt")["epoch"] == EPOCHS
    assert read_checkpoint(run / "best.pt")["bn_calibration"] == "full"
    with open(run / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, EPOCHS + 1))
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_resume_after_kill_at_random_moments(tmp_path, capsys):
    rng = np.random.default_rng(2024)
    images = rng.integers(0, 256, (160, 28, 28), dtype=np.uint8)
    data = write_idx_set(tmp_path / "data", images, np.arange(160, dtype=np.uint8) % 10)
    command = ["train", "--data-dir", data, "--epochs", EPOCHS, "--batch-size", 32, "--no-augment", "--quiet"]
    zygote = Zygote()
    try:
        # an uninterrupted run: how long one takes (the window the kills are drawn from), and that it completes
        started = time.time()
        zygote.start(command + ["--out", tmp_path / "whole"])
        assert os.waitstatus_to_exitcode(zygote.wait()) == 0
        duration = time.time() - started
        check_complete(tmp_path / "whole")
        # when the run folder came to hold a run (config.json): most kills fall after it, in the epochs,
        # checkpoint writes and final calibration; a few anywhere, also before the run has begun
        begun = (tmp_path / "whole" / "config.json").stat().st_mtime - started
        assert 0 < begun < duration

        outcomes = []
        for i in range(KILLS):
            run = tmp_path / f"run{i}"
            pid = zygote.start(command + ["--out", run])
            time.sleep(rng.uniform(0, duration) if i < 4 else rng.uniform(begun, duration * 1.05))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = zygote.wait()
            killed = os.WIFSIGNALED(status)
            capsys.readouterr()
            code = main([str(a) for a in ["train", "--resume", "--out", run, "--quiet"]])
            out, err = capsys.readouterr()
            if code == 2:  # killed before the run began: nothing of it exists, and a plain train starts it
                assert "nothing to resume" in err and not (run / "config.json").exists(), (i, err)
                assert len(err.strip().splitlines()) == 1
                assert main([str(a) for a in command + ["--out", run]]) == 0
                outcomes.append("not started")
            else:
                assert code == 0, (i, out, err)
                said = [line for line in out.splitlines()
                        if line.startswith(("resuming ", "cannot resume ")) or " already finished all " in line]
                assert len(said) == 1, (i, out)
                outcomes.append("started again" if "starting it again" in said[0] else
                                "resumed" if killed else "had finished")
            check_complete(run)
        assert len(outcomes) == KILLS
        print({o: outcomes.count(o) for o in set(outcomes)})
    finally:
        zygote.close()


def test_resume_with_a_copy_of_best_pt_is_refused(tmp_path, capsys):
    """last.pt replaced by a copy of best.pt (no optimizer state): refused in one line, saying why and how to start
    again; the run's files are untouched (a fresh start would replace best.pt)."""
    rng = np.random.default_rng(1)
    data = write_idx_set(tmp_path / "data", rng.integers(0, 256, (80, 28, 28), dtype=np.uint8),
                         np.arange(80, dtype=np.uint8) % 10)
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(data), "--epochs", "2", "--batch-size", "32", "--no-augment", "--quiet",
            "--out", str(run)]
    assert main(argv) == 0
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes())
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot resume" in err and "copy of best.pt" in err, err
    assert f"delete {run / 'last.pt'}" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (run / "last.pt").unlink()  # what the message says: then the run starts again
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert "starting it again from epoch 1" in capsys.readouterr().out
    assert read_checkpoint(run / "last.pt")["epoch"] == 2


def test_kill_between_last_pt_and_metrics_csv_of_the_final_epoch(tmp_path, capsys):
    """The window the random kills hit now and then: last.pt holds the final epoch, metrics.csv does not yet.
    Resume finds the run finished and must still leave a metrics row for every epoch (from last.pt's history)."""
    rng = np.random.default_rng(3)
    data = write_idx_set(tmp_path / "data", rng.integers(0, 256, (80, 28, 28), dtype=np.uint8),
                         np.arange(80, dtype=np.uint8) % 10)
    run = tmp_path / "run"
    argv = ["train", "--data-dir", str(data), "--epochs", str(EPOCHS), "--batch-size", "32", "--no-augment",
            "--quiet", "--out", str(run)]
    assert main(argv) == 0
    lines = (run / "metrics.csv").read_text().splitlines(keepends=True)
    (run / "metrics.csv").write_text("".join(lines[:-1]))  # the final epoch's row never written
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert " already finished all " in capsys.readouterr().out
    check_complete(run)
