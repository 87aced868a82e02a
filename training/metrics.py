"""Detector metrics from scores and labels (1 = AI-generated), in NumPy.

Average precision is the step-wise area under precision-recall (as scikit-learn computes
it); ROC AUC by the trapezoid over the ROC; TPR at a false-positive rate is read off the
ROC curve at the largest threshold whose FPR does not exceed it; expected calibration error
over 10 equal-width bins.
"""

from __future__ import annotations

import numpy as np


def _ranked(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, descending."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels)[distinct]
    fps = (distinct + 1) - tps
    return tps, fps, scores[distinct]


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tps, fps, thresholds = _ranked(np.asarray(scores, float), np.asarray(labels, int))
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    tps, fps, _ = _ranked(np.asarray(scores, float), np.asarray(labels, int))
    precision = tps / (tps + fps)
    recall = tps / max(tps[-1], 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, target_fpr: float) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(tpr[fpr <= target_fpr].max())


def threshold_for_fpr(real_scores: np.ndarray, target_fpr: float) -> float:
    """The smallest score threshold (label = score > threshold) whose FPR on `real_scores` is at most the target."""
    ordered = np.sort(np.asarray(real_scores, float))[::-1]
    allowed = int(np.floor(target_fpr * len(ordered)))
    return float(ordered[allowed]) if allowed < len(ordered) else float(ordered[-1])


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean gap between predicted P(AI) and the share of AI images, over equal-width bins weighted by
    their images (bins as scikit-learn's calibration_curve cuts them)."""
    probabilities, labels = np.asarray(probabilities, float), np.asarray(labels, float)
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], probabilities)
    gap = np.bincount(which, weights=probabilities - labels, minlength=bins)
    return float(np.abs(gap).sum() / max(len(labels), 1))


def summary(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    predicted = scores > threshold
    real, fake = labels == 0, labels == 1
    out = {
        "images": int(len(labels)),
        "accuracy": float(np.mean(predicted == fake)),
        "real_accuracy": float(np.mean(~predicted[real])) if real.any() else float("nan"),
        "fake_accuracy": float(np.mean(predicted[fake])) if fake.any() else float("nan"),
    }
    if real.any() and fake.any():
        out.update(average_precision=average_precision(scores, labels), roc_auc=roc_auc(scores, labels),
                   tpr_at_1pct_fpr=tpr_at_fpr(scores, labels, 0.01), tpr_at_5pct_fpr=tpr_at_fpr(scores, labels, 0.05))
    return out
