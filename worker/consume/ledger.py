"""Per-partition ordered record of (offset, completion): what may be committed.

Each consumed message gets an Entry in its partition's deque, in offset order. An entry
is finished when its record (verdict or dead letter) was acknowledged by the broker. The
commit position of a partition is the offset of its first unfinished entry, or one past
the last offset consumed when none is open: a contiguous prefix, so no message is ever
committed before its own verdict is safe, whatever order the work finishes in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from worker.consume.transport import Ack, Kind, Partition, Position
from worker.pipeline.completion import Completion


@dataclass(eq=False)
class Entry:
    tp: Partition
    offset: int
    kind: Kind
    completion: Completion
    key: bytes = b""
    ack: Ack | None = None
    attempts: int = 0
    retry_at: float = 0.0
    compact: bool = False  # re-encode without metadata (the broker refused the full record's size)
    acked: bool = False


@dataclass
class _Lane:
    entries: deque[Entry] = field(default_factory=deque)
    next_offset: int | None = None  # one past the last offset consumed
    committed: int | None = None  # last position committed by this worker
    committed_ahead: frozenset[int] = frozenset()  # the offsets that commit named as published past it
    done_ahead: set[int] = field(default_factory=set)  # offsets past the position already acknowledged


class Ledger:
    def __init__(self) -> None:
        self._lanes: dict[Partition, _Lane] = {}

    def owns(self, tp: Partition) -> bool:
        return tp in self._lanes

    def partitions(self) -> set[Partition]:
        return set(self._lanes)

    def add_partition(self, tp: Partition, position: int | None = None, done_ahead: set[int] | None = None) -> None:
        """Own a partition; `done_ahead` are offsets past `position` whose records were published
        already (by this process or the partition's last owner): read again, they are not redone."""
        self._lanes.setdefault(tp, _Lane(next_offset=position, done_ahead=set(done_ahead or ())))

    def done_ahead(self, tp: Partition) -> set[int]:
        """Offsets past the commit position whose records are published: acknowledged here, or
        named by the commit this partition started from and not read again yet."""
        position = self.position(tp)
        return set() if position is None else _ahead(self._lanes[tp], position)

    def take_done(self, tp: Partition, offset: int) -> bool:
        """True once for an offset acknowledged before the partition came back."""
        lane = self._lanes[tp]
        if offset in lane.done_ahead:
            lane.done_ahead.discard(offset)
            return True
        return False

    def accepts(self, tp: Partition, offset: int) -> bool:
        """A message is new: its partition is owned and it lies past everything consumed."""
        lane = self._lanes.get(tp)
        return lane is not None and (lane.next_offset is None or offset >= lane.next_offset)

    def append(self, entry: Entry) -> None:
        lane = self._lanes[entry.tp]
        lane.entries.append(entry)
        lane.next_offset = entry.offset + 1

    def entries(self, tps: set[Partition] | None = None) -> Iterator[Entry]:
        for tp, lane in self._lanes.items():
            if tps is None or tp in tps:
                yield from lane.entries

    def unfinished(self, tps: set[Partition] | None = None) -> int:
        return sum(1 for e in self.entries(tps) if not e.acked)

    def position(self, tp: Partition) -> int | None:
        """The commit position: first unfinished offset, else one past the last consumed."""
        lane = self._lanes[tp]
        while lane.entries and lane.entries[0].acked:
            lane.entries.popleft()
        return lane.entries[0].offset if lane.entries else lane.next_offset

    def committable(self, tps: set[Partition] | None = None) -> dict[Partition, Position]:
        """Positions that moved past what this worker last committed, or whose offsets published
        past them changed (a commit names them, so the partition's next reader skips them)."""
        out = {}
        for tp, lane, position in self._positioned(tps):
            ahead = frozenset(_ahead(lane, position))
            if lane.committed is None or position > lane.committed or (position == lane.committed and ahead != lane.committed_ahead):
                out[tp] = Position(position, ahead)
        return out

    def resolved_runs(self, tps: set[Partition] | None = None) -> dict[Partition, tuple[list[Entry], int]]:
        """Exactly-once: per partition, the unbroken run of entries from its commit position whose
        records are resolved (or given up), and the position just past the run; only partitions
        where that position moved past the last commit. A record behind an unfinished one waits."""
        out = {}
        for tp, lane, start in self._positioned(tps):
            run = []
            for entry in lane.entries:
                if not entry.acked and entry.completion.record is None:
                    break
                run.append(entry)
            end = run[-1].offset + 1 if run else start
            if lane.committed is None or end > lane.committed:
                out[tp] = ([e for e in run if not e.acked], end)
        return out

    def _positioned(self, tps: set[Partition] | None) -> Iterator[tuple[Partition, _Lane, int]]:
        """Each lane (of `tps`, when given) that has a commit position, with it."""
        for tp, lane in self._lanes.items():
            if tps is None or tp in tps:
                position = self.position(tp)
                if position is not None:
                    yield tp, lane, position

    def mark_committed(self, positions: dict[Partition, Position]) -> None:
        for tp, position in positions.items():
            lane = self._lanes.get(tp)
            if lane is not None and (lane.committed is None or position.offset >= lane.committed):
                lane.committed, lane.committed_ahead = position.offset, position.ahead

    def remove(self, tps: set[Partition]) -> list[Entry]:
        """Forget partitions; returns their entries that had not finished."""
        left: list[Entry] = []
        for tp in tps:
            lane = self._lanes.pop(tp, None)
            if lane is not None:
                left.extend(e for e in lane.entries if not e.acked)
        return left


def _ahead(lane: _Lane, position: int) -> set[int]:
    return {e.offset for e in lane.entries if e.acked and e.offset > position} | {o for o in lane.done_ahead if o >= position}
