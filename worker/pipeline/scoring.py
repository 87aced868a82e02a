"""The engine stage's model work: a micro-batch of cache misses to one answer per image.

DDA's logit is its views' mean (`engine.runners.detector.image_logits`); with an ensemble the
second detector scores its own crop and the combiner answers; a shadow model scores a sample of
the same views. A model that answers NaN or infinity (broken weights, an overflow) fails that
image alone: a verdict's JSON carries no NaN and the cache must not keep one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.model.labels import sigmoid
from engine.model.manifest import Manifest
from engine.runners.contract import Runner
from engine.runners.detector import image_logits, label_for
from worker.cache.verdicts import CachedVerdict
from worker.metrics import Metrics
from worker.pipeline.ensemble import Ensemble
from worker.pipeline.shadow import Shadow
from worker.pipeline.work import Work


@dataclass(frozen=True)
class Scored:
    verdicts: list[tuple[Work, CachedVerdict]]
    broken: list[tuple[Work, str]]  # the image and the models that answered non-finite
    views: int  # crops the served model scored


@dataclass(frozen=True)
class Scorer:
    manifest: Manifest
    runner: Runner
    crops: int  # views an image (1, or 5 with the corners)
    metrics: Metrics
    ensemble: Ensemble | None = None
    shadow: Shadow | None = None

    def score(self, items: list[Work]) -> Scored:
        """Raises what the runner raises (EngineLost: no batch can be scored now)."""
        views = np.concatenate([w.prepared.crops for w in items if w.prepared is not None])
        logits = image_logits(self.runner, views, len(items))
        verdicts, broken = [], []
        for work, v in zip(items, self._verdicts(items, logits)):
            failed = _non_finite(v, self.manifest.name)
            if failed:
                broken.append((work, failed))
            else:
                verdicts.append((work, v))
        if self.shadow is not None:  # on the very views just scored
            sampled = [(w, v) for w, v in verdicts if self.shadow.sampled(w.sha256)]
            own = {id(w): i for i, w in enumerate(items)}
            answers = self.shadow.score([views[own[id(w)] * self.crops : (own[id(w)] + 1) * self.crops] for w, _ in sampled],
                                        [(v.logit, v.label) for _, v in sampled], self.metrics)
            for (work, _), answer in zip(sampled, answers):
                work.shadow = answer
        return Scored(verdicts, broken, len(views))

    def _verdicts(self, items: list[Work], logits: np.ndarray) -> list[CachedVerdict]:
        """DDA's verdict on each image, or with an ensemble the combiner's over both models."""
        if self.ensemble is None:
            return [CachedVerdict(v, sigmoid(v), label_for(v, self.manifest), w.sha256, w.key.pdq, w.key.pdq_quality, provenance=w.provenance)
                    for w, v in zip(items, logits.tolist())]
        answers = self.ensemble.score(logits, np.stack([_second_crop(w) for w in items]))
        return [CachedVerdict(a.logit, a.score, a.label, w.sha256, w.key.pdq, w.key.pdq_quality, provenance=w.provenance, models=a.models,
                              assessment=a.assessment) for w, a in zip(items, answers)]


def _non_finite(v: CachedVerdict, served: str) -> str:
    """Who answered NaN or infinity (the model by name, or the combiner); empty when all is finite."""
    answers = [(str(m["name"]), float(m["logit"])) for m in v.models] if v.models is not None else [(served, v.logit)]
    names = [name for name, logit in answers if not math.isfinite(logit)]
    if not names and not math.isfinite(v.logit):
        names = ["the combiner"]
    return ", ".join(names)


def _second_crop(work: Work) -> np.ndarray:
    assert work.prepared is not None and work.prepared.second is not None  # with an ensemble every decode job asks for it
    return work.prepared.second
