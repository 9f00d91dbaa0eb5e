"""``mobile-lenet search`` on one machine: the 4-trial quick search on the bundled sample, its front checked
against a brute-force Pareto filter of every finished trial, the front members' ``train`` commands re-run and
compared, resuming (also after kill -9), and the bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobile_lenet.apps.cli import main
from mobile_lenet.model.checkpoints import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--target", "cortex-m4f", "--dataset", "mnist-sample", "--epochs", "1"]


def cli(*args: str) -> subprocess.CompletedProcess:
    """The command in its own process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "mobile_lenet.apps.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture(scope="module")
def quick_search(tmp_path_factory):
    """``search --trials 4 --epochs 1`` on mnist-sample (what the README offers to try), run once."""
    out = tmp_path_factory.mktemp("search") / "run"
    started = time.monotonic()
    result = cli("search", *QUICK, "--trials", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out, time.monotonic() - started, result


def pareto(points: list[dict]) -> set[int]:
    """Trials no other trial beats on both objectives (accuracy up, latency down), by brute force."""
    def dominates(a, b):
        return (a["val_accuracy"] >= b["val_accuracy"] and a["latency_ms"] <= b["latency_ms"]
                and (a["val_accuracy"] > b["val_accuracy"] or a["latency_ms"] < b["latency_ms"]))
    return {p["trial"] for p in points if not any(dominates(q, p) for q in points)}


def test_quick_search_writes_the_front_of_all_trials(quick_search):
    out, seconds, result = quick_search
    assert seconds < 300  # "a few minutes on 2 cores"
    front = json.loads((out / "front.json").read_text())
    complete = front["complete"]
    assert front["trials"]["complete"] == 4 == len(complete)
    assert sorted(p["trial"] for p in complete) == [0, 1, 2, 3]
    assert {p["trial"] for p in front["front"]} == pareto(complete)
    # the seed's network is trial 0 (queued first), with the default recipe
    assert front["seed"]["trial"] == 0 and front["seed"]["architecture"]["channels"] == [8, 8, 8, 16, 16, 24, 24]
    assert front["seed"]["params"]["lr"] == 0.02 and front["seed"]["latency_source"].startswith("simulate")
    for p in complete:
        assert 0 <= p["val_accuracy"] <= 1 and p["latency_ms"] > 0
        run = Path(p["run"])
        assert run.parent == out / "trials" and (run / "best.pt").is_file()
        # the objective is best.pt's validation accuracy: held-out training images, never the test split
        assert p["val_accuracy"] == pytest.approx(read_checkpoint(run / "best.pt")["val_accuracy"])
    page = (out / "report.html").read_text()
    assert (out / "front.png").stat().st_size > 1000
    for p in front["front"]:
        assert p["command"].replace("'", "&#x27;") in page
    assert "4 trials (4 trained, 0 pruned)" in result.stdout


def test_a_front_members_train_command_reproduces_it(quick_search, tmp_path, monkeypatch):
    out, _, _ = quick_search
    member = json.loads((out / "front.json").read_text())["front"][0]
    words = member["command"].split()
    assert words[:2] == ["mobile-lenet", "train"]
    words[words.index("--out") + 1] = str(tmp_path / "again")
    assert main(words[1:] + ["--quiet"]) == 0
    again = read_checkpoint(tmp_path / "again" / "best.pt")
    assert again["val_accuracy"] == pytest.approx(member["val_accuracy"], abs=1e-9)
    assert again["architecture"] == member["architecture"]


def test_latency_is_measured_for_every_member(quick_search):
    """Every member, 28x28 or not, is simulated (the firmware's flash holds code besides the plan's weights), and
    its latency is its count at the target's clock; a member with more MACs at the same width counts more."""
    from mobile_lenet import spec
    from mobile_lenet.codegen.mcu_firmware import TARGETS

    out, _, _ = quick_search
    front = json.loads((out / "front.json").read_text())
    seed = front["seed"]
    assert seed["firmware_flash_bytes"] > seed["memory_plan"]["flash_bytes"]
    clock = TARGETS[front["settings"]["target"]].clock_hz
    for p in front["complete"]:
        assert p["latency_source"].startswith("simulate") and p["firmware_flash_bytes"] > 0
        assert p["latency_ms"] == pytest.approx(1000.0 * p["count"] / clock, rel=1e-9)
        arch = spec.Architecture.from_dict(p["architecture"])
        if arch.input_size < 28 and arch.channels == spec.SEED.channels:
            assert p["count"] < seed["count"] * spec.totals(arch)["macs"] / spec.totals(spec.SEED)["macs"] * 1.5


def test_latency_is_the_trained_models_as_the_verbs_make_it(quick_search, tmp_path):
    """A member's latency is that of its trained model as a user deploys it: ``quantize`` (its own process, its
    own calibration) on the trial's best.pt, then ``simulate`` on the same image; not the untrained weights'."""
    import numpy as np

    from mobile_lenet.apps.simulate import simulate
    from mobile_lenet.formats.int8_folder import load_quantized
    from mobile_lenet.model.data import load_dataset
    from mobile_lenet.quantization.quantize import DEFAULT_CALIBRATION_COUNT, pick_calibration_images

    out, _, _ = quick_search
    front = json.loads((out / "front.json").read_text())
    member = min(front["complete"], key=lambda p: p["trial"] == 0)  # one that is not the seed's, if any
    quantized = tmp_path / "int8"
    result = cli("quantize", str(Path(member["run"]) / "best.pt"), "--calibration-data", "mnist-sample",
                 "--out", str(quantized))
    assert result.returncode == 0, result.stderr
    image = pick_calibration_images(load_dataset("mnist-sample", "train").images, DEFAULT_CALIBRATION_COUNT)[:1]
    report = simulate(load_quantized(quantized), front["settings"]["target"], image, np.zeros(1, np.uint8),
                      progress=False)
    assert member["count"] == report["instructions_per_image"]["mean"]
    assert member["firmware_flash_bytes"] == report["flash_bytes"]


def test_a_finished_search_resumes_with_more_trials(quick_search, tmp_path):
    out, _, _ = quick_search
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = {p["trial"]: p for p in json.loads((copy / "front.json").read_text())["complete"]}
    result = cli("search", *QUICK, "--trials", "5", "--out", str(copy))
    assert result.returncode == 0, result.stderr
    after = {p["trial"]: p for p in json.loads((copy / "front.json").read_text())["complete"]}
    assert sorted(after) == [0, 1, 2, 3, 4]
    assert all(after[n]["val_accuracy"] == before[n]["val_accuracy"] for n in before)  # none run again
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("trial ")] == ["trial 4"]


def test_kill_9_keeps_the_finished_trials(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    worker = subprocess.Popen([sys.executable, "-m", "mobile_lenet.apps.cli", "search", *QUICK, "--trials", "3",
                               "--out", str(out)], stdout=subprocess.PIPE, text=True, env=env,
                              start_new_session=True)  # its own group: the kill takes its simulator too
    try:
        first = worker.stdout.readline()  # trial 0 finished and recorded
        assert first.startswith("trial 0:"), first
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
    result = cli("search", *QUICK, "--trials", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    front = json.loads((out / "front.json").read_text())
    assert front["trials"]["complete"] == 3
    assert "trial 0:" not in result.stdout  # kept from the killed run, not trained again


@pytest.mark.parametrize("args, message", [
    (["--target", "pdp11"], "unknown target 'pdp11'"),
    (["--target", "cortex-m4f", "--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open the study storage"),
    (["--target", "cortex-m4f", "--storage", "nosuchdb://x"], "cannot open the study storage"),
    (["--target", "cortex-m4f", "--trials", "0"], "--trials"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["search", "--out", str(out), "--dataset", "mnist-sample", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_a_study_with_other_settings_is_refused(quick_search, tmp_path, capsys):
    out, _, _ = quick_search
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    front = (copy / "front.json").read_bytes()
    assert main(["search", *QUICK[:4], "--epochs", "2", "--trials", "5", "--out", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other settings" in err and "epochs 1 (now 2)" in err
    assert main(["search", "--target", "atmega2560", *QUICK[2:], "--trials", "5", "--out", str(copy)]) == 2
    assert "target 'cortex-m4f' (now 'atmega2560')" in capsys.readouterr().err
    assert (copy / "front.json").read_bytes() == front


def test_a_folder_that_is_not_a_search_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("user's file")
    assert main(["search", *QUICK, "--out", str(tmp_path)]) == 2
    assert "holds no search" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_workers_run_trials_in_several_processes(tmp_path):
    out = tmp_path / "run"
    result = cli("search", *QUICK, "--trials", "4", "--workers", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    complete = json.loads((out / "front.json").read_text())["complete"]
    assert len({p["worker"] for p in complete}) == 2
    numbers = sorted(p["trial"] for p in complete)
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5  # at most one started past the count
    assert sorted(int(p.name) for p in (out / "trials").iterdir()) == numbers
