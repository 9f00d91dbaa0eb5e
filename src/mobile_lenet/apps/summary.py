"""``mobile-lenet summary``: the architecture table of a family member with parameters and MACs per layer."""

from __future__ import annotations

from mobile_lenet import spec
from mobile_lenet.spec import LayerKind


def shape_text(shape: tuple) -> str:
    return "x".join(str(d) for d in shape)


def summary_dict(arch: spec.Architecture = spec.SEED) -> dict:
    """The table and totals as plain data (what ``summary --json`` prints); a member other than the seed's also
    gives its architecture."""
    member = {} if arch.is_seed else {"architecture": arch.to_dict()}
    return {**member, "layers": [layer.to_dict() for layer in spec.layers(arch)], "totals": spec.totals(arch)}


def summary_text(arch: spec.Architecture = spec.SEED) -> str:
    """The member's table (the seed's by default), plus kernel/stride/padding and MACs per layer, as aligned
    text; a member other than the seed's is named in a first line."""
    header = f"{'#':>3}  {'layer':<14} {'type':<22} {'K/S/P':<7} {'output':<9} {'params':>7} {'MACs':>8}  files"
    lines = ([] if arch.is_seed else [f"Mobile-LeNet member: {arch.describe()}"]) + [header, "-" * len(header)]
    for layer in spec.layers(arch):
        ksp = f"{layer.kernel}/{layer.stride}/{layer.padding}" if layer.kind in (LayerKind.CONV, LayerKind.DWCONV) else ""
        if layer.kind == LayerKind.PAD:
            ksp = f"-/-/{layer.padding}"
        lines.append(f"{layer.index:>3}  {layer.name:<14} {layer.keras_type:<22} {ksp:<7} "
                     f"{shape_text(layer.out_shape):<9} {layer.params:>7,} {layer.macs:>8,}  "
                     f"{', '.join(layer.files) or '-'}")
    t = spec.totals(arch)
    lines += ["-" * len(header),
              f"Total params: {t['total_params']:,}  Trainable: {t['trainable_params']:,}  "
              f"Non-trainable: {t['non_trainable_params']:,}  MACs per image: {t['macs']:,}"]
    return "\n".join(lines)
