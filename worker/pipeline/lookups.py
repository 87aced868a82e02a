"""A cache lookup stage (exact by SHA-256, near by PDQ): it drains its queue in batches of what is
already waiting, one store round trip a batch. A lookup that raises fails its batch, a handler that
raises its own request; neither stops the stage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from worker.cache.verdicts import Lookup
from worker.errors import INTERNAL_ERROR
from worker.pipeline.work import Work

log = structlog.get_logger("dda.pipeline")


@dataclass(frozen=True)
class LookupStage:
    take: Callable[[], list[Work]]  # the next batch (empty after a poll with nothing waiting)
    lookup: Callable[[list[Work]], list[Lookup]]
    handle: Callable[[Work, Lookup, float], None]  # a request, its lookup's answer, the batch's milliseconds
    fail: Callable[[Work, str, str], None]  # an error verdict: code, message

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            batch = self.take()
            if not batch:
                continue
            started = time.monotonic()
            try:
                results = self.lookup(batch)
            except Exception as exc:  # a bug here must not stop the stage: fail the batch
                log.exception("cache lookup failed")
                for work in batch:
                    self.fail(work, INTERNAL_ERROR, f"cache lookup failed: {type(exc).__name__}: {exc}")
                continue
            spent = (time.monotonic() - started) * 1000
            for work, found in zip(batch, results):
                try:
                    self.handle(work, found, spent)
                except Exception as exc:  # one request's failure is its own error verdict
                    log.exception("request failed unexpectedly", request_id=work.request.id)
                    self.fail(work, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
