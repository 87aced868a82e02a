"""Delivery, on the consumer thread: publish what completed, commit the acknowledged prefix.

The one place where records leave the worker and offsets are committed. The loop:

    poll -> parse (malformed: dead letter) -> pipeline.submit -> Completion into the Ledger
         -> publish every resolved record -> collect broker acknowledgements
         -> commit each partition's acknowledged prefix -> pause/resume for backpressure

Rebalances (the transport calls the Listener methods from inside `poll`):
- revoked: within DDA_REVOKE_TIMEOUT_S, let the partitions' in-flight work finish for
  half of it, cancel the rest, wait for the acknowledgements of what was published, and
  hand back the acknowledged prefix to commit. The partitions are then forgotten; their
  cancelled work is redone by the next owner from that position.
- lost: cancel and forget, commit nothing (someone else owns them already).
- assigned: a partition this worker had just before resumes from its own acknowledged
  prefix (the transport seeks there), because Kafka clients keep the read position of
  partitions that come straight back, which would skip the work dropped at revocation.
  Offsets past that prefix whose verdicts were already acknowledged are not redone.

Publishing that stalls while the broker is reachable (a broker that lost its state: a
restarted memory-only broker, an expired or fenced producer id, a recreated topic) is not an
outage: the producer may never recover by itself. After 3/4 of `publish_stall_s`
(DDA_PUBLISH_STALL_S) without any acknowledgement the worker reports not ready; after all of
it the transport replaces its producer and every unacknowledged record is resent; after 2.5
times it the loop ends as if a stage had died (exit 1, for a restart). Time only counts while the broker is
reachable: an outage is waited out, and readiness already says so.

DDA_DELIVERY=exactly_once swaps the publishing half: records are not sent as they resolve but
in transactions with their offsets (`worker.consume.transactions`), at the loop's commit step, at
revocation (for the revoked partitions, in place of waiting for acknowledgements) and at
shutdown; everything else here is shared.

Shutdown, in order under one deadline: stop intake -> drain (DDA_DRAIN_TIMEOUT_S) -> stop
the stages -> flush -> commit -> leave the group and close. Nothing past unfinished work
is ever committed, so whatever is abandoned is redelivered.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import structlog

from worker.consume.commits import COMMIT_TIMEOUT_S, Committer
from worker.consume.lag import LagReport
from worker.consume.ledger import Entry, Ledger
from worker.consume.publisher import GIVE_UP_AT, Publisher
from worker.consume.terms import EXIT_ABANDONED, EXIT_FATAL, EXIT_OK, Limits, Processor
from worker.consume.transactions import Transactions
from worker.consume.transport import Message, Partition, Position, Transport, named_offsets
from worker.messages import Malformed, Source, dead_letter, parse_request
from worker.metrics import Metrics
from worker.pipeline.completion import Completion

log = structlog.get_logger("dda.delivery")
POLL_S = 0.1
REVOKE_TRANSACTION_MIN_S = 1.0
STEP_S = 0.005
UNREADY_AT = 0.75  # of publish_stall_s: /readyz false


class Delivery:
    def __init__(self, transport: Transport, processor: Processor, metrics: Metrics, limits: Limits) -> None:
        self.transport = transport
        self.processor = processor
        self.metrics = metrics
        self.limits = limits
        self.ledger = Ledger()
        self.heartbeat = time.monotonic()
        self.publisher = Publisher(transport, self.ledger, metrics, limits.publish_stall_s, limits.retry_base_s)
        self._resume: dict[Partition, tuple[int, frozenset[int]]] = {}  # own position and ahead at revocation
        self._paused = False
        self._draining = False
        self._closing = False
        self.lag = LagReport(transport, metrics, limits.lag_every_s)
        self.transactions = (Transactions(transport, self.ledger, metrics, limits.transaction_interval_s, limits.retry_base_s,
                                          GIVE_UP_AT * limits.publish_stall_s) if transport.transactional else None)
        self.committer = Committer(transport, self.ledger, metrics, self.transactions)
        self._lock = threading.Lock()  # loop, publisher and listener (transport thread) take turns
        self._wake = threading.Event()  # a record resolved: the publisher sends it now, not at the loop's next turn

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event, stop_stages: Callable[[], None]) -> int:
        """Consume until `stop` (or the input ends, or a stage dies); then shut down in order."""
        self.transport.start(self)
        publisher = threading.Thread(target=self._publish_loop, name="publisher", daemon=True)
        if self.transactions is None:  # records wait for a transaction otherwise
            publisher.start()
        fatal = None
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            fatal = self.processor.failure or self.publish_failure
            if fatal is not None:
                break
            if self.transport.exhausted() and not self.ledger.unfinished():
                break
            for message in self.transport.poll(POLL_S):
                self._accept(message)
            with self._lock:
                self.publisher.pump()
                self.publisher.watch(time.monotonic())
                self.committer.commit()
                self._backpressure()
            self.lag.refresh()
        try:
            return self._shutdown(stop_stages, fatal)
        finally:
            self._closing = True  # set by the shutdown already, unless it raised
            self._wake.set()
            if publisher.is_alive():
                publisher.join(COMMIT_TIMEOUT_S)

    def _publish_loop(self) -> None:
        """Publishes records as they resolve. The loop publishes too, at each turn, but a turn
        waits up to POLL_S in the consumer's poll, which held every verdict up to 100 ms
        (measured); the producer is thread-safe, the ledger is under the lock."""
        while not self._closing:
            self._wake.wait(POLL_S)
            self._wake.clear()
            if self.publisher.waiting:
                with self._lock:
                    self.publisher.pump()

    def _accept(self, message: Message) -> None:
        tp = message.tp
        if self._draining or not self.ledger.accepts(tp, message.offset):
            return  # not recorded, so not committed: it is read again
        source = Source(message.topic, message.partition, message.offset)
        if self.ledger.take_done(tp, message.offset):  # its verdict was acknowledged before the rebalance
            done = Entry(tp, message.offset, "verdict", Completion(source.ref()), acked=True)
            with self._lock:
                self.ledger.append(done)
            return
        self.metrics.consumed.inc()
        try:
            request = parse_request(message.value, source, self.limits.max_message_bytes,
                                    allow_paths=self.transport.allows_paths)
        except Malformed as exc:
            self.metrics.dead_letters.labels(exc.reason).inc()
            completion = Completion(source.ref())
            completion.resolve(dead_letter(message.value, source, exc, self.transport.max_record_bytes))
            entry = Entry(tp, message.offset, "dead_letter", completion, source.ref().encode())
        else:
            entry = Entry(tp, message.offset, "verdict", self.processor.submit(request), request.id.encode())
        with self._lock:
            self.ledger.append(entry)
        if self.transactions is None:
            entry.completion.add_done_callback(functools.partial(self._resolved, entry))

    def _resolved(self, entry: Entry, _completion: Completion) -> None:
        """On a stage thread: a record is ready; the publisher (or the loop) sends it."""
        self.publisher.resolved(entry)
        self._wake.set()

    @property
    def publish_failure(self) -> str | None:
        """Why records cannot leave any more (the loop ends for a restart), or None."""
        return self.publisher.failure or (self.transactions.failure if self.transactions is not None else None)

    @property
    def publishing(self) -> bool:
        """False while records wait for acknowledgements (or transactions) that do not come, the
        broker reachable (readiness)."""
        failing = self.transactions.failing_for(time.monotonic()) if self.transactions is not None else self.publisher.stalled_s
        return failing < UNREADY_AT * self.limits.publish_stall_s

    # --- committing and backpressure ----------------------------------------------------------

    def _backpressure(self) -> None:
        unfinished = self.ledger.unfinished()
        if not self._paused and unfinished >= self.limits.max_in_flight:
            self._paused = True
        elif self._paused and unfinished <= self.limits.max_in_flight // 2:
            self._paused = False
            self.transport.resume(self.transport.assignment())
        if self._paused:
            self.transport.pause(self.transport.assignment())  # also partitions assigned since
        self.metrics.paused.set(1 if self._paused else 0)

    # --- rebalance listener -----------------------------------------------------------------

    def on_assigned(self, committed: dict[Partition, Position | None]) -> dict[Partition, int]:
        """Each partition starts at the later of the group's commit and this process's own
        position when it revoked the partition: the group's, once another owner has moved it on
        (seeking back to a remembered position redid their work: issue 28); its own, when the
        commit at revocation failed. A partition kept through the rebalance keeps its fetch
        position in the client, so it is always sought. Offsets already published are skipped:
        those the commit names (any owner's) and those this process published itself."""
        with self._lock:
            seeks = {}
            for tp, last in committed.items():
                position, ahead = (last.offset, set(last.ahead)) if last is not None else (None, set())
                own = self._resume.pop(tp, None)
                if own is not None:
                    position = own[0] if position is None else max(position, own[0])
                    ahead |= own[1]
                self.ledger.add_partition(tp, position, {o for o in ahead if position is None or o >= position})
                if position is not None:
                    seeks[tp] = position
            self._resume.clear()  # partitions revoked and not given back belong to others now
            self.processor.set_partitions(self.ledger.partitions())
            self.metrics.rebalances.labels("assigned").inc()
            log.info("partitions assigned", partitions=sorted(f"{t}/{p}" for t, p in committed),
                     group_commit={f"{t}/{p}": (c.offset if c else None) for (t, p), c in committed.items()},
                     resume={f"{t}/{p}": o for (t, p), o in seeks.items()})
            return seeks

    def on_revoked(self, partitions: set[Partition]) -> dict[Partition, Position]:
        with self._lock:
            owned = partitions & self.ledger.partitions()
            self.metrics.rebalances.labels("revoked").inc()
            in_flight = self.ledger.unfinished(owned)
            if not self._closing:
                self._settle(owned)
            positions = self.ledger.committable(owned) if self.transactions is None else {}  # a transaction committed them
            for tp in owned:
                position = self.ledger.position(tp)
                if position is not None:
                    self._resume[tp] = (position, frozenset(self.ledger.done_ahead(tp)))
            cancelled = self._forget(owned)
            log.info("partitions revoked", partitions=sorted(f"{t}/{p}" for t, p in partitions), in_flight=in_flight,
                     cancelled=cancelled, commit=named_offsets(positions),
                     published_ahead=sum(len(o.ahead) for o in positions.values()))
            return positions

    def on_lost(self, partitions: set[Partition]) -> None:
        with self._lock:
            self.metrics.rebalances.labels("lost").inc()
            for tp in partitions:
                self._resume.pop(tp, None)
            cancelled = self._forget(partitions)
            log.warning("partitions lost; their work is dropped uncommitted", partitions=sorted(f"{t}/{p}" for t, p in partitions),
                        cancelled=cancelled)

    def _settle(self, owned: set[Partition]) -> None:
        """Revocation's deadline: half to let work finish, the rest for the broker: its
        acknowledgements, or (exactly_once) one transaction of what finished."""
        start = time.monotonic()
        finish_by, acks_by = start + self.limits.revoke_timeout_s / 2, start + self.limits.revoke_timeout_s
        while time.monotonic() < finish_by and any(not e.completion.done for e in self.ledger.entries(owned)):
            self.publisher.pump()
            time.sleep(STEP_S)
        for entry in self.ledger.entries(owned):
            entry.completion.cancel()
        if self.transactions is not None:
            self.transactions.commit(owned, max(REVOKE_TRANSACTION_MIN_S, acks_by - time.monotonic()), force=True)
            return
        while time.monotonic() < acks_by and any(e.completion.record is not None and not e.acked
                                                 for e in self.ledger.entries(owned)):
            self.publisher.pump()
            time.sleep(STEP_S)

    def _forget(self, partitions: set[Partition]) -> int:
        left = self.ledger.remove(partitions)
        cancelled = sum(1 for e in left if e.completion.cancel())
        self.processor.set_partitions(self.ledger.partitions())
        return cancelled

    # --- shutdown ---------------------------------------------------------------------------

    def _shutdown(self, stop_stages: Callable[[], None], fatal: str | None) -> int:
        self._draining = True
        drain_until = time.monotonic() + (0.0 if fatal else self.limits.drain_timeout_s)
        while self.ledger.unfinished() and time.monotonic() < drain_until and self.processor.failure is None:
            self.heartbeat = time.monotonic()
            self.transport.pause(self.transport.assignment())
            self.transport.poll(min(POLL_S, max(0.0, drain_until - time.monotonic())))  # keeps the membership
            with self._lock:
                self.publisher.pump()
                self.committer.commit()
        abandoned = self.ledger.unfinished()
        fatal = fatal or self.processor.failure  # a stage that died during the drain is still a failure
        end = time.monotonic() + self.limits.post_drain_s
        stop_stages()
        self.transport.flush(max(0.0, min(2.0, end - time.monotonic())))
        with self._lock:
            self.publisher.pump()
            committed = self.committer.commit(force=True, timeout_s=max(0.1, min(COMMIT_TIMEOUT_S, end - time.monotonic())))
        left = self.ledger.unfinished()
        self._closing = True  # the close revokes the partitions: no more waiting, just forget them
        try:
            self.transport.close(max(0.1, end - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - closing is best effort; nothing uncommitted was lost
            log.warning("transport close failed", error=f"{type(exc).__name__}: {exc}")
        status = EXIT_FATAL if fatal else (EXIT_OK if not left and committed else EXIT_ABANDONED)
        log.info("worker stopped", exit_status=status, abandoned=left, abandoned_at_drain_deadline=abandoned,
                 committed=committed, failure=fatal,
                 note="abandoned requests are redelivered: nothing past them was committed" if left else None)
        return status
