"""What the broker's answer to one record means, whichever way it was published (one at a time,
or inside a transaction): acknowledged, it is counted; refused, it is sent compact once if its
size was the reason, and a dead letter is given up after its retries (logged with what
identifies it) rather than holding its partition's commit back for ever. A verdict is never
given up: nothing past it is committed until it is published."""

from __future__ import annotations

import structlog

from worker.consume.ledger import Entry
from worker.consume.transport import Refusal
from worker.metrics import Metrics

log = structlog.get_logger("dda.delivery")
DEAD_LETTER_ATTEMPTS = 5
MAX_RETRY_DELAY_S = 10.0


def retry_delay(base_s: float, attempts: int) -> float:
    """How long a refused record (or an aborted transaction) waits before it goes again: doubling
    from `base_s` with the attempts, at most MAX_RETRY_DELAY_S."""
    return min(MAX_RETRY_DELAY_S, base_s * float(2 ** min(attempts, 6)))


def published(entry: Entry, metrics: Metrics) -> None:
    entry.acked = True
    record = entry.completion.record
    if record is not None and "status" in record:  # a verdict (a dead letter is counted where it is made)
        metrics.verdicts.labels(record["status"], record["label"] or "none").inc()
        if record.get("assessment"):
            metrics.assessments.labels(record["assessment"]).inc()
        if record["error"]:
            metrics.errors.labels(record["error"]["code"]).inc()


def refused(entry: Entry, refusal: Refusal, metrics: Metrics) -> bool:
    """Counts a refusal; True when the record is to be sent again (compact, if that is new)."""
    entry.attempts += 1
    metrics.publish_failures.labels(entry.kind).inc()
    if refusal.too_large and not entry.compact:
        entry.compact = True
        return True
    if entry.kind == "dead_letter" and (refusal.too_large or entry.attempts >= DEAD_LETTER_ATTEMPTS):
        letter = entry.completion.record
        described = ({"reason": letter["reason"], "raw_size": letter["raw_size"], "raw_sha256": letter["raw_sha256"]}
                     if letter is not None and "reason" in letter else {})
        log.error("dead letter given up after its retries; the message is skipped", source=f"{entry.tp}/{entry.offset}", **described,
                  error=f"{type(refusal.error).__name__}: {refusal.error}")
        metrics.dead_letters_dropped.inc()
        entry.acked = True
        return False
    return True
