"""The architecture table against the seed's own table (parsed from ../shared/seed/mobile-lenet.md)."""

import re

import pytest

from mobile_lenet import spec
from mobile_lenet.apps.summary import summary_dict, summary_text

from conftest import SHARED


def seed_rows():
    """(index, name, type, output shape, params, files) for each of the seed's 43 rows."""
    text = (SHARED / "seed" / "mobile-lenet.md").read_text()
    rows = []
    for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*`(\w+)` \((\w+)\)\s*\|\s*([\d×]+)\s*\|\s*(\d+)\s*\|\s*(.*?)\s*\|$", text, re.M):
        files = tuple(re.findall(r"`(\w+)\.txt`", m.group(6)))
        shape = tuple(int(d) for d in m.group(4).split("×"))
        rows.append((int(m.group(1)), m.group(2), m.group(3), shape, int(m.group(5)), files))
    return rows


def test_seed_table_parsed():
    assert len(seed_rows()) == 43


@pytest.mark.parametrize("row", seed_rows(), ids=lambda r: r[1])
def test_layer_matches_seed(row):
    index, name, keras_type, shape, params, files = row
    layer = spec.LAYERS[index - 1]
    assert (layer.index, layer.name, layer.keras_type, layer.out_shape, layer.params, layer.files) == \
        (index, name, keras_type, shape, params, files)


def test_totals_match_seed():
    text = (SHARED / "seed" / "mobile-lenet.md").read_text()
    total, trainable, non_trainable = (int(re.search(rf"{k} parameters:\*\* \*\*([\d,]+)", text).group(1).replace(",", ""))
                                       for k in ("Total", "Trainable", "Non-trainable"))
    t = spec.totals()
    assert (t["total_params"], t["trainable_params"], t["non_trainable_params"]) == (total, trainable, non_trainable)
    assert (total, trainable, non_trainable) == (3258, 2890, 368)


def test_macs_of_known_layers():
    # stem: 28*28 outputs * 8 channels * 9 taps; B3 pointwise: 14*14 * 16 * 8
    assert spec.LAYER_BY_NAME["stem_conv3x3"].macs == 28 * 28 * 8 * 9
    assert spec.LAYER_BY_NAME["B3_pw1x1"].macs == 14 * 14 * 16 * 8
    assert spec.LAYER_BY_NAME["B5_dw3x3_s2"].macs == 7 * 7 * 16 * 9
    assert spec.LAYER_BY_NAME["OUT"].macs == 240


def test_noodle_tensor_list_is_the_seed_file_list():
    names = [n for n, _, _ in spec.noodle_tensors()]
    assert names == [f"w{i:02d}" for i in range(1, 15)] + ["b01", "b02"] + [f"bn{i:02d}" for i in range(1, 14)]
    lengths = {n: int(__import__("numpy").prod(s)) for n, _, s in spec.noodle_tensors()}
    assert lengths["w01"] == 72 and lengths["w14"] == 240 and lengths["bn13"] == 96 and lengths["w13"] == 576
    # every file's values are exactly the layer's parameters
    assert sum(lengths.values()) == spec.totals()["total_params"]


def test_conv_out():
    assert spec.conv_out(28, 3, 1, 1) == 28
    assert spec.conv_out(30, 3, 2, 0) == 14
    assert spec.conv_out(16, 3, 2, 0) == 7


def test_summary_outputs():
    d = summary_dict()
    assert [layer["name"] for layer in d["layers"]] == [r[1] for r in seed_rows()]
    assert d["totals"]["total_params"] == 3258
    text = summary_text()
    assert "B3_dw3x3_s2" in text and "Total params: 3,258" in text and "Non-trainable: 368" in text
