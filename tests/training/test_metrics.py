"""Eval metrics checked against scikit-learn on fixtures of known scores, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from training import metrics


@pytest.mark.parametrize("seed", range(20))
def test_metrics_agree_with_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * rng.uniform(0, 3), 1.0), int(rng.integers(0, 3)))  # rounding makes ties
    assert metrics.average_precision(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    for target in (0.01, 0.05):
        assert metrics.tpr_at_fpr(scores, labels, target) == pytest.approx(tpr[fpr <= target].max(), abs=1e-12)


def test_known_small_case_and_accuracies() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert metrics.roc_auc(scores, labels) == pytest.approx(0.75)
    assert metrics.average_precision(scores, labels) == pytest.approx(0.8333333333)
    s = metrics.summary(scores, labels, threshold=0.3)
    assert (s["accuracy"], s["real_accuracy"], s["fake_accuracy"]) == (0.75, 0.5, 1.0)


def test_threshold_for_target_fpr() -> None:
    reals = np.linspace(-3, 3, 101)
    threshold = metrics.threshold_for_fpr(reals, 0.05)
    assert np.mean(reals > threshold) <= 0.05 and np.mean(reals >= threshold) > 0.05
