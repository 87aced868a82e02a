"""Compare a compiled artefact's logits with the fp32 torch model's on real images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.imaging.preprocess import center_crop
from engine.runners.contract import Runner


@dataclass(frozen=True)
class DriftReport:
    images: int
    max_abs_diff: float
    mean_abs_diff: float
    decision_flips: int
    worst_image: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: Runner, candidate: Runner, names: Sequence[str], pixels: Sequence[np.ndarray], threshold_logit: float) -> DriftReport:
    if not pixels:
        raise ValueError("no images to compare on")
    size = reference.preprocessing.crop_size
    crops = np.stack([center_crop(p, size) for p in pixels])
    ref = reference.logits(crops).astype(np.float64)
    cand = candidate.logits(crops).astype(np.float64)
    diff = np.abs(ref - cand)
    worst = int(diff.argmax())
    return DriftReport(
        images=len(pixels),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        decision_flips=int(np.sum((ref > threshold_logit) != (cand > threshold_logit))),
        worst_image=names[worst],
    )
