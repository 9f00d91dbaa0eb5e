"""Scoring against hand-built cases: accuracy, per-class accuracy (recall, not precision), the confusion
matrix's orientation (rows: true label), classes that never occur, and the printed report."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import UPSTREAM
from mobile_lenet.apps.evaluation import evaluate, format_report, score
from mobile_lenet.model.data import Dataset

# true labels and predictions worked out by hand: class 0 is mostly missed (as 1), class 1 half, class 2 always
# right, class 3 never occurs. Recall and precision differ for every class, and the matrix is not symmetric.
LABELS = np.array([0, 0, 0, 1, 1, 2], np.uint8)
PREDICTIONS = np.array([0, 1, 1, 1, 2, 2], np.int64)
CONFUSION = [[1, 2, 0, 0],   # true 0: once 0, twice 1
             [0, 1, 1, 0],   # true 1: once 1, once 2
             [0, 0, 1, 0],   # true 2: once 2
             [0, 0, 0, 0]]   # true 3: never
PER_CLASS = [1 / 3, 1 / 2, 1.0, None]  # correct / occurrences of the true class (precision would be 1, 1/3, 1/2)


def test_score_of_a_hand_built_case():
    result = score(PREDICTIONS, LABELS, num_classes=4)
    assert result["confusion"] == CONFUSION
    assert result["n"] == 6
    assert result["accuracy"] == pytest.approx(3 / 6, abs=1e-12)
    assert result["per_class"][3] is None
    assert result["per_class"][:3] == pytest.approx(PER_CLASS[:3], abs=1e-12)


def test_score_rows_are_true_labels_and_columns_predictions():
    """One image of class 4 read as 9: the 1 sits in row 4, column 9, and only class 4 loses accuracy."""
    result = score(np.array([9, 9]), np.array([4, 9]))
    confusion = np.array(result["confusion"])
    assert confusion[4, 9] == 1 and confusion[9, 9] == 1 and confusion.sum() == 2
    assert result["per_class"][4] == 0.0 and result["per_class"][9] == 1.0
    assert result["per_class"][:4] == [None] * 4 and result["accuracy"] == 0.5


def test_score_of_nothing():
    result = score(np.zeros(0, np.int64), np.zeros(0, np.uint8))
    assert result["n"] == 0 and result["accuracy"] == 0.0 and result["per_class"] == [None] * 10
    assert np.array(result["confusion"]).shape == (10, 10) and not np.array(result["confusion"]).any()


def test_format_report_prints_the_numbers():
    result = dict(score(PREDICTIONS, LABELS, num_classes=4), dataset="hand", engine="reference")
    lines = format_report(result).splitlines()
    assert lines[0] == "hand via reference: accuracy 50.00% (3/6)"
    assert lines[3:7] == ["  0:  33.33%", "  1:  50.00%", "  2: 100.00%", "  3: -"]
    rows = lines[-4:]
    assert rows[0] == "   0:      1     2     0     0" and rows[1] == "   1:      0     1     1     0"


def test_evaluate_scores_the_engine_predictions(mnist_test):
    """evaluate() on real images against the same counts made here with a plain loop over the predictions."""
    from mobile_lenet.engines.reference import reference_logits
    from mobile_lenet.formats.model_files import load_tensors

    tensors = load_tensors(UPSTREAM / "noodle")
    images, labels = mnist_test.images[:300], mnist_test.labels[:300]
    result = evaluate(tensors, Dataset(images, labels, "first 300"), engine="reference")
    predicted = reference_logits(tensors, images).argmax(axis=1)
    confusion = [[0] * 10 for _ in range(10)]
    for truth, guess in zip(labels.tolist(), predicted.tolist()):
        confusion[truth][guess] += 1
    assert result["confusion"] == confusion
    assert result["accuracy"] == sum(confusion[c][c] for c in range(10)) / 300
    for c in range(10):
        assert result["per_class"][c] == pytest.approx(confusion[c][c] / sum(confusion[c]), abs=1e-12)
    assert result["engine"] == "reference" and result["dataset"] == "first 300" and result["n"] == 300
    assert result["accuracy"] < 1.0  # a case with mistakes: the off-diagonal cells were compared too
