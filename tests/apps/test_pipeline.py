"""The main job's choice of data set: full MNIST when at hand, else the bundled sample, offline."""

from mobile_lenet.apps import pipeline
from mobile_lenet.model.data import DataError


def test_auto_falls_back_to_the_bundled_sample_offline(monkeypatch):
    messages = []
    monkeypatch.setattr(pipeline, "dataset_available_offline", lambda name: False)

    def offline(name):
        raise DataError("cannot download mnist (offline)")

    monkeypatch.setattr(pipeline, "download", offline)
    assert pipeline.resolve_dataset("auto", None, log=messages.append) == "mnist-sample"
    assert "mnist-sample" in messages[0] and "offline" in messages[0]


def test_auto_uses_mnist_when_cached_or_given(monkeypatch):
    monkeypatch.setattr(pipeline, "dataset_available_offline", lambda name: True)
    assert pipeline.resolve_dataset("auto", None) == "mnist"
    assert pipeline.resolve_dataset("auto", "/some/folder") == "mnist"
    assert pipeline.resolve_dataset("fashion-mnist", None) == "fashion-mnist"
