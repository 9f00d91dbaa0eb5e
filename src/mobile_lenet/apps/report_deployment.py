"""The report's deployment section: what the main job measured on the simulated microcontrollers.

``pipeline`` writes ``deployment.json`` (``apps.simulate.deploy``: one simulate report per target and precision,
the models too large for a chip, the targets whose tools are missing) and ``evaluation-int8.json``; the report
shows them when the run folder holds them. Memory is drawn as a bar against the chip's size.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from mobile_lenet.errors import UserError

DEPLOYMENT_FILE = "deployment.json"
INT8_EVALUATION_FILE = "evaluation-int8.json"
STYLE = """
.bar { display: inline-block; width: 8em; height: 0.8em; background: #eee; border: 1px solid #bbb;
       vertical-align: middle; margin-right: 0.4em; }
.bar span { display: block; height: 100%; background: #4c78a8; }
td small { color: #555; }
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
    return "\n".join(parts)
