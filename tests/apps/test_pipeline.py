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


# deployment.json as the pipeline wrote it before it profiled the firmwares: its rows have no "profile"
OLD_DEPLOYMENT = {
    "count": 5, "dataset": "mnist-sample", "skipped": [],
    "results": [
        {"target": "cortex-m4f", "chip": "STM32F4-class Cortex-M4F", "simulator": "qemu", "precision": "int8",
         "external_ram": False, "flash_bytes": 16_172, "flash_capacity": 1_048_576, "static_ram_bytes": 13_484,
         "peak_stack_bytes": 2_612, "ram_capacity": 131_072, "counts": "instructions",
         "instructions_per_image": {"mean": 1_415_066.0, "min": 1_415_066, "max": 1_415_066},
         "clock_hz": 168_000_000, "ms_per_image_at_clock": 8.42, "latency_assumes": "one cycle per instruction",
         "measure_note": "instructions counted in qemu", "n": 5, "accuracy": 1.0, "agreement_with_reference": 5,
         "max_confidence_difference": 0.0, "predictions": [7, 2, 1, 0, 4], "fits": True},
        {"target": "atmega2560", "chip": "ATmega2560 (AVR)", "precision": "float32", "fits": False,
         "reason": "atmega2560: the float32 model does not fit: static RAM needs 51,026 bytes, 42,834 over the "
                   "chip's 8,192 bytes of SRAM", "flash_capacity": 262_144, "ram_capacity": 8_192}]}

# a profile of two marked layers, small enough to add up by hand: stem 100, head 50 + 10 after the last mark
SMALL_PROFILE = {"counts": "instructions", "after_last_layer": 10.0, "sum": 160.0, "whole_image": 154.0, "marks": 2,
                 "marks_cost": 6.0, "layers": [{"layer": 1, "name": "stem_conv3x3", "block": "stem", "count": 100.0},
                                                {"layer": 2, "name": "OUT", "block": "head", "count": 50.0}]}


def test_a_deployment_record_without_profiles_still_renders(tmp_path):
    """A run folder the pipeline filled before it measured per-layer profiles: the section as before, and one
    line on the missing chart."""
    import json

    from mobile_lenet.apps.report_deployment import deployment_section, read_deployment

    (tmp_path / "deployment.json").write_text(json.dumps(OLD_DEPLOYMENT))
    page = deployment_section(read_deployment(tmp_path / "deployment.json"), None, None)
    assert f"16,172 of 1,048,576 B ({100 * 16_172 / 1_048_576:.1f}%)" in page and "42,834 over" in page
    assert "holds no per-layer profiles" in page and "Cost per block" not in page


def test_the_chart_adds_up_a_profile_by_hand(tmp_path):
    import json

    from conftest import profile_chart_columns
    from mobile_lenet.apps.report_deployment import deployment_section, read_deployment

    record = json.loads(json.dumps(OLD_DEPLOYMENT))
    record["results"][0]["profile"] = SMALL_PROFILE
    (tmp_path / "deployment.json").write_text(json.dumps(record))
    page = deployment_section(read_deployment(tmp_path / "deployment.json"), None, None)
    assert profile_chart_columns(page) == {("cortex-m4f", "int8"): {"stem": (100, 62.5), "head": (60, 37.5)}}
    assert "= 154 + 6 for 2 marks" in page and "holds no per-layer profiles" not in page


def test_a_damaged_profile_record_is_one_line(tmp_path):
    """Every kind of damage to a row's profile is refused in one line naming the file and the firmware."""
    import copy
    import json

    import pytest

    from mobile_lenet.apps.report_deployment import read_deployment
    from mobile_lenet.errors import UserError

    def damaged(change):
        profile = copy.deepcopy(SMALL_PROFILE)
        change(profile)
        return profile

    for profile in ("broken", [], damaged(lambda p: p.update(counts="seconds")), damaged(lambda p: p.pop("sum")),
                    damaged(lambda p: p.update(whole_image="many")), damaged(lambda p: p.update(marks=3)),
                    damaged(lambda p: p.update(marks=True)), damaged(lambda p: p.update(layers=[])),
                    damaged(lambda p: p["layers"][0].pop("block")),
                    damaged(lambda p: p["layers"][1].update(count=-1)),
                    damaged(lambda p: p["layers"][1].update(count=float("nan"))),
                    damaged(lambda p: p["layers"].__setitem__(0, 7))):
        record = json.loads(json.dumps(OLD_DEPLOYMENT))
        record["results"][0]["profile"] = profile
        (tmp_path / "deployment.json").write_text(json.dumps(record))
        with pytest.raises(UserError) as error:
            read_deployment(tmp_path / "deployment.json")
        message = str(error.value)
        assert "\n" not in message and "deployment.json" in message and "cortex-m4f int8" in message, profile
    (tmp_path / "deployment.json").write_text(json.dumps({**OLD_DEPLOYMENT, "results": {"a": 1}}))
    with pytest.raises(UserError, match="results is not a list"):
        read_deployment(tmp_path / "deployment.json")
