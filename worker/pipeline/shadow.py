"""A shadow model: a candidate scored beside the served one on live misses, never answering.

Before a new model serves, an operator wants to see how its decisions would differ on the
platform's own traffic. The shadow scores a sampled share of cache misses on the very crops the
served model scored (same engine process, same batch of requests); the verdict carries its
answer in `shadow`, and metrics count agreements, flips each way and the score difference.
The served label never depends on it: a shadow that fails (not loaded, or raising) costs its
own field and a counted failure, nothing else.

Sampling goes by the image's SHA-256, so one image is always in or always out of the sample,
whichever worker sees it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from engine.model.labels import sigmoid
from engine.model.manifest import Manifest
from engine.runners.contract import Runner
from engine.runners.detector import label_for
from worker.metrics import Metrics
from worker.records import ShadowAnswer

log = structlog.get_logger("dda.shadow")


@dataclass(frozen=True)
class Shadow:
    manifest: Manifest
    runner: Runner
    fraction: float  # of misses scored by the shadow too

    def sampled(self, sha256: str | None) -> bool:
        return sha256 is not None and int(sha256[:8], 16) < self.fraction * 2**32

    def score(self, crops: Sequence[np.ndarray], served: Sequence[tuple[float, str]], metrics: Metrics) -> list[ShadowAnswer | None]:
        """The shadow's answer for each image (its crops; the served logit and label beside), or
        None for every one when the shadow failed."""
        if not crops:
            return []
        started = time.monotonic()
        try:
            logits = self.runner.logits(np.concatenate(crops)).astype(np.float64)
        except Exception as exc:  # noqa: BLE001 - the shadow's failure is its own, never the served verdict's
            metrics.shadow_failures.labels("inference").inc()
            log.warning("shadow model failed; verdicts go without its answer", error=f"{type(exc).__name__}: {exc}")
            return [None] * len(crops)
        metrics.shadow_seconds.observe(time.monotonic() - started)
        out: list[ShadowAnswer | None] = []
        start = 0
        for image, (served_logit, served_label) in zip(crops, served):
            logit = float(logits[start : start + len(image)].mean())
            start += len(image)
            if not math.isfinite(logit):  # a broken candidate: no answer rather than a NaN in the verdict's JSON
                metrics.shadow_failures.labels("inference").inc()
                out.append(None)
                continue
            label = label_for(logit, self.manifest)
            metrics.shadow_verdicts.labels(served_label, label).inc()
            metrics.shadow_score_delta.labels(served_label).observe(sigmoid(logit) - sigmoid(served_logit))
            out.append({"version": self.manifest.version, "logit": logit, "score": sigmoid(logit), "label": label})
        return out
