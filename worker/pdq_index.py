"""The near-duplicate index a consumer process holds in memory: PDQ hashes and radius search.

Hashes are appended to one array (32 bytes each, in arrival order: a hash's id is its place)
and searched by multi-index hashing (`worker/_pdqindex.c`: 8 tables of 32-bit words; exact up
to distance 23, and pairs up to 31 found whenever one word is within 2 bits). New hashes first
land in a short tail searched by brute force; the tail is folded into a delta segment, and the
delta into the base, as they grow, so adding is cheap and a rebuild is paid rarely and off the
lookup path (`maintain`, called by the thread that feeds the index). Searches read an
immutable view, so they never wait on a rebuild.

Entries expire in blocks of ids (their latest expiry): the block's ids are skipped at once and
dropped at the next rebuild. Expiry here is about memory; whether a match still answers is
decided by its verdict entry in the store, which has its own TTL.

Bounds: at most `capacity` hashes (more are refused, counted); a search compares at most
PER_BUCKET hashes in one bucket and scans BUDGET entries a query, so a flood of hashes into one
region of hash space costs its author uploads and a lookup a bounded amount of work.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker import _pdqindex

CODE = 32
WORDS = 8
MATCH_DISTANCE = 31
TAIL_MAX = 16_384  # hashes searched by brute force before they are folded into a segment
PER_BUCKET = 512
BUDGET = 131_072
EXPIRY_BLOCK = 4096


def directory_bits(n: int) -> int:
    """Top bits a table's directory spans: ~8-16 hashes a bucket, so the directory costs <= 0.5 bytes a hash a table."""
    return min(24, max(16, math.ceil(math.log2(max(n, 1))) - 3))


@dataclass(frozen=True)
class _Segment:
    """Tables over codes[start:end]."""

    start: int
    end: int
    k: int
    directory: np.ndarray
    ids: np.ndarray
    lows: np.ndarray

    @classmethod
    def build(cls, codes: np.ndarray, start: int, end: int) -> _Segment:
        n, k = end - start, directory_bits(end - start)
        segment = cls(start, end, k, np.empty(WORDS * ((1 << k) + 1), np.uint32), np.empty(WORDS * n, np.uint32),
                      np.empty(WORDS * n, np.uint16))
        _pdqindex.build(codes, start, end, k, segment.directory, segment.ids, segment.lows)
        return segment

    @property
    def nbytes(self) -> int:
        return self.directory.nbytes + self.ids.nbytes + self.lows.nbytes


@dataclass(frozen=True)
class _View:
    """What a search reads: hashes [live_from, n) of codes; segments cover up to indexed_to, brute force the rest."""

    codes: np.ndarray
    n: int
    live_from: int
    indexed_to: int
    segments: tuple[_Segment, ...]


@dataclass(frozen=True)
class Match:
    hash: bytes
    distance: int


class PdqIndex:
    """One writer (add, maintain: the caller serialises them), any number of concurrent searches."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._codes = np.zeros(0, np.uint8)
        self._n = 0
        self._blocks: deque[tuple[int, int, float]] = deque()  # (start id, end id, latest expiry), EXPIRY_BLOCK ids at most
        self._view = _View(self._codes, 0, 0, 0, ())

    def __len__(self) -> int:
        view = self._view
        return view.n - view.live_from

    @property
    def nbytes(self) -> int:
        view = self._view
        return view.codes.nbytes + sum(s.nbytes for s in view.segments)

    @property
    def layout(self) -> tuple[int, int, int]:
        """(hashes held, expired ones included; segments; hashes in the brute-forced tail)."""
        view = self._view
        return view.n, len(view.segments), view.n - max(view.indexed_to, view.live_from)

    def add(self, hashes: bytes | memoryview, expires_at: float) -> int:
        """Append hashes (32 bytes each); returns how many were refused for want of capacity."""
        count = len(hashes) // CODE
        room = max(0, self.capacity - len(self))
        taken = min(count, room)
        if taken:
            end = self._n + taken
            if end * CODE > self._codes.nbytes:
                grown = np.zeros(max(end, int(self._codes.nbytes // CODE * 1.25), 65_536) * CODE, np.uint8)
                grown[: self._n * CODE] = self._codes[: self._n * CODE]
                self._codes = grown
            self._codes[self._n * CODE : end * CODE] = np.frombuffer(hashes[: taken * CODE], np.uint8)
            self._stamp(self._n, end, expires_at)
            self._n = end
            self._publish(n=end)
        return count - taken

    def _stamp(self, start: int, end: int, expires_at: float) -> None:
        while start < end:
            if self._blocks and self._blocks[-1][1] == start and start - self._blocks[-1][0] < EXPIRY_BLOCK:
                block_start, _, at = self._blocks.pop()
                expires_at_block = max(at, expires_at)
            else:
                block_start, expires_at_block = start, expires_at
            block_end = min(end, block_start + EXPIRY_BLOCK)
            self._blocks.append((block_start, block_end, expires_at_block))
            start = block_end

    def _publish(self, **changes: object) -> None:
        view = self._view
        fields = {"codes": self._codes, "n": view.n, "live_from": view.live_from, "indexed_to": view.indexed_to,
                  "segments": view.segments, **changes}
        self._view = _View(**fields)  # type: ignore[arg-type]  # one reference swap: searches see the old view or the new

    def maintain(self, now: float) -> None:
        """Skip expired blocks; fold a long tail into a segment; rebuild the base when a quarter of it is dead
        or the delta outgrows an eighth of it."""
        view = self._view
        live_from = view.live_from
        while self._blocks and self._blocks[0][2] <= now:
            live_from = self._blocks.popleft()[1]
        if live_from != view.live_from:
            self._publish(live_from=live_from)
        n, segments = self._n, view.segments
        base_start = segments[0].start if segments else 0
        dead = live_from - base_start
        if n - view.indexed_to <= TAIL_MAX and dead * 4 <= n - base_start:
            return
        if not segments or dead * 4 > n - base_start or n - segments[0].end > max(segments[0].end - base_start, 524_288) // 8:
            self._rebuild(live_from)
        else:
            self._publish(segments=(segments[0], _Segment.build(self._codes, segments[0].end, n)), indexed_to=n)

    def _rebuild(self, live_from: int) -> None:
        """One base segment over the live hashes, moved to the front of a fresh array when any are dead."""
        n = self._n
        if live_from:
            live = n - live_from
            fresh = np.zeros(max(int(live * 1.25), 65_536) * CODE, np.uint8)
            fresh[: live * CODE] = self._codes[live_from * CODE : n * CODE]
            self._codes, self._n = fresh, live
            self._blocks = deque((start - live_from, end - live_from, at) for start, end, at in self._blocks)
            n = live
        base = _Segment.build(self._codes, 0, n) if n else None
        self._publish(codes=self._codes, n=n, live_from=0, indexed_to=n, segments=(base,) if base else ())

    def search(self, queries: Sequence[bytes]) -> tuple[list[Match | None], list[int]]:
        """Each query's closest hash within MATCH_DISTANCE, and how many bounds cut its search short."""
        if not queries:
            return [], []
        view = self._view
        packed = np.frombuffer(b"".join(queries), np.uint8)
        best_distance = np.full(len(queries), MATCH_DISTANCE + 1, np.int32)
        best_id = np.full(len(queries), -1, np.int64)
        capped = np.zeros(len(queries), np.int32)
        for s in view.segments:
            _pdqindex.search(view.codes, s.end, s.directory, s.ids, s.lows, s.k, view.live_from, packed, MATCH_DISTANCE,
                             PER_BUCKET, BUDGET, best_distance, best_id, capped)
        _pdqindex.scan(view.codes, max(view.indexed_to, view.live_from), view.n, packed, MATCH_DISTANCE, best_distance, best_id)
        found = [None if i < 0 else Match(view.codes[i * CODE : (i + 1) * CODE].tobytes(), int(d))
                 for i, d in zip(best_id.tolist(), best_distance.tolist())]
        return found, capped.tolist()
