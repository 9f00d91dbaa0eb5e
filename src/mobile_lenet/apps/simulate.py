"""``mobile-lenet simulate``: the model's firmware on a microcontroller instruction set, in a simulator.

``simulate`` builds the firmware for the target (``codegen.mcu_firmware``), runs it in its simulator
(``engines.mcu_simulators``) and sends the test images over the simulated UART with the device client
(``apps.device``), so the firmware's own protocol code runs, as on a board. It reports what the ELF and the
simulator measured: flash, static RAM, peak stack, executed instructions (ARM) or cycles (AVR) per image and
the latency they mean at the chip's clock, accuracy, and agreement with the reference engine.

``trace_layers`` is the layer debugger: every layer's output for one image from the reference engine, the
host C and the firmware in the simulator, compared layer by layer. ``profile_layers`` is the cost of each layer
on the chip: the firmware built with its measurement marker after every layer (``c/ml_trace.h``), run on the
same images, the same counter read at each mark.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from mobile_lenet import spec
from mobile_lenet.apps.device import DeviceLink, run_on_device
from mobile_lenet.codegen.mcu_firmware import (TARGETS, XMEM_RAM_BYTES, DoesNotFit, build_firmware, check_toolchain,
                                              get_target)
from mobile_lenet.engines import registry
from mobile_lenet.engines.host_c import TRACE_PREFIX, c_layer_outputs, parse_trace_line
from mobile_lenet.engines.mcu_simulators import SimulatorRun, check_simulator
from mobile_lenet.engines.reference import reference_layer_outputs, softmax
from mobile_lenet.engines.reference_int8 import int8_layer_outputs
from mobile_lenet.errors import UserError
from mobile_lenet.files import WriteError

REPLY_TIMEOUT_S = 120.0  # per image: a Cortex-M0+ float image is ~100 M simulated instructions
CONFIDENCE_DECIMALS = 4  # the protocol's confidence has 4 decimals
TRACE_LINE_BYTES = 1 << 20  # the layer debugger's longest line: 6,272 float32 in hex
DEPLOY_COUNT = 5  # test images per firmware in the main job: agreement checked, a few seconds per target


WORK_PREFIX = "mobile-lenet-simulate-"


def _lock(folder: Path, wait: bool) -> int | None:
    """An open descriptor of ``folder`` holding its exclusive flock, or None (in use by a live run, or gone)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by the simulators (O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_work_dirs(parent: Path) -> list[Path]:
    """Remove the work folders in ``parent`` that no live run holds: what a ``kill -9`` of ``simulate`` left.

    Each run holds an flock on its work folder while it lives; the kernel drops it when the process dies however
    it dies, in any PID namespace, so a folder whose lock can be taken is stale."""
    removed = []
    for folder in sorted(parent.glob(WORK_PREFIX + "*")):
        fd = _lock(folder, wait=False) if folder.is_dir() and not folder.is_symlink() else None
        if fd is not None:
            try:
                for _ in range(5):  # a compiler the killed run started may still write there for a moment
                    shutil.rmtree(folder, ignore_errors=True)
                    if not folder.exists():
                        break
                    time.sleep(0.2)
                removed.append(folder)
            finally:
                os.close(fd)
    return removed


@contextlib.contextmanager
def _work_dir(work_dir: Path | None):
    """``work_dir``, or a temporary ``mobile-lenet-simulate-*`` folder removed when the run ends, however; one that a
    killed run left is removed by the next run (``remove_stale_work_dirs``)."""
    if work_dir is not None:
        yield Path(work_dir)
        return
    parent = Path(tempfile.gettempdir())
    remove_stale_work_dirs(parent)
    fd = None
    while fd is None:
        try:
            work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=parent))
        except OSError as e:
            raise WriteError(f"{parent}: cannot make a work folder ({e.strerror or e}); set TMPDIR "
                             f"to a folder you can write") from None
        fd = _lock(work, wait=True)
        if fd is not None and os.fstat(fd).st_nlink == 0:  # another run took it for stale before we locked it
            os.close(fd)
            fd = None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        os.close(fd)


def work_folder():
    """A context manager: a ``mobile-lenet-simulate-*`` work folder, held (flock) while it is open and removed when
    it closes; one a killed process left is removed by the next run (the demo keeps one open per target)."""
    return _work_dir(None)


def simulate(model, target_name: str, images: np.ndarray, labels: np.ndarray, *, work_dir: Path | None = None,
             external_ram: bool = False, progress: bool = True, timeout: float = REPLY_TIMEOUT_S,
             **firmware_options) -> dict:
    """Build, run and measure ``model``'s firmware on ``target_name`` for ``images``; returns the report.
    ``firmware_options`` go to ``build_firmware`` (e.g. ``reference_kernels=True`` for a before/after)."""
    target = get_target(target_name)
    images = registry.member_images(model, images)  # the firmware's model takes its member's input size
    with _work_dir(work_dir) as work:
        firmware = build_firmware(model, target, work / "build", external_ram=external_ram, **firmware_options)
        with SimulatorRun(firmware, work) as run:
            with DeviceLink.open(run.port, timeout=timeout) as link:
                link.name = f"{target.name} ({target.simulator})"
                link.image_size = spec.architecture_of(model).input_size
                device = run_on_device(link, images, labels, progress=progress)
    measured = run.measurements
    expected = softmax(registry.real_logits(model, images, "reference"))
    predictions = np.array(device["predictions"])
    confidences = np.array([expected[i, d] for i, d in enumerate(expected.argmax(axis=1))])
    per_image = np.array(measured.per_image, dtype=np.float64)
    if len(per_image) != len(images):
        raise RuntimeError(f"the simulator saw {len(per_image)} inferences for {len(images)} images")
    report = {
        "target": target.name, "chip": target.chip, "simulator": target.simulator,
        "precision": "int8" if firmware.int8 else "float32", "external_ram": external_ram,
        "flash_bytes": firmware.flash_bytes, "flash_capacity": target.flash_bytes,
        "static_ram_bytes": firmware.static_ram_bytes, "peak_stack_bytes": measured.peak_stack_bytes,
        "ram_capacity": XMEM_RAM_BYTES if external_ram else target.ram_bytes, "counts": target.counts,
        f"{target.counts}_per_image": {"mean": float(per_image.mean()), "min": int(per_image.min()),
                                       "max": int(per_image.max())},
        "clock_hz": target.clock_hz,
        # ARM: QEMU counts instructions, not cycles; at about one cycle per instruction (Cortex-M0+/M4 without
        # wait states) that is the latency. AVR: simavr counts cycles.
        "ms_per_image_at_clock": 1000.0 * float(per_image.mean()) / target.clock_hz,
        "latency_assumes": "one cycle per instruction" if target.counts == "instructions" else "measured cycles",
        "measure_note": target.measure_note or (f"{target.counts} counted in {target.simulator}"),
        "n": device["n"], "accuracy": device["accuracy"],
        "agreement_with_reference": int((predictions == expected.argmax(axis=1)).sum()),
        "max_confidence_difference": float(np.max(np.abs(np.array(device["confidences"]) - confidences))),
        "predictions": device["predictions"],
    }
    return report


def format_report(report: dict) -> str:
    """The simulated run in a few lines."""
    unit = report["counts"]
    per_image = report[f"{unit}_per_image"]
    stack = report["peak_stack_bytes"]
    lines = [
        f"{report['target']} ({report['chip']}, {report['precision']}) in {report['simulator']}:",
        f"  flash {report['flash_bytes']:,} of {report['flash_capacity']:,} bytes; static RAM "
        f"{report['static_ram_bytes']:,} + peak stack {stack:,} of {report['ram_capacity']:,} bytes",
        f"  {per_image['mean']:,.0f} {unit} per image (min {per_image['min']:,}, max {per_image['max']:,}): "
        f"{report['ms_per_image_at_clock']:.1f} ms at {report['clock_hz'] / 1e6:g} MHz "
        f"({report['latency_assumes']})",
        *([f"  ({report['measure_note']})"] if report.get("measure_note", "").startswith("instructions counted on") else []),
        f"  accuracy {100 * report['accuracy']:.2f}% ({round(report['accuracy'] * report['n'])}/{report['n']}); "
        f"agrees with the reference engine on {report['agreement_with_reference']}/{report['n']}; confidences "
        f"within {report['max_confidence_difference']:.1e}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ profile
def runs_row_by_row(model, target_name: str | None) -> bool:
    """Whether the target runs ``model`` row by row (the int8 network on a small chip, ``c/ml_rows_s8.c``): its
    layers interleave, so there is no single layer to look at or to profile."""
    return bool(registry.is_int8(model) and target_name and get_target(target_name).int8_schedule != "buffers")


def check_whole_maps(model, target_name: str | None, flag: str) -> None:
    """A look at single layers (``flag``: --layers, --profile) needs whole feature maps; one line if the target
    runs the int8 network row by row, where the layers interleave."""
    if runs_row_by_row(model, target_name):
        raise UserError(f"{target_name} runs the int8 model row by row (c/ml_rows_s8.c), which has no layer "
                        f"debugger or per-layer profile; {flag} works on the targets that keep whole feature maps")


def profile_layers(model, target_name: str, images: np.ndarray, labels: np.ndarray, whole_image: float, *,
                   work_dir: Path | None = None, external_ram: bool = False,
                   timeout: float = REPLY_TIMEOUT_S) -> dict:
    """Instructions (cycles on the AVR) per layer, the mean over ``images``: the profile build's counter between
    the marks after consecutive layers. ``whole_image``: the normal build's mean per image; the profile's sum
    exceeds it by the marks' own cost, which the report states."""
    target = get_target(target_name)
    check_whole_maps(model, target_name, "--profile")
    images = registry.member_images(model, images)
    with _work_dir(work_dir) as work:
        firmware = build_firmware(model, target, work / "profile", external_ram=external_ram, profile=True)
        with SimulatorRun(firmware, work) as run:
            with DeviceLink.open(run.port, timeout=timeout) as link:
                link.image_size = spec.architecture_of(model).input_size
                run_on_device(link, images, labels, progress=False)
    intervals = np.array(run.measurements.per_layer, dtype=np.float64)  # images x (marked layers + 1)
    if intervals.shape != (len(images), len(firmware.layer_marks) + 1):
        raise RuntimeError(f"the profile saw {intervals.shape} marks for {len(images)} images")
    means, names, blocks = intervals.mean(axis=0), layer_names(model), layer_blocks(model)
    total = float(intervals.sum(axis=1).mean())
    return {"counts": target.counts,
            "layers": [{"layer": number, "name": names[number], "block": blocks[number], "count": float(mean)}
                       for number, mean in zip(firmware.layer_marks, means)],
            "after_last_layer": float(means[-1]), "sum": total, "whole_image": whole_image,
            "marks": len(firmware.layer_marks), "marks_cost": total - whole_image}


def format_profile(profile: dict) -> str:
    """The per-layer cost table, with how its sum relates to the whole-image count."""
    unit, total = profile["counts"], profile["sum"]
    lines = [f"{'#':>3}  {'layer':<50} {unit:>12} {'share':>6}", "-" * 75]
    rows = [(str(row["layer"]), row["name"], row["count"]) for row in profile["layers"]]
    for number, name, count in rows + [("", "after the last layer (softmax, argmax)", profile["after_last_layer"])]:
        lines.append(f"{number:>3}  {name[:50]:<50} {count:>12,.0f} {100 * count / total:>5.1f}%")
    lines.append(f"sum {total:,.0f} {unit} = {profile['whole_image']:,.0f} per image without the marks + "
                 f"{profile['marks_cost']:,.0f} for the {profile['marks']} marks themselves (the first layer "
                 f"includes the input's conversion)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ all targets
def missing_tools(target_name: str) -> str | None:
    """None when the target's toolchain and simulator are installed, else the one line that names the package."""
    target = get_target(target_name)
    try:
        check_toolchain(target)
        check_simulator(target)
    except UserError as e:
        return str(e)
    return None


def deploy(models: dict, images: np.ndarray, labels: np.ndarray, log=print) -> dict:
    """The main job's microcontroller step: each model (``{"float32": tensors, "int8": qmodel}``) on every target
    whose tools are installed, in its simulator. A target without its tools is skipped with one line; a model
    too large for a chip is a row that says so. Each firmware that runs is also profiled (``profile_layers``, on
    the same images, so the per-layer sum is the row's whole-image count plus the marks' cost): the row's
    ``profile``, or None and a ``profile_note`` where the target runs the network row by row.
    Returns ``{"count", "results", "skipped"}`` for the report."""
    results, skipped = [], []
    for name, target in TARGETS.items():
        why = missing_tools(name)
        if why:
            log(f"  {name}: skipped ({why})")
            skipped.append({"target": name, "chip": target.chip, "reason": why})
            continue
        for precision, model in models.items():
            try:
                report = simulate(model, name, images, labels, progress=False)
            except DoesNotFit as e:
                log(f"  {name} {precision}: does not fit ({str(e).partition('does not fit: ')[2]})")
                results.append({"target": name, "chip": target.chip, "precision": precision, "fits": False,
                                "reason": str(e), "flash_capacity": target.flash_bytes,
                                "ram_capacity": target.ram_bytes})
                continue
            report["fits"] = True
            log(f"  {name} {precision}: " + deployment_line(report))
            if runs_row_by_row(model, name):
                report.update(profile=None, profile_note="runs the int8 model row by row (c/ml_rows_s8.c): its "
                                                         "layers interleave, so they have no cost of their own")
            else:
                report["profile"] = profile_layers(model, name, images, labels,
                                                   report[f"{report['counts']}_per_image"]["mean"])
            results.append(report)
    return {"count": int(len(images)), "results": results, "skipped": skipped}


def deployment_line(report: dict) -> str:
    """One simulated firmware in a line: memory against the chip's, latency at its clock, agreement."""
    ram = report["static_ram_bytes"] + report["peak_stack_bytes"]
    return (f"flash {report['flash_bytes']:,} of {report['flash_capacity']:,} B, RAM {ram:,} of "
            f"{report['ram_capacity']:,} B, {report['ms_per_image_at_clock']:.1f} ms at "
            f"{report['clock_hz'] / 1e6:g} MHz ({report['latency_assumes']}), agrees with the reference on "
            f"{report['agreement_with_reference']}/{report['n']}")


# ------------------------------------------------------------------------------------------------ layers
def layer_names(model) -> dict[int, str]:
    """Layer number -> name, in the numbering of the layer debugger (table rows; int8: quantized layers)."""
    if registry.is_int8(model):
        return {number: " + ".join(layer.rows) for number, layer in enumerate(model.layers, 1)}
    return {layer.index: layer.name for layer in spec.layers(spec.architecture_of(model))}


def layer_blocks(model) -> dict[int, str]:
    """Layer number -> its block in the architecture table ("stem", "B1".., "head"), numbered as ``layer_names``
    (an int8 layer belongs to the block of the table rows it covers), for the family member the model records."""
    table = spec.layers(spec.architecture_of(model))
    if registry.is_int8(model):
        block_of_row = {layer.name: layer.block for layer in table}
        return {number: block_of_row[layer.rows[0]] for number, layer in enumerate(model.layers, 1)}
    return {layer.index: layer.block for layer in table}


def firmware_layer_outputs(model, target_name: str, image: np.ndarray, work_dir: Path | None = None,
                           external_ram: bool = False, timeout: float = REPLY_TIMEOUT_S,
                           c_standard: str = "c99") -> dict[int, np.ndarray]:
    """Every layer's output for one image, from the firmware built with the layer debugger, in the simulator."""
    target = get_target(target_name)
    outputs = {}
    with _work_dir(work_dir) as work:
        firmware = build_firmware(model, target, work / "trace", trace=True, external_ram=external_ram,
                                  c_standard=c_standard)
        with SimulatorRun(firmware, work) as run, DeviceLink.open(run.port, timeout=timeout) as link:
            link.max_line_bytes, link.image_size = TRACE_LINE_BYTES, spec.architecture_of(model).input_size
            link.wait_ready()
            link.send_image(registry.member_images(model, image[None])[0])
            while True:
                line = link.read_line(time.monotonic() + timeout)
                if line is None or not line.startswith(TRACE_PREFIX):
                    break
                number, values = parse_trace_line(line, firmware.int8)
                outputs[number] = values
    return outputs


def trace_layers(model, target_name: str | None, image: np.ndarray, work_dir: Path | None = None,
                 external_ram: bool = False) -> dict:
    """The layer debugger: per layer, the largest difference of the host C and of the firmware (if a target is
    given) from the reference engine, whether the firmware's values equal the host C's bit for bit, and the
    first layer where each parts from the reference."""
    int8 = registry.is_int8(model)
    check_whole_maps(model, target_name, "--layers")
    image = registry.member_images(model, image[None])[0]  # a 28x28 test image at the member's input size
    reference = int8_layer_outputs(model, image) if int8 else reference_layer_outputs(model, image)
    host = c_layer_outputs(model, image)
    firmware = firmware_layer_outputs(model, target_name, image, work_dir, external_ram) if target_name else None
    names, rows = layer_names(model), []
    for number, ref in reference.items():
        ref = ref.astype(np.float64)
        scale = max(1.0, float(np.abs(ref).max()))
        row = {"layer": number, "name": names[number], "values": int(ref.size),
               "host_c_max_abs_diff": float(np.abs(host[number].astype(np.float64) - ref).max())}
        # Parting: int8 engines must agree exactly; float ones within a rounding error of the values' size.
        row["host_c_parts"] = row["host_c_max_abs_diff"] > (0 if int8 else 1e-4 * scale)
        if firmware is not None:
            values = firmware.get(number)
            if values is None or values.size != ref.size:
                row.update(firmware_max_abs_diff=None, firmware_parts=True, firmware_equals_host_c=False)
            else:
                row["firmware_max_abs_diff"] = float(np.abs(values.astype(np.float64) - ref).max())
                row["firmware_parts"] = row["firmware_max_abs_diff"] > (0 if int8 else 1e-4 * scale)
                row["firmware_equals_host_c"] = values.tobytes() == host[number].tobytes()
        rows.append(row)

    def first(key):
        return next((row["name"] for row in rows if row.get(key)), None)

    return {"target": target_name, "precision": "int8" if int8 else "float32", "layers": rows,
            "host_c_first_parting": first("host_c_parts"),
            "firmware_first_parting": first("firmware_parts") if firmware is not None else None,
            "firmware_bit_exact_layers": (sum(bool(row.get("firmware_equals_host_c")) for row in rows)
                                          if firmware is not None else None)}


def format_layers(report: dict) -> str:
    """The layer debugger's table."""
    firmware = report["target"] is not None
    header = f"{'#':>3}  {'layer':<44} {'values':>6}  {'host C - reference':>18}"
    if firmware:
        header += f"  {report['target'] + ' - reference':>26}  {'= host C':>8}"
    lines = [header, "-" * len(header)]
    for row in report["layers"]:
        line = f"{row['layer']:>3}  {row['name'][:44]:<44} {row['values']:>6}  {row['host_c_max_abs_diff']:>18.3g}"
        if firmware:
            diff = row["firmware_max_abs_diff"]
            line += f"  {'missing' if diff is None else f'{diff:.3g}':>26}  {'yes' if row['firmware_equals_host_c'] else 'NO':>8}"
        lines.append(line)
    lines.append(f"host C parts from the reference at: {report['host_c_first_parting'] or 'no layer'}")
    if firmware:
        lines.append(f"{report['target']} parts from the reference at: {report['firmware_first_parting'] or 'no layer'}; "
                     f"bit-exact with the host C on {report['firmware_bit_exact_layers']}/{len(report['layers'])} layers")
    return "\n".join(lines)
