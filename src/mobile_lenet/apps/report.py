"""``mobile-lenet report``: one HTML page that explains a training run, with figures next to it.

The report shows

* the training and validation curves (from the run's ``metrics.csv``),
* the confusion matrix and per-class accuracy of ``best.pt`` on a test split,
* a grid of misclassified test digits (true and predicted label),
* parameters and MACs per layer, and what a standard 3x3 convolution would cost in place of each
  depthwise-separable block -- the seed's point, computed from the architecture table (``spec.layers`` of the
  family member the run trained; the test digits go to its input size as training's validation images do),
* a diagram of the architecture, drawn from the same table,
* the feature maps of one test digit after each stage (stem, B1, B2, ...),
* for a pipeline run, the deployment section (``report_deployment``): the int8 model's accuracy, each
  firmware's memory against its chip's, latency and agreement, and the per-block cost chart of the firmwares
  profiled on the chips.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no display, no global state),
saved as PNG files beside ``index.html``; the page itself has no external references, so the folder can be
copied or attached anywhere.
"""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

from mobile_lenet import spec
from mobile_lenet.apps.evaluation import score
from mobile_lenet.apps.report_deployment import (DEPLOYMENT_FILE, INT8_EVALUATION_FILE, deployment_section,
                                                 read_deployment, read_json_record)
from mobile_lenet.apps.report_deployment import STYLE as DEPLOYMENT_STYLE
from mobile_lenet.engines.reference import softmax
from mobile_lenet.engines.registry import logits, member_images
from mobile_lenet.errors import UserError
from mobile_lenet.files import WriteError, atomic_write, atomic_write_text, check_writable_file, staging_folder
from mobile_lenet.formats.model_files import load_tensors
from mobile_lenet.model.data import load_dataset, to_tensor_input
from mobile_lenet.model.network import from_noodle
from mobile_lenet.spec import LayerKind

STAGES = ("stem",) + tuple(name for name, _, _ in spec.BLOCKS)  # what "after each stage" means
METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
MAX_MISCLASSIFIED = 40  # digits shown in the grid of mistakes
FIGURE_FILES = {"curves": "curves.png", "confusion": "confusion.png", "misclassified": "misclassified.png",
                "architecture": "architecture.png", "costs": "block_costs.png", "feature_maps": "feature_maps.png"}
REPORT_MARK = "<title>Mobile-LeNet report: "  # in the head of every report page: what may be replaced

# Colour of each layer kind in the architecture diagram.
KIND_COLOURS = {
    LayerKind.CONV: "#4c78a8", LayerKind.DWCONV: "#f58518", LayerKind.BN: "#bab0ac", LayerKind.RELU: "#e0e0e0",
    LayerKind.PAD: "#ffffff", LayerKind.GAP: "#54a24b", LayerKind.DENSE: "#b279a2",
}


# ------------------------------------------------------------------------------------------------ stages
def stages(arch: spec.Architecture = spec.SEED) -> tuple[str, ...]:
    """The stages of the member ``arch``: the stem, then its blocks (``STAGES`` for the seed's network)."""
    return ("stem",) + tuple(name for name, _, _ in arch.blocks)


def stage_output_layers(arch: spec.Architecture = spec.SEED) -> dict[str, str]:
    """Stage name -> the table's last layer of that stage (e.g. "B3" -> "B3_pw_relu")."""
    last = {}
    for layer in spec.layers(arch):
        if layer.block in stages(arch):
            last[layer.block] = layer.name
    return {stage: last[stage] for stage in stages(arch)}


def stage_activations(model, image: np.ndarray) -> dict[str, np.ndarray]:
    """Feature maps (C, H, W) after each stage for one uint8 image of the PyTorch ``model``'s input size, via
    ``forward_all``."""

    model.eval()
    with torch.no_grad():
        outputs = model.forward_all(torch.from_numpy(to_tensor_input(image[None])))
    return {stage: outputs[layer][0].numpy() for stage, layer in stage_output_layers(model.architecture).items()}


# ------------------------------------------------------------------------------------------------ costs
@dataclass(frozen=True)
class BlockCost:
    """A depthwise-separable block against the standard 3x3 convolution that it replaces.

    Only the convolution weights and their multiply-accumulates are compared: BatchNorm and ReLU would
    follow either kind of convolution, and the explicit padding row costs nothing.
    """

    block: str
    in_shape: tuple
    out_shape: tuple
    stride: int
    separable_params: int  # depthwise kernel + pointwise kernel
    separable_macs: int
    standard_params: int  # one K x K convolution from C_in to C_out with the same stride
    standard_macs: int

    @property
    def mac_ratio(self) -> float:
        return self.standard_macs / self.separable_macs


def block_costs(arch: spec.Architecture = spec.SEED) -> list[BlockCost]:
    """For each block of ``arch`` (B1, B2, ...): its cost from the table and the cost of a standard convolution in its
    place."""
    costs = []
    for block, stride, _ in arch.blocks:
        rows = [layer for layer in spec.layers(arch) if layer.block == block]
        depthwise = next(layer for layer in rows if layer.kind == LayerKind.DWCONV)
        pointwise = next(layer for layer in rows if layer.kind == LayerKind.CONV)
        h, w, c_out = pointwise.out_shape
        c_in, k = depthwise.in_channels, depthwise.kernel
        standard_params = k * k * c_in * c_out
        costs.append(BlockCost(
            block=block, in_shape=rows[0].in_shape, out_shape=rows[-1].out_shape, stride=stride,
            separable_params=depthwise.trainable_params + pointwise.trainable_params,
            separable_macs=depthwise.macs + pointwise.macs,
            standard_params=standard_params, standard_macs=h * w * standard_params))
    return costs


# ------------------------------------------------------------------------------------------------ run data
def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """The columns of a run's metrics.csv as float arrays; UserError if the file is unusable."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not rows:
        raise UserError(f"{path}: no epochs recorded")
    missing = [c for c in METRIC_COLUMNS if c not in rows[0]]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}")
    try:
        columns = {c: np.array([float(r[c]) for r in rows]) for c in rows[0] if _column_complete(rows, c)}
    except ValueError as e:
        raise UserError(f"{path}: not a number ({e})") from None
    for c in METRIC_COLUMNS:  # validation columns are NaN in a run without a validation split, never infinite
        values = columns.get(c)
        if values is None:
            raise UserError(f"{path}: column {c} has an empty cell")
        bad = np.isinf(values) if c.startswith("val_") else ~np.isfinite(values)
        if bad.any():
            raise UserError(f"{path}: {c} of row {int(np.argmax(bad)) + 1} is {values[bad][0]}, not a finite number")
    misnumbered = columns["epoch"] != np.arange(1, len(rows) + 1)
    if misnumbered.any():
        raise UserError(f"{path}: the epochs are not numbered 1, 2, 3, ... (row {int(np.argmax(misnumbered)) + 1})")
    return columns


def _column_complete(rows: list[dict], column: str) -> bool:
    """True when every row has a value in ``column`` (csv gives None for short rows)."""
    return all(r.get(column) not in (None, "") for r in rows)


def check_run_dir(run_dir: Path) -> dict:
    """Validate a run folder and return its config.json; UserError names what is missing."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    missing = [name for name in ("config.json", "metrics.csv", "best.pt") if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"{run_dir}: not a run folder (missing {', '.join(missing)}); train one with "
                        "`mobile-lenet train --out DIR` or `mobile-lenet pipeline`")
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{run_dir / 'config.json'}: not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{run_dir / 'config.json'}: expected a JSON object")
    return config


# ------------------------------------------------------------------------------------------------ figures
def _new_figure(width: float, height: float):
    """A matplotlib Figure bound to the Agg canvas (safe in threads and without a display)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> str:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    return path.name


def plot_curves(metrics: dict[str, np.ndarray], path: Path) -> str:
    """Loss and accuracy per epoch, training next to validation."""
    fig = _new_figure(10, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = metrics["epoch"]
    for ax, what in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(epochs, metrics[f"train_{what}"], "o-", label="training")
        ax.plot(epochs, metrics[f"val_{what}"], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.set_title(f"{what} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.1f}%")
    if len(epochs) < 15:
        for ax in (loss_ax, acc_ax):
            ax.set_xticks(epochs)
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, path: Path) -> str:
    """The confusion matrix with counts in the cells (rows: true label, columns: prediction)."""
    fig = _new_figure(6.2, 5.4)
    ax = fig.subplots()
    # A log-like scale keeps the off-diagonal mistakes visible next to the large diagonal.
    shown = np.log1p(confusion)
    image = ax.imshow(shown, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        if count:
            dark = shown[i, j] > 0.6 * shown.max()
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ticks = range(len(confusion))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(f"confusion matrix ({int(confusion.sum()):,} test digits)")
    fig.colorbar(image, ax=ax, label="log(1 + count)", shrink=0.8)
    return _save(fig, path)


def plot_misclassified(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                       confidences: np.ndarray, path: Path) -> str:
    """Up to MAX_MISCLASSIFIED wrongly classified digits, each titled "true -> predicted"."""
    wrong = np.flatnonzero(predictions != labels)[:MAX_MISCLASSIFIED]
    columns = 10
    rows = max(1, -(-len(wrong) // columns))
    fig = _new_figure(columns * 1.05, rows * 1.3 + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, wrong):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{labels[i]} → {predictions[i]}\np={confidences[i]:.2f}", fontsize=8)
    fig.suptitle("misclassified test digits: true → predicted (softmax probability of the prediction)"
                 if len(wrong) else "no misclassified digits in the evaluated test images", fontsize=10)
    return _save(fig, path)


def plot_costs(costs: list[BlockCost], path: Path) -> str:
    """MACs of each block as built (depthwise + pointwise) against a standard 3x3 convolution."""
    fig = _new_figure(8, 3.8)
    ax = fig.subplots()
    x = np.arange(len(costs))
    standard = ax.bar(x - 0.2, [c.standard_macs for c in costs], 0.4, label="standard 3x3 convolution",
                      color="#9ecae9")
    separable = ax.bar(x + 0.2, [c.separable_macs for c in costs], 0.4, label="depthwise + pointwise (as built)",
                       color="#f58518")
    ax.bar_label(separable, labels=[f"÷{c.mac_ratio:.1f}" for c in costs], fontsize=8, padding=2)
    ax.bar_label(standard, labels=[f"{c.standard_macs / 1e3:.0f}k" for c in costs], fontsize=8, padding=2)
    ax.set_xticks(x, [f"{c.block}\n{c.in_shape[-1]}→{c.out_shape[-1]} ch, s{c.stride}" for c in costs])
    ax.set_ylabel("multiply-accumulates per image")
    ax.yaxis.set_major_formatter(lambda v, _: f"{v / 1e3:.0f}k")
    ax.set_title("cost of each block: depthwise-separable vs standard convolution")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _short_label(layer: spec.Layer) -> str:
    """A box label for the diagram: what the layer does, without the block prefix."""
    if layer.kind in (LayerKind.CONV, LayerKind.DWCONV):
        what = "dw" if layer.kind == LayerKind.DWCONV else ("pw" if layer.kernel == 1 else "conv")
        return f"{what} {layer.kernel}x{layer.kernel} s{layer.stride}"
    return {LayerKind.BN: "BatchNorm", LayerKind.RELU: "ReLU", LayerKind.PAD: f"pad {layer.padding}",
            LayerKind.GAP: "GAP", LayerKind.DENSE: "dense"}[layer.kind]


def _shape_text(shape: tuple) -> str:
    return "×".join(str(d) for d in shape)


def plot_architecture(path: Path, arch: spec.Architecture = spec.SEED) -> str:
    """The network as columns of boxes, one column per stage and one box per row of the member's table
    (``spec.layers``)."""
    groups = ["input"] + list(stages(arch)) + ["head"]
    table = spec.layers(arch)
    rows_of = {group: [layer for layer in table if layer.block == group] for group in groups}
    tallest = max(len(rows) for rows in rows_of.values())
    box_w, box_h, gap_x, gap_y = 1.6, 0.55, 0.55, 0.18
    fig = _new_figure(len(groups) * 1.4, tallest * 0.55 + 1.8)
    ax = fig.subplots()
    ax.set_xlim(-0.2, len(groups) * (box_w + gap_x))
    ax.set_ylim(-1.6, tallest * (box_h + gap_y) + 0.8)
    ax.axis("off")
    for column, group in enumerate(groups):
        x = column * (box_w + gap_x)
        top = tallest * (box_h + gap_y)
        if group == "input":
            rows, out_shape = [], arch.input_shape
            ax.add_patch(FancyBboxPatch((x, top - box_h), box_w, box_h, boxstyle="round,pad=0.03",
                                        fc="#ffffff", ec="black"))
            ax.text(x + box_w / 2, top - box_h / 2, "image", ha="center", va="center", fontsize=8)
        else:
            rows, out_shape = rows_of[group], rows_of[group][-1].out_shape
        for i, layer in enumerate(rows):
            y = top - (i + 1) * box_h - i * gap_y
            ax.add_patch(FancyBboxPatch((x, y), box_w, box_h, boxstyle="round,pad=0.03",
                                        fc=KIND_COLOURS[layer.kind], ec="black", lw=0.8))
            ax.text(x + box_w / 2, y + box_h / 2, _short_label(layer), ha="center", va="center", fontsize=8.5,
                    color="white" if layer.kind in (LayerKind.CONV, LayerKind.DWCONV, LayerKind.DENSE) else "black")
            if i:  # the data flows down the column
                ax.add_patch(FancyArrowPatch((x + box_w / 2, y + box_h + gap_y), (x + box_w / 2, y + box_h),
                                             arrowstyle="-|>", mutation_scale=7, lw=0.7))
        params = sum(layer.params for layer in rows)
        macs = sum(layer.macs for layer in rows)
        ax.text(x + box_w / 2, top + 0.45, group, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + box_w / 2, -0.35, f"out {_shape_text(out_shape)}", ha="center", va="center", fontsize=9)
        if rows:
            ax.text(x + box_w / 2, -0.8, f"{params:,} params\n{macs / 1e3:,.1f}k MACs", ha="center", va="top",
                    fontsize=8.5, color="#444444")
        if column:  # each stage feeds the next one
            ax.add_patch(FancyArrowPatch((x - gap_x + 0.05, top - box_h / 2), (x - 0.05, top - box_h / 2),
                                         arrowstyle="-|>", mutation_scale=10, lw=1.2))
    legend = [Patch(fc=colour, ec="black", label=spec.KERAS_TYPES[kind]) for kind, colour in KIND_COLOURS.items()]
    ax.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8.5, frameon=False,
              bbox_to_anchor=(0.5, -0.06))
    totals = spec.totals(arch)
    ax.set_title(f"Mobile-LeNet, drawn from the architecture table: {len(table)} layers, "
                 f"{totals['total_params']:,} parameters, {totals['macs']:,} MACs per image", fontsize=11)
    return _save(fig, path)


def plot_feature_maps(image: np.ndarray, activations: dict[str, np.ndarray], label: int, prediction: int,
                      path: Path) -> str:
    """One row per stage: the input digit, then every channel of that stage's output."""
    most_channels = max(a.shape[0] for a in activations.values())
    fig = _new_figure(most_channels * 0.62 + 1.6, (len(activations) + 1) * 0.78 + 0.5)
    axes = fig.subplots(len(activations) + 1, most_channels + 1, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(image, cmap="gray", vmin=0, vmax=255)
    axes[0, 0].set_title(f"input (label {label}, predicted {prediction})", fontsize=8, loc="left")
    for row, (stage, maps) in enumerate(activations.items(), start=1):
        axes[row, 0].text(0.95, 0.5, f"{stage}\n{_shape_text(maps.shape[1:] + maps.shape[:1])}", ha="right",
                          va="center", fontsize=8, transform=axes[row, 0].transAxes)
        for channel, feature_map in enumerate(maps):
            # Each map on its own scale: ReLU outputs differ in range from channel to channel.
            axes[row, channel + 1].imshow(feature_map, cmap="inferno", vmin=0, vmax=max(feature_map.max(), 1e-6))
    fig.suptitle("feature maps after each stage (each channel scaled to its own maximum; black = 0)", fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------ HTML
def _table(header: list[str] | None, rows: list[list], numeric_from: int = 1, css_class: str = "") -> str:
    """An HTML table (no header row if ``header`` is None); columns from ``numeric_from`` on are right-aligned."""
    def cell(tag, value, i):
        align = ' class="num"' if i >= numeric_from else ""
        return f"<{tag}{align}>{html.escape(str(value))}</{tag}>"

    head = "<tr>" + "".join(cell("th", h, i) for i, h in enumerate(header)) + "</tr>\n" if header else ""
    body = "\n".join("<tr>" + "".join(cell("td", v, i) for i, v in enumerate(row)) + "</tr>" for row in rows)
    class_attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{class_attribute}>\n{head}{body}\n</table>"


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
figure { margin: 1em 0; } img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; } th { background: #f4f4f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.facts td:first-child { font-weight: bold; } code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _layer_rows(arch: spec.Architecture = spec.SEED) -> list[list]:
    rows = []
    for layer in spec.layers(arch):
        rows.append([layer.index, layer.name, layer.keras_type, _shape_text(layer.out_shape),
                     f"{layer.params:,}", f"{layer.macs:,}"])
    totals = spec.totals(arch)
    rows.append(["", "total", "", "", f"{totals['total_params']:,}", f"{totals['macs']:,}"])
    return rows


def _cost_rows(costs: list[BlockCost]) -> list[list]:
    rows = [[c.block, f"{_shape_text(c.in_shape)} → {_shape_text(c.out_shape)}", c.stride,
             f"{c.separable_params:,}", f"{c.standard_params:,}", f"{c.separable_macs:,}",
             f"{c.standard_macs:,}", f"{c.mac_ratio:.1f}×"] for c in costs]
    sep_p, std_p = sum(c.separable_params for c in costs), sum(c.standard_params for c in costs)
    sep_m, std_m = sum(c.separable_macs for c in costs), sum(c.standard_macs for c in costs)
    rows.append([_block_range([c.block for c in costs]), "", "", f"{sep_p:,}", f"{std_p:,}", f"{sep_m:,}",
                 f"{std_m:,}", f"{std_m / sep_m:.1f}×"])
    return rows


def _block_range(blocks: list[str]) -> str:
    """A member's blocks by name, first to last: "B1–B6" for the seed's network."""
    return f"{blocks[0]}–{blocks[-1]}" if len(blocks) > 1 else blocks[0]


def render_html(facts: list[tuple[str, str]], figures: dict[str, str], result: dict, costs: list[BlockCost],
                run_name: str, deployment: str = "", arch: spec.Architecture = spec.SEED) -> str:
    """The report page of a run of the member ``arch``; ``figures`` maps a figure's role to its PNG file name
    (beside the page)."""
    per_class = [[digit, "-" if acc is None else f"{100 * acc:.2f}%", sum(result["confusion"][digit])]
                 for digit, acc in enumerate(result["per_class"])]
    totals = spec.totals(arch)
    blocks = _block_range([name for name, _, _ in arch.blocks])
    sep_m = sum(c.separable_macs for c in costs)
    std_m = sum(c.standard_macs for c in costs)
    whole_standard = totals["macs"] - sep_m + std_m
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Mobile-LeNet report: {html.escape(run_name)}</title>
<style>{STYLE}{DEPLOYMENT_STYLE}</style></head>
<body>
<h1>Mobile-LeNet training report</h1>
<p>Run <code>{html.escape(run_name)}</code></p>
{_table(None, [list(f) for f in facts], numeric_from=2, css_class="facts")}

<h2>Training</h2>
{_figure(figures["curves"], "Loss and accuracy per epoch on the training images (with augmentation, as "
                            "trained) and on the held-out validation images.")}

<h2>Test results</h2>
{_figure(figures["confusion"], "Confusion matrix of best.pt on the test images: rows are the true digits, "
                               "columns the predictions; the diagonal holds the correct answers.")}
<h3>Per-class accuracy</h3>
{_table(["digit", "accuracy", "test images"], per_class)}
{_figure(figures["misclassified"], "Test digits the model gets wrong, with the true label, the predicted "
                                   "label and how sure the model was.")}
{deployment}

<h2>Architecture</h2>
{_figure(figures["architecture"], "The network as the architecture table spec.LAYERS describes it: one box "
                                  "per row, one column per stage.")}
<h3>Depthwise-separable blocks vs standard convolutions</h3>
<p>Each block {blocks} replaces one standard 3×3 convolution (C<sub>in</sub> → C<sub>out</sub>, same stride) by a
3×3 depthwise convolution (one filter per channel) followed by a 1×1 pointwise convolution that mixes the
channels. The table compares their weights and multiply-accumulates (MACs) per image, computed from the
architecture table; BatchNorm and ReLU would follow either, so they are left out here. The saving is about
1/C<sub>out</sub> + 1/9 of the standard cost. With standard convolutions in every block the network would need
{whole_standard:,} MACs per image instead of {totals['macs']:,}.</p>
{_table(["block", "shape", "stride", "params (DW+PW)", "params (3×3 conv)", "MACs (DW+PW)", "MACs (3×3 conv)",
         "saving"], _cost_rows(costs))}
{_figure(figures["costs"], "MACs per image of each block as built and with a standard 3×3 convolution.")}
<h3>Parameters and MACs per layer</h3>
{_table(["#", "layer", "type", "output", "params", "MACs"], _layer_rows(arch), numeric_from=4)}

<h2>Feature maps</h2>
{_figure(figures["feature_maps"], "What the network computes for one test digit: every channel after the stem "
                                  "and after each block (the output of its last ReLU).")}
</body></html>
"""


def build_report(run_dir: str | os.PathLike, dataset: str | None = None, data_dir: str | None = None,
                 out: str | os.PathLike | None = None, limit: int | None = None, log=print) -> Path:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report/index.html``); returns the HTML path.

    ``dataset`` / ``data_dir`` default to the run's config.json; ``limit`` evaluates only the first N test
    images (quicker, for tests and previews).
    """
    run_dir = Path(run_dir)
    config = check_run_dir(run_dir)
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    metrics = read_metrics(run_dir / "metrics.csv")
    dataset = dataset or config.get("dataset", "mnist")
    data_dir = data_dir or config.get("data_dir")
    html_path = Path(out) if out else run_dir / "report" / "index.html"
    folder = html_path.parent
    check_writable_file(html_path)  # before the test set is loaded
    check_replaceable(html_path)

    deployment = deployment_section(read_deployment(run_dir / DEPLOYMENT_FILE),
                                    read_json_record(run_dir / INT8_EVALUATION_FILE, ("accuracy", "n")),
                                    read_json_record(run_dir / "evaluation.json", ("accuracy", "n")))
    test_set = load_dataset(dataset, "test", data_dir)
    images, labels = test_set.images[:limit], test_set.labels[:limit]
    if len(labels) == 0:
        raise UserError(f"{dataset}: the test split is empty")
    log(f"evaluating {run_dir / 'best.pt'} on {len(labels):,} test images of {dataset}")
    tensors = load_tensors(run_dir / "best.pt")
    arch = tensors.architecture  # the member the run trained: its images, table, costs and feature maps
    images = member_images(tensors, images)
    probabilities = softmax(logits(tensors, images, "torch"))
    predictions = probabilities.argmax(axis=1)
    result = score(predictions, labels)

    log(f"drawing figures into {folder}")
    costs = block_costs(arch)
    digit = 0  # the first test digit: the same one every time, so reports of different runs compare
    staging = staging_folder(html_path)  # every file is made here first, then renamed into place, the page last
    try:
        figures = {
            "curves": plot_curves(metrics, staging / FIGURE_FILES["curves"]),
            "confusion": plot_confusion(np.array(result["confusion"]), staging / FIGURE_FILES["confusion"]),
            "misclassified": plot_misclassified(images, labels, predictions, probabilities.max(axis=1),
                                                staging / FIGURE_FILES["misclassified"]),
            "architecture": plot_architecture(staging / FIGURE_FILES["architecture"], arch),
            "costs": plot_costs(costs, staging / FIGURE_FILES["costs"]),
            "feature_maps": plot_feature_maps(images[digit], stage_activations(from_noodle(tensors), images[digit]),
                                              int(labels[digit]), int(predictions[digit]),
                                              staging / FIGURE_FILES["feature_maps"]),
        }
        validated = metrics["val_accuracy"]
        if np.isnan(validated).all():
            best = "none (the run had no validation split; best.pt is the last epoch)"
        else:
            best_epoch = int(metrics["epoch"][int(np.nanargmax(validated))])
            best = f"{100 * np.nanmax(validated):.2f}% (epoch {best_epoch}, best.pt)"
        facts = [
            ("data set", f"{dataset}" + (f" (from {data_dir})" if data_dir else "")),
            ("epochs trained", f"{int(metrics['epoch'][-1])}"),
            ("best validation accuracy", best),
            ("test accuracy", f"{100 * result['accuracy']:.2f}% on {result['n']:,} test images"
                              + (" (limited)" if limit and limit < len(test_set) else "")),
            *([] if arch.is_seed else [("network", f"family member: {arch.describe()}")]),
            ("parameters", f"{spec.totals(arch)['total_params']:,}"),
            ("MACs per image", f"{spec.totals(arch)['macs']:,}"),
        ]
        atomic_write_text(staging / html_path.name, render_html(facts, figures, result, costs, str(run_dir),
                                                                          deployment, arch))
        try:
            for name in [*FIGURE_FILES.values(), html_path.name]:
                os.replace(staging / name, folder / name)
        except OSError as e:
            raise WriteError(f"{folder / name}: cannot write ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return html_path


def check_replaceable(html_path: Path) -> None:
    """UserError unless the report's page and figures may be written at ``html_path`` and beside it: each either
    absent or part of a previous report there (never a run's own file, a user's page or an unrelated PNG)."""
    if html_path.name in FIGURE_FILES.values():
        raise UserError(f"{html_path}: that name is one of the report's figures; name the page e.g. index.html")
    previous = html_path.is_file() and REPORT_MARK.encode() in _head(html_path)
    if html_path.exists() and not previous:
        raise UserError(f"{html_path}: exists and is not a mobile-lenet report; choose another --out")
    if not previous:
        taken = [name for name in FIGURE_FILES.values() if (html_path.parent / name).exists()
                 or (html_path.parent / name).is_symlink()]
        if taken:
            raise UserError(f"{html_path.parent / taken[0]}: exists and is not a figure of a report at {html_path} "
                            f"(the figures go beside the page); choose another folder for --out")


def _head(path: Path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""
