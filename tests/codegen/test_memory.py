"""The memory planner: two ping-pong buffers, folded padding, GAP into the other buffer, and its report."""

from __future__ import annotations

import json

import numpy as np

from mobile_lenet.codegen import memory

from mobile_lenet import spec
from mobile_lenet.apps.cli import main


def test_plan_matches_the_seed_buffers():
    plan = memory.plan()
    # NOODLE_FORMAT.md: the largest activation is 28x28x8 floats = 25,088 bytes, two of them.
    assert plan.buffer_values == 28 * 28 * 8
    assert plan.buffer_bytes == 25_088
    assert plan.ram_bytes == 50_176
    # every parameter is one float32 in flash
    assert plan.flash_bytes == 4 * spec.totals()["total_params"] == 13_032


def test_plan_walks_the_table_in_order_and_fits_its_buffers():
    plan = memory.plan()
    assert [s.layer.name for s in plan.steps] == [layer.name for layer in spec.LAYERS]
    for step in plan.steps:
        assert step.activation_values <= plan.buffer_values, step.layer.name
        assert step.source in memory.BUFFERS and step.target in memory.BUFFERS
        if step.layer.kind in ("bn", "relu", "pad"):
            assert step.in_place, step.layer.name
        else:  # convolutions, GAP and dense never overwrite their own input
            assert not step.in_place, step.layer.name
    # each layer reads where the previous one wrote
    for before, after in zip(plan.steps, plan.steps[1:]):
        assert after.source == before.target
    gap = next(s for s in plan.steps if s.layer.kind == "gap")
    assert gap.target != gap.source  # the upstream pitfall: never average in place
    assert plan.result_buffer == plan.steps[-1].target


def test_zero_padding_is_folded_into_the_next_convolution():
    plan = memory.plan()
    by_name = {s.layer.name: s for s in plan.steps}
    for block, stored in (("B3", (28, 28, 8)), ("B5", (14, 14, 16))):
        pad, dw = by_name[f"{block}_pad1"], by_name[f"{block}_dw3x3_s2"]
        assert not pad.stored and pad.activation_values == 0
        assert dw.padding == 1 and dw.input_shape == stored
    # the 30x30x8 padded map would not fit a 28x28x8 buffer: folding is what keeps the seed's sizes
    assert 30 * 30 * 8 > plan.buffer_values
    assert by_name["stem_conv3x3"].padding == 1 and by_name["B1_pw1x1"].padding == 0


def test_report_totals_and_per_layer_bytes():
    data = memory.memory_dict()
    (float_plan,) = data["plans"]
    assert float_plan["precision"] == "float32"
    assert float_plan["ram_bytes"] == 50_176 and float_plan["flash_bytes"] == 13_032
    assert sum(row["flash_bytes"] for row in float_plan["layers"]) == 13_032
    assert len(float_plan["layers"]) == len(spec.LAYERS)
    stem = float_plan["layers"][0]
    assert stem["name"] == "stem_conv3x3" and stem["flash_bytes"] == 4 * 80
    assert stem["activation_bytes"] == 25_088 and stem["live_bytes"] == 4 * (784 + 6272)
    assert float_plan["peak_live_bytes"] == max(row["live_bytes"] for row in float_plan["layers"])
    text = memory.memory_text()
    assert "13,032" in text and "50,176" in text and "B3_pad1" in text and "folded P1" in text


def test_summary_memory_cli(capsys):
    assert main(["summary", "--memory"]) == 0
    assert "flash (weights): 13,032 bytes" in capsys.readouterr().out
    assert main(["summary", "--memory", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(memory.memory_dict()))


def test_weight_values_per_layer():
    assert memory.weight_values(spec.LAYER_BY_NAME["OUT"]) == 250
    assert memory.weight_values(spec.LAYER_BY_NAME["B6_pw_bn"]) == 96
    assert memory.weight_values(spec.LAYER_BY_NAME["GAP"]) == 0
    assert sum(memory.weight_values(layer) for layer in spec.LAYERS) == int(
        sum(np.prod(shape) for _, _, shape in spec.noodle_tensors()))
