"""What every part shares: the run's options, where the reference data lives, and small statistics helpers."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("accuracy-full", "accuracy", "ablation", "ablation-full", "ablation-small", "family", "family-10k",
         "family-val", "family-goals", "training", "inference", "microcontrollers")
# The long parts (minutes to hours of training on a 2-core machine) run only when named, e.g. --only ablation-small
DEFAULT_PARTS = ("accuracy", "training", "inference", "microcontrollers")


def default_shared_data() -> Path:
    """The shared reference data: ``$MOBILE_LENET_SHARED/data``, else ``../shared/data`` beside the repo."""
    return Path(os.environ.get("MOBILE_LENET_SHARED", ROOT.parent / "shared")) / "data"


@dataclass
class Options:
    """One benchmark run's settings (from the command line)."""

    quick: bool = False
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    shared_data: Path = field(default_factory=default_shared_data)
    work_dir: Path = ROOT / "build" / "benchmarks"
    fashion_minutes: float = 12.0
    results_path: Path = ROOT / "benchmarks" / "results.json"  # this run's results (family-goals reads family-val's)
    log: object = print

    @property
    def mnist_dir(self) -> Path:
        return self.shared_data / "mnist-10k"

    @property
    def full_mnist_dir(self) -> Path:
        return self.shared_data / "mnist-60k"

    @property
    def upstream_dir(self) -> Path:
        return self.shared_data / "upstream-mobile-lenet"


def mean_and_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def not_available(reason: str) -> dict:
    """A row for something that could not be measured, and why (never a made-up number)."""
    return {"available": False, "reason": reason}


def setting_text(key: str, value, folder: bool = False) -> str:
    """One changed setting as text; a family member (``architecture``) by its channels, its strides where they are
    not the seed's, and its input size where it is not 28. ``folder``: for a run folder's name (no spaces)."""
    if key == "architecture":
        from mobile_lenet.spec import SEED_STRIDES

        strides = "" if tuple(value["strides"]) == SEED_STRIDES else (
            ("_s" if folder else " strides ") + ",".join(map(str, value["strides"])))
        return (",".join(map(str, value["channels"])) + strides
                + ("" if value["input_size"] == 28 else f"@{value['input_size']}"))
    return str(value)
