"""The commit step of delivery: each partition's acknowledged prefix, committed at most every
COMMIT_EVERY_S unless forced (revocation, shutdown); a failed commit is counted and the next one
carries it. With exactly_once it is one transaction of what finished (`worker.consume.transactions`)."""

from __future__ import annotations

import time

import structlog

from worker.consume.ledger import Ledger
from worker.consume.transactions import Transactions
from worker.consume.transport import CommitFailed, Transport, named_offsets
from worker.metrics import Metrics

log = structlog.get_logger("dda.delivery")
COMMIT_EVERY_S = 1.0
COMMIT_TIMEOUT_S = 2.0
TRANSACTION_TIMEOUT_S = 10.0  # a transaction's end not confirmed in this long: the producer is given up (exit 1)


class Committer:
    """Called under the delivery's lock."""

    def __init__(self, transport: Transport, ledger: Ledger, metrics: Metrics, transactions: Transactions | None) -> None:
        self.transport = transport
        self.ledger = ledger
        self.metrics = metrics
        self.transactions = transactions
        self._next = 0.0

    def commit(self, force: bool = False, timeout_s: float | None = None) -> bool:
        """Commit every partition's acknowledged prefix that moved (exactly_once: publish and commit
        what finished, in a transaction); True when nothing is left to commit."""
        if self.transactions is not None:
            return self.transactions.commit(None, TRANSACTION_TIMEOUT_S if timeout_s is None else timeout_s, force)
        timeout_s = COMMIT_TIMEOUT_S if timeout_s is None else timeout_s
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + COMMIT_EVERY_S
        positions = self.ledger.committable()
        if not positions:
            return True
        try:
            self.transport.commit(positions, timeout_s)
        except CommitFailed as exc:
            self.metrics.commit_failures.inc()
            log.warning("commit failed; the next commit carries it", error=str(exc))
            self._next = now + COMMIT_TIMEOUT_S
            return False
        self.ledger.mark_committed(positions)
        log.debug("committed", positions=named_offsets(positions))
        return True
