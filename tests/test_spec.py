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


# ------------------------------------------------------------------------------------------------ the family
def family_params(channels, classes=10):
    """Parameters of a member, counted by hand: stem 3x3 conv with bias and BN (4 per channel); per block a
    3x3 depthwise kernel, BN, a 1x1 pointwise kernel, BN; the dense head with bias."""
    stem = channels[0]
    total = 9 * stem + stem + 4 * stem
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        total += 9 * c_in + 4 * c_in + c_in * c_out + 4 * c_out
    return total + channels[-1] * classes + classes


def test_default_architecture_is_the_seed_table():
    assert spec.layers(spec.Architecture()) == spec.LAYERS == spec.layers()
    assert spec.SEED.is_seed and spec.SEED.channels == (8, 8, 8, 16, 16, 24, 24)
    assert spec.Architecture.from_options() == spec.SEED
    assert spec.Architecture.from_options(width=1.0) == spec.SEED
    assert spec.Architecture.from_options(channels="8,8,8,16,16,24,24", input_size=28) == spec.SEED


@pytest.mark.parametrize("width, expected", [(0.5, 1266), (1.0, 3258), (2.0, 9450)])
def test_width_members_match_the_issue_probe(width, expected):
    # the issue's hand-scaled probe counted 1,266 parameters at alpha 0.5 and 9,450 at alpha 2
    arch = spec.SEED.scaled(width)
    assert spec.totals(arch)["total_params"] == family_params(arch.channels) == expected


@pytest.mark.parametrize("channels", [(1, 1, 1, 1, 1, 1, 1), (4, 4, 4, 8, 8, 16, 16), (3, 5, 7, 11, 13, 17, 19)])
@pytest.mark.parametrize("size", [16, 21, 28, 32])
def test_member_tables(channels, size):
    arch = spec.Architecture(channels, input_size=size)
    table = spec.layers(arch)
    assert [layer.name for layer in table] == [layer.name for layer in spec.LAYERS]  # the seed's names and pattern
    assert spec.totals(arch)["total_params"] == family_params(channels)
    assert sum(int(__import__("numpy").prod(s)) for _, _, s in spec.noodle_tensors(arch)) == family_params(channels)
    # spatial sizes: 'same' at stride 1, ceil(S / 2) after each stride-2 block
    h1, h2 = -(-size // 2), -(-(-(-size // 2)) // 2)
    by_name = {layer.name: layer for layer in table}
    assert by_name["stem_conv3x3"].out_shape == (size, size, channels[0])
    assert by_name["B3_dw3x3_s2"].out_shape == (h1, h1, channels[2])
    assert by_name["B6_pw1x1"].out_shape == (h2, h2, channels[6])
    assert by_name["stem_conv3x3"].macs == size * size * channels[0] * 9
    assert by_name["OUT"].macs == channels[6] * 10


@pytest.mark.parametrize("strides", [(2,), (1, 1), (2, 2, 2, 2, 2), (2, 1, 1, 2, 1, 2, 1, 1), (1,) * 16])
@pytest.mark.parametrize("size", [16, 23, 28])
def test_stride_patterns(strides, size):
    channels = tuple(3 + 2 * i for i in range(len(strides) + 1))
    arch = spec.Architecture.from_options(channels=",".join(map(str, channels)), input_size=size,
                                          strides=",".join(map(str, strides)))
    table = spec.layers(arch)
    assert spec.totals(arch)["total_params"] == family_params(channels)
    # the seed's pattern per block, numbered B1, B2, ...: a pad row before each stride-2 depthwise layer
    names = ["stem_conv3x3", "stem_bn", "stem_relu"]
    for i, stride in enumerate(strides, 1):
        names += [f"B{i}_pad1"] * (stride == 2) + [f"B{i}_dw3x3_s{stride}", f"B{i}_dw_bn", f"B{i}_dw_relu",
                                                    f"B{i}_pw1x1", f"B{i}_pw_bn", f"B{i}_pw_relu"]
    assert [layer.name for layer in table] == names + ["GAP", "OUT"]
    # spatial size: 'same' at stride 1, ceil(S / 2) at stride 2
    side = size
    for i, stride in enumerate(strides, 1):
        side = -(-side // stride)
        assert next(layer for layer in table if layer.name == f"B{i}_pw1x1").out_shape == (side, side, channels[i])
    weight_files = [layer.weight_file for layer in table if layer.kind in (spec.LayerKind.CONV,
                                                                          spec.LayerKind.DWCONV, spec.LayerKind.DENSE)]
    assert weight_files == [f"w{i:02d}" for i in range(1, 2 * len(strides) + 3)]


def test_strides_flag():
    assert spec.Architecture.from_options(strides="1,1,2,1,2,1") == spec.SEED
    assert spec.Architecture.from_options(width=0.5, strides="2,1,1,1,2,1").channels == (4, 4, 4, 8, 8, 12, 12)
    arch = spec.Architecture.from_options(channels="4,6,8", strides="2,2", input_size=16)
    assert arch.blocks == (("B1", 2, 6), ("B2", 2, 8)) and spec.layers(arch)[-3].out_shape == (4, 4, 8)
    assert arch.describe() == "channels 4,6,8, strides 2,2, input 16x16"
    assert spec.Architecture.from_dict(arch.to_dict()) == arch


def test_width_rounds_half_up_and_keeps_one_channel():
    assert spec.SEED.scaled(0.75).channels == (6, 6, 6, 12, 12, 18, 18)
    assert spec.SEED.scaled(0.3125).channels == (3, 3, 3, 5, 5, 8, 8)  # 2.5 -> 3, 5.0, 7.5 -> 8
    assert spec.SEED.scaled(0.01).channels == (1,) * 7


def test_width_too_wide_names_the_width_and_its_bound():
    # the seed's widest layer has 24 channels: 24 x 10.68 = 256.3 rounds to 256, 24 x 10.6875 = 256.5 to 257
    assert max(spec.SEED.scaled(10.68).channels) == 256
    with pytest.raises(spec.UserError, match=r"^width 10.6875 makes the widest layer 257 channels.*under 10.6875$"):
        spec.SEED.scaled(10.6875)


def test_architecture_record_round_trips():
    arch = spec.Architecture.from_options(width=0.5, input_size=16)
    assert spec.Architecture.from_dict(arch.to_dict()) == arch
    assert arch.describe() == "channels 4,4,4,8,8,12,12, input 16x16"


@pytest.mark.parametrize("options, message", [
    ({"width": 0.5, "channels": "4,4,4,8,8,16,16"}, "give one of the two"),
    ({"width": 0}, "width must be a number above 0"),
    ({"width": float("nan")}, "width must be a number above 0"),
    ({"channels": "4,4,4"}, "7 numbers"),
    ({"channels": "4,4,x,8,8,16,16"}, "whole numbers separated by commas"),
    ({"channels": "4,4,0,8,8,16,16"}, "from 1 to 256"),
    ({"input_size": 15}, "from 16 to 32"),
    ({"input_size": 33}, "from 16 to 32"),
    ({"strides": "1,2"}, "give --channels with 3 numbers"),
    ({"strides": "1,2", "width": 0.5}, "give --channels with 3 numbers"),
    ({"strides": "1,3"}, "each 1 or 2, not 1,3"),
    ({"strides": "0"}, "each 1 or 2"),
    ({"strides": ",".join(["1"] * 17), "channels": ",".join(["4"] * 18)}, "1 to 16 numbers"),
    ({"strides": "1;2"}, "strides must be whole numbers separated by commas"),
    ({"strides": "1,2", "channels": "4,4,4,4"}, "the 2 blocks' output channels \\(3 numbers\\), not 4"),
])
def test_bad_options_are_one_line_user_errors(options, message):
    from mobile_lenet.errors import UserError

    with pytest.raises(UserError, match=message) as info:
        spec.Architecture.from_options(**options)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("record", [None, [], {"channels": [8]}, {"channels": "8", "strides": [], "input_size": 28},
                                    {"channels": [8] * 7, "strides": [1] * 6, "input_size": 99}])
def test_bad_records_are_refused(record):
    from mobile_lenet.errors import UserError

    with pytest.raises(UserError, match="^x.pt: its architecture"):
        spec.Architecture.from_dict(record, "x.pt")
