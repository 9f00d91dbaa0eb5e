"""Evaluation: accuracy, per-class accuracy and the confusion matrix of a model, through any engine.

The model may be float weights or a quantized model; ``engines.registry`` picks the code that runs it.
"""

from __future__ import annotations

import numpy as np

from mobile_lenet.engines import registry
from mobile_lenet.errors import UserError
from mobile_lenet.model.data import Dataset


def score(predictions: np.ndarray, labels: np.ndarray, num_classes: int = 10) -> dict:
    """Accuracy, per-class accuracy and confusion matrix (rows: true label, columns: prediction)."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    per_class = [float(confusion[c, c] / confusion[c].sum()) if confusion[c].sum() else None
                 for c in range(num_classes)]
    n = int(len(labels))
    return {"accuracy": float(np.trace(confusion) / n) if n else 0.0, "n": n, "per_class": per_class,
            "confusion": confusion.tolist()}


def evaluate(model, dataset: Dataset, engine: str | None = None) -> dict:
    """Score ``dataset`` with a float or int8 model on ``engine`` (default: the model's first engine). The images
    go to the input size of the member the model records as training's validation images do
    (``registry.member_images``)."""
    engine = registry.check_engine(model, engine)
    if len(dataset) == 0:
        raise UserError(f"{dataset.name or 'the test set'}: holds no images; nothing to evaluate")
    logits = registry.logits(model, registry.member_images(model, dataset.images), engine)
    result = score(logits.argmax(axis=1), dataset.labels)
    result.update(engine=f"{engine} (int8)" if registry.is_int8(model) else engine, dataset=dataset.name)
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
