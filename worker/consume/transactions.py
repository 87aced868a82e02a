"""Exactly-once output (DDA_DELIVERY=exactly_once): records leave only inside Kafka transactions
that also commit the input offsets of exactly those records.

Each transaction takes, per partition, the unbroken run of finished records from the commit
position (`Ledger.resolved_runs`), publishes them and commits the position past the run, as
one: a reader with isolation_level=read_committed sees all of it or none, and whoever reads
the partition next starts where the committed records end. A verdict that finished behind a
slow one waits for it (work finishes out of order; the commit is a position, not a set), which
is this mode's price in latency.

Committed: those entries are done. Aborted: nothing of it is visible or committed; the records
the broker refused are handled as at-least-once handles them (`worker.consume.outcomes`), and the run
goes again in a later transaction, after a backoff. The producer unusable (fenced by a newer
instance of this member slot, or a transaction's end not confirmed): `failure` is set and the
delivery stops for a restart, whose init_transactions settles whatever was left open. Records
never leave outside a transaction: the transport refuses plain publishes in this mode.
"""

from __future__ import annotations

import time

import structlog

from worker.consume.ledger import Entry, Ledger
from worker.consume.outcomes import published, refused, retry_delay
from worker.consume.transport import Outgoing, Partition, Position, ProducerUnusable, TransactionAborted, Transport, named_offsets
from worker.messages import encode_record
from worker.metrics import Metrics

log = structlog.get_logger("dda.transactions")


class Transactions:
    def __init__(self, transport: Transport, ledger: Ledger, metrics: Metrics, interval_s: float, retry_base_s: float,
                 give_up_s: float) -> None:
        """`give_up_s`: no transaction committed for this long while records wait and the broker is
        reachable (the broker lost its transactional state, or keeps refusing): stop for a restart."""
        self.transport = transport
        self.ledger = ledger
        self.metrics = metrics
        self.interval_s = interval_s
        self.retry_base_s = retry_base_s
        self.give_up_s = give_up_s
        self.failure: str | None = None
        self._next = 0.0
        self._aborts = 0  # in a row
        self._failing_since: float | None = None
        self._opened_at: float | None = None
        metrics.transaction_open.set_function(self._open_age)

    def _open_age(self) -> float:
        opened = self._opened_at
        return 0.0 if opened is None else time.monotonic() - opened

    def failing_for(self, now: float) -> float:
        """Seconds since a transaction last could not commit (0 while they commit)."""
        return 0.0 if self._failing_since is None else now - self._failing_since

    def commit(self, tps: set[Partition] | None, timeout_s: float, force: bool = False) -> bool:
        """One transaction of what has finished (of `tps`, or every partition), when due or
        `force`d; True when it committed, or nothing was left to commit."""
        now = time.monotonic()
        if self.failure is not None or (not force and now < self._next):
            return False
        self._next = now + self.interval_s
        runs = self.ledger.resolved_runs(tps)
        if not runs:
            return True
        entries = [entry for run, _ in runs.values() for entry in run]
        positions = {tp: Position(end) for tp, (_, end) in runs.items()}
        self._opened_at = now
        try:
            self.transport.transact([_outgoing(e, self.transport.max_record_bytes) for e in entries], positions, timeout_s)
        except TransactionAborted as exc:
            self._aborted(entries, exc, now)
            return False
        except ProducerUnusable as exc:
            self.failure = f"the transactional producer cannot continue ({exc}); stopping for a restart"
            log.error(self.failure)
            return False
        finally:
            self.metrics.transaction_seconds.observe(time.monotonic() - now)
            self._opened_at = None
        self.metrics.transactions.labels("committed").inc()
        for entry in entries:
            published(entry, self.metrics)
        self.ledger.mark_committed(positions)
        self._aborts, self._failing_since = 0, None
        log.debug("committed", records=len(entries), positions=named_offsets(positions))
        return True

    def _aborted(self, entries: list[Entry], exc: TransactionAborted, now: float) -> None:
        self.metrics.transactions.labels("aborted").inc()
        at_once = bool(exc.refused)  # every refused record changed (now compact, or given up): no need to wait
        for index, refusal in exc.refused.items():
            entry = entries[index]
            shrinks = refusal.too_large and not entry.compact
            refused(entry, refusal, self.metrics)
            at_once = at_once and (shrinks or entry.acked)
        self._aborts += 1
        self._next = now if at_once else now + retry_delay(self.retry_base_s, self._aborts)
        log.warning("transaction aborted; its records go again in a later one (readers never saw them)", error=str(exc),
                    records=len(entries), refused={f"{entries[i].tp}/{entries[i].offset}": f"{type(r.error).__name__}: {r.error}"
                                                   for i, r in exc.refused.items()}, aborts_in_a_row=self._aborts)
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self.give_up_s and self.transport.connected() and self.failure is None:
            self.failure = f"no transaction committed for {now - self._failing_since:.0f} s with the broker reachable; stopping for a restart"
            log.error(self.failure)


def _outgoing(entry: Entry, limit: int) -> Outgoing:
    record = entry.completion.record
    assert record is not None  # a run holds resolved records only
    return Outgoing(entry.kind, entry.key, encode_record(record, limit, compact=entry.compact))
