"""A deterministic in-process broker behind the transport contract (`worker.consume.transport`).

Not a mock of kafka-python: it implements the same interface the Kafka transport does,
with the behaviours that broke delivery before: eager rebalances (everything revoked,
then the new set assigned) where partitions that come straight back keep their read
position, lost partitions, refused publishes and failed commits. Tests drive it from
their own thread; nothing here sleeps except an idle `poll`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.consume.transport import (
    Ack,
    CommitFailed,
    DoneAck,
    Kind,
    Listener,
    Message,
    Outgoing,
    Partition,
    Position,
    ProducerUnusable,
    Refusal,
    TransactionAborted,
    Transport,
)


class Unanswered(Ack):
    """A publish the broker never acknowledges nor refuses (a broker that lost the producer's state)."""

    @property
    def done(self) -> bool:
        return False

    @property
    def error(self) -> BaseException | None:
        return None


@dataclass
class Rebalance:
    assign: set[Partition] | None  # None: revoked, and the member misses the next generations
    lost: bool = False


@dataclass
class FakeBroker:
    logs: dict[Partition, list[bytes | None]] = field(default_factory=dict)
    committed: dict[Partition, int] = field(default_factory=dict)
    ahead: dict[Partition, frozenset[int]] = field(default_factory=dict)  # the commits' metadata
    keeps_metadata: bool = True  # False: as tansu, which drops commit metadata
    published: dict[Kind, list[tuple[bytes, bytes]]] = field(default_factory=lambda: {"verdict": [], "dead_letter": []})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def produce(self, tp: Partition, values: list[bytes | None]) -> None:
        with self.lock:
            self.logs.setdefault(tp, []).extend(values)


class FakeTransport(Transport):
    def __init__(self, broker: FakeBroker, max_record_bytes: int = 1 << 20, batch: int = 4, transactional: bool = False) -> None:
        """`transactional`: records leave only through `transact`, as with DDA_DELIVERY=exactly_once."""
        self.broker = broker
        self.transactional = transactional
        self.transactions: list[tuple[list[Outgoing], dict[Partition, int]]] = []  # committed ones, in order
        self.aborted = 0
        self.abort: Callable[[list[Outgoing]], dict[int, Refusal] | None] = lambda _records: None  # refusals: aborts it
        self.fenced = False
        self.plain_publishes = 0
        self.max_record_bytes = max_record_bytes
        self.batch = batch
        self.listener: Listener | None = None
        self.assigned: set[Partition] = set()
        self.positions: dict[Partition, int] = {}
        self.paused: set[Partition] = set()
        self.events: deque[Rebalance] = deque()
        self.rejoining = False
        self.refuse: Callable[[Kind, bytes], Ack | None] = lambda _kind, _value: None
        self.fail_commits = False
        self.commits: list[dict[Partition, int]] = []
        self.asked_ahead: dict[Partition, frozenset[int]] = {}  # the last offsets each commit named as published ahead
        self.closed = False
        self.reachable = True
        self.renewals = 0
        self.on_renew: Callable[[], bool] = lambda: False  # what a producer replacement does; False: none possible

    def rebalance(self, assign: set[Partition] | None, lost: bool = False) -> None:
        """Queue an eager rebalance: the next poll revokes (or loses) everything, then assigns `assign`.
        `None`: nothing is assigned and the listener hears nothing more (the member rejoined too
        late for the next generations), while the client keeps its old fetch positions, as
        kafka-python does for partitions a later assignment names again."""
        self.events.append(Rebalance(assign, lost))

    def start(self, listener: Listener) -> None:
        self.listener = listener

    def poll(self, timeout_s: float) -> list[Message]:
        assert self.listener is not None
        while self.events:
            self._apply(self.events.popleft())
        out = []
        with self.broker.lock:
            for tp in sorted(self.assigned - self.paused if not self.rejoining else ()):
                log = self.broker.logs.get(tp, [])
                start = self.positions[tp]
                for offset in range(start, min(len(log), start + self.batch)):
                    out.append(Message(tp[0], tp[1], offset, None, log[offset]))
                self.positions[tp] = max(start, min(len(log), start + self.batch))
        if not out:
            time.sleep(min(timeout_s, 0.002))
        return out

    def _apply(self, event: Rebalance) -> None:
        assert self.listener is not None
        if self.assigned:
            if event.lost:
                self.listener.on_lost(set(self.assigned))
            else:
                positions = self.listener.on_revoked(set(self.assigned))
                self.commit(positions, 1.0)
        self.rejoining = event.assign is None  # nothing is fetched until the next assignment
        if self.rejoining:
            return
        kept = set() if event.lost else self.assigned & event.assign  # a lost membership clears every position
        for tp in event.assign - kept:  # new partitions start from the committed offset; kept ones keep their position
            self.positions[tp] = self.broker.committed.get(tp, 0)
        self.assigned = set(event.assign)
        self.paused &= self.assigned
        last = {tp: Position(self.broker.committed[tp], self.broker.ahead.get(tp, frozenset()))
                if tp in self.broker.committed else None for tp in event.assign}
        for tp, offset in self.listener.on_assigned(last).items():
            self.positions[tp] = offset

    def transact(self, records: list[Outgoing], positions: dict[Partition, Position], timeout_s: float) -> None:
        if self.fenced:
            raise ProducerUnusable("fenced: another worker runs this member slot")
        refused = self.abort(records)
        if refused is not None:
            self.aborted += 1
            raise TransactionAborted("refused by the test", refused)
        offsets = {tp: p.offset for tp, p in positions.items()}
        with self.broker.lock:
            for record in records:
                self.broker.published[record.kind].append((record.key, record.value))
            self.broker.committed.update(offsets)
            self.commits.append(offsets)
            self.transactions.append((records, offsets))

    def publish(self, kind: Kind, key: bytes, value: bytes) -> Ack:
        if self.transactional:
            self.plain_publishes += 1  # a test asserts this stays 0
            return DoneAck(RuntimeError("a transactional producer publishes inside transactions only"))
        refused = self.refuse(kind, value)
        if refused is not None:
            return refused
        if len(value) > self.max_record_bytes:
            return DoneAck(ValueError("record too large"), too_large=True)
        with self.broker.lock:
            self.broker.published[kind].append((key, value))
        return DoneAck()

    def commit(self, positions: dict[Partition, Position], timeout_s: float) -> None:
        if self.fail_commits:
            raise CommitFailed("broker unavailable")
        with self.broker.lock:
            self.broker.committed.update({tp: p.offset for tp, p in positions.items()})
            self.broker.ahead.update({tp: p.ahead if self.broker.keeps_metadata else frozenset() for tp, p in positions.items()})
            self.commits.append({tp: p.offset for tp, p in positions.items()})
            self.asked_ahead.update({tp: p.ahead for tp, p in positions.items()})

    def pause(self, partitions: set[Partition]) -> None:
        self.paused |= partitions & self.assigned

    def resume(self, partitions: set[Partition]) -> None:
        self.paused -= partitions

    def assignment(self) -> set[Partition]:
        return set(self.assigned)

    def flush(self, timeout_s: float) -> None:
        pass

    def connected(self) -> bool:
        return self.reachable

    def renew(self) -> bool:
        self.renewals += 1
        return self.on_renew()

    def close(self, timeout_s: float) -> None:
        self.closed = True
