"""The report's deployment section: what the main job measured on the simulated microcontrollers.

``pipeline`` writes ``deployment.json`` (``apps.simulate.deploy``: one simulate report per target and precision,
the models too large for a chip, the targets whose tools are missing) and ``evaluation-int8.json``; the report
shows them when the run folder holds them. Memory is drawn as a bar against the chip's size; the per-layer
profile of each firmware (``apps.simulate.profile_layers``, in its row of ``deployment.json``) as a chart of
the cost per block (stem, B1, B2, ..., head), bars of each firmware's share beside the counts. A
``deployment.json`` written before the profiles were measured renders without the chart.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from mobile_lenet.errors import UserError

DEPLOYMENT_KEYS = ("count", "results", "skipped")
PROFILE_NUMBERS = ("after_last_layer", "sum", "whole_image", "marks_cost")  # a profile's numbers besides layers

DEPLOYMENT_FILE = "deployment.json"
INT8_EVALUATION_FILE = "evaluation-int8.json"
STYLE = """
.bar { display: inline-block; width: 8em; height: 0.8em; background: #eee; border: 1px solid #bbb;
       vertical-align: middle; margin-right: 0.4em; }
.bar span { display: block; height: 100%; background: #4c78a8; }
td small { color: #555; }
.profile .bar { width: 5em; }
.profile td { white-space: nowrap; }
"""


def read_json_record(path: Path, keys: tuple[str, ...]) -> dict | None:
    """A JSON object the pipeline wrote beside the run (None when absent); one line when it is damaged."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot read ({e}); delete it or run the pipeline again") from None
    if not isinstance(record, dict) or any(key not in record for key in keys):
        raise UserError(f"{path}: not what the pipeline writes (needs {', '.join(keys)}); delete it or run the "
                        f"pipeline again")
    return record


def _profile_problem(profile) -> str | None:
    """What is wrong with a row's recorded per-layer profile (None when it is what ``profile_layers`` writes)."""
    if not isinstance(profile, dict):
        return "not an object"
    if profile.get("counts") not in ("instructions", "cycles"):
        return "counts must be instructions or cycles"
    for key in PROFILE_NUMBERS:
        if not _is_count(profile.get(key), negative=key == "marks_cost"):
            return f"{key} is not a number"
    if not isinstance(profile.get("marks"), int) or isinstance(profile.get("marks"), bool):
        return "marks is not a whole number"
    layers = profile.get("layers")
    if not isinstance(layers, list) or not layers or len(layers) != profile["marks"]:
        return "layers must list one entry per mark"
    for layer in layers:
        if (not isinstance(layer, dict) or not isinstance(layer.get("name"), str)
                or not isinstance(layer.get("block"), str) or not _is_count(layer.get("count"))):
            return "each layer needs a name, a block and a count"
    return None


def _is_count(value, negative: bool = False) -> bool:
    """A finite JSON number (not a bool), at least 0 unless ``negative`` is allowed."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and (negative or value >= 0))


def read_deployment(path: Path) -> dict | None:
    """``deployment.json`` (None when absent), its per-layer profiles checked; one line when it is damaged.
    A record written before the pipeline measured profiles has rows without ``profile``: it is read as is."""
    deployment = read_json_record(path, DEPLOYMENT_KEYS)
    if deployment is None:
        return None
    if not isinstance(deployment["results"], list) or not all(isinstance(row, dict)
                                                              for row in deployment["results"]):
        raise UserError(f"{path}: results is not a list of records; delete it or run the pipeline again")
    for row in deployment["results"]:
        if row.get("profile") is not None:
            problem = _profile_problem(row["profile"])
            if problem:
                raise UserError(f"{path}: the per-layer profile of {row.get('target')} {row.get('precision')} is "
                                f"damaged ({problem}); delete it or run the pipeline again")
    return deployment


def block_counts(profile: dict) -> list[tuple[str, float]]:
    """A profile's counts summed per block of the architecture table, in the order the firmware runs them; what
    runs after the last marked layer (softmax, argmax) goes to the last block (the head)."""
    blocks: dict[str, float] = {}
    for layer in profile["layers"]:
        blocks[layer["block"]] = blocks.get(layer["block"], 0.0) + layer["count"]
    blocks[profile["layers"][-1]["block"]] += profile["after_last_layer"]
    return list(blocks.items())


def _bar(used: int, capacity: int) -> str:
    share = used / capacity
    return (f'<span class="bar" title="{100 * share:.1f}%"><span style="width:{min(100.0, 100 * share):.1f}%">'
            f"</span></span>{used:,} of {capacity:,} B ({100 * share:.1f}%)")


def _row(report: dict) -> str:
    where = f"{html.escape(report['target'])}<br><small>{html.escape(report['chip'])}</small>"
    if not report["fits"]:
        return (f"<tr><td>{where}</td><td>{html.escape(report['precision'])}</td>"
                f"<td colspan=\"5\">does not fit: {html.escape(report['reason'].partition('does not fit: ')[2])}"
                f"</td></tr>")
    unit = report["counts"]
    ram = report["static_ram_bytes"] + report["peak_stack_bytes"]
    latency = (f"{report['ms_per_image_at_clock']:.1f} ms at {report['clock_hz'] / 1e6:g} MHz<br><small>"
               f"{html.escape(report['latency_assumes'])}; {html.escape(report['measure_note'])}</small>")
    return (f"<tr><td>{where}</td><td>{html.escape(report['precision'])}</td>"
            f"<td>{_bar(report['flash_bytes'], report['flash_capacity'])}</td>"
            f"<td>{_bar(ram, report['ram_capacity'])}<br><small>static {report['static_ram_bytes']:,} + peak stack "
            f"{report['peak_stack_bytes']:,}</small></td>"
            f"<td class=\"num\">{report[f'{unit}_per_image']['mean']:,.0f} {unit}</td><td>{latency}</td>"
            f"<td class=\"num\">{report['agreement_with_reference']}/{report['n']}</td></tr>")


def deployment_section(deployment: dict | None, int8_result: dict | None, float_result: dict | None) -> str:
    """The report's "Deployment" section (empty when the run has no int8 model and no simulated firmware)."""
    if deployment is None and int8_result is None:
        return ""
    parts = ["<h2>Deployment</h2>"]
    if int8_result is not None:
        parts.append(f"<p>The int8 model (<code>int8/</code>, quantized by the pipeline): "
                     f"{100 * int8_result['accuracy']:.2f}% on {int8_result['n']:,} test images "
                     f"(<code>{INT8_EVALUATION_FILE}</code>)"
                     + (f", against {100 * float_result['accuracy']:.2f}% for float on {float_result['n']:,} "
                        f"(<code>evaluation.json</code>)" if float_result else "") + ".</p>")
    if deployment is not None:
        parts.append(f"<p>Each firmware was built for the chip and run in its simulator on the first "
                     f"{deployment['count']} test images (<code>mobile-lenet simulate</code>). Flash: code, weights "
                     f"and constants as linked (text + data); RAM: static (data + bss) plus the peak stack measured "
                     f"while it ran; the bars are shares of the chip's memory. The agreement is with the NumPy "
                     f"reference engine's predictions.</p>")
        header = "".join(f"<th>{h}</th>" for h in ("target", "precision", "flash", "RAM", "per image",
                                                   "latency at the chip's clock", "agreement"))
        rows = "\n".join(_row(report) for report in deployment["results"])
        parts.append(f'<table class="deployment">\n<tr>{header}</tr>\n{rows}\n</table>')
        if deployment["skipped"]:
            items = "".join(f"<li>{html.escape(s['target'])}: {html.escape(s['reason'])}</li>"
                            for s in deployment["skipped"])
            parts.append(f"<p>Not simulated, their tools are not installed:</p><ul>{items}</ul>")
        parts.append(profile_chart(deployment))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ profile chart
def _share_cell(count: float, total: float) -> str:
    share = 100 * count / total if total else 0.0
    return (f'<td><span class="bar" title="{share:.1f}%"><span style="width:{share:.1f}%"></span></span>'
            f"{count:,.0f} <small>({share:.1f}%)</small></td>")


def _series_header(row: dict) -> str:
    return (f"<th>{html.escape(row['target'])}<br><small>{html.escape(row['precision'])}, "
            f"{html.escape(row['profile']['counts'])}</small></th>")


def _per_layer_tables(profiled: list[dict]) -> str:
    """The per-layer counts behind the chart, one collapsed table per model (the firmwares of one precision share
    its layers), a column per target."""
    by_layers: dict[tuple, list[dict]] = {}
    for row in profiled:
        by_layers.setdefault(tuple(layer["name"] for layer in row["profile"]["layers"]), []).append(row)
    tables = []
    for names, rows in by_layers.items():
        header = "<th>#</th><th>layer</th>" + "".join(_series_header(row) for row in rows)
        lines = []
        for i, name in enumerate(names):
            cells = "".join(_share_cell(row["profile"]["layers"][i]["count"], row["profile"]["sum"]) for row in rows)
            lines.append(f"<tr><td>{html.escape(str(rows[0]['profile']['layers'][i].get('layer', i + 1)))}</td>"
                         f"<td>{html.escape(name)}</td>{cells}</tr>")
        cells = "".join(_share_cell(row["profile"]["after_last_layer"], row["profile"]["sum"]) for row in rows)
        lines.append(f"<tr><td></td><td>after the last layer (softmax, argmax)</td>{cells}</tr>")
        precisions = ", ".join(sorted({html.escape(row["precision"]) for row in rows}))
        tables.append(f"<details><summary>Per layer, {precisions} ({len(names)} marked layers)</summary>\n"
                      f'<table class="profile">\n<tr>{header}</tr>\n' + "\n".join(lines) + "\n</table></details>")
    return "\n".join(tables)


def profile_chart(deployment: dict) -> str:
    """The per-layer cost chart: for each profiled firmware (a column), the instructions or cycles of each block
    per image, a bar of its share beside the count, the sum against the whole-image count; the per-layer numbers
    below it. Empty but for a line when the record holds no profiles (a pipeline run before they were measured)."""
    fitting = [row for row in deployment["results"] if row.get("fits")]
    profiled = [row for row in fitting if row.get("profile") is not None]
    if not profiled:
        if fitting and all("profile" not in row for row in fitting):
            return ("<p>This <code>deployment.json</code> holds no per-layer profiles (it was written before the "
                    "pipeline measured them): run the pipeline again for the per-layer cost chart.</p>")
        return ""
    blocks: dict[str, None] = {}  # every block, in the order the firmwares run them
    counts = []
    for row in profiled:
        per_block = dict(block_counts(row["profile"]))
        blocks.update(dict.fromkeys(per_block))
        counts.append(per_block)
    header = "<th>block</th>" + "".join(_series_header(row) for row in profiled)
    lines = [f"<tr><td>{html.escape(block)}</td>"
             + "".join(_share_cell(per_block[block], row["profile"]["sum"]) if block in per_block else "<td></td>"
                       for row, per_block in zip(profiled, counts)) + "</tr>" for block in blocks]
    sums = "".join(f"<td>{row['profile']['sum']:,.0f}<br><small>= {row['profile']['whole_image']:,.0f} + "
                   f"{row['profile']['marks_cost']:,.0f} for {row['profile']['marks']} marks</small></td>"
                   for row in profiled)
    lines.append(f"<tr><td>sum</td>{sums}</tr>")
    units = sorted({row["profile"]["counts"] for row in profiled})
    first, last = list(blocks)[0], list(blocks)[-1]
    parts = [
        "<h3>Cost per block on the chip</h3>",
        f"<p>Each firmware was built once more with a measurement mark after every layer "
        f"(<code>mobile-lenet simulate --profile</code>) and run on the same {deployment['count']} test images; "
        f"a cell is the mean per image of the simulator's count between the marks, summed over the layers of a "
        f"block of the architecture table ({', '.join(map(html.escape, blocks))}; the {html.escape(first)} "
        f"includes the input's conversion, the {html.escape(last)} the softmax and argmax after the last layer), "
        f"with a bar of its share of the firmware's total. The unit is "
        f"{' or '.join(units)} per image, as in the table above"
        + (": executed instructions counted by QEMU, which are not cycles (a real chip takes more than one cycle "
           "for some instructions and may add wait states, so a block's share of the time can differ from its "
           "share of instructions)" if "instructions" in units else "")
        + ("; cycles on the AVR, counted by simavr" if "cycles" in units else "")
        + ". A column sums to a little more than the whole-image count above: the marks' own cost, stated in "
          "its last row (the count per image without the marks + the marks').</p>",
        f'<table class="profile">\n<tr>{header}</tr>\n' + "\n".join(lines) + "\n</table>",
        _per_layer_tables(profiled),
    ]
    unprofiled = [row for row in fitting if row.get("profile") is None]
    if unprofiled:
        items = "".join(f"<li>{html.escape(row['target'])} {html.escape(row['precision'])}: "
                        f"{html.escape(row.get('profile_note') or 'no profile recorded')}</li>" for row in unprofiled)
        parts.append(f"<p>Not profiled:</p><ul>{items}</ul>")
    return "\n".join(parts)
