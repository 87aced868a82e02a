"""kafka-python's objects in the transport contract's terms: a send future as an acknowledgement,
partitions and positions as commit offsets, and a stuck producer dropped without its flush.

A commit's metadata names the offsets past it already published (`Position.ahead`) as
distances: `dda-ahead:1,3,4`; the partition's next owner skips them. Anything else in the
metadata (another tool's, hostile, too long) names nothing.
"""

from __future__ import annotations

from typing import Any

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata

from worker.consume.transport import Ack, Partition, Position

log = structlog.get_logger("dda.kafka")
AHEAD_PREFIX = "dda-ahead:"  # commit metadata: comma-separated distances past the committed offset
AHEAD_MAX_CHARS = 3000  # brokers refuse metadata over offset.metadata.max.bytes (4096 by default)


class FutureAck(Ack):
    def __init__(self, future: Any) -> None:
        self._future = future

    @property
    def done(self) -> bool:
        return bool(self._future.is_done)

    @property
    def error(self) -> BaseException | None:
        return None if self._future.succeeded() else self._future.exception

    @property
    def too_large(self) -> bool:
        return isinstance(self.error, MessageSizeTooLargeError)


def discard(producer: KafkaProducer, timeout_s: float = 5.0) -> None:
    """End a producer whose records are stuck. kafka-python's close() flushes first and raises
    while any record is pending, leaving its network thread running; so its sender is told to
    drop what it holds first (force_close: the pending futures fail, and the delivery has resent
    those records through the new producer already)."""
    sender = getattr(producer, "_sender", None)  # kafka-python 3: no public way to drop pending records
    if sender is not None:
        sender.force_close()
    try:
        producer.close(timeout=timeout_s)
    except KafkaError as exc:
        log.warning("a replaced producer did not close cleanly", error=f"{type(exc).__name__}: {exc}")


def partition_of(partition: TopicPartition) -> Partition:
    return (partition.topic, partition.partition)


def encode_ahead(position: Position) -> str:
    """Commit metadata naming `position.ahead`; the nearest offsets first where they do not all fit
    (an offset left out is only published again, never lost)."""
    text = AHEAD_PREFIX
    for offset in sorted(position.ahead):
        item = f"{offset - position.offset},"
        if len(text) + len(item) > AHEAD_MAX_CHARS:
            break
        text += item
    return text.rstrip(",") if position.ahead else ""


def decode_ahead(metadata: str | None, offset: int) -> frozenset[int]:
    """The offsets a commit's metadata names; nothing for metadata of any other shape (another
    tool's, or hostile)."""
    if not metadata or not metadata.startswith(AHEAD_PREFIX) or len(metadata) > AHEAD_MAX_CHARS:
        return frozenset()
    try:
        distances = [int(item) for item in metadata[len(AHEAD_PREFIX):].split(",")]
    except ValueError:
        return frozenset()
    return frozenset(offset + d for d in distances if 0 <= d < 1 << 40)


def commit_offsets(positions: dict[Partition, Position]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o.offset, encode_ahead(o), -1) for (t, p), o in positions.items()}
