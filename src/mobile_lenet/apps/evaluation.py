"""Evaluation: accuracy, per-class accuracy and the confusion matrix, through any engine.

An engine turns Noodle tensors plus uint8 images (N, 28, 28) into logits (N, 10). ``torch`` is the
PyTorch model; the interop and C modules add ``reference`` (NumPy) and ``c`` (generated C on the host).
"""

from __future__ import annotations

import numpy as np

from mobile_lenet.model.data import Dataset
from mobile_lenet.errors import UserError
from mobile_lenet.engines.reference import softmax  # noqa: F401  (the device's softmax; re-exported for the CLI, report and demo)

ENGINES = ("torch", "reference", "c")


def engine_logits(engine: str, tensors: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    """Logits (N, 10) of ``images`` computed by ``engine`` with the weights ``tensors``."""
    if engine == "torch":
        from mobile_lenet.model.network import from_noodle
        from mobile_lenet.model.training import predict_logits

        return predict_logits(from_noodle(tensors), images)
    if engine == "reference":
        from mobile_lenet.engines.reference import reference_logits

        return reference_logits(tensors, images)
    if engine == "c":
        from mobile_lenet.engines.host_c import c_logits

        return c_logits(tensors, images)
    raise UserError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")


def score(predictions: np.ndarray, labels: np.ndarray, num_classes: int = 10) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true label, columns: prediction)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    per_class = [float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None
                 for c in range(num_classes)]
    n = int(len(labels))
    return {"accuracy": float(np.trace(confusion) / n) if n else 0.0, "n": n, "per_class": per_class,
            "confusion": confusion.tolist()}


def evaluate_tensors(tensors: dict[str, np.ndarray], dataset: Dataset, engine: str = "torch") -> dict:
    """Score ``dataset`` with the given weights and engine."""
    logits = engine_logits(engine, tensors, dataset.images)
    result = score(logits.argmax(axis=1), dataset.labels)
    result.update(engine=engine, dataset=dataset.name)
    return result


def format_report(result: dict) -> str:
    """Human-readable accuracy, per-class accuracy and confusion matrix."""
    lines = [f"{result['dataset']} via {result['engine']}: accuracy {100 * result['accuracy']:.2f}% "
             f"({round(result['accuracy'] * result['n'])}/{result['n']})", "", "per-class accuracy:"]
    lines += [f"  {c}: " + ("-" if a is None else f"{100 * a:6.2f}%") for c, a in enumerate(result["per_class"])]
    lines += ["", "confusion matrix (rows: true, columns: predicted):",
              "      " + "".join(f"{c:>6}" for c in range(len(result["confusion"])))]
    lines += [f"  {c:>2}: " + "".join(f"{v:>6}" for v in row) for c, row in enumerate(result["confusion"])]
    return "\n".join(lines)
