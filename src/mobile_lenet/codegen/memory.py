"""The microcontroller's memory plan: where every activation lives, and what the weights cost in flash.

The plan is what the C generators (``c_float``, ``c_int8``) emit and what ``mobile-lenet summary --memory`` prints, so the
report and the code cannot disagree. It follows the seed's program:

* Two ping-pong buffers (``A`` and ``B``), each sized for the largest activation the network stores.
  A convolution, the GAP and the dense layer read one buffer and write the other; BatchNorm and ReLU work
  in place.
* A ``ZeroPadding2D`` row is never stored: the convolution after it reads the unpadded input and treats
  the missing border as zeros (the same sums, and it keeps the 30x30x8 padded map out of RAM).
* GAP writes into the *other* buffer. Averaging in place, as the upstream Noodle library does, overwrites
  channel 0's plane with the averages of channels 1..23 before channel 0 is averaged (NOODLE_FORMAT.md).

``plan()`` builds the float32 plan; ``int8_plan`` the int8 one, with the same buffers and steps at one byte per
activation and the int8 model's weight bytes (``int8_flash_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mobile_lenet import spec
from mobile_lenet.errors import UserError
from mobile_lenet.spec import LayerKind

FLOAT32 = "float32"
BUFFERS = ("A", "B")


@dataclass(frozen=True)
class Step:
    """One layer of the plan: which buffer it reads, which it writes, and what it stores or reads from flash."""

    layer: spec.Layer
    source: str  # "A" or "B" (the image is converted to floats into A before the first layer)
    target: str  # "A" or "B"; the same as source for in-place layers
    input_shape: tuple  # (H, W, C) of the input as stored in the source buffer (before any folded padding)
    padding: int  # zero padding the convolution applies itself (including a folded ZeroPadding2D row)
    stored: bool  # False for a ZeroPadding2D row folded into the next convolution
    activation_values: int  # values this layer's output occupies in its buffer (0 if not stored)
    live_values: int  # values live in RAM while the layer runs (input plus output unless in place)
    weight_values: int  # values of the weight files this layer reads

    @property
    def in_place(self) -> bool:
        return self.source == self.target


@dataclass(frozen=True)
class Plan:
    """The whole activation plan for one value type."""

    precision: str
    bytes_per_value: int
    steps: tuple
    buffer_values: int  # size of each ping-pong buffer, in values

    @property
    def buffer_bytes(self) -> int:
        return self.buffer_values * self.bytes_per_value

    @property
    def ram_bytes(self) -> int:
        """Static activation RAM: both ping-pong buffers."""
        return len(BUFFERS) * self.buffer_bytes

    @property
    def flash_bytes(self) -> int:
        """Bytes of all weight arrays (what the model costs in flash, code excluded)."""
        return sum(step.weight_values for step in self.steps) * self.bytes_per_value

    @property
    def result_buffer(self) -> str:
        """The buffer that holds the logits when the last layer is done."""
        return self.steps[-1].target


def weight_values(layer: spec.Layer) -> int:
    """Number of values in the weight files of ``layer`` (kernel, bias or BatchNorm parameters)."""
    return layer.params  # every file holds exactly the layer's parameters (spec.noodle_tensors)


def _values(shape: tuple) -> int:
    return int(np.prod(shape))


def plan(precision: str = FLOAT32, arch: spec.Architecture = spec.SEED) -> Plan:
    """The float32 ping-pong plan of the member ``arch`` (see the module docstring)."""
    if precision == "int8":
        return int8_plan(arch)
    if precision != FLOAT32:
        raise UserError(f"unknown precision {precision!r} (float32 or int8)")
    steps = []
    current = BUFFERS[0]  # the input image is converted to floats into buffer A
    carried_padding = 0  # padding of a ZeroPadding2D row waiting for its convolution
    stored_shape = arch.input_shape  # what the current buffer really holds
    for layer in spec.layers(arch):
        other = BUFFERS[1] if current == BUFFERS[0] else BUFFERS[0]
        in_values, out_values = _values(layer.in_shape), _values(layer.out_shape)
        if layer.kind == LayerKind.PAD:
            steps.append(Step(layer, current, current, stored_shape, layer.padding, False, 0, in_values, 0))
            carried_padding += layer.padding
            continue
        if layer.kind in (LayerKind.BN, LayerKind.RELU):
            steps.append(Step(layer, current, current, stored_shape, 0, True, out_values, out_values,
                              weight_values(layer)))
            continue
        # conv, dwconv, gap, dense: read one buffer, write the other
        convolution = layer.kind in (LayerKind.CONV, LayerKind.DWCONV)
        padding = layer.padding + carried_padding if convolution else 0
        if not convolution and carried_padding:
            raise ValueError(f"{layer.name}: a ZeroPadding2D row must be followed by a convolution")
        carried_padding = 0
        in_values = _values(stored_shape)
        steps.append(Step(layer, current, other, stored_shape, padding, True, out_values, in_values + out_values,
                          weight_values(layer)))
        current, stored_shape = other, layer.out_shape
    buffer_values = max([_values(arch.input_shape)] + [s.activation_values for s in steps])
    return Plan(FLOAT32, 4, tuple(steps), buffer_values)


def int8_flash_bytes(layer: spec.Layer) -> int:
    """Flash bytes of the int8 arrays a table row contributes (what ``int8_plan`` counts).

    A convolution or dense row: int8 kernel, int32 bias and int16 multiplier per output channel, with its
    BatchNorm folded in (so a BN row costs nothing); GAP: one int16 multiplier. Shifts and zero points are
    constants in the generated code, like the layer sizes.
    """
    if layer.kind in (LayerKind.CONV, LayerKind.DWCONV, LayerKind.DENSE):
        kernel = layer.trainable_params - (layer.out_channels if layer.bias else 0)
        return kernel * 1 + layer.out_channels * (4 + 2)
    if layer.kind == LayerKind.GAP:
        return 2
    return 0


def int8_plan(arch: spec.Architecture = spec.SEED) -> Plan:
    """The int8 plan (``quantize``): the float plan's buffers and steps with one byte per activation.

    BatchNorm is folded into the convolutions and ReLU into their requantization, so the BN and ReLU rows
    cost nothing. ``weight_values`` counts bytes here (int8 kernels, int32 biases, int16 multipliers; see
    ``int8_flash_bytes``), so ``flash_bytes`` is the int8 model's weight data.
    """
    float_plan = plan(FLOAT32, arch)
    steps = tuple(replace(s, weight_values=int8_flash_bytes(s.layer)) for s in float_plan.steps)
    return Plan("int8", 1, steps, float_plan.buffer_values)


# ------------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class Ring:
    """The rows a convolution keeps of its input in the row schedule (c/ml_rows_s8.h)."""

    layer: str  # the convolution that reads the ring (the stem, or a block's depthwise convolution)
    rows: int  # its kernel height: the rows one output row reads
    row_bytes: int  # one int8 row of its input, padded: (width + 2 x padding) x channels

    @property
    def bytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass(frozen=True)
class RowPlan:
    """The int8 row-by-row schedule: rows flow through small rings instead of whole feature maps."""

    rings: tuple  # the stem's, then each block's
    dw_row_bytes: int  # scratch: the widest depthwise output row
    gap_sum_bytes: int  # int32 sums of the global average pool
    flash_bytes: int  # the int8 weight data (as in int8_plan)
    buffer_plan_ram_bytes: int  # what the same member's buffer plan (int8_plan) needs, for comparison

    @property
    def ram_bytes(self) -> int:
        return sum(ring.bytes for ring in self.rings) + self.dw_row_bytes + self.gap_sum_bytes


def row_plan(arch: spec.Architecture = spec.SEED) -> RowPlan:
    """The row schedule of the member ``arch``: a ring of kernel-many padded input rows for the stem and for each
    depthwise-separable block (pointwise and stem outputs go straight into the next ring), a depthwise scratch
    row and the pooling sums (the rows above and below the plane are ring slots of zero-point bytes)."""
    rings, dw_row, gap_sums = [], 0, 0
    pad = 0  # a ZeroPadding2D row's padding, which the depthwise convolution after it applies itself
    for layer in spec.layers(arch):
        if layer.kind == LayerKind.PAD:
            pad = layer.padding or (layer.out_shape[1] - layer.in_shape[1]) // 2
        elif layer.kind == LayerKind.DWCONV or (layer.kind == LayerKind.CONV and not rings):
            _, in_w, in_c = layer.in_shape if not pad else (0, layer.in_shape[1] - 2 * pad, layer.in_shape[2])
            padding = layer.padding + pad
            rings.append(Ring(layer.name, layer.kernel, (in_w + 2 * padding) * in_c))
            if layer.kind == LayerKind.DWCONV:
                dw_row = max(dw_row, layer.out_shape[1] * layer.out_shape[2])
            pad = 0
        elif layer.kind == LayerKind.GAP:
            gap_sums = 4 * layer.in_shape[-1]
    buffer_plan = int8_plan(arch)
    return RowPlan(tuple(rings), dw_row, gap_sums, buffer_plan.flash_bytes, buffer_plan.ram_bytes)


def row_plan_dict(p: RowPlan) -> dict:
    """The row plan as plain data (``summary --memory --int8 --target atmega2560 --json``)."""
    return {"schedule": "rows", "rings": [{"layer": r.layer, "rows": r.rows, "row_bytes": r.row_bytes,
                                           "bytes": r.bytes} for r in p.rings],
            "dw_row_bytes": p.dw_row_bytes, "gap_sum_bytes": p.gap_sum_bytes,
            "ram_bytes": p.ram_bytes, "flash_bytes": p.flash_bytes, "buffer_plan_ram_bytes": p.buffer_plan_ram_bytes}


def row_plan_text(p: RowPlan) -> list[str]:
    """What ``summary --memory --int8 --target atmega2560`` prints: each buffer of the row schedule."""
    lines = ["int8 row plan (the ATmega2560's schedule, c/ml_rows_s8.c): rows flow through small buffers",
             f"{'buffer':<28} {'holds':<44} {'bytes':>6}", "-" * 80]
    for ring in p.rings:
        lines.append(f"{'ring of ' + ring.layer:<28} {f'{ring.rows} padded input rows of {ring.row_bytes} bytes':<44} "
                     f"{ring.bytes:>6,}")
    lines += [f"{'dw_row':<28} {'one depthwise output row (the widest)':<44} {p.dw_row_bytes:>6,}",
              f"{'gap_sums':<28} {'int32 pooling sums':<44} {p.gap_sum_bytes:>6,}", "-" * 80,
              f"RAM (activations): {p.ram_bytes:,} bytes (the buffer plan: {p.buffer_plan_ram_bytes:,}); "
              f"flash (weights): {p.flash_bytes:,} bytes"]
    return lines


# ------------------------------------------------------------------------------------------------ report
def plan_dict(p: Plan) -> dict:
    """One plan as plain data: per layer and in total."""
    layers = []
    for s in p.steps:
        layers.append({
            "index": s.layer.index, "name": s.layer.name, "kind": s.layer.kind,
            "source": s.source, "target": s.target, "padding": s.padding, "stored": s.stored,
            "output_shape": list(s.layer.out_shape),
            "activation_bytes": s.activation_values * p.bytes_per_value,
            "live_bytes": s.live_values * p.bytes_per_value,
            "flash_bytes": s.weight_values * p.bytes_per_value,
            "files": list(s.layer.files),
        })
    return {
        "precision": p.precision, "bytes_per_value": p.bytes_per_value,
        "buffers": {"count": len(BUFFERS), "values_each": p.buffer_values, "bytes_each": p.buffer_bytes},
        "peak_live_bytes": max(s.live_values for s in p.steps) * p.bytes_per_value,
        "ram_bytes": p.ram_bytes, "flash_bytes": p.flash_bytes, "layers": layers,
    }


def memory_dict(int8: bool = False, arch: spec.Architecture = spec.SEED) -> dict:
    """What ``summary --memory --json`` prints: the float32 plan, and the int8 plan next to it if asked."""
    plans = [plan(FLOAT32, arch)] + ([plan("int8", arch)] if int8 else [])
    result = {"plans": [plan_dict(p) for p in plans]}
    if int8:
        result["int8_vs_float32"] = int8_ratios(*plans)
    return result


def int8_ratios(float_plan: Plan, int8_plan: Plan) -> dict:
    """How many times smaller the int8 plan is: weight bytes in flash and activation RAM."""
    return {"flash": float_plan.flash_bytes / int8_plan.flash_bytes, "ram": float_plan.ram_bytes / int8_plan.ram_bytes}


def _plan_text(p: Plan) -> list[str]:
    header = (f"{'#':>3}  {'layer':<14} {'kind':<7} {'buffers':<12} {'output':<9} {'activation':>10} "
              f"{'live RAM':>9} {'flash':>7}  files")
    lines = [f"{p.precision} plan: two ping-pong buffers A and B of {p.buffer_values:,} values "
             f"({p.buffer_bytes:,} bytes each)", header, "-" * len(header)]
    for s in p.steps:
        buffers = f"{s.source} in place" if s.in_place else f"{s.source} -> {s.target}"
        if not s.stored:
            buffers = f"folded P{s.padding}"
        output = "x".join(str(d) for d in s.layer.out_shape)
        lines.append(f"{s.layer.index:>3}  {s.layer.name:<14} {s.layer.kind:<7} {buffers:<12} {output:<9} "
                     f"{s.activation_values * p.bytes_per_value:>10,} {s.live_values * p.bytes_per_value:>9,} "
                     f"{s.weight_values * p.bytes_per_value:>7,}  {', '.join(s.layer.files) or '-'}")
    lines += ["-" * len(header),
              f"flash (weights): {p.flash_bytes:,} bytes   RAM (activations): {p.ram_bytes:,} bytes "
              f"(2 x {p.buffer_bytes:,}; peak live {max(s.live_values for s in p.steps) * p.bytes_per_value:,})"]
    return lines


def memory_text(int8: bool = False, arch: spec.Architecture = spec.SEED) -> str:
    """What ``summary --memory`` prints: per-layer buffers, activation and flash bytes, and totals."""
    plans = [plan(FLOAT32, arch)] + ([plan("int8", arch)] if int8 else [])
    lines = []
    for p in plans:
        lines += _plan_text(p) + [""]
    if int8:
        ratios = int8_ratios(*plans)
        lines += [f"int8 vs float32: flash {plans[1].flash_bytes:,} vs {plans[0].flash_bytes:,} bytes "
                  f"({ratios['flash']:.2f}x smaller), RAM {plans[1].ram_bytes:,} vs {plans[0].ram_bytes:,} bytes "
                  f"({ratios['ram']:.2f}x smaller). In the int8 plan BatchNorm and ReLU are folded into the "
                  f"convolution before them (no work, no flash); flash counts int8 kernels, int32 biases and "
                  f"int16 multipliers.", ""]
    lines.append("Activation bytes: the layer's output in its buffer. Live RAM: input plus output while it runs. "
                 "ZeroPadding2D rows are folded into the next convolution and never stored.")
    return "\n".join(lines)
