"""What the benchmarks ran on: CPU, cores, library versions, and the measured peak float32 FLOP/s."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

LIBRARIES = ("torch", "numpy", "onnxruntime", "onnx", "keras")
# Environment variables that change how fast the libraries run, recorded when set.
SPEED_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE",
                   "OPENBLAS_L2_SIZE", "KERAS_BACKEND")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or the platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_versions() -> dict[str, str | None]:
    """Installed version of each library the benchmarks use (None when not installed)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe() -> dict:
    """The machine and software, as recorded with every run."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "libraries": library_versions(),
            "environment": {name: os.environ[name] for name in SPEED_VARIABLES if name in os.environ}}


def _best_rate(run_once, flops_per_call: float, repeats: int) -> float:
    """Best FLOP/s over ``repeats`` timed calls (the best is the least disturbed by other processes)."""
    run_once()  # warm-up: allocations, thread pool start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        best = min(best, time.perf_counter() - start)
    return flops_per_call / best


def measure_peak(threads: int, size: int = 2048, repeats: int = 5) -> dict:
    """Peak float32 FLOP/s of a large square ``torch.mm`` with ``threads`` threads.

    One multiply-accumulate counts as 2 FLOPs, so a matmul of two n x n matrices is 2 n^3 FLOPs. torch's
    matmul (oneDNN/MKL) is used because its thread count can be set in-process; numpy's BLAS fixes its
    thread count at import.
    """
    import torch

    flops = 2.0 * size ** 3
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rate = _best_rate(lambda: torch.mm(a, b), flops, repeats)
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads, "matmul": f"torch.mm float32 {size}x{size}", "flops": rate}
