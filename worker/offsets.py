"""Per-partition commit watermarks for at-least-once delivery.

An offset may be committed only when every message at or below it has a result the
broker acknowledged. Messages finish out of order (a cache hit overtakes an inference),
so each partition keeps the set of offsets still open; the committable position is just
below the smallest open one, or one past the highest seen when none is open.
"""

from __future__ import annotations

import threading
from collections import defaultdict


class OffsetTracker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[object, set[int]] = defaultdict(set)
        self._next: dict[object, int] = {}
        self._committed: dict[object, int] = {}

    def started(self, partition: object, offset: int) -> None:
        with self._lock:
            self._open[partition].add(offset)
            self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def finished(self, partition: object, offset: int) -> None:
        with self._lock:
            self._open[partition].discard(offset)

    def in_flight(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._open.values())

    def committable(self) -> dict[object, int]:
        """Positions (next offset to read) that moved since the last `mark_committed`."""
        with self._lock:
            out = {}
            for partition, nxt in self._next.items():
                still_open = self._open.get(partition)
                position = min(still_open) if still_open else nxt
                if position > self._committed.get(partition, -1):
                    out[partition] = position
            return out

    def mark_committed(self, positions: dict[object, int]) -> None:
        with self._lock:
            for partition, position in positions.items():
                self._committed[partition] = max(self._committed.get(partition, -1), position)

    def forget(self, partitions: list[object]) -> None:
        """Drop partitions this worker no longer owns (after a revocation)."""
        with self._lock:
            for partition in partitions:
                self._open.pop(partition, None)
                self._next.pop(partition, None)
                self._committed.pop(partition, None)
