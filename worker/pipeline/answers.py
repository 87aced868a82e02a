"""A request's one answer, built whole: the model's verdict (fresh, cached or a trusted near-
duplicate's) under the provenance policy and imported hash lists, or an error verdict; then its
Completion is resolved and the stage timings are observed (once: a second resolve is counted
as a duplicate by the Completion, not published)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from engine.model.labels import AI_GENERATED
from worker.cache.verdicts import CachedVerdict
from worker.messages import verdict
from worker.metrics import Metrics
from worker.pipeline.work import Work
from worker.provenance import policy
from worker.records import Hashes, NearMatch, Verdict

log = structlog.get_logger("dda.pipeline")


@dataclass(frozen=True)
class Answers:
    metrics: Metrics
    model_info: dict[str, str]
    threshold: float  # what `label` is decided at: the manifest's, or the combiner's upper band
    provenance_policy: str
    trust_near_duplicates: bool

    def error(self, work: Work, code: str, message: str) -> None:
        self._finish(work, verdict(work.request, model=self.model_info, threshold=self.threshold, status="error",
                                   hashes=work.hashes if work.sha256 else None, error={"code": code, "message": message}))

    def scored(self, work: Work, v: CachedVerdict, hashes: Hashes, kind: str, match: NearMatch | None,
               provenance: dict[str, Any] | None) -> None:
        """The model's verdict (fresh or cached) with the request's provenance, under the provenance policy."""
        if self.provenance_policy == "off":  # not read, so not reported either (a cached entry may hold some)
            provenance = None
        label, reason = policy.label(v.label, provenance, self.provenance_policy)
        listed = work.list_match
        if listed is not None and self.trust_near_duplicates and label != AI_GENERATED:  # a trusted list's word, the score the model's
            label, reason = AI_GENERATED, f"near-duplicate (distance {listed['pdq_distance']}) of a hash listed by {listed['source']}"
        self._finish(work, verdict(
            work.request, model=self.model_info, threshold=self.threshold, status="ok", logit=v.logit,
            score=v.score, label=label, label_reason=reason, hashes=hashes, cache=kind, cache_match=match,
            provenance=provenance, near_duplicate_search="not_searched" if work.near_unsearched else None, shadow=work.shadow,
            hash_list_match=listed, models=v.models, assessment=v.assessment))

    def _finish(self, work: Work, record: Verdict) -> None:
        request = work.request
        request.timings_ms["total"] = (time.monotonic() - request.received) * 1000
        record["timings_ms"]["total"] = round(request.timings_ms["total"], 3)
        if work.completion.resolve(record):
            for stage, ms in request.timings_ms.items():
                self.metrics.stage_seconds.labels(stage).observe(ms / 1000)
            log.debug("verdict", request_id=request.id, status=record["status"], label=record["label"],
                      cache=record["cache"], error=record["error"]["code"] if record["error"] else None,
                      total_ms=record["timings_ms"]["total"])
