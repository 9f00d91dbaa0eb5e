"""Distillation: the teacher network, the loss, teacher.pt reuse, and a student checkpoint that stands alone."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mobile_lenet.errors import UserError
from mobile_lenet.model.checkpoints import load_checkpoint_model, read_checkpoint
from mobile_lenet.model.data import split_validation, to_tensor_input
from mobile_lenet.model.teacher import SOFT_WEIGHT, TEACHER_FILE, TEMPERATURE, Teacher, distillation_loss
from mobile_lenet.model.training import TrainConfig, loss_and_accuracy, teacher_for, train

from conftest import synthetic_digits

QUICK = dict(epochs=3, batch_size=32, lr=1e-2, augment=False, val_fraction=0.2)


def test_teacher_shape_and_size():
    teacher = Teacher().eval()
    assert teacher(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in teacher.parameters()) == 72_666  # the figure the docs quote


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2 ** 31 - 1))
def test_distillation_loss_is_the_weighted_sum_of_label_and_teacher_terms(batch, seed):
    rng = np.random.default_rng(seed)
    student = rng.normal(0, 3, (batch, 10))
    teacher = rng.normal(0, 3, (batch, 10))
    labels = rng.integers(0, 10, batch)

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    hard = -log_softmax(student)[np.arange(batch), labels].mean()
    p_teacher = np.exp(log_softmax(teacher / TEMPERATURE))
    kl = (p_teacher * (log_softmax(teacher / TEMPERATURE) - log_softmax(student / TEMPERATURE))).sum(1).mean()
    expected = (1 - SOFT_WEIGHT) * hard + SOFT_WEIGHT * TEMPERATURE ** 2 * kl
    got = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels)).item()
    assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-12)
    # a student that already agrees with its teacher pays only the label term
    same = distillation_loss(torch.tensor(student), torch.tensor(student), torch.tensor(labels)).item()
    assert math.isclose(same, (1 - SOFT_WEIGHT) * hard, rel_tol=1e-9, abs_tol=1e-12)


def test_teacher_is_trained_once_and_reused_for_the_same_settings_and_images(tmp_path):
    ds = synthetic_digits(400)
    config = TrainConfig(**dict(QUICK, distill_epochs=2))
    train_split, val_split = split_validation(ds, config.val_fraction, config.seed)
    messages = []
    teacher = teacher_for(config, train_split, val_split, tmp_path, progress=False, log=messages.append)
    assert (tmp_path / TEACHER_FILE).is_file() and "reused" not in messages[-1]
    assert loss_and_accuracy(teacher, val_split)[1] > 0.6  # it learned (chance is 0.1)

    again = teacher_for(config, train_split, val_split, tmp_path, progress=False, log=messages.append)
    assert "reused" in messages[-1]
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), again.state_dict().values()))
    other_images = synthetic_digits(400, seed=1)
    teacher_for(config, *split_validation(other_images, 0.2, 0), tmp_path, progress=False, log=messages.append)
    assert "reused" not in messages[-1]  # other images: a new teacher
    teacher_for(TrainConfig(**dict(QUICK, distill_epochs=1)), train_split, val_split, tmp_path, progress=False,
                log=messages.append)
    assert "reused" not in messages[-1]  # other epochs: a new teacher

    (tmp_path / TEACHER_FILE).write_bytes(b"not a checkpoint")  # a damaged teacher.pt is trained again
    teacher_for(config, train_split, val_split, tmp_path, progress=False, log=messages.append)
    assert "reused" not in messages[-1]


def test_teacher_batchnorm_is_calibrated_on_the_training_split(tmp_path, monkeypatch):
    """The teacher's exact BN statistics come from the training split (as the student's), never the validation
    split it is then scored on; the statistics it carries are those of the images recorded."""
    from mobile_lenet.model import training

    seen = []
    original = training.calibrate_batchnorm

    def recording(model, images, *args, **kwargs):
        seen.append(np.array(images, copy=True))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(training, "calibrate_batchnorm", recording)
    config = TrainConfig(**dict(QUICK, distill_epochs=1))
    train_split, val_split = split_validation(synthetic_digits(200, seed=5), config.val_fraction, config.seed)
    teacher = teacher_for(config, train_split, val_split, tmp_path, progress=False, log=lambda s: None)
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], train_split.images)
    first_bn = teacher.layers[1]
    with torch.no_grad():
        conv = teacher.layers[0](torch.from_numpy(to_tensor_input(train_split.images))).double()
    np.testing.assert_allclose(first_bn.running_mean.double().numpy(), conv.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4,
                               atol=1e-6)


def test_distilled_student_checkpoint_stands_alone(tmp_path):
    ds = synthetic_digits(1000)
    plain = TrainConfig(**dict(QUICK, epochs=4))
    distilled = TrainConfig(**dict(QUICK, epochs=4, distill_epochs=4))
    train(plain, ds, tmp_path / "plain", progress=False, log=lambda s: None)
    row = train(distilled, ds, tmp_path / "distilled", progress=False, log=lambda s: None)
    assert row["val_accuracy"] > 0.6
    student = load_checkpoint_model(tmp_path / "distilled" / "best.pt")  # Mobile-LeNet alone, no teacher inside
    assert sum(p.numel() for p in student.parameters()) + sum(b.numel() for n, b in student.named_buffers()
                                                               if "running" in n) == 3_258
    assert loss_and_accuracy(student, ds)[1] > 0.6
    a = read_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "distilled" / "last.pt")["model"]
    assert not all(torch.equal(a[k], b[k]) for k in a)  # the teacher changed what the student learned
    with pytest.raises(UserError, match="not a mobile-lenet checkpoint"):  # no command mistakes it for a model
        load_checkpoint_model(tmp_path / "distilled" / TEACHER_FILE)


def test_distillation_flag_is_checked():
    from mobile_lenet.model.training import check_config

    for bad in (-1, 1.5, True):
        with pytest.raises(UserError, match="distill"):
            check_config(TrainConfig(distill_epochs=bad))
