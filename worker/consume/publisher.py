"""The at-least-once publishing half of delivery: records out as they resolve, acknowledgements in.

A record is sent once resolved (a publisher thread, or the loop at its turn), kept until the
broker acknowledges it, and retried with backoff when refused (compact at once when too large);
its partition's commit waits for it. Publishing that stalls with the broker reachable is
watched here (`watch`): see `worker.consume.delivery` for what the worker does about it.
Every call but `resolved` is made under the delivery's lock.
"""

from __future__ import annotations

import time
from collections import deque

import structlog

from worker.consume.ledger import Entry, Ledger
from worker.consume.outcomes import published, refused, retry_delay
from worker.consume.transport import Refusal, Transport
from worker.messages import encode_record
from worker.metrics import Metrics

log = structlog.get_logger("dda.delivery")
PUBLISH_BLOCKED_S = 1.0
GIVE_UP_AT = 2.5  # of publish_stall_s: a new producer did not help either; exit 1


class Publisher:
    def __init__(self, transport: Transport, ledger: Ledger, metrics: Metrics, publish_stall_s: float, retry_base_s: float) -> None:
        self.transport = transport
        self.ledger = ledger
        self.metrics = metrics
        self.publish_stall_s = publish_stall_s
        self.retry_base_s = retry_base_s
        self._ready: deque[Entry] = deque()  # appended by completion callbacks on stage threads
        self.outstanding: list[Entry] = []  # sent, not acknowledged yet
        self.retry: list[Entry] = []
        self._blocked_until = 0.0
        self.stalled_s = 0.0  # broker reachable, records waiting, no acknowledgement: for this long
        self._watched_at = time.monotonic()
        self._renewed = False
        self.failure: str | None = None  # why records cannot leave any more

    def resolved(self, entry: Entry) -> None:
        """On a stage thread (a deque's append is atomic): the record is ready to send."""
        self._ready.append(entry)

    @property
    def waiting(self) -> bool:
        return bool(self._ready)

    @property
    def unacknowledged(self) -> bool:
        return bool(self.outstanding or self.retry)

    def pump(self) -> None:
        """Publish resolved records and due retries; collect acknowledgements."""
        now = time.monotonic()
        while self._ready:
            self._send(self._ready.popleft(), now)
        due = [e for e in self.retry if e.retry_at <= now]
        if due:
            self.retry = [e for e in self.retry if e.retry_at > now]
            for entry in due:
                self._send(entry, now)
        self._collect(now)

    def _send(self, entry: Entry, now: float) -> None:
        record = entry.completion.record
        if record is None or entry.acked or not self.ledger.owns(entry.tp):
            return  # cancelled, done already, or its partition is gone
        if now < self._blocked_until:
            entry.retry_at = self._blocked_until
            self.retry.append(entry)
            return
        value = encode_record(record, self.transport.max_record_bytes, compact=entry.compact)
        entry.ack = self.transport.publish(entry.kind, entry.key, value)
        if entry.ack.done and entry.ack.error is not None:
            self._blocked_until = now + PUBLISH_BLOCKED_S  # e.g. no broker: do not block on every record
        self.outstanding.append(entry)

    def _collect(self, now: float) -> None:
        pending = []
        for entry in self.outstanding:
            ack = entry.ack
            assert ack is not None
            if not ack.done:
                pending.append(entry)
            elif ack.error is None:
                self.stalled_s, self._renewed = 0.0, False
                published(entry, self.metrics)
            elif self.ledger.owns(entry.tp):
                self._refused(entry, ack.error, ack.too_large, now)
        self.outstanding = pending

    def watch(self, now: float) -> None:
        """Counts how long records wait without any acknowledgement while the broker is reachable;
        renews the producer, then gives up (`worker.consume.delivery`'s docstring says when)."""
        elapsed, self._watched_at = now - self._watched_at, now
        if not self.unacknowledged:
            self.stalled_s, self._renewed = 0.0, False
            return
        if not self.transport.connected():
            return  # an outage: waited out, and the readiness probe says so already
        self.stalled_s += elapsed
        if self.stalled_s >= self.publish_stall_s and not self._renewed:
            self._renewed = True
            if self.transport.renew():
                self.metrics.producer_renewals.inc()
                log.error("no record acknowledged with the broker reachable; the producer was replaced and every "
                          "unacknowledged record is resent", stalled_s=round(self.stalled_s, 1),
                          records=len(self.outstanding) + len(self.retry))
                for entry in self.outstanding:
                    entry.ack = None
                self.retry += self.outstanding
                self.outstanding = []
                for entry in self.retry:
                    entry.retry_at = now
                self._blocked_until = 0.0
        if self.stalled_s >= GIVE_UP_AT * self.publish_stall_s and self.failure is None:
            self.failure = (f"no record acknowledged for {self.stalled_s:.0f} s with the broker reachable, "
                            "a new producer included (the broker may have lost its state); stopping for a restart")

    def _refused(self, entry: Entry, error: BaseException, too_large: bool, now: float) -> None:
        at_once = too_large and not entry.compact  # sent compact straight away
        if not refused(entry, Refusal(error, too_large), self.metrics):
            return
        entry.retry_at = now if at_once else now + retry_delay(self.retry_base_s, entry.attempts)
        log.warning("broker refused a record; retrying it (nothing past it is committed)", kind=entry.kind,
                    source=f"{entry.tp}/{entry.offset}", attempt=entry.attempts, error=f"{type(error).__name__}: {error}")
        self.retry.append(entry)
