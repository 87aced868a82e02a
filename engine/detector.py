"""The model-facing API: decoded RGB images in, logits, scores and labels out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.contract import Runner
from engine.labels import AI_GENERATED, REAL
from engine.manifest import Manifest
from engine.preprocess import views


@dataclass(frozen=True)
class Prediction:
    logit: float
    score: float
    label: str


def sigmoid(logit: float) -> float:
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


def label_for(logit: float, manifest: Manifest) -> str:
    return AI_GENERATED if logit > manifest.threshold_logit else REAL


class Detector:
    """Crops each image (1 view, or 5 with corners), runs the batch, averages per image."""

    def __init__(self, manifest: Manifest, runner: Runner, crops: int = 1) -> None:
        if crops not in (1, 5):
            raise ValueError(f"crops must be 1 or 5, got {crops}")
        self.manifest = manifest
        self.runner = runner
        self.crops = crops

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        pre = self.manifest.preprocessing
        return self.predict_views([views(pre.prepare(img), self.crops, pre.crop_size) for img in images])

    def predict_views(self, stacks: Sequence[np.ndarray]) -> list[Prediction]:
        """Predictions for images already cut into their [crops, S, S, 3] views (by decode processes)."""
        if not stacks:
            return []
        logits = self.runner.logits(np.concatenate(stacks)).astype(np.float64).reshape(len(stacks), self.crops).mean(axis=1)
        return [Prediction(float(v), sigmoid(float(v)), label_for(float(v), self.manifest)) for v in logits]
