"""A calibrated combination of several detectors' logits, and the band it leaves undecided.

Two detectors that fail on different images are worth combining only when the combination is
calibrated: a plain OR of two thresholds raises false positives faster than it catches fakes.
`dda calibrate --second` fits this on labelled images (training/calibration.py): a logistic
regression over the models' logits, whose output is a calibrated P(AI-generated), and two
thresholds on it: above `ai_above` the verdict is `ai_generated`, at or below `real_at_or_below`
it is `real`, and between them `suspicious`. Stored as JSON beside the models; pure
arithmetic, so any process can apply it without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.model.labels import AI_GENERATED, REAL, sigmoid

SUSPICIOUS = "suspicious"
FORMAT = "dda-combiner/1"


class CombinerError(ValueError):
    """A combiner file that cannot be used."""


@dataclass(frozen=True)
class Combiner:
    models: tuple[str, ...]  # the versions of the models whose logits it takes, in order
    weights: tuple[float, ...]
    bias: float
    real_at_or_below: float  # fused P(AI)
    ai_above: float

    def __post_init__(self) -> None:
        if len(self.models) != len(self.weights) or not self.models:
            raise CombinerError(f"{len(self.models)} models but {len(self.weights)} weights")
        if not all(math.isfinite(v) for v in (*self.weights, self.bias)):
            raise CombinerError("weights and bias must be finite")
        if not 0.0 <= self.real_at_or_below <= self.ai_above <= 1.0:
            raise CombinerError(f"need 0 <= real_at_or_below ({self.real_at_or_below}) <= ai_above ({self.ai_above}) <= 1")

    def logit(self, logits: Sequence[float]) -> float:
        """The fused log-odds from the models' logits, in `models` order."""
        if len(logits) != len(self.weights):
            raise CombinerError(f"{len(logits)} logits for {len(self.weights)} models")
        return self.bias + sum(w * x for w, x in zip(self.weights, logits))

    def score(self, logits: Sequence[float]) -> float:
        """Calibrated P(AI-generated) from the models' logits, in `models` order."""
        return sigmoid(self.logit(logits))

    def label(self, score: float) -> str:
        """Three-way: the band's answer."""
        if score > self.ai_above:
            return AI_GENERATED
        return REAL if score <= self.real_at_or_below else SUSPICIOUS

    def two_way_label(self, score: float) -> str:
        """For readers that know two labels: `ai_generated` only above the band (its false-positive rate holds)."""
        return AI_GENERATED if score > self.ai_above else REAL

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["models"], data["weights"] = list(self.models), list(self.weights)
        return {"format": FORMAT, **data}

    def save(self, path: Path) -> None:
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> Combiner:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise CombinerError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}")
            return cls(tuple(str(m) for m in data["models"]), tuple(float(w) for w in data["weights"]), float(data["bias"]),
                       float(data["real_at_or_below"]), float(data["ai_above"]))
        except CombinerError:
            raise
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise CombinerError(f"{path}: not a readable combiner: {exc}") from exc
