"""A member of the Mobile-LeNet family other than the seed's, in PyTorch: the model, its checkpoints and its
training run (--width, --channels, --input-size, --strides)."""

import json

import numpy as np
import pytest
import torch

from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.errors import UserError
from mobile_lenet.model.checkpoints import load_checkpoint_model, read_checkpoint, save_checkpoint
from mobile_lenet.model.images import resize_digits
from mobile_lenet.model.network import MobileLeNet, from_noodle, predict_logits, to_noodle

from conftest import write_idx_set

HALF_16 = spec.Architecture.from_options(width=0.5, input_size=16)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("arch", [HALF_16, spec.Architecture((3, 5, 7, 11, 13, 17, 19), input_size=23),
                                  spec.Architecture((3, 4, 5, 6, 7, 8, 9, 10, 11), (2, 1, 1, 2, 1, 2, 1, 2), 25)])
def test_member_model_follows_its_table(arch):
    model = MobileLeNet(arch).eval()
    size = arch.input_size
    outputs = model.forward_all(torch.zeros(2, 1, size, size))
    for layer in spec.layers(arch):
        shape = layer.out_shape
        assert tuple(outputs[layer.name].shape) == ((2, shape[2], shape[0], shape[1]) if len(shape) == 3
                                                    else (2, shape[0])), layer.name
    # PyTorch's own count of parameters and BN statistics against the table's totals
    counted = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert counted == spec.totals(arch)["total_params"]
    tensors = to_noodle(model)
    assert {n: v.shape for n, v in tensors.items()} == {n: s for n, _, s in spec.noodle_tensors(arch)}
    again = from_noodle(tensors, arch)
    images = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    np.testing.assert_array_equal(predict_logits(again, images), predict_logits(model, images))


def test_tensors_of_another_member_are_refused():
    with pytest.raises(ValueError, match="expected"):
        from_noodle(to_noodle(MobileLeNet(HALF_16)))  # read as the seed's network


def test_checkpoint_records_the_member_and_a_mismatch_is_one_line(tmp_path):
    model = MobileLeNet(HALF_16)
    save_checkpoint(tmp_path / "m.pt", model)
    assert read_checkpoint(tmp_path / "m.pt")["architecture"] == HALF_16.to_dict()
    assert load_checkpoint_model(tmp_path / "m.pt").architecture == HALF_16
    # weights of the alpha-0.5 member recorded as the seed's network: refused in one line
    state = read_checkpoint(tmp_path / "m.pt")
    state["architecture"] = spec.SEED.to_dict()
    torch.save(state, tmp_path / "lie.pt")
    with pytest.raises(UserError, match="weights do not fit Mobile-LeNet") as info:
        load_checkpoint_model(tmp_path / "lie.pt")
    assert "\n" not in str(info.value)
    state["architecture"] = {"channels": [4] * 7, "strides": [1] * 6, "input_size": 16}
    torch.save(state, tmp_path / "lie2.pt")
    with pytest.raises(UserError, match=r"do not fit its architecture \(channels 4,4,4,4,4,4,4, strides 1,1,1,1,1,1, input 16x16\)"):
        load_checkpoint_model(tmp_path / "lie2.pt")
    state["architecture"] = {"channels": [4] * 7}
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt: its architecture is not"):
        load_checkpoint_model(tmp_path / "bad.pt")


def test_a_checkpoint_without_a_record_is_the_seeds(tmp_path):
    state = {"format": "mobile-lenet-checkpoint/1", "model": MobileLeNet().state_dict()}
    torch.save(state, tmp_path / "old.pt")
    assert load_checkpoint_model(tmp_path / "old.pt").architecture == spec.SEED


def test_resize_digits(mnist_test):
    images = mnist_test.images[:20]
    assert resize_digits(images, 28) is images or np.array_equal(resize_digits(images, 28), images)
    small = resize_digits(images, 16)
    assert small.shape == (20, 16, 16) and small.dtype == np.uint8
    # shrinking averages: each image keeps about its mean brightness (ink per area)
    np.testing.assert_allclose(small.mean(axis=(1, 2)), images.mean(axis=(1, 2)), rtol=0.08)
    assert resize_digits(images[:0], 16).shape == (0, 16, 16)


def test_train_a_member_from_the_cli(tmp_path, capsys, mnist_train):
    data = write_idx_set(tmp_path / "data", mnist_train.images[:600], mnist_train.labels[:600])
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--data-dir", data, "--epochs", 2, "--width", 0.5, "--input-size", 16,
                       "--out", out, "--quiet")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["architecture"] == HALF_16.to_dict()
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint_model(out / name).architecture == HALF_16
    code, _, err = run(capsys, "train", "--resume", "--out", out, "--width", 0.5, "--input-size", 16, "--quiet")
    assert code == 0, err  # the same member, restated
    for flags in (("--width", 1), ("--input-size", 20), ("--channels", "4,4,4,8,8,16,16"),
                  ("--strides", "2,1,1,1,2,1"), ("--strides", "1,1"), ("--strides", "9")):
        code, _, err = run(capsys, "train", "--resume", "--out", out, *flags, "--quiet")
        assert code == 2 and "started with channels 4,4,4,8,8,12,12, input 16x16" in err
        assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (("--width", 0.5, "--channels", "4,4,4,8,8,16,16"), "give one of the two"),
    (("--input-size", 8), "from 16 to 32"),
    (("--channels", "4,4"), "7 numbers"),
    (("--strides", "1,2"), "give --channels with 3 numbers"),
    (("--strides", "1,2", "--channels", "4,4,4,4"), "(3 numbers), not 4"),
])
def test_bad_member_flags_are_one_line(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "train", "--dataset", "mnist-sample", "--out", tmp_path / "r", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "summary", *argv)
    assert code == 2 and message in err


def test_summary_of_a_member(capsys):
    code, out, _ = run(capsys, "summary", "--width", 0.5, "--input-size", 16, "--json")
    d = json.loads(out)
    assert code == 0 and d["architecture"] == HALF_16.to_dict() and d["totals"]["total_params"] == 1266
    assert d["layers"][0]["out_shape"] == [16, 16, 4]
    assert d["totals"]["macs"] == sum(layer["macs"] for layer in d["layers"])
    code, out, _ = run(capsys, "summary", "--channels", "4,4,4,8,8,12,12", "--input-size", 16)
    assert out.splitlines()[0] == "Mobile-LeNet member: channels 4,4,4,8,8,12,12, input 16x16"
    assert "Total params: 1,266" in out
    code, out, _ = run(capsys, "summary", "--memory", "--json", "--width", 0.5, "--input-size", 16)
    plan = json.loads(out)["plans"][0]
    # the largest float activation: the stem's 16x16x4 output, two ping-pong buffers of it
    assert plan["buffers"]["values_each"] == 16 * 16 * 4 and plan["ram_bytes"] == 2 * 4 * 16 * 16 * 4
    assert plan["flash_bytes"] == 4 * 1266
