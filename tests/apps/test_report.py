"""``mobile-lenet report``: the HTML page renders, every figure it shows is a valid PNG, costs add up."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image

from conftest import MNIST_10K
from mobile_lenet.apps import report
from mobile_lenet import spec
from mobile_lenet.apps.cli import main
from mobile_lenet.errors import UserError

TEST_IMAGES = 300  # a small test subset keeps the evaluation quick


@pytest.fixture(scope="module")
def report_html(trained_run, tmp_path_factory):
    """A report of trained_run, written by the CLI into a folder of its own."""
    out = tmp_path_factory.mktemp("report") / "index.html"
    assert main(["report", str(trained_run), "--dataset", "mnist", "--data-dir", str(MNIST_10K),
                 "--limit", str(TEST_IMAGES), "--out", str(out)]) == 0
    return out


def test_every_figure_of_the_page_exists_and_is_a_valid_png(report_html):
    page = report_html.read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 6
    for source in sources:
        path = report_html.parent / source
        assert path.is_file(), source
        with Image.open(path) as png:
            assert png.format == "PNG"
            png.verify()


def test_the_page_is_self_contained_and_tells_the_results(report_html):
    page = report_html.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    assert f"on {TEST_IMAGES} test images (limited)" in page
    for heading in ("Training", "Test results", "Per-class accuracy", "Architecture", "Feature maps"):
        assert f">{heading}</h" in page
    for layer in spec.LAYERS:  # the per-layer table lists the whole architecture table
        assert f"<td>{layer.name}</td>" in page
    assert f"{spec.totals()['macs']:,}" in page


def test_default_location_is_the_run_folder(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    html_path = report.build_report(run, dataset="mnist", data_dir=str(MNIST_10K), limit=50, log=lambda s: None)
    assert html_path == run / "report" / "index.html"
    assert (run / "report" / "curves.png").is_file()


def test_block_costs_are_those_of_the_architecture_table():
    costs = {c.block: c for c in report.block_costs()}
    assert list(costs) == ["B1", "B2", "B3", "B4", "B5", "B6"]
    b3 = costs["B3"]  # 30x30x8 padded, 3x3 stride 2 -> 14x14, then 1x1 to 16 channels
    assert b3.separable_params == 8 * 9 + 8 * 16
    assert b3.separable_macs == 14 * 14 * 8 * 9 + 14 * 14 * 8 * 16
    assert b3.standard_params == 9 * 8 * 16
    assert b3.standard_macs == 14 * 14 * 9 * 8 * 16
    for block, stride, c_out in spec.BLOCKS:
        rows = [layer for layer in spec.LAYERS if layer.block == block and layer.kind in ("conv", "dwconv")]
        assert costs[block].separable_macs == sum(layer.macs for layer in rows)
        assert costs[block].stride == stride and costs[block].out_shape[-1] == c_out
        # The textbook ratio: separable / standard = 1/C_out + 1/K^2.
        assert 1 / costs[block].mac_ratio == pytest.approx(1 / c_out + 1 / 9)


def test_stage_activations_follow_the_table(trained_tensors, mnist_test):
    from mobile_lenet.model.network import from_noodle

    maps = report.stage_activations(from_noodle(trained_tensors), mnist_test.images[0])
    assert list(maps) == list(report.STAGES)
    for stage, layer_name in report.stage_output_layers().items():
        h, w, c = spec.LAYER_BY_NAME[layer_name].out_shape
        assert maps[stage].shape == (c, h, w)
        assert (maps[stage] >= 0).all()  # after the stage's ReLU


@pytest.mark.parametrize("make_bad", ["missing", "empty_folder", "no_metrics", "bad_metrics"])
def test_bad_run_dir_is_a_one_line_error(tmp_path, trained_run, capsys, make_bad):
    run = tmp_path / "run"
    if make_bad != "missing":
        run.mkdir()
    if make_bad in ("no_metrics", "bad_metrics"):
        for name in ("config.json", "best.pt"):
            shutil.copy(trained_run / name, run / name)
    if make_bad == "bad_metrics":
        (run / "metrics.csv").write_text("epoch,loss\n1,0.5\n")
    assert main(["report", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("mobile-lenet: error:") and "\n" not in error and str(run) in error


def test_a_damaged_deployment_record_stops_the_report_in_one_line(tmp_path, trained_run, capsys):
    """A run whose deployment.json has a damaged per-layer profile: one line, before any file is written."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.json", "metrics.csv", "best.pt"):
        shutil.copy(trained_run / name, run / name)
    record = {"count": 1, "skipped": [], "results": [{"target": "esp32", "precision": "float32", "fits": True,
                                                      "profile": {"counts": "instructions", "layers": "many"}}]}
    (run / "deployment.json").write_text(json.dumps(record))
    assert main(["report", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "deployment.json: the per-layer profile of esp32 float32 is damaged" in error
    assert not (run / "report").exists()


def test_limit_must_be_positive(trained_run):
    with pytest.raises(UserError, match="--limit"):
        report.build_report(trained_run, limit=0)
