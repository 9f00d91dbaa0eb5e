"""The main job's choice of data set (full MNIST when at hand, else the bundled sample, offline; every verb that
reads images chooses the same way) and its microcontroller step."""

from mobile_lenet.model import data
from mobile_lenet.model.data import DataError


def test_auto_falls_back_to_the_bundled_sample_offline(monkeypatch):
    messages = []
    monkeypatch.setattr(data, "dataset_available_offline", lambda name: False)

    def offline(name, flag="--dataset"):
        raise DataError("cannot download mnist (offline)")

    monkeypatch.setattr(data, "download", offline)
    assert data.resolve_dataset("auto", None, log=messages.append) == "mnist-sample"
    assert "mnist-sample" in messages[0] and "offline" in messages[0]


def test_auto_uses_mnist_when_cached_or_given(monkeypatch):
    monkeypatch.setattr(data, "dataset_available_offline", lambda name: True)
    assert data.resolve_dataset("auto", None) == "mnist"
    assert data.resolve_dataset("auto", "/some/folder") == "mnist"
    assert data.resolve_dataset("fashion-mnist", None) == "fashion-mnist"


def test_targets_without_their_tools_are_skipped_with_the_package_named(monkeypatch, tmp_path):
    """With no cross compiler or simulator on the PATH the microcontroller step skips every target, one line
    each naming what to install, and builds nothing."""
    import shutil

    import numpy as np

    from mobile_lenet.apps import simulate

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    lines = []
    deployment = simulate.deploy({"float32": {}}, np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8),
                                 log=lines.append)
    assert deployment["results"] == [] and len(deployment["skipped"]) == len(lines) == 4
    for line, skipped in zip(lines, deployment["skipped"]):
        assert line.startswith(f"  {skipped['target']}: skipped") and "apt-get install" in line


def test_a_damaged_deployment_record_is_one_line(tmp_path):
    import pytest

    from mobile_lenet.apps.report_deployment import read_json_record
    from mobile_lenet.errors import UserError

    assert read_json_record(tmp_path / "deployment.json", ("count",)) is None
    (tmp_path / "deployment.json").write_text("[1, 2")
    with pytest.raises(UserError, match="deployment.json: cannot read"):
        read_json_record(tmp_path / "deployment.json", ("count",))
    (tmp_path / "deployment.json").write_text('{"results": []}')
    with pytest.raises(UserError, match="needs count"):
        read_json_record(tmp_path / "deployment.json", ("count",))
