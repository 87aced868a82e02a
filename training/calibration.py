"""`dda calibrate --second`: fit the combiner of two detectors (engine/model/combiner.py) on labelled images.

Every image under `<subset>/0_real` and `<subset>/1_fake` is decoded once and scored by each
model with its own preprocessing. A seeded, per-class share of the images is held back; the
rest fit a logistic regression over the models' logits (Newton's method on scikit-learn's
objective: log loss plus half the squared weights over C, the intercept unpenalised) and the
band: `ai_generated` above the fused score that keeps real images' false positives at or below
`fpr`, `real` at or below the one that keeps missed AI images at or below `fnr`, `suspicious`
between (no band when one threshold meets both). The held-back images are the report: each
model alone and the fused score, by ROC AUC, TPR at 1% FPR and expected calibration error,
and what the band does to them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from engine.imaging.decode import decode_folder
from engine.model.combiner import SUSPICIOUS, Combiner
from engine.model.labels import AI_GENERATED, REAL
from engine.model.model_dir import LoadedModel
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner
from training import metrics
from training.evaluate import subsets


@dataclass(frozen=True)
class Scored:
    logits: np.ndarray  # [images, models]
    labels: np.ndarray  # 1 = AI-generated


def score_images(models: Sequence[LoadedModel], data: Path, batch: int = 16, progress: Callable[[str], None] = lambda _m: None) -> Scored:
    detectors = [Detector(m.manifest, TorchRunner(m.network, m.manifest.preprocessing)) for m in models]
    rows: list[list[float]] = []
    labels: list[int] = []
    for name, folder in subsets(data).items():
        for label, sub in ((0, "0_real"), (1, "1_fake")):
            if not (folder / sub).is_dir():
                continue
            images = decode_folder(folder / sub)
            while chunk := [p for _, p in islice(images, batch)]:
                per_model = [[p.logit for p in d.predict(chunk)] for d in detectors]
                rows += [list(r) for r in zip(*per_model)]
                labels += [label] * len(chunk)
            progress(f"{name}/{sub}: {labels.count(label)} images so far")
    if not rows:
        raise ValueError(f"no decodable images under {data}")
    return Scored(np.array(rows, np.float64), np.array(labels, np.int64))


def _probability(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weights and intercept minimising sum(log loss) + |w|^2 / (2c), by Newton's method."""
    design = np.c_[x, np.ones(len(x))]
    penalty = np.r_[np.full(x.shape[1], 1.0 / c), 0.0]
    theta = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = _probability(design @ theta)
        gradient = design.T @ (p - y) + penalty * theta
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian + 1e-12 * np.eye(len(theta)), gradient)
        theta -= step
        if np.abs(step).max() < 1e-12:
            break
    return theta[:-1], float(theta[-1])


def split(labels: np.ndarray, held_back: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held back) indices: `held_back` of each class, at least one of each when it has two."""
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = min(len(members) - 1, max(1, round(held_back * len(members)))) if len(members) >= 2 else 0
        test.append(members[:n])
        fit.append(members[n:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(test))


def band(scores: np.ndarray, labels: np.ndarray, fpr: float, fnr: float) -> tuple[float, float]:
    """(real_at_or_below, ai_above) on fused scores; equal when one threshold meets both rates."""
    ai_above = metrics.threshold_for_fpr(scores[labels == 0], fpr)
    fakes = np.sort(scores[labels == 1])
    allowed = int(np.floor(fnr * len(fakes)))
    real_at_or_below = float(np.nextafter(fakes[allowed], -np.inf)) if allowed < len(fakes) else float(fakes[-1])
    return min(max(real_at_or_below, 0.0), ai_above), ai_above


def _quality(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"roc_auc": metrics.roc_auc(probabilities, labels), "tpr_at_1pct_fpr": metrics.tpr_at_fpr(probabilities, labels, 0.01),
            "ece": metrics.expected_calibration_error(probabilities, labels)}


def calibrate_ensemble(models: Sequence[LoadedModel], scored: Scored, *, fpr: float = 0.01, fnr: float = 0.05, held_back: float = 0.3,
                       seed: int = 0, c: float = 1.0) -> tuple[Combiner, dict[str, Any]]:
    if not (0 < fpr < 1 and 0 < fnr < 1 and 0 < held_back < 1):
        raise ValueError("fpr, fnr and the held-back share must be between 0 and 1")
    fit, test = split(scored.labels, held_back, seed)
    if len(set(scored.labels[fit].tolist())) < 2 or len(set(scored.labels[test].tolist())) < 2:
        raise ValueError("need at least two real and two AI-generated images (one of each to fit, one to hold back)")
    weights, bias = fit_logistic(scored.logits[fit], scored.labels[fit], c)
    fused = _probability(scored.logits @ weights + bias)
    real_at_or_below, ai_above = band(fused[fit], scored.labels[fit], fpr, fnr)
    combiner = Combiner(tuple(m.manifest.version for m in models), tuple(float(w) for w in weights), bias, real_at_or_below, ai_above)
    y = scored.labels[test]
    labels = np.array([combiner.label(float(s)) for s in fused[test]])
    report: dict[str, Any] = {
        "images": len(scored.labels), "fit": len(fit), "held_back": len(test),
        "models": {m.manifest.version: _quality(_probability(scored.logits[test, i]), y) for i, m in enumerate(models)},
        "fused": _quality(fused[test], y),
        "band": {"real_at_or_below": real_at_or_below, "ai_above": ai_above, "suspicious_share": float(np.mean(labels == SUSPICIOUS)),
                 "false_positive_rate": float(np.mean(labels[y == 0] == AI_GENERATED)),
                 "missed_ai_rate": float(np.mean(labels[y == 1] == REAL))},
    }
    return combiner, report
