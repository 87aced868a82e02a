"""The contract between the delivery loop and a message transport (Kafka, stdin, test brokers).

Written once here; `worker.consume.kafka_transport` and `worker.consume.stdin_transport` implement it, and the tests'
in-process broker implements it too, so the delivery loop's guarantees are tested against
the same interface the real brokers sit behind.

Threading: every method is called from the delivery (consumer) thread. A transport calls
its `Listener` only from inside `poll` (Kafka runs it on the client's IO thread while `poll`
blocks), so listener and loop never run at the same time. `Ack` objects may be completed
by a transport's own threads (the producer's callbacks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, Protocol

Partition = tuple[str, int]  # (topic, partition)
Kind = Literal["verdict", "dead_letter"]


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def tp(self) -> Partition:
        return (self.topic, self.partition)


class Ack(ABC):
    """A publish under way: `done`, then `error` (None when the broker acknowledged it)."""

    @property
    @abstractmethod
    def done(self) -> bool: ...

    @property
    @abstractmethod
    def error(self) -> BaseException | None: ...

    @property
    def too_large(self) -> bool:
        """The broker refused the record for its size: retrying it unchanged cannot succeed."""
        return False


class DoneAck(Ack):
    """An Ack that is already complete (a local write, or a send refused before it left)."""

    def __init__(self, error: BaseException | None = None, too_large: bool = False) -> None:
        self._error = error
        self._too_large = too_large

    @property
    def done(self) -> bool:
        return True

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def too_large(self) -> bool:
        return self._too_large


@dataclass(frozen=True)
class Position:
    """A partition's commit: the next offset to read, and the offsets past it whose records are
    already published (work finishes out of order). Whoever reads the partition next, this
    process or another, skips `ahead` instead of publishing those records again."""

    offset: int
    ahead: frozenset[int] = frozenset()


def named_offsets(positions: dict[Partition, Position]) -> dict[str, int]:
    """Positions as logs show them ("topic/partition": offset), one format for every commit line."""
    return {f"{t}/{p}": o.offset for (t, p), o in positions.items()}


class CommitFailed(Exception):
    """The commit did not happen (broker down, rebalance in progress); try again later."""


@dataclass(frozen=True)
class Outgoing:
    """A record published inside a transaction."""

    kind: Kind
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Refusal:
    error: BaseException
    too_large: bool = False  # retrying it unchanged cannot succeed


class TransactionAborted(Exception):
    """The transaction was rolled back: read_committed readers never see its records and its
    offsets are not committed. `refused` names, by index, the records the broker refused; the
    others only fell with them."""

    def __init__(self, reason: str, refused: dict[int, Refusal] | None = None) -> None:
        super().__init__(reason)
        self.refused = refused or {}


class ProducerUnusable(Exception):
    """The transactional producer cannot go on: a newer instance of this member slot fenced it, or
    the broker did not confirm a transaction's end in time. The worker stops for a restart; its
    successor's init_transactions settles whatever this one left open."""


class Listener(Protocol):
    """Partition events, called from inside `Transport.poll`."""

    def on_assigned(self, committed: dict[Partition, Position | None]) -> dict[Partition, int]:
        """Partitions added, each with the group's last commit (None: none, or the broker did not
        say); nothing of them is fetched before this returns. Returns positions to seek to first."""
        ...

    def on_revoked(self, partitions: set[Partition]) -> dict[Partition, Position]:
        """Partitions going away in an orderly rebalance; returns what to commit before they go."""
        ...

    def on_lost(self, partitions: set[Partition]) -> None:
        """Partitions already owned by someone else (membership lost): nothing may be committed."""
        ...


class Transport(ABC):
    max_record_bytes: int  # the largest record `publish` can send
    allows_paths: bool = False  # local file paths are requests (stdin mode only)

    @abstractmethod
    def start(self, listener: Listener) -> None:
        """Subscribe; assignments arrive through `listener` during `poll`."""

    @abstractmethod
    def poll(self, timeout_s: float) -> list[Message]:
        """Messages of unpaused assigned partitions, in offset order per partition."""

    @abstractmethod
    def publish(self, kind: Kind, key: bytes, value: bytes) -> Ack:
        """Send a verdict or a dead letter; never blocks for long, never raises for a refusal."""

    @abstractmethod
    def commit(self, positions: dict[Partition, Position], timeout_s: float) -> None:
        """Commit positions (with their `ahead` offsets where the broker keeps commit metadata), or
        raise CommitFailed."""

    @abstractmethod
    def pause(self, partitions: set[Partition]) -> None: ...

    @abstractmethod
    def resume(self, partitions: set[Partition]) -> None: ...

    @abstractmethod
    def assignment(self) -> set[Partition]: ...

    @abstractmethod
    def flush(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for publishes under way to be acknowledged or fail."""

    @abstractmethod
    def connected(self) -> bool:
        """The broker is reachable now (readiness)."""

    def lag(self) -> dict[Partition, int]:
        """Per assigned partition, its end offset minus the group's committed offset (asked of the
        broker: the operator's lag, the number KEDA scales on); {} where there is no such notion."""
        return {}

    transactional: bool = False  # publishes only through `transact` (DDA_DELIVERY=exactly_once)

    def transact(self, records: list[Outgoing], positions: dict[Partition, Position], timeout_s: float) -> None:
        """Publish `records` and commit `positions` as one transaction, or neither: raises
        TransactionAborted (try again) or ProducerUnusable (stop)."""
        raise NotImplementedError(f"{type(self).__name__} has no transactions")

    def renew(self) -> bool:
        """Replace the producer: records were not acknowledged for long with the broker reachable
        (it lost its state, and the producer may never recover). Records not yet acknowledged
        may be lost with the old one; the delivery resends them. False: nothing to renew."""
        return False

    def exhausted(self) -> bool:
        """The input has ended for good (stdin at EOF); a broker's never does."""
        return False

    @abstractmethod
    def close(self, timeout_s: float) -> None:
        """Leave the group and release the clients within `timeout_s`."""
