"""Planted faults: does the test suite catch realistic single mistakes? (issue 16)

Each fault below is one small, realistic edit of the package (a BatchNorm epsilon, a padding offset, a swapped
kernel index, a rounding mode, a zero-point sign, a byte order, a stride, a timeout...). For each, this script
copies the repository (tracked and untracked-but-not-ignored files, never .venv) into a scratch folder once,
applies the one edit there, runs only the tests that concern that code (``-x``: the first failure kills the
fault), and restores the file. The shared working tree is never touched.

    .venv/bin/python tests/mutation/planted_faults.py                 # every fault: a table and the score
    .venv/bin/python tests/mutation/planted_faults.py softmax serial  # only faults whose name contains a word
    .venv/bin/python tests/mutation/planted_faults.py --list          # the faults, not run
    .venv/bin/python tests/mutation/planted_faults.py --head-c C      # C faults on the last committed C
    .venv/bin/python tests/mutation/planted_faults.py --issue-25      # only the faults issue 25 added

A fault is "killed" when its tests fail (or time out), "SURVIVED" when they pass, "stale" when its code is no
longer in the source (the script's strings need updating, counted as neither). The copy's ``src`` comes first
on ``PYTHONPATH``, ahead of the venv's editable install of the original (checked before the run).

Not a test module (no ``test_`` prefix): pytest does not collect it. EQUIVALENT lists edits considered and
left out because no correct test can tell them from the original.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "src/mobile_lenet"
TIMEOUT_S = 600


@dataclass(frozen=True)
class Fault:
    name: str
    path: str  # relative to src/mobile_lenet
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files, relative to the repository root
    why: str = ""


T = "tests/"
REF = T + "engines/test_reference.py"
C_UNITS = T + "codegen/test_c_kernels.py::test_c_unit_tests_pass"
DEVICE = T + "apps/test_device.py"
TRAINING = T + "model/test_training.py"
DATA = T + "model/test_data.py"
QUANT = T + "quantization/test_quantize.py"
C_INT8 = T + "codegen/test_c_int8.py"
C_FLOAT = T + "codegen/test_c_float.py"
HOST_C = T + "engines/test_host_c.py"
EVAL = T + "apps/test_evaluation.py"
DEMO = T + "apps/test_demo_api.py"
MCU_SIM = T + "engines/test_mcu_simulators.py"
MCU_FW = T + "codegen/test_mcu_firmware.py"
SIMULATE = T + "apps/test_simulate.py"
BAD = T + "apps/test_bad_inputs.py"
FILES = T + "test_files.py"
FILE_MODES = T + "test_files_modes.py"  # the modes of written files, under two umasks
NOODLE = T + "formats/test_noodle.py"
TEACHER = T + "model/test_teacher.py"
ROWS = T + "codegen/test_rows_s8.py"
ROWS_K = T + "codegen/test_rows_kernels.py"
HOST_FAST = T + "engines/test_host_c_fast.py"
HOST_FAST8 = T + "engines/test_host_c_int8_fast.py"
# the C int8 engine, an independent implementation, against the NumPy one on the seed author's model (sound on any
# machine, unlike the CLI test's accuracy floor on the briefly trained fixture)
UPSTREAM_INT8_C = C_INT8 + "::test_upstream_model_agrees_bit_for_bit"
TIMER_TEST = "test_timer_interrupts_are_left_out_of_the_count_exactly"
CONFIDENCE_TEST = "test_confidences_match_the_reference_softmax_of_the_dequantized_logits"
DISTILL_LOSS_TEST = "test_distillation_loss_is_the_weighted_sum_of_label_and_teacher_terms"

FAULTS = [
    # ---------------------------------------------------------------- the nine that once survived (issue 16)
    Fault("softmax without max-subtraction", "engines/reference.py",
          "z = np.exp(logits - logits.max(axis=-1, keepdims=True))", "z = np.exp(logits)",
          (REF + "::test_softmax_matches_a_float64_oracle_at_any_scale",)),
    Fault("serial seconds truncated, not rounded", "c/mobile_lenet_serial.c",
          "elapsed_us / 100u + (elapsed_us % 100u >= 50u ? 1u : 0u)", "elapsed_us / 100u", (C_UNITS,)),
    Fault("serial: a received byte does not restart the timeout", "c/mobile_lenet_serial.c",
          "    link->image[link->received++] = byte;\n    link->last_activity_ms = now_ms;\n",
          "    link->image[link->received++] = byte;\n",
          (DEVICE + "::test_an_image_that_straddles_the_timeout_is_not_dropped", C_UNITS)),
    Fault("IDX/npz label 10 accepted", "model/data.py", "labels.max() > 9:", "labels.max() > 10:",
          (DATA,)),
    Fault("CSV label 10 accepted", "model/data.py", "not 0 <= values[0] <= 9", "not 0 <= values[0] <= 10",
          (DATA,)),
    Fault("device read timeout = the whole timeout, overshooting deadlines", "apps/device.py",
          "timeout=READ_SLICE_S, write_timeout=timeout", "timeout=timeout, write_timeout=timeout",
          (DEVICE + "::test_read_line_keeps_a_deadline_shorter_than_the_timeout",
           DEVICE + "::test_device_that_never_answers_times_out")),
    Fault("per-epoch BN calibration on the validation split", "model/training.py",
          "calibrate_batchnorm(result, train_split.images[:EPOCH_CALIBRATION_IMAGES])",
          "calibrate_batchnorm(result, val_split.images[:EPOCH_CALIBRATION_IMAGES])",
          (TRAINING + "::test_batchnorm_is_calibrated_on_training_images_only",)),
    Fault("BN variance over n - 1", "model/training.py",
          "(sq_total / n - mean * mean).clamp_(min=0)", "((sq_total - n * mean * mean) / (n - 1)).clamp_(min=0)",
          (TRAINING + "::test_calibrated_statistics_match_a_float64_oracle_on_every_layer",)),
    Fault("demo ignores invert=yes", "apps/demo.py",
          'if invert == "yes" or (invert == "auto" and looks_dark_on_light(gray)):',
          'if invert == "auto" and looks_dark_on_light(gray):', (DEMO + "::test_each_invert_option_does_what_it_says",)),
    Fault("per-class accuracy computed as precision", "apps/evaluation.py",
          "float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None",
          "float(confusion[c, c] / confusion[:, c].sum()) if confusion[:, c].sum() else None", (EVAL,)),
    Fault("confusion matrix transposed", "apps/evaluation.py",
          "(labels.astype(np.int64), predictions.astype(np.int64))",
          "(predictions.astype(np.int64), labels.astype(np.int64))", (EVAL,)),
    # ---------------------------------------------------------------- reference engine, spec, network
    Fault("BN epsilon 1e-5 instead of Keras' 1e-3", "spec.py", "BN_EPSILON = 1e-3", "BN_EPSILON = 1e-5",
          (REF + "::test_upstream_noodle_files_agree_with_the_keras_model_on_all_test_images",)),
    Fault("reference: padding offset (2 before, 0 after)", "engines/reference.py",
          "(padding, padding), (padding, padding)))", "(padding + 1, padding - 1), (padding, padding)))",
          (REF + "::test_conv2d_matches_torch",)),
    Fault("reference: window uses dy for both axes", "engines/reference.py",
          "dx:dx + stride * (out_w - 1) + 1:stride]", "dy:dy + stride * (out_w - 1) + 1:stride]",
          (REF + "::test_conv2d_matches_torch",)),
    Fault("reference: conv kernel index swapped", "engines/reference.py",
          "weight[:, :, dy, dx] @ window", "weight[:, :, dx, dy] @ window", (REF + "::test_conv2d_matches_torch",)),
    Fault("reference: depthwise kernel index swapped", "engines/reference.py",
          "weight[:, dy, dx].reshape(1, c, 1, 1)", "weight[:, dx, dy].reshape(1, c, 1, 1)",
          (REF + "::test_depthwise_conv2d_matches_torch",)),
    Fault("reference: BN without the square root", "engines/reference.py",
          "/ np.sqrt(var + np.float32(eps)) + beta", "/ (var + np.float32(eps)) + beta",
          (REF + "::test_batch_norm_relu_gap_dense_softmax_match_torch",)),
    Fault("reference: GAP divides by the height only", "engines/reference.py",
          "x.mean(axis=(2, 3), dtype=np.float32)", "x.sum(axis=(2, 3), dtype=np.float32) / x.shape[2]",
          (REF + "::test_batch_norm_relu_gap_dense_softmax_match_torch",)),
    Fault("reference: dense without bias", "engines/reference.py", "return x @ weight.T + bias",
          "return x @ weight.T", (REF + "::test_batch_norm_relu_gap_dense_softmax_match_torch",)),
    Fault("input scaled by 1/256", "model/data.py", "/ np.float32(255.0)", "/ np.float32(256.0)",
          (DATA + "::test_input_scaling",)),
    Fault("spec: output size ignores one side's padding", "spec.py",
          "return (width + 2 * padding - kernel) // stride + 1", "return (width + padding - kernel) // stride + 1",
          (T + "test_spec.py",)),
    Fault("network: depthwise conv without groups", "model/network.py",
          "groups=layer.in_channels, bias=layer.bias", "bias=layer.bias", (T + "model/test_network.py",)),
    # ---------------------------------------------------------------- int8 arithmetic and quantization
    Fault("int8: rounding shift floors (no half added)", "quantization/arithmetic.py",
          "return (value + (np.int64(1) << np.int64(shift - 1))) >> np.int64(shift)",
          "return value >> np.int64(shift)", (QUANT,)),
    Fault("int8: output zero point subtracted", "quantization/arithmetic.py", "scaled += zero_point",
          "scaled -= zero_point", (QUANT,)),
    Fault("int8: fused ReLU floor forgotten", "quantization/arithmetic.py",
          "low = max(zero_point, INT8_MIN) if relu else INT8_MIN", "low = INT8_MIN", (QUANT,)),
    Fault("int8: input zero point -127", "quantization/arithmetic.py", "INPUT_ZERO_POINT = -128",
          "INPUT_ZERO_POINT = -127", (QUANT,)),
    Fault("int8 engine: zero point added, not subtracted", "engines/reference_int8.py",
          "x.astype(np.int32) - np.int32(layer.in_zero_point)", "x.astype(np.int32) + np.int32(layer.in_zero_point)",
          (QUANT, UPSTREAM_INT8_C)),
    Fault("int8 engine: GAP forgets the zero point", "engines/reference_int8.py",
          "acc = centred.sum(axis=(2, 3), dtype=np.int32)", "acc = x.astype(np.int32).sum(axis=(2, 3))",
          (QUANT, UPSTREAM_INT8_C)),
    Fault("quantize: activation zero point sign", "quantization/quantize.py",
          "round(INT8_MIN - lo / scale)", "round(INT8_MIN + lo / scale)", (QUANT,)),
    Fault("quantize: biases truncated, not rounded", "quantization/quantize.py",
          "bias = np.round(op.bias / accumulator_scale)", "bias = np.trunc(op.bias / accumulator_scale)", (QUANT,)),
    # ---------------------------------------------------------------- the hand-written C
    Fault("C int8: requantization floors", "c/ml_kernels_s8.c",
          "(int64_t)acc * multiplier + ((int64_t)1 << (shift - 1))) >> shift", "(int64_t)acc * multiplier) >> shift",
          (C_UNITS,)),
    Fault("C int8: fused ReLU floor ignored", "c/ml_kernels_s8.c", "if (value < low) value = low;",
          "if (value < -128) value = -128;", (C_UNITS,)),
    Fault("C int8: dense zero point added", "c/ml_kernels_s8.c", "acc += ((int32_t)in[i] - in_zp)",
          "acc += ((int32_t)in[i] + in_zp)", (C_UNITS,)),
    Fault("C int8: GAP zero point added", "c/ml_kernels_s8.c", "sum += (int32_t)in[c * plane + i] - in_zp;",
          "sum += (int32_t)in[c * plane + i] + in_zp;", (C_UNITS,)),
    Fault("C: padding bound rounds down", "c/ml_padding.h", "(-offset + stride - 1) / stride", "(-offset) / stride",
          (C_UNITS,)),
    Fault("C float: stride ignored on strided rows", "c/ml_kernels_f32.c", "in_row[ox * stride + offset]",
          "in_row[ox + offset]", (C_UNITS,)),
    Fault("C float: epsilon outside the square root", "c/ml_kernels_f32.c",
          "sqrtf(ML_FLASH_F32(&variance[c]) + epsilon)", "sqrtf(ML_FLASH_F32(&variance[c])) + epsilon", (C_UNITS,)),
    Fault("C float: depthwise kernel index swapped", "c/ml_kernels_f32.c", "(c * kernel + ky) * kernel + kx",
          "(c * kernel + kx) * kernel + ky", (C_UNITS,)),
    Fault("C serial: timeout one tick late", "c/mobile_lenet_serial.c", "< (uint32_t)ML_TIMEOUT_MS) return",
          "<= (uint32_t)ML_TIMEOUT_MS) return", (C_UNITS,)),
    Fault("C serial: confidence truncated", "c/mobile_lenet_serial.c", "confidence * 10000.0f + 0.5f",
          "confidence * 10000.0f", (C_UNITS,)),
    Fault("C serial: timeout keeps the partial image", "c/mobile_lenet_serial.c",
          "    link->received = 0; /* a partial image is stale", "    /* a partial image is stale", (C_UNITS,)),
    Fault("C softmax without max-subtraction", "c/mobile_lenet_api.c", "expf(logits[i] - largest)",
          "expf(logits[i])", (T + "codegen/test_c_kernels.py::test_c_softmax_matches_a_float64_oracle_at_large_logits",)),
    # ---------------------------------------------------------------- file formats
    Fault("IDX magic read little-endian", "model/data.py", 'magic = int.from_bytes(raw[:4], "big")',
          'magic = int.from_bytes(raw[:4], "little")', (DATA,)),
    Fault("IDX written little-endian", "model/data.py", 'd.to_bytes(4, "big") for d in array.shape',
          'd.to_bytes(4, "little") for d in array.shape', (DATA,)),
    Fault("Noodle .bin written big-endian", "formats/noodle.py", 'np.asarray(values, dtype="<f4")',
          'np.asarray(values, dtype=">f4")', (T + "formats/test_noodle.py",)),
    Fault("Noodle .bin read big-endian", "formats/noodle.py", 'np.frombuffer(data, dtype="<f4")',
          'np.frombuffer(data, dtype=">f4")', (T + "formats/test_noodle.py",)),
    Fault("Keras conv kernel transposed (Kw, Kh)", "formats/keras.py", "variables[0].transpose(3, 2, 0, 1)",
          "variables[0].transpose(3, 2, 1, 0)", (T + "formats/test_keras.py",)),
    Fault("Keras depthwise kernel transposed", "formats/keras.py", "variables[0][:, :, :, 0].transpose(2, 0, 1)",
          "variables[0][:, :, :, 0].transpose(2, 1, 0)", (T + "formats/test_keras.py",)),
    # ---------------------------------------------------------------- data, images, training
    Fault("validation split overlaps training by one", "model/data.py",
          "val, train = order[:n_val], order[n_val:]", "val, train = order[:n_val], order[n_val - 1:]",
          (DATA + "::test_validation_split_is_disjoint_and_seeded",)),
    Fault("MNIST-style centring off by half a pixel", "model/images.py", "top = int(round(SIZE / 2 - 0.5 - cy))",
          "top = int(round(SIZE / 2 - cy))", (T + "model/test_images.py",)),
    Fault("MNIST-style box 22 pixels", "model/images.py", "INNER_BOX = 20", "INNER_BOX = 22",
          (T + "model/test_images.py",)),
    Fault("dark-on-light test inverted", "model/images.py", "return float(border.mean()) > 127",
          "return float(border.mean()) < 127", (T + "model/test_images.py",)),
    Fault("final checkpoints calibrated on 2,048 images only", "model/training.py",
          "            calibrate_batchnorm(model, train_split.images)\n",
          "            calibrate_batchnorm(model, train_split.images[:EPOCH_CALIBRATION_IMAGES])\n",
          (TRAINING + "::test_batchnorm_is_calibrated_on_training_images_only",)),
    Fault("BN calibration counts every chunk as full", "model/training.py",
          "n = sum(t.shape[0] * t.shape[2] * t.shape[3] for t in x)",
          "n = len(x) * x[0].shape[0] * x[0].shape[2] * x[0].shape[3]",
          (TRAINING + "::test_calibrated_statistics_match_a_float64_oracle_on_every_layer",)),
    # ---------------------------------------------------------------- apps
    Fault("device: rotation clockwise", "apps/device.py", "Image.fromarray(img).rotate(degrees,",
          "Image.fromarray(img).rotate(-degrees,", (DEVICE + "::test_rotate_images_keeps_shape_and_dtype",
                                                   DEVICE + "::test_rotate_images_turns_about_the_centre_counter_clockwise")),
    Fault("device: p90 is the 95th percentile", "apps/device.py", "np.percentile(seconds, [50, 90, 99])",
          "np.percentile(seconds, [50, 95, 99])", (DEVICE + "::test_latency_summary_by_hand",)),
    Fault("device: reply with 3 decimals accepted", "apps/device.py", r"([0-9]+\.[0-9]{4}) ([0-9]+\.[0-9]{4})",
          r"([0-9]+\.[0-9]{3,4}) ([0-9]+\.[0-9]{3,4})", (DEVICE + "::test_parse_reply",)),
    Fault("device: accuracy over a wrong count", "apps/device.py", '"accuracy": correct / len(replies)',
          '"accuracy": correct / max(1, len(images) - 1)',
          (DEVICE + "::test_hundred_images_match_the_reference",)),
    Fault("demo: softmax over the wrong axis", "apps/demo.py",
          "softmax(real_logits(self.model, image[None], engine).astype(np.float64))[0]",
          "softmax(real_logits(self.model, image[None], engine).astype(np.float64).T).T[0]", (DEMO,)),
    Fault("evaluate: accuracy over the classes", "apps/evaluation.py", "float(np.trace(confusion) / n)",
          "float(np.trace(confusion) / confusion.sum(axis=0).max())", (EVAL,)),
    Fault("report line: correct count truncated", "apps/evaluation.py",
          "round(result['accuracy'] * result['n'])", "int(result['accuracy'] * result['n'] * 0.999)", (EVAL,)),
]

# Issue 25: faults written by reading the code (not the tests) of the classes a fresh set of mutants found
# surviving, and of the modules added since issue 16 (simulate, the row schedule, the host fast paths, the
# teacher, the weight average). ``--issue-25`` runs only these.
ISSUE_25_FAULTS = [
    # Measurements of the simulated chips
    Fault("sim: skip range starts at the handler's second instruction", "engines/mcu_simulators.py",
          "        return handler, handler + handler_size\n",
          "        return handler + 2, handler + handler_size\n", (MCU_SIM + "::" + TIMER_TEST,)),
    Fault("sim: timer handler not subtracted per image", "engines/mcu_simulators.py",
          "return [(counts[i + 1] - counts[i]) - (skipped[i + 1] - skipped[i]) for i in range(len(counts) - 1)]",
          "return [counts[i + 1] - counts[i] for i in range(len(counts) - 1)]", (MCU_SIM + "::" + TIMER_TEST,)),
    Fault("QEMU plugin: skip range excludes its first address", "c/sim/qemu_insn_plugin.c",
          "if (vaddr >= skip_lo && vaddr < skip_hi) {", "if (vaddr > skip_lo && vaddr < skip_hi) {",
          (MCU_SIM + "::" + TIMER_TEST,)),
    Fault("QEMU plugin: mark address keeps the Thumb bit", "c/sim/qemu_insn_plugin.c",
          "            mark_addr &= ~(uint64_t)1; /* a Thumb", "            /* a Thumb",
          (MCU_SIM + "::test_qemu_plugin_counts_the_instructions_of_a_known_loop_exactly",)),
    Fault("firmware: flash without the data section", "codegen/mcu_firmware.py",
          "return Firmware(target, elf, int8, text + data, data + bss,",
          "return Firmware(target, elf, int8, text, data + bss,", (MCU_FW + "::test_arm_firmware_holds_the_planned_buffers_and_the_weights",)),
    Fault("firmware: static RAM without the data section", "codegen/mcu_firmware.py",
          "return Firmware(target, elf, int8, text + data, data + bss,",
          "return Firmware(target, elf, int8, text + data, bss,", (MCU_FW + "::test_avr_int8_runs_row_by_row_with_its_weights_in_flash",)),
    Fault("firmware: static RAM counts the stack reservation", "codegen/mcu_firmware.py",
          'if "_sbss" in symbols and "_ebss" in symbols:', 'if "_sbss" in symbols and "_stack" in symbols:',
          (MCU_FW + "::test_arm_firmware_holds_the_planned_buffers_and_the_weights",)),
    Fault("simavr: cycles between inferences taken for inferences", "engines/mcu_simulators.py",
          "for start in range(0, len(counts) - per_image + 1, per_image):",
          "for start in range(1, len(counts) - per_image + 1, per_image):",
          (SIMULATE + "::test_atmega2560_runs_the_int8_network_in_its_8_kb",)),
    # simulate's report and text
    Fault("simulate: correct count truncated in the text", "apps/simulate.py",
          "({round(report['accuracy'] * report['n'])}/{report['n']})",
          "({int(report['accuracy'] * report['n'])}/{report['n']})", (SIMULATE + "::test_format_report_by_hand",)),
    Fault("simulate: agreement counted against the labels", "apps/simulate.py",
          '"agreement_with_reference": int((predictions == expected.argmax(axis=1)).sum())',
          '"agreement_with_reference": int((predictions == labels).sum())',
          (SIMULATE + "::test_cortex_m0plus_int8_agrees_with_the_int8_engine",)),
    Fault("simulate: latency from the slowest image", "apps/simulate.py",
          '"ms_per_image_at_clock": 1000.0 * float(per_image.mean()) / target.clock_hz',
          '"ms_per_image_at_clock": 1000.0 * float(per_image.max()) / target.clock_hz',
          (SIMULATE + "::test_cortex_m0plus_int8_agrees_with_the_int8_engine",
           SIMULATE + "::test_atmega2560_runs_the_int8_network_in_its_8_kb")),
    Fault("simulate: int8 reference confidences from undequantized logits", "apps/simulate.py",
          'expected = softmax(registry.real_logits(model, images, "reference"))',
          'expected = softmax(registry.logits(model, images, "reference").astype(np.float64))',
          (SIMULATE + "::test_cortex_m0plus_int8_agrees_with_the_int8_engine",)),
    # confidences of the int8 C
    Fault("C int8 API: logit scale dropped", "c/mobile_lenet_api.c",
          "logits[i] = MOBILE_LENET_LOGIT_SCALE * (float)(quantized[i] - MOBILE_LENET_LOGIT_ZERO_POINT);",
          "logits[i] = (float)(quantized[i] - MOBILE_LENET_LOGIT_ZERO_POINT);", (C_INT8 + "::" + CONFIDENCE_TEST,)),
    Fault("C int8 host program: logit scale dropped", "c/mobile_lenet_host.c",
          "logits[i] = MOBILE_LENET_LOGIT_SCALE * (float)(quantized[i] - MOBILE_LENET_LOGIT_ZERO_POINT);",
          "logits[i] = (float)(quantized[i] - MOBILE_LENET_LOGIT_ZERO_POINT);", (C_INT8 + "::" + CONFIDENCE_TEST,)),
    Fault("int8 C header: logit scale of the first layer", "codegen/c_int8.py",
          '"MOBILE_LENET_LOGIT_SCALE": c_float(np.float32(qmodel.output_scale))',
          '"MOBILE_LENET_LOGIT_SCALE": c_float(np.float32(qmodel.layers[0].out_scale))', (C_INT8 + "::" + CONFIDENCE_TEST,)),
    Fault("C serial: reply carries class 0's probability", "c/mobile_lenet_serial.c",
          "ml_serial_format_reply(reply, digit, elapsed_us, probs[digit]);",
          "ml_serial_format_reply(reply, digit, elapsed_us, probs[0]);", (C_INT8 + "::" + CONFIDENCE_TEST,)),
    # quantization parameters
    Fault("quantize: activation zero point truncated", "quantization/quantize.py",
          "round(INT8_MIN - lo / scale)", "int(INT8_MIN - lo / scale)",
          (QUANT + "::test_activation_zero_points_by_hand",
           QUANT + "::test_activation_zero_point_is_the_nearest_integer_in_exact_arithmetic")),
    Fault("quantize: calibration ranges from the last batch only", "quantization/quantize.py",
          "ranges[i] = (min(lo, float(x.min())), max(hi, float(x.max())))", "ranges[i] = (float(x.min()), float(x.max()))",
          (QUANT + "::test_calibration_ranges_span_every_batch",)),
    Fault("quantize: calibration maxima from the first batch only", "quantization/quantize.py",
          "ranges[i] = (min(lo, float(x.min())), max(hi, float(x.max())))",
          "ranges[i] = (min(lo, float(x.min())), hi if hi > -math.inf else float(x.max()))",
          (QUANT + "::test_calibration_ranges_span_every_batch",)),
    Fault("quantize: multiplier mantissa guard one too high", "quantization/quantize.py",
          "if round(largest * 2.0 ** shift) > 2 ** MULTIPLIER_BITS - 1:", "if round(largest * 2.0 ** shift) > 2 ** MULTIPLIER_BITS:",
          (QUANT + "::test_a_mantissa_that_rounds_up_to_one_takes_one_bit_less",
           QUANT + "::test_multipliers_keep_15_bits_for_the_largest_factor")),
    Fault("quantize: activation range not widened to hold 0", "quantization/quantize.py",
          "lo, hi = min(lo, 0.0), max(hi, 0.0)", "hi = max(hi, 0.0)", (QUANT + "::test_activation_zero_points_by_hand",)),
    Fault("quantize: activation scale over 256 levels", "quantization/quantize.py",
          "scale = (hi - lo) / (INT8_MAX - INT8_MIN)", "scale = (hi - lo) / (INT8_MAX - INT8_MIN + 1)",
          (QUANT + "::test_activation_zero_point_is_the_nearest_integer_in_exact_arithmetic",)),
    Fault("quantize: GAP requantized without the 1/49", "quantization/quantize.py",
          "quantize_multipliers(in_scale / (plane * out_scale))", "quantize_multipliers(in_scale / out_scale)",
          (QUANT + "::test_int8_accuracy_within_0_3_points_of_float",)),
    # the int8 folder's validation
    Fault("int8 folder: zero points not chained", "formats/int8_folder.py",
          'if (entry["in_scale"], entry["in_zero_point"]) != (scale, zero_point):', 'if entry["in_scale"] != scale:',
          (BAD + "::test_bad_quantized_folder[zero-points-not-chained-evaluate]",)),
    Fault("int8 folder: npz dtypes not checked", "formats/int8_folder.py",
          "if value is None or value.dtype != dtype or value.shape != shape:", "if value is None or value.shape != shape:",
          (BAD + "::test_bad_quantized_folder[npz-int32-weights-evaluate]",)),
    Fault("int8 folder: layer 1's input not checked", "formats/int8_folder.py",
          "for entry, (scale, zero_point, source) in zip(entries, written):",
          "for entry, (scale, zero_point, source) in zip(entries[1:], written[1:]):",
          (BAD + "::test_bad_quantized_folder[first-layer-input-zero-point-evaluate]",)),
    # file modes, the demo's address, the Noodle reader
    Fault("files: atomic files keep mkstemp's 0600", "files.py",
          "        os.chmod(tmp, umasked(0o666))", "        pass", (FILE_MODES,)),
    Fault("files: replaced folders keep mkdtemp's 0700", "files.py",
          "        os.chmod(staging, umasked(0o777))", "        pass", (FILE_MODES,)),
    Fault("files: modes ignore the umask", "files.py", "return mode & ~umask", "return mode", (FILE_MODES,)),
    Fault("demo: default host 0.0.0.0", "apps/cli.py", 'p.add_argument("--host", default="127.0.0.1"',
          'p.add_argument("--host", default="0.0.0.0"', (DEMO + "::test_the_demo_listens_on_this_machine_only_by_default",)),
    Fault("Noodle .txt split on Python's whitespace", "formats/noodle.py",
          "[token for token in _C_WHITESPACE_RUN.split(text) if token]", "text.split()",
          (NOODLE + "::test_corrupted_txt_value_gives_user_error",)),
    Fault("Noodle .h items stripped of Python's whitespace", "formats/noodle.py",
          "item.strip(C_WHITESPACE) for item", "item.strip() for item", (NOODLE + "::test_bad_header_gives_user_error",)),
    # teacher and distillation
    Fault("distillation: soft term without T^2", "model/teacher.py",
          "SOFT_WEIGHT * TEMPERATURE ** 2 * soft", "SOFT_WEIGHT * soft", (TEACHER + "::" + DISTILL_LOSS_TEST,)),
    Fault("distillation: KL(student || teacher)", "model/teacher.py",
          "F.kl_div(F.log_softmax(student_logits / TEMPERATURE, 1), F.log_softmax(teacher_logits / TEMPERATURE, 1),",
          "F.kl_div(F.log_softmax(teacher_logits / TEMPERATURE, 1), F.log_softmax(student_logits / TEMPERATURE, 1),",
          (TEACHER + "::" + DISTILL_LOSS_TEST,)),
    Fault("distillation: teacher's logits not softened", "model/teacher.py",
          "F.log_softmax(teacher_logits / TEMPERATURE, 1)", "F.log_softmax(teacher_logits, 1)",
          (TEACHER + "::" + DISTILL_LOSS_TEST,)),
    Fault("teacher: reused when trained on other images", "model/training.py",
          '"data": data_fingerprint(train_split)}', '}',
          (TEACHER + "::test_teacher_is_trained_once_and_reused_for_the_same_settings_and_images",)),
    Fault("teacher: BatchNorm calibrated on the validation split", "model/training.py",
          "calibrate_batchnorm(teacher, train_split.images)", "calibrate_batchnorm(teacher, val_split.images)",
          (TEACHER + "::test_teacher_batchnorm_is_calibrated_on_the_training_split",)),
    Fault("distillation: the student learns from the labels only", "model/training.py",
          "loss = distillation_loss(logits, teacher_logits, y, config.label_smoothing)",
          "loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)",
          (TEACHER + "::test_distilled_student_checkpoint_stands_alone",)),
    # the weight average (EMA)
    Fault("EMA: decay without its warm-up", "model/training.py",
          "decay = min(self.decay, (1 + self.updates) / (10 + self.updates))", "decay = self.decay",
          (TRAINING + "::test_weight_average_is_the_warmed_up_exponential_average",)),
    Fault("EMA: interpolates by the decay, not 1 - decay", "model/training.py",
          "average.lerp_(current, 1 - decay)", "average.lerp_(current, decay)",
          (TRAINING + "::test_weight_average_is_the_warmed_up_exponential_average",)),
    Fault("EMA: the raw weights validated and saved", "model/training.py",
          "result = average.model if average else model", "result = model",
          (TRAINING + "::test_weight_averaged_run_saves_the_average_and_keeps_the_raw_weights",)),
    Fault("EMA: resume restarts the warm-up", "model/training.py",
          'average.updates = state["epoch"] * steps_per_epoch', "average.updates = 0",
          (TRAINING + "::test_resume_continues_to_the_same_weights",)),
    Fault("EMA: resume continues from the average, not the raw weights", "model/training.py",
          'model.load_state_dict(state["trained_model"] if average else state["model"])',
          'model.load_state_dict(state["model"])', (TRAINING + "::test_resume_continues_to_the_same_weights",)),
    # the row schedule (c/ml_rows_s8.c)
    Fault("rows: requantization adds 2^22, not 2^23", "c/ml_rows_s8.c",
          "(((int64_t)acc * rq->scale + ((int64_t)1 << 23)) >> 24)", "(((int64_t)acc * rq->scale + ((int64_t)1 << 22)) >> 24)",
          (ROWS_K + "::test_row_kernels_match_plain_loops[O2]",)),
    Fault("rows: split requantization rounds at the wrong bit", "c/ml_rows_s8.c",
          "value = (high + ((int32_t)1 << (shift - 17)) + (low_part >> 16)) >> (shift - 16);",
          "value = (high + ((int32_t)1 << (shift - 16)) + (low_part >> 16)) >> (shift - 16);",
          (ROWS_K + "::test_row_kernels_match_plain_loops[O2]",)),
    Fault("rows: the row below the plane not zero-filled", "c/ml_rows_s8.c",
          "if (iy >= h) fill_slot(ring, values, kernel, slots[ky], zero_point);",
          "if (iy > h) fill_slot(ring, values, kernel, slots[ky], zero_point);",
          (ROWS + "::test_rows_give_the_int8_engine_bit_for_bit_on_every_test_image",)),
    Fault("rows: AVR pointwise remainder forgets an odd count's lone product in its offset", "c/ml_rows_s8.c",
          "ml_rows_k.offset = (uint16_t)((full / 2 + (rest + 1) / 2) << 7);",
          "ml_rows_k.offset = (uint16_t)((full / 2 + rest / 2) << 7);",
          (ROWS_K + "::test_row_kernels_avr_assembly_in_simavr",)),
    Fault("rows: stem input q = pixel - 127", "c/ml_rows_s8.c",
          "row[x * k] = (int8_t)((int)pixels[x] - 128);", "row[x * k] = (int8_t)((int)pixels[x] - 127);",
          (ROWS + "::test_rows_give_the_int8_engine_bit_for_bit_on_every_test_image",)),
    Fault("rows: pooling sums forget the zero point", "c/ml_rows_s8.c",
          "gap_sums[co] += (int32_t)value - gap_in_zp;", "gap_sums[co] += (int32_t)value;",
          (ROWS + "::test_rows_give_the_int8_engine_bit_for_bit_on_every_test_image",)),
    Fault("rows: a block's last rows wait for rows below the plane", "c/ml_rows_s8.c",
          "        if (last > p.in_h - 1) last = p.in_h - 1;", "",
          (ROWS + "::test_rows_give_the_int8_engine_bit_for_bit_on_every_test_image",)),
    Fault("AVR rows: 3x3 sum starts one pair of products off", "c/ml_rows_s8.c",
          '"sbci r25, 0x02\\n\\t"', '"sbci r25, 0x03\\n\\t"',
          (ROWS_K + "::test_row_kernels_avr_assembly_in_simavr",)),
    # the host fast paths
    Fault("host float fast path (portable): depthwise stride ignored", "c/ml_kernels_f32_host.c",
          "const float *corner = in + oy * stride * in_rs + ox * stride * c;", "const float *corner = in + oy * in_rs + ox * c;",
          (HOST_FAST + "::test_fast_path_keeps_the_reference_predictions_on_all_test_images[portable-c]",)),
    Fault("host int8 fast path: requantization floors", "c/ml_kernels_s8_host.c",
          "int64_t v = ((int64_t)acc * rq->mult + ((int64_t)1 << (shift - 1))) >> shift;",
          "int64_t v = ((int64_t)acc * rq->mult) >> shift;", (HOST_FAST8 + "::test_kernels_match_plain_loops",)),
    Fault("host int8 fast path (portable): pointwise weights transposed", "c/ml_kernels_s8_host.c",
          "acc += in[y * in_rs + ci * in_cs + x] * weight[co * in_c + ci];",
          "acc += in[y * in_rs + ci * in_cs + x] * weight[ci * out_c + co];",
          (HOST_FAST8 + "::test_kernels_match_plain_loops[portable-c]",)),
    Fault("host int8 fast path: folded bias forgets the input zero point", "codegen/c_int8.py",
          "bias = layer.bias.astype(np.int64) - (int(layer.in_zero_point) + 128) * flat.sum(axis=1)",
          "bias = layer.bias.astype(np.int64) - 128 * flat.sum(axis=1)",
          (HOST_FAST8 + "::test_fast_path_is_bit_exact_on_all_test_images",)),
]
FAULTS += ISSUE_25_FAULTS

# Edits considered and left out: no correct test can tell them from the original.
EQUIVALENT = [
    ("npz: label check `labels.max() > 9` -> `> 10`", "the shared _check_pair check after it rejects 10 anyway"),
    ("C: pointwise fast path without `stride == 1`", "in_h == out_h in the same condition already rules out "
     "stride 2 for every shape a convolution can have"),
    ("argmax `>` -> `>=`", "only changes which of two exactly equal logits wins; float logits of real images "
     "never tie, and both engines would have to agree on a tie that does not occur"),
    ("memory plan: input shape left out of the largest buffer", "the input (784 values) is smaller than every "
     "activation (6,272 and up), so the maximum is the same"),
    ("int8 C: the logit zero point left out of the dequantization (API or host program)", "softmax does not change "
     "when the same number is added to every logit, and the argmax neither: probabilities and digits are the same"),
    ("QEMU plugin: a mark's line counts the marker's own instruction", "every mark moves by the same one "
     "instruction, and the per-image figure is a difference of two marks"),
    ("QEMU plugin: skip range's end inclusive", "the address after SysTick_Handler is another function's first "
     "instruction, which no timer interrupt runs; it is never executed between two marks"),
]


def copy_repository(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the working tree (no .venv, no build outputs)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def run_tests(copy: Path, tests: tuple[str, ...], env: dict) -> tuple[bool, str]:
    """(passed, last line): the fault's tests, in the copy, stopping at the first failure."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    try:
        done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, "timeout"
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    return done.returncode == 0, (lines[-1] if lines else done.stderr.strip()[-200:])


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for fault in FAULTS:
            print(f"{fault.name}  [{fault.path}]")
        print(f"{len(FAULTS)} faults")
        return 0
    words = [a for a in argv if not a.startswith("-")]
    pool = ISSUE_25_FAULTS if "--issue-25" in argv else FAULTS
    chosen = [f for f in pool if not words or any(w.lower() in f.name.lower() for w in words)]
    scratch = Path(tempfile.mkdtemp(prefix="planted-faults-"))
    copy = scratch / "repo"
    copy_repository(copy)
    if "--head-c" in argv:  # the working tree's C is mid-edit: take the C and its unit tests as last committed
        for folder in (PACKAGE + "/c", "tests/c"):
            shutil.rmtree(copy / folder)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", folder], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(copy)], input=archive, check=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(copy / "src"), str(copy)]), PYTHONDONTWRITEBYTECODE="1",
               MOBILE_LENET_SHARED=str(ROOT.parent / "shared"), OMP_NUM_THREADS="1")
    where = subprocess.run([sys.executable, "-c", "import mobile_lenet; print(mobile_lenet.__file__)"], env=env,
                           cwd=copy, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(copy / "src")):
        print(f"the copy's package does not come first on sys.path ({where}); stopping", file=sys.stderr)
        return 2
    print(f"{len(chosen)} faults, in {copy} (package from {where})")
    # Baseline: the faults' tests must pass on the unchanged copy, or a "kill" would mean nothing.
    targets = sorted({t for f in chosen for t in f.tests})
    baseline = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *targets],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=2 * TIMEOUT_S)
    red = [line.split()[1] for line in baseline.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    print(f"baseline: {baseline.stdout.strip().splitlines()[-1] if baseline.stdout.strip() else baseline.stderr[-300:]}")
    for nodeid in red:
        print(f"  red before any fault: {nodeid}")
    print()
    rows, killed, survived, stale = [], 0, [], []
    try:
        for fault in chosen:
            target = copy / PACKAGE / fault.path
            original = target.read_text()
            deselect = [r for r in red if any(r.startswith(t) for t in fault.tests)]
            if all("::" in t and any(r.startswith(t) for r in red) for t in fault.tests):
                stale.append(fault.name)
                rows.append((fault.name, "baseline red", 0.0, "its tests fail without the fault"))
                print(f"{'skipped':9} {'':7}  {fault.name}  (its tests fail without the fault)", flush=True)
                continue
            if original.count(fault.old) != 1:
                stale.append(fault.name)
                rows.append((fault.name, "stale", 0.0, f"expected the code once, found {original.count(fault.old)}"))
                continue
            target.write_text(original.replace(fault.old, fault.new))
            start = time.monotonic()
            try:
                passed, last = run_tests(copy, fault.tests + tuple(f"--deselect={r}" for r in deselect), env)
            finally:
                target.write_text(original)
            seconds = time.monotonic() - start
            if passed:
                survived.append(fault.name)
            else:
                killed += 1
            rows.append((fault.name, "SURVIVED" if passed else "killed", seconds, last))
            print(f"{'SURVIVED' if passed else 'killed':9} {seconds:6.1f}s  {fault.name}  ({last})", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    counted = killed + len(survived)
    print("\n| fault | result | seconds |\n|---|---|---|")
    for name, result, seconds, _ in rows:
        print(f"| {name} | {result} | {seconds:.1f} |")
    if counted:
        print(f"\nscore: {killed}/{counted} killed ({100 * killed / counted:.1f}%)"
              + (f"; {len(stale)} not run (stale code or tests red without the fault)" if stale else ""))
    for name in survived:
        print(f"survived: {name}")
    print(f"{len(EQUIVALENT)} equivalent edits left out (see EQUIVALENT)")
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
