"""A second detector beside DDA, and the combiner that turns both logits into one calibrated verdict.

`DDA_SECOND_MODEL` names the second model (Community Forensics), `DDA_ENSEMBLE` the combiner
`dda calibrate --second` fitted for exactly these two model versions (engine/model/combiner.py).
Every miss is then scored twice in the same batch, each model on its own crop (the decode
processes cut the second one: its shorter side scaled first), and the verdict carries both
models' answers, the fused score and the three-way `assessment` (real, suspicious,
ai_generated). `label` stays two-way for readers of older schemas: `ai_generated` only above
the band, so a suspicious image reads as `real` there, and the band's false-positive rate holds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.model.combiner import Combiner, CombinerError
from engine.model.labels import sigmoid
from engine.model.manifest import Manifest, ModelDirError
from engine.runners.contract import Runner
from worker.cache.keys import ensemble_namespace
from worker.records import ModelAnswer


@dataclass(frozen=True)
class Scored:
    logit: float  # the fused log-odds
    score: float  # the fused, calibrated P(AI-generated)
    label: str  # two-way, for every schema version
    assessment: str  # three-way
    models: list[ModelAnswer]


@dataclass(frozen=True)
class Ensemble:
    served: Manifest
    second: Manifest
    runner: Runner  # the second model's
    combiner: Combiner
    fingerprint: str  # of the combiner file: cached verdicts are namespaced by it
    crop_spec: tuple[int, int]  # what a decode process cuts for the second model: (shorter side scaled to, crop)

    def namespace(self, served_namespace: str) -> str:
        return ensemble_namespace(served_namespace, self.second.version, self.fingerprint)

    def score(self, served_logits: np.ndarray, second_crops: np.ndarray) -> list[Scored]:
        """One answer per image: `served_logits` [n] from DDA, `second_crops` [n, S2, S2, 3] for the second model."""
        second_logits = self.runner.logits(second_crops).astype(np.float64)
        out = []
        for first, second in zip(served_logits.tolist(), second_logits.tolist()):
            fused = self.combiner.logit([first, second])
            score = sigmoid(fused)
            models = [_answer(m, v) for m, v in ((self.served, first), (self.second, second))]
            out.append(Scored(fused, score, self.combiner.two_way_label(score), self.combiner.label(score), models))
        return out


def _answer(model: Manifest, logit: float) -> ModelAnswer:
    answer = ModelAnswer(name=model.name, version=model.version, logit=logit, score=sigmoid(logit))
    if model.warning:
        answer["warning"] = model.warning
    return answer


def combiner_for(combiner_path: Path, served: Manifest, second: Manifest) -> Combiner:
    """The combiner, refused unless fitted for these two model versions, in this order, and unless
    the second model scales before cropping (what the decode processes know how to cut for it)."""
    combiner = Combiner.load(combiner_path)
    if combiner.models != (served.version, second.version):
        raise CombinerError(f"{combiner_path} combines {list(combiner.models)}, not the served {served.version} and the "
                            f"second {second.version}: refit it with dda calibrate --second")
    if second.preprocessing.resize is None:
        raise ModelDirError(f"second model {second.version} does not scale before cropping; only such a second model is supported")
    return combiner


def load_ensemble(combiner_path: Path, served: Manifest, second: Manifest, runner: Runner) -> Ensemble:
    """`runner` scores the second model: in this process, or the engine process's (a pod)."""
    combiner = combiner_for(combiner_path, served, second)
    pre = second.preprocessing
    assert pre.resize is not None  # combiner_for refused a second model that does not scale
    return Ensemble(served, second, runner, combiner, hashlib.sha256(combiner_path.read_bytes()).hexdigest()[:12],
                    (pre.resize, pre.crop_size))
