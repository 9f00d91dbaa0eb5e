"""Training on data the test writes: loss falls, accuracy is well above chance, BN statistics are
exact, checkpoints save/load/resume, and a fixed seed gives the same weights."""

import csv
import json

import numpy as np
import pytest
import torch

from mobile_lenet.model.checkpoints import load_checkpoint_model, read_checkpoint, save_checkpoint
from mobile_lenet.model.data import to_tensor_input
from mobile_lenet.errors import UserError
from mobile_lenet.model.network import MobileLeNet
from mobile_lenet.model.training import (TrainConfig, WeightAverage, augment_batch, calibrate_batchnorm,
                                         elastic_displacement, loss_and_accuracy, read_config, train)

from conftest import synthetic_digits


QUICK = dict(epochs=3, batch_size=32, lr=1e-2, augment=False, val_fraction=0.2)


def test_tiny_training_run_learns(tmp_path):
    ds = synthetic_digits(1000)
    row = train(TrainConfig(**dict(QUICK, epochs=4)), ds, tmp_path, progress=False, log=lambda s: None)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert row["val_accuracy"] > 0.6  # chance is 0.1
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "config.json").is_file()
    # what was saved evaluates as well as what was measured (BN statistics saved are the ones used)
    model = load_checkpoint_model(tmp_path / "last.pt")
    assert loss_and_accuracy(model, ds)[1] > 0.6


def test_same_seed_same_weights(tmp_path):
    ds = synthetic_digits(300)
    cfg = dict(QUICK, epochs=1, augment=True)
    train(TrainConfig(**cfg), ds, tmp_path / "a", progress=False, log=lambda s: None)
    train(TrainConfig(**cfg), ds, tmp_path / "b", progress=False, log=lambda s: None)
    train(TrainConfig(**dict(cfg, seed=5)), ds, tmp_path / "c", progress=False, log=lambda s: None)
    a, b, c = (read_checkpoint(tmp_path / x / "last.pt")["model"] for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("levers", [{}, {"ema_decay": 0.9, "augment": True, "elastic": 8.0}, {"distill_epochs": 1}],
                         ids=["plain", "weight-average-and-elastic", "distillation"])
def test_resume_continues_to_the_same_weights(tmp_path, levers):
    ds = synthetic_digits(300)
    train(TrainConfig(**dict(QUICK, **levers)), ds, tmp_path / "full", progress=False, log=lambda s: None)
    two = tmp_path / "two"
    cfg2 = TrainConfig(**dict(QUICK, **levers))

    def stop_after_two(msg):  # Ctrl-C right after epoch 2 was logged
        if msg.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg2, ds, two, progress=False, log=stop_after_two)
    assert read_checkpoint(two / "last.pt")["epoch"] == 2
    train(cfg2, ds, two, resume=True, progress=False, log=lambda s: None)
    for key in ("model", "trained_model") if "ema_decay" in levers else ("model",):  # the average and the raw weights
        full = read_checkpoint(tmp_path / "full" / "last.pt")[key]
        resumed = read_checkpoint(two / "last.pt")[key]
        for k in full:
            torch.testing.assert_close(full[k], resumed[k], rtol=0, atol=0)
    with open(two / "metrics.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_resume_refuses_a_state_whose_schedule_length_agrees_only_by_padding(tmp_path):
    """Two short runs whose one-cycle schedules are both padded to MIN_SCHEDULE_STEPS (9 steps of batch 32 in one
    epoch; 2 x 5 steps of batch 64): the lengths agree, the steps taken do not; resuming one as the other is refused
    in one line (it used to fail mid-epoch with the scheduler's ValueError), and the folder is left as it was."""
    from mobile_lenet.errors import UserError

    ds = synthetic_digits(300)
    base = dict(QUICK, val_fraction=0.1)
    train(TrainConfig(**dict(base, epochs=1, batch_size=32)), ds, tmp_path, progress=False, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(UserError, match="another data set size or batch size"):
        train(TrainConfig(**dict(base, epochs=2, batch_size=64)), ds, tmp_path, resume=True, progress=False,
              log=lambda s: None)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_calibrated_statistics_are_exact():
    torch.manual_seed(0)
    model = MobileLeNet()
    images = synthetic_digits(64).images
    calibrate_batchnorm(model, images, chunk=10)
    # exact: the first BN sees the stem conv output of every image
    with torch.no_grad():
        stem = model.layers["stem_conv3x3"](torch.from_numpy(to_tensor_input(images))).double()
    bn = model.layers["stem_bn"]
    torch.testing.assert_close(bn.running_mean.double(), stem.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var.double(), stem.var(dim=(0, 2, 3), unbiased=False), rtol=1e-4, atol=1e-6)
    # and deeper: in eval mode, every BN output is normalized over the set (mean beta, var gamma^2)
    model.eval()
    with torch.no_grad():
        out = model.forward_all(torch.from_numpy(to_tensor_input(images)))
    x = out["B5_pw_bn"].double()
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), model.layers["B5_pw_bn"].bias.double(), rtol=0, atol=1e-4)


def test_checkpoint_is_atomic_and_safe(tmp_path):
    model = MobileLeNet()
    save_checkpoint(tmp_path / "m.pt", model, epoch=1)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temp file left behind
    loaded = load_checkpoint_model(tmp_path / "m.pt")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"some": "dict"}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a mobile-lenet checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")


def test_checkpoint_with_code_is_refused(tmp_path):
    """weights_only loading never runs code hidden in a pickle."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "mobile-lenet-checkpoint/1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="evil.pt"):
        read_checkpoint(tmp_path / "evil.pt")


def float64_batchnorm_oracle(model: MobileLeNet, images: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and population variance of every BN layer's input over ``images``, computed in float64.

    The network runs in float64 in inference mode, each BN with the statistics the model holds (so a BN's
    input is what inference feeds it); the sums are float64 NumPy sums over all pixels, in one go."""
    import copy

    twin = copy.deepcopy(model).double().eval()
    x = torch.from_numpy(to_tensor_input(images)).double()
    stats = {}
    with torch.no_grad():
        for name, module in twin.layers.named_children():
            if isinstance(module, torch.nn.BatchNorm2d):
                values = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1).numpy()
                mean = values.mean(axis=1)
                stats[name] = (mean, ((values - mean[:, None]) ** 2).mean(axis=1))
            x = module(x)
    return stats


def test_calibrated_statistics_match_a_float64_oracle_on_every_layer():
    """Every BN layer, down to the 7x7 ones: population variance (divide by n), exact mean, across chunks.

    With 3 images a 7x7 layer has n = 147 values per channel, so variance over n - 1 would be 0.7% too large,
    and even the 28x28 stem's n = 2352 makes it 4e-4 too large: rtol 1e-4 tells them apart, float32 rounding
    (measured at most 1.1e-5 here) does not reach it."""
    torch.manual_seed(0)
    model = MobileLeNet()
    images = synthetic_digits(3, seed=4).images
    calibrate_batchnorm(model, images, chunk=2)  # two chunks: the float64 accumulation across chunks counts
    oracle = float64_batchnorm_oracle(model, images)
    assert len(oracle) == 13
    for name, (mean, var) in oracle.items():
        bn = model.layers[name]
        np.testing.assert_allclose(bn.running_mean.double().numpy(), mean, rtol=1e-4, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(bn.running_var.double().numpy(), var, rtol=1e-4, atol=1e-7, err_msg=name)


def test_batchnorm_is_calibrated_on_training_images_only(tmp_path, monkeypatch):
    """Per epoch: the first EPOCH_CALIBRATION_IMAGES of the training split, never the validation split;
    for the checkpoints left behind: the whole training split."""
    from mobile_lenet.model import training
    from mobile_lenet.model.data import split_validation

    seen = []
    original = training.calibrate_batchnorm

    def recording(model, images, *args, **kwargs):
        seen.append(np.array(images, copy=True))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(training, "calibrate_batchnorm", recording)
    monkeypatch.setattr(training, "EPOCH_CALIBRATION_IMAGES", 50)
    ds = synthetic_digits(200, seed=3)
    config = TrainConfig(**dict(QUICK, epochs=2))
    train(config, ds, tmp_path, progress=False, log=lambda s: None)
    train_split, val_split = split_validation(ds, config.val_fraction, config.seed)
    assert len(val_split) == 40 and len(seen) >= 3  # two epochs, then at least one final calibration
    for images in seen[:2]:
        np.testing.assert_array_equal(images, train_split.images[:50])
    for images in seen[2:]:
        np.testing.assert_array_equal(images, train_split.images)
    # and the saved checkpoint carries exactly those whole-split statistics
    saved = load_checkpoint_model(tmp_path / "last.pt")
    oracle = float64_batchnorm_oracle(saved, train_split.images)
    for name, (mean, var) in oracle.items():
        np.testing.assert_allclose(saved.layers[name].running_mean.double().numpy(), mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(saved.layers[name].running_var.double().numpy(), var, rtol=1e-4, atol=1e-6)


def test_weight_average_is_the_warmed_up_exponential_average():
    model = MobileLeNet()
    first = [p.detach().clone() for p in model.parameters()]
    average = WeightAverage(model, decay=0.99)
    expected = [p.clone() for p in first]
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        decay = min(0.99, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25: the warm-up, not 0.99
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
        average.update(model)
    for got, want in zip(average.model.parameters(), expected):
        torch.testing.assert_close(got, want)
    assert average.updates == 3 and not torch.equal(next(average.model.parameters()), next(model.parameters()))


def test_weight_averaged_run_saves_the_average_and_keeps_the_raw_weights(tmp_path):
    ds = synthetic_digits(1000)
    row = train(TrainConfig(**dict(QUICK, epochs=4, ema_decay=0.8)), ds, tmp_path, progress=False, log=lambda s: None)
    state = read_checkpoint(tmp_path / "last.pt")
    averaged, raw = state["model"], state["trained_model"]
    assert not torch.equal(averaged["layers.stem_conv3x3.weight"], raw["layers.stem_conv3x3.weight"])
    model = load_checkpoint_model(tmp_path / "best.pt")  # what a user runs is the average, calibrated
    assert loss_and_accuracy(model, ds)[1] > 0.6 and row["val_accuracy"] > 0.6


def test_elastic_field_is_smooth_scaled_and_reproducible():
    field = elastic_displacement(64, 28, 28, 10.0, torch.Generator().manual_seed(1))
    assert field.shape == (64, 2, 28, 28)
    again = elastic_displacement(64, 28, 28, 10.0, torch.Generator().manual_seed(1))
    assert torch.equal(field, again)
    half = elastic_displacement(64, 28, 28, 5.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(half * 2, field)
    # smoothed: neighbouring displacements differ far less than the field varies (white noise: about equally)
    step = (field[..., 1:] - field[..., :-1]).std()
    assert step < 0.3 * field.std()
    assert 0.2 < field.std() < 5  # a few tenths of a pixel to a pixel or two at alpha 10, not zero, not chaos


def test_elastic_distortion_changes_the_digits_and_zero_is_off():
    ds = synthetic_digits(16)
    x = torch.from_numpy(to_tensor_input(ds.images))
    plain = augment_batch(x, torch.Generator().manual_seed(3))
    assert torch.equal(plain, augment_batch(x, torch.Generator().manual_seed(3), elastic=0.0))
    bent = augment_batch(x, torch.Generator().manual_seed(3), elastic=20.0)
    assert bent.shape == x.shape and not torch.allclose(bent, plain, atol=1e-3)


def test_config_of_a_run_saved_before_the_new_settings_reads_as_off(tmp_path):
    train(TrainConfig(**dict(QUICK, epochs=1)), synthetic_digits(100), tmp_path, progress=False, log=lambda s: None)

    data = json.loads((tmp_path / "config.json").read_text())
    del data["elastic"], data["ema_decay"], data["distill_epochs"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = read_config(tmp_path / "config.json")
    assert config.elastic == 0.0 and config.ema_decay == 0.0 and config.distill_epochs == 0
    data["ema_decay"] = 1.5
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="ema_decay"):
        read_config(tmp_path / "config.json")


@pytest.mark.parametrize("images", [20, 200, 700])
def test_runs_of_a_few_steps_train_with_the_default_batch(tmp_path, images):
    """1, 2 or 5 steps of the default batch: the one-cycle schedule still lays out its phases (it used to
    divide by zero below six steps)."""
    config = TrainConfig(epochs=1, augment=False, val_fraction=0.1)
    row = train(config, synthetic_digits(images), tmp_path, progress=False, log=lambda s: None)
    assert row["epoch"] == 1 and np.isfinite(row["train_loss"])
    train(config, synthetic_digits(images), tmp_path, resume=True, progress=False, log=lambda s: None)


def test_take_step_stops_on_a_non_finite_loss_before_the_weights_change():
    """Divergence is one line naming what to do, and the weights keep their last finite values."""
    from mobile_lenet.model.training import one_cycle, take_step

    model = MobileLeNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = one_cycle(optimizer, 0.01, 10)
    weights = lambda: dict(model.named_parameters())  # noqa: E731 (BN's statistics move with any forward pass)
    before = {name: value.detach().clone() for name, value in weights().items()}
    x = torch.from_numpy(to_tensor_input(np.zeros((2, 28, 28), dtype=np.uint8)))
    loss = model(x).sum() * float("nan")
    with pytest.raises(UserError, match=r"^diverged in epoch 3; lower --lr \(loss nan\)$"):
        take_step(loss, optimizer, scheduler, lambda: "diverged in epoch 3; lower --lr")
    assert all(torch.equal(before[name], value) for name, value in weights().items())
    take_step(model(x).sum(), optimizer, scheduler, lambda: "unused")  # a finite loss moves the weights
    assert not all(torch.equal(before[name], value) for name, value in weights().items())
