"""Part 3, inference speed of every engine on the same MNIST test images.

Engines: PyTorch and onnxruntime (batch 1 and batched), the NumPy reference engine, the generated C on
this host (one process classifying the images one at a time), and the int8 model on its NumPy integer
engine and its generated C. An engine whose module is not there (or fails) is listed as not available.

Every engine gets the same images and the same weights (the seed's published model when it can be read,
so the accuracy column doubles as a check that each engine computes the network). Batched engines are
timed best-of-N over the whole set after a warm-up call on a few images (which also builds and caches the
C programs); batch-1 engines are timed image by image, giving the latency percentiles.

The generated C gets two figures: the whole process (``mobile_lenet_host classify``: process start, reading the
images and printing a line per image included), and the library calls alone (``mobile_lenet_host time``: the
images read into memory first, then clock_gettime around the calls only, one warm-up pass, best of a few). The
float C comes as the Noodle-semantics library (what ``export --format c`` writes, bit for bit the reference) and
as the host fast path (BatchNorm folded, AVX2; the ``c`` engine), and the int8 C likewise as the library
``export --format c --int8`` writes and as its host fast path (HCW byte maps with zero-point borders, AVX2 / VNNI;
the ``c`` engine; bit for bit the NumPy int8 engine). ``ratios`` compares them within this run.

Each engine's speed is also given as a fraction of a compute bound: 2 x MACs per image x images/s against
the peak float32 FLOP/s of a large ``torch.mm`` on this machine, with 1 thread for single-threaded engines
(the C programs) and with all the benchmark's threads for the others.
"""

from __future__ import annotations

import inspect
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .common import Options, not_available
from .machine import measure_peak

QUICK = {"images": 200, "max_seconds": 5.0, "repeats": 1, "matmul_size": 512, "calibration_images": 100}
FULL = {"images": None, "max_seconds": 120.0, "repeats": 3, "matmul_size": 2048, "calibration_images": None}
WARM_UP_IMAGES = 16
PROBE_IMAGES = 200
PERCENTILES = (50, 90, 99)


def time_batched(logits_of, images: np.ndarray, settings: dict) -> dict:
    """Time ``logits_of(images)``: warm-up, then best of ``repeats`` over as many images as fit ``max_seconds``."""
    logits_of(images[:WARM_UP_IMAGES])
    probe = images[:min(len(images), PROBE_IMAGES)]
    start = time.perf_counter()
    logits_of(probe)
    probe_rate = len(probe) / (time.perf_counter() - start)
    count = min(len(images), max(len(probe), int(probe_rate * settings["max_seconds"])))
    best, spent, logits = float("inf"), 0.0, None
    for _ in range(settings["repeats"]):
        start = time.perf_counter()
        logits = logits_of(images[:count])
        elapsed = time.perf_counter() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent > settings["max_seconds"]:
            break
    return {"images": count, "seconds": best, "images_per_second": count / best, "logits": logits}


def time_single(logits_of_one, images: np.ndarray, settings: dict) -> dict:
    """Time ``logits_of_one`` image by image (batch 1), stopping after ``max_seconds``; latency percentiles."""
    for image in images[:WARM_UP_IMAGES]:
        logits_of_one(image[None])
    latencies, outputs, started = [], [], time.perf_counter()
    for image in images:
        start = time.perf_counter_ns()
        outputs.append(logits_of_one(image[None]))
        latencies.append(time.perf_counter_ns() - start)
        if time.perf_counter() - started > settings["max_seconds"]:
            break
    latencies_s = np.array(latencies) / 1e9
    return {"images": len(latencies), "seconds": float(latencies_s.sum()),
            "images_per_second": len(latencies) / float(latencies_s.sum()),
            "latency_ms": {f"p{p}": float(np.percentile(latencies_s, p) * 1e3) for p in PERCENTILES},
            "logits": np.concatenate(outputs)}


@dataclass
class Case:
    """One engine configuration to time.

    ``make`` builds the function from uint8 images (N, 28, 28) to logits (N, 10); ``per_image`` cases are
    timed image by image (batch 1, with latencies), the others on the whole set at once. ``threads`` is
    what the engine computes with: an int, or a description when the engine's library decides.
    """

    engine: str
    batch: int | str | None
    threads: int | str
    make: Callable[[], Callable[[np.ndarray], np.ndarray]]
    per_image: bool = False
    # the C programs: images -> host_c.run_time's dict (the library calls alone, without process start and output)
    library_time: Callable[[np.ndarray], dict] | None = None


def torch_batch_size() -> int:
    """The batch size of the ``torch`` evaluation engine (``network.predict_logits``' default)."""
    from mobile_lenet.model.network import predict_logits

    return inspect.signature(predict_logits).parameters["batch_size"].default


def torch_cases(tensors, threads: int) -> list[Case]:
    """PyTorch: the model called on one image at a time, and the ``torch`` engine of ``evaluation``."""
    import torch

    from mobile_lenet.model.data import to_tensor_input
    from mobile_lenet.engines.registry import logits
    from mobile_lenet.model.network import from_noodle

    torch.set_num_threads(threads)

    def make_single():
        model = from_noodle(tensors)

        def one(image):
            with torch.inference_mode():
                return model(torch.from_numpy(to_tensor_input(image))).numpy()
        return one

    return [Case("PyTorch", 1, threads, per_image=True, make=make_single),
            Case("PyTorch", torch_batch_size(), threads,
                 make=lambda: (lambda images: logits(tensors, images, "torch")))]


def onnx_cases(tensors, threads: int, work_dir: Path) -> list[Case]:
    """onnxruntime on the exported ONNX file, one image at a time and in batches like the torch engine's."""
    batch = torch_batch_size()

    def make_session():
        import onnxruntime

        from mobile_lenet.model.data import to_tensor_input
        from mobile_lenet.formats.onnx_export import write_onnx

        path = write_onnx(tensors, work_dir)[0]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda images: session.run(None, {input_name: to_tensor_input(images)})[0]

    def make_batched():
        run_session = make_session()
        return lambda images: np.concatenate([run_session(images[i:i + batch]) for i in range(0, len(images), batch)])

    return [Case("onnxruntime", 1, threads, per_image=True, make=make_session),
            Case("onnxruntime", batch, threads, make=make_batched)]


LIBRARY_REPEATS = {"quick": 1, "full": 5}  # passes over the images in the C programs' time mode (best one counts)


def c_case(engine: str, model, repeats: int, **build_options) -> Case:
    """A generated C program: timed as a whole process (classify) and, separately, its library calls (time mode)."""
    from mobile_lenet.engines import host_c

    def make():
        program = host_c.build_host_program(model, **build_options)
        return lambda images: host_c.run_classify(program, images).logits

    def library_time(images):
        return host_c.run_time(host_c.build_host_program(model, **build_options), images, repeats)

    return Case(engine, 1, 1, make=make, library_time=library_time)


def float_c_and_reference_cases(tensors, settings: dict) -> list[Case]:
    """The NumPy reference engine and the generated float32 C: the Noodle-semantics library and the host fast path."""
    from mobile_lenet.engines import reference
    from mobile_lenet.engines.registry import logits

    repeats = LIBRARY_REPEATS["quick" if settings is QUICK else "full"]
    return [Case("NumPy reference", reference.BATCH_SIZE, "NumPy/BLAS default",
                 make=lambda: (lambda images: logits(tensors, images, "reference"))),
            c_case(FLOAT_C_NOODLE, tensors, repeats, variant="noodle"),
            c_case(FLOAT_C_FAST, tensors, repeats, variant="fast")]


FLOAT_C_NOODLE = "generated C, float32 (Noodle semantics, exported library)"
FLOAT_C_FAST = "generated C, float32 (host fast path, `c` engine)"
INT8_C = "generated C, int8 (host fast path, `c` engine)"
INT8_C_GENERIC = "generated C, int8 (exported library)"


def int8_cases(tensors, train_images: np.ndarray, settings: dict) -> list[Case]:
    """The int8 model (post-training quantization) on its NumPy integer engine and its generated C."""
    from mobile_lenet.engines import reference_int8
    from mobile_lenet.engines.registry import logits
    from mobile_lenet.quantization import quantize

    quantized = {}

    def model():
        if "model" not in quantized:  # quantize once, lazily: a failure then shows in the row that needs it
            count = settings["calibration_images"] or quantize.DEFAULT_CALIBRATION_COUNT
            quantized["model"] = quantize.quantize_model(tensors, quantize.pick_calibration_images(train_images, count))
        return quantized["model"]

    def make(engine):
        qmodel = model()
        return lambda images: logits(qmodel, images, engine)

    repeats = LIBRARY_REPEATS["quick" if settings is QUICK else "full"]

    def c_case_int8(engine: str, variant: str) -> Case:
        def make_c():
            from mobile_lenet.engines import host_c

            program = host_c.build_host_program(model(), variant=variant)
            return lambda images: host_c.run_classify(program, images).logits

        def library_time(images):
            from mobile_lenet.engines import host_c

            return host_c.run_time(host_c.build_host_program(model(), variant=variant), images, repeats)

        return Case(engine, 1, 1, make=make_c, library_time=library_time)

    return [Case("NumPy int8 reference", reference_int8.BATCH, 1, make=lambda: make("reference")),
            c_case_int8(INT8_C_GENERIC, "generic"), c_case_int8(INT8_C, "fast")]


def ratios(rows: list[dict]) -> dict:
    """Speed ratios between rows of this run (None where a row is missing or not available): the C programs'
    library calls (and, in brackets, their whole processes) against onnxruntime and against each other."""
    def rate(engine, batch=None, library=False):
        for row in rows:
            if row["engine"] == engine and (batch is None or row["batch"] == batch) and row.get("available", True):
                return row.get("library_call", {}).get("images_per_second") if library else row["images_per_second"]
        return None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    ort1, ort_batch = rate("onnxruntime", 1), rate("onnxruntime", torch_batch_size())
    out = {}
    for name, engine in (("float_fast", FLOAT_C_FAST), ("float_noodle", FLOAT_C_NOODLE), ("int8", INT8_C)):
        for kind, library in (("library", True), ("process", False)):
            out[f"{name}_{kind}_vs_onnxruntime_batch1"] = ratio(rate(engine, library=library), ort1)
            out[f"{name}_{kind}_vs_onnxruntime_batched"] = ratio(rate(engine, library=library), ort_batch)
    for kind, library in (("library", True), ("process", False)):
        out[f"int8_vs_float_fast_{kind}"] = ratio(rate(INT8_C, library=library), rate(FLOAT_C_FAST, library=library))
        out[f"int8_vs_float_noodle_{kind}"] = ratio(rate(INT8_C, library=library),
                                                    rate(FLOAT_C_NOODLE, library=library))
        out[f"float_fast_vs_noodle_{kind}"] = ratio(rate(FLOAT_C_FAST, library=library),
                                                    rate(FLOAT_C_NOODLE, library=library))
        out[f"int8_fast_vs_generic_{kind}"] = ratio(rate(INT8_C, library=library),
                                                    rate(INT8_C_GENERIC, library=library))
    return out


def benchmark_weights(options: Options):
    """The seed's published weights if readable, else an untrained model's (accuracy then meaningless)."""
    from mobile_lenet.model.network import MobileLeNet, to_noodle
    from mobile_lenet.formats.model_files import load_tensors

    source = options.upstream_dir / "noodle"
    try:
        return load_tensors(source), f"upstream published weights ({source.name}/)"
    except Exception as error:
        import torch

        torch.manual_seed(0)
        return to_noodle(MobileLeNet().eval()), f"untrained weights (upstream not readable: {error})"


def run(options: Options) -> dict:
    """The inference part: peak FLOP/s, then every engine on the same test images."""
    from mobile_lenet import spec
    from mobile_lenet.model.data import load_dataset
    from mobile_lenet.engines.registry import logits

    settings = QUICK if options.quick else FULL
    test_set = load_dataset("mnist", "test", options.mnist_dir)
    images, labels = test_set.images[:settings["images"]], test_set.labels[:settings["images"]]
    train_images = load_dataset("mnist", "train", options.mnist_dir).images
    tensors, weights = benchmark_weights(options)
    macs = spec.totals()["macs"]

    options.log("  inference: peak float32 FLOP/s (torch.mm) ...")
    peaks = {"single_core": measure_peak(1, settings["matmul_size"]),
             "all_cores": measure_peak(options.threads, settings["matmul_size"])}
    expected = logits(tensors, images, "torch").argmax(axis=1)  # what every engine should predict
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as work_dir:
        cases = (torch_cases(tensors, options.threads) + onnx_cases(tensors, options.threads, Path(work_dir))
                 + float_c_and_reference_cases(tensors, settings) + int8_cases(tensors, train_images, settings))
        for case in cases:
            rows.append(measure_case(case, images, labels, expected, peaks, macs, settings, options.log))
    return {"weights": weights, "test_images": len(images), "macs_per_image": macs, "peak": peaks, "engines": rows,
            "ratios": ratios(rows)}


def measure_case(case: Case, images, labels, expected, peaks: dict, macs: int, settings: dict, log) -> dict:
    """Time one engine case and check its predictions; a case that cannot run gives a not-available row."""
    row = {"engine": case.engine, "batch": case.batch, "threads": case.threads}
    log(f"  inference: {case.engine}, batch {case.batch} ...")
    try:
        logits_of = case.make()
        timing = (time_single if case.per_image else time_batched)(logits_of, images, settings)
    except Exception as error:  # an engine failing (e.g. no C compiler): report it, never fake a number
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        log(f"    not available: {reason}")
        return {**row, **not_available(reason)}
    predictions, n = timing.pop("logits").argmax(axis=1), timing["images"]
    peak = peaks["single_core"] if case.threads == 1 else peaks["all_cores"]
    row.update(timing, accuracy=float((predictions == labels[:n]).mean()),
               agreement_with_pytorch=float((predictions == expected[:n]).mean()),
               bound=f"{peak['threads']}-thread peak",
               fraction_of_peak=2 * macs * timing["images_per_second"] / peak["flops"])
    log(f"    {row['images_per_second']:.0f} images/s on {n} images, accuracy {row['accuracy']:.4f}")
    if case.library_time is not None:
        try:
            library = case.library_time(images[:n])
        except Exception as error:  # the time mode failing: the process figure still stands
            row["library_call"] = not_available(f"{type(error).__name__}: {error}".splitlines()[0])
            return row
        row["library_call"] = {**library, "fraction_of_peak": 2 * macs * library["images_per_second"] / peak["flops"]}
        log(f"    library calls alone: {library['images_per_second']:.0f} images/s")
    return row
