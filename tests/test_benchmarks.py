"""The benchmark harness (``python -m benchmarks``): a quick run end to end, and its report on its own."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from benchmarks import report
from benchmarks.__main__ import parse_parts
from benchmarks.common import PARTS, mean_and_spread

from conftest import ROOT, SHARED
from test_spec import family_params


def test_parse_parts_keeps_canonical_order_and_rejects_unknown_names():
    assert parse_parts("inference,accuracy") == ["accuracy", "inference"]
    assert parse_parts("ablation-full,ablation,accuracy-full") == ["accuracy-full", "ablation", "ablation-full"]
    assert parse_parts("training") == ["training"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_parts("accuracy,speed")


def test_mean_and_spread():
    stats = mean_and_spread([0.98, 0.99, 1.0])
    assert stats["mean"] == pytest.approx(0.99)
    assert stats["std"] == pytest.approx(0.01)
    assert (stats["min"], stats["max"], stats["n"]) == (0.98, 1.0, 3)
    assert mean_and_spread([0.5])["std"] == 0.0


def test_report_lists_unavailable_engines_with_their_reason_and_no_numbers():
    entry = {"date": "2026-01-01T00:00:00+00:00", "command": "python -m benchmarks", "quick": False, "threads": 2,
             "seconds": 3.0, "machine": {}, "result": {
                 "weights": "w", "test_images": 10, "macs_per_image": 100,
                 "peak": {"single_core": {"matmul": "torch.mm", "flops": 1e9, "threads": 1},
                          "all_cores": {"matmul": "torch.mm", "flops": 2e9, "threads": 2}},
                 "engines": [{"engine": "generated C, int8", "batch": 1, "threads": 1, "available": False,
                              "reason": "no int8 C yet"}]}}
    text = "\n".join(report.inference_section(entry))
    row = next(line for line in text.splitlines() if line.startswith("| generated C, int8"))
    assert "not available: no int8 C yet" in row
    assert not any(ch.isdigit() for ch in row.replace("int8", "").replace("| 1 | 1 |", ""))


@pytest.mark.slow
def test_quick_run_writes_results_and_markdown(tmp_path):
    """``--quick`` runs every part on tiny data and writes where it is told, not over the committed files."""
    results, markdown = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    committed = [ROOT / "benchmarks" / "results.json", ROOT / "BENCHMARKS.md"]
    before = {path: path.stat().st_mtime_ns for path in committed if path.exists()}
    env = dict(os.environ, MOBILE_LENET_SHARED=str(SHARED), OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", ",".join(PARTS), "--threads", "1",
         "--results", str(results),
         "--markdown", str(markdown), "--work-dir", str(tmp_path / "runs")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    data = json.loads(results.read_text())
    assert set(data["parts"]) == set(PARTS)
    for part in PARTS:
        entry = data["parts"][part]
        assert entry["quick"] and "error" not in entry and "result" in entry
        assert entry["machine"]["cores"] >= 1 and entry["machine"]["libraries"]["torch"]
    for part in ("family", "family-10k", "family-goals"):  # the seed's channels at 16x16: the seed document's 3,258 parameters
        (member,) = data["parts"][part]["result"]["members"]
        assert member["input_size"] == 16 and member["parameters"] == 3258
        (m4f,) = member["targets"]
        assert m4f["target"] == "cortex-m4f" and m4f["n"] == m4f["agreement_with_reference"] >= 1
    base, *candidates = data["parts"]["family-val"]["result"]["variants"]  # the seed's network, then each candidate
    assert not base["changes"] and len(candidates) >= 2
    for row in candidates:
        channels = row["changes"]["architecture"]["channels"]
        assert f"{family_params(channels):,} parameters" in row["label"] and row["holdout_images"] >= 1
    accuracy = data["parts"]["accuracy"]["result"]
    runs = accuracy["mnist"]["runs"]
    assert len(runs) == 2
    assert accuracy["mnist"]["accuracy"]["mean"] == pytest.approx(sum(run["test_accuracy"] for run in runs) / 2)
    full = data["parts"]["accuracy-full"]["result"]["mnist_full"]
    assert len(full["runs"]) == 2 and full["train_images"] == 600 and full["test_images"] == 500
    assert all(0 <= run["fit_accuracy"] <= 1 for run in full["runs"]) and full["fit_accuracy"]["n"] == 2
    ablation = data["parts"]["ablation"]["result"]
    labels = [row["label"] for row in ablation["variants"]]
    assert labels[0] == "default recipe" and len(labels) == len(set(labels)) >= 3
    for row in ablation["variants"]:  # scored on held-out training images, never the test set
        assert row["holdout_images"] == 500 and 0 <= row["holdout_accuracy"] <= 1 and "test_accuracy" not in row
        assert [one["seed"] for one in row["runs"]] == [0] and all("test_accuracy" not in one for one in row["runs"])
    assert any(row["changes"].get("distill_epochs") for row in ablation["variants"])
    ablation_full = data["parts"]["ablation-full"]["result"]  # the same harness on full-MNIST training images
    assert "full-MNIST" in ablation_full["trained_on"] and ablation_full["holdout"] == ablation["holdout"]
    rows = ablation_full["variants"]
    assert rows[0]["label"] == "default recipe" and len(rows) >= 2
    for row in rows:
        assert row["holdout_images"] == 500 and all(one["train_images"] == 600 for one in row["runs"])
    distilled = [row for row in rows if row["changes"].get("distill_epochs")]
    assert distilled and distilled[0]["runs"][0]["teacher"]["parameters"] > 3258
    training = data["parts"]["training"]["result"]
    ours = [run for run in training["runs"] if run["stack"] == "ours"]
    # our trainer runs thousands of images/s on one core; 100 would mean something is badly wrong
    assert len(ours) == 2 and all(run["images_per_second"] > 100 for run in ours)
    engines = {(row["engine"], row["batch"]): row for row in data["parts"]["inference"]["result"]["engines"]}
    torch_single = engines[("PyTorch", 1)]
    assert set(torch_single["latency_ms"]) == {"p50", "p90", "p99"}
    for row in engines.values():  # every engine either ran and agrees with PyTorch, or says why it did not
        if "available" in row:
            assert row["available"] is False and row["reason"]
            continue
        assert row["agreement_with_pytorch"] >= 0.99
        assert row["images_per_second"] == pytest.approx(row["images"] / row["seconds"])

    text = markdown.read_text()
    for heading in ("## Accuracy on the full MNIST", "## Ablation of", "## Ablation on the full", "## Accuracy",
                    "## Training speed", "## Inference speed", "## Machine", "Quick run"):
        assert heading in text
    assert "--quick" in text
    assert {path: path.stat().st_mtime_ns for path in committed if path.exists()} == before


def test_fit_accuracy_scores_the_images_trained_on_and_not_the_validation_share():
    """The capacity diagnostic: a model's accuracy on exactly the trainer's training share, unaugmented."""
    import numpy as np
    import torch

    from benchmarks.accuracy import fit_accuracy
    from mobile_lenet.model.data import Dataset, split_validation
    from mobile_lenet.model.network import MobileLeNet, predict_logits, to_noodle
    from mobile_lenet.model.training import TrainConfig

    torch.manual_seed(0)
    model = MobileLeNet().eval()
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = predict_logits(model, images).argmax(1).astype(np.uint8)  # the model is right on every image
    config = TrainConfig(val_fraction=0.25, seed=3)
    _, val = split_validation(Dataset(images, np.arange(40, dtype=np.uint8), "index"), 0.25, 3)
    wrong = labels.copy()
    wrong[val.labels] = (labels[val.labels] + 1) % 10  # every validation image mislabelled: must not count
    assert fit_accuracy(to_noodle(model), Dataset(images, wrong, "d"), config) == 1.0
    trained_on = np.setdiff1d(np.arange(40), val.labels)
    wrong[trained_on[:3]] = (labels[trained_on[:3]] + 1) % 10  # three of the 30 trained-on images
    assert fit_accuracy(to_noodle(model), Dataset(images, wrong, "d"), config) == pytest.approx(27 / 30)


def test_channel_moments_match_numpy_over_the_whole_set():
    """Chunked float64 moments against NumPy's two-pass mean and variance of the concatenated set."""
    import numpy as np

    from benchmarks.keras_model import channel_moments

    rng = np.random.default_rng(1)
    # an offset far from 0 and chunks of unequal size: a sum of squares kept in float32 would lose digits
    chunks = [(1000 + 3 * rng.standard_normal((n, 5, 5, 6))).astype(np.float32) for n in (7, 1, 30)]
    whole = np.concatenate(chunks).astype(np.float64).reshape(-1, 6)
    mean, variance = channel_moments(chunks)
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(variance, whole.var(axis=0), rtol=1e-6)


def test_recalibrated_batchnorm_layers_normalize_their_inputs_over_the_set():
    """A NumPy network (1x1 convolutions, BatchNorm, ReLU) with wrong BatchNorm statistics, recalibrated
    on a set of images: run afterwards in inference mode over the same set, every BatchNorm layer's output
    must have per-channel mean 0 and variance var / (var + eps), which holds only if each layer got its own
    input's statistics, measured after the layers before it were recalibrated."""
    import numpy as np

    from benchmarks.keras_model import recalibrate_sequential

    eps = 1e-3
    rng = np.random.default_rng(2)

    class Pointwise:  # a 1x1 convolution, channels last
        def __init__(self, c_in, c_out):
            self.weight, self.bias = rng.standard_normal((c_in, c_out)), rng.standard_normal(c_out)

        def __call__(self, x):
            return x @ self.weight + self.bias

    class BatchNorm:  # inference mode, gamma 1 and beta 0
        def __init__(self, channels):
            self.mean, self.variance = rng.standard_normal(channels), 1 + rng.random(channels)  # wrong on purpose

        def __call__(self, x):
            return (x - self.mean) / np.sqrt(self.variance + eps)

    def set_statistics(layer, mean, variance):
        layer.mean, layer.variance = mean, variance

    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    layers = [Pointwise(3, 4), BatchNorm(4), relu, Pointwise(4, 5), BatchNorm(5), relu, Pointwise(5, 2), BatchNorm(2)]
    images = 4 + 2 * rng.standard_normal((50, 6, 6, 3))
    count = recalibrate_sequential(layers, images, lambda layer, x: layer(x),
                                   lambda layer: isinstance(layer, BatchNorm), set_statistics, chunk=16)
    assert count == 3
    x = images
    for layer in layers:
        if isinstance(layer, BatchNorm):
            inputs = x.reshape(-1, x.shape[-1])
            outputs = layer(x).reshape(-1, x.shape[-1])
            np.testing.assert_allclose(outputs.mean(axis=0), 0, atol=1e-9)
            np.testing.assert_allclose(outputs.var(axis=0), inputs.var(axis=0) / (inputs.var(axis=0) + eps), rtol=1e-9)
        x = layer(x)


def test_an_interrupted_benchmark_run_resumes_to_the_same_weights(tmp_path):
    """``train_resuming``: a run stopped after epoch 1 of 2 ends with the weights of a run that was never stopped;
    a folder left by other settings is trained again from epoch 1, to the same weights."""
    import numpy as np
    import torch

    from benchmarks.accuracy import train_resuming
    from mobile_lenet.model.checkpoints import read_checkpoint
    from mobile_lenet.model.data import load_sample
    from mobile_lenet.model.training import TrainConfig, train

    sample = load_sample("train")
    images = type(sample)(sample.images[:300], sample.labels[:300], sample.name)
    config = TrainConfig(epochs=2, batch_size=64, seed=1)
    train(config, images, tmp_path / "straight", progress=False, log=lambda s: None)

    def stop_after_one(message):  # Ctrl-C (or a session's end) right after epoch 1 was saved
        if message.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, images, tmp_path / "stopped", progress=False, log=stop_after_one)
    assert read_checkpoint(tmp_path / "stopped" / "last.pt")["epoch"] == 1
    train(TrainConfig(epochs=1, batch_size=32, seed=4), images, tmp_path / "other", progress=False,
          log=lambda s: None)
    for folder in ("stopped", "other"):
        seconds = train_resuming(config, images, tmp_path / folder)
        assert read_checkpoint(tmp_path / folder / "last.pt")["epoch"] == 2
        straight = read_checkpoint(tmp_path / "straight" / "last.pt")["model"]
        ended = read_checkpoint(tmp_path / folder / "last.pt")["model"]
        assert all(torch.equal(straight[k], ended[k]) for k in straight), folder
        epoch_seconds = np.loadtxt(tmp_path / folder / "metrics.csv", delimiter=",", skiprows=1, ndmin=2)[:, -1]
        assert len(epoch_seconds) == 2 and seconds >= epoch_seconds.sum()


def test_goal_picks_take_the_best_validation_accuracy_within_each_budget():
    """family-goals trains, per goal, the family-val candidate with the best validation accuracy among those
    within the goal's parameter budget (here by hand: 8,667 and 8,962 parameters for 9,000; 1,266 and 1,288 for
    1,300; the seed's network and alpha 1.375 are within neither or beaten), and the best among those whose
    firmware runs on the ATmega2560 (here a hand rule in place of the simulator)."""
    from benchmarks import family

    def row(channels, accuracy, strides=(1, 1, 2, 1, 2, 1)):
        changes = {} if channels is None else {"architecture": {"channels": list(channels),
                                                                "strides": list(strides), "input_size": 28}}
        return {"changes": changes, "holdout_accuracy": accuracy}

    result = {"variants": [row(None, 0.9942), row((15, 15, 15, 30, 30, 46, 46), 0.9950),
                           row((8, 12, 16, 24, 32, 44, 64), 0.9953), row((4, 4, 4, 8, 8, 12, 12), 0.9820),
                           row((4, 4, 4, 8, 8, 10, 16), 0.9810), row((11, 11, 11, 22, 22, 33, 33), 0.9945)]}

    def fits(arch):  # which run on the ATmega2560, by hand: the seed's network and alpha 1.375 (and smaller)
        return max(arch.channels) <= 33

    assert [name for name, _, _ in family.goal_picks(result, runs_on=fits)] == ["late-heavy 9k", "alpha=0.5",
                                                                                "alpha=1.375"]
    result["variants"][1]["holdout_accuracy"] = 0.9960
    assert [name for name, _, _ in family.goal_picks(result, runs_on=fits)] == ["alpha=1.9", "alpha=0.5",
                                                                                "alpha=1.375"]
    # another block pattern (1,292 parameters) wins the small budget; the same channels at the seed's strides
    # would be another member, which no candidate is
    result["variants"] += [row((4, 6, 8, 8, 8, 8, 12), 0.9850, (1, 2, 1, 2, 1, 1)), row((4, 6, 8, 8, 8, 8, 12), 0.9990)]
    picks = family.goal_picks(result, runs_on=fits)
    assert [name for name, _, _ in picks] == ["alpha=1.9", "early-stride 1.3k", "alpha=1.375"]
    assert picks[1][1].strides == (1, 2, 1, 2, 1, 1)
    # the ATmega2560's pick: the seed's network (99.42%) where it beats alpha 1.375; none where none runs there
    result["variants"][5]["holdout_accuracy"] = 0.9941
    assert [name for name, _, _ in family.goal_picks(result, runs_on=fits)][2:] == ["alpha=1"]
    assert len(family.goal_picks(result, runs_on=lambda arch: False)) == 2


def test_runs_on_avr_builds_and_runs_the_firmware():
    """The ATmega2560 check behind the goal's pick: the seed's network runs there (as test_simulate shows on real
    weights); alpha 2's activations alone need more than the 8 KB (its row plan, counted by codegen.memory)."""
    from benchmarks import family
    from mobile_lenet import spec
    from mobile_lenet.codegen.memory import row_plan

    wide = spec.SEED.scaled(2.0)
    assert row_plan(wide).ram_bytes > 8192
    assert family.runs_on_avr(spec.SEED) and not family.runs_on_avr(wide)
