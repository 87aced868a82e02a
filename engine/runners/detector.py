"""The model-facing API: decoded RGB images in, logits, scores and labels out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.imaging.preprocess import views
from engine.model.labels import AI_GENERATED, REAL, sigmoid
from engine.model.manifest import Manifest
from engine.runners.contract import Runner


@dataclass(frozen=True)
class Prediction:
    logit: float
    score: float
    label: str


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
        logits = image_logits(self.runner, np.concatenate(stacks), len(stacks))
        return [Prediction(float(v), sigmoid(float(v)), label_for(float(v), self.manifest)) for v in logits]


def image_logits(runner: Runner, views: np.ndarray, images: int) -> np.ndarray:
    """float64 [images]: the logits of each image's views (1, or 5 with the corners; in image order)
    averaged, as the reference scores a multi-crop image."""
    per_view: np.ndarray = runner.logits(views).astype(np.float64).reshape(images, -1)
    return np.asarray(per_view.mean(axis=1))
