"""The near-duplicate index a consumer process holds in memory: PDQ hashes and radius search.

Searched by multi-index hashing (`worker/cache/_pdqindex.c`: 8 tables of 32-bit words; exact up to
distance 23, and pairs up to 31 found whenever one word is within 2 bits), in about 62.5 bytes
a hash, 32 of them the hash (the C file says where the rest goes). New hashes first land in a
tail searched by brute force; the tail is folded into a delta segment, and the delta into the
base, as they grow, so adding is cheap and a rebuild is paid rarely and off the lookup path
(`maintain`, called by the thread that feeds the index). Searches read an immutable view, so
they never wait on a rebuild.

Expiry: each hash carries one byte, its expiry class; a class is one `expires_at` (the shared
log gives one a log epoch, about 65 alive at once). Past its time a class is dead: its hashes
are skipped at once and dropped at the next rebuild, which frees the class. With all 256 in
use, new hashes join the class that expires soonest after them (or the latest, moved later):
a hash may outlive its time, never leave early. Expiry here is about memory; whether a match
still answers is decided by its verdict entry in the store, which has its own TTL.

Bounds: at most `capacity` hashes (more are refused, counted); a search compares at most
PER_BUCKET hashes in one bucket and scans BUDGET entries a query, so a flood of hashes into one
region of hash space costs its author uploads and a lookup a bounded amount of work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from worker.cache import _pdqindex

CODE = 32
WORDS = 8
MATCH_DISTANCE = 31
TAIL_MAX = 16_384  # hashes searched by brute force before they are folded into a segment
TAIL_START = 4096  # the tail's first allocation, in hashes
PER_BUCKET = 512
BUDGET = 131_072
CLASSES = 256  # expiry classes: one byte a hash
GROUP = 64  # buckets sharing one 32-bit base in tables 1-7 (worker/cache/_pdqindex.c)


def directory_bits(n: int) -> int:
    """Top bits a table's directory spans: 8-16 hashes a bucket, so the 8 directories cost 1-2 bytes a hash in all."""
    return min(24, max(16, math.ceil(math.log2(max(n, 1))) - 4))


Source = tuple[np.ndarray, np.ndarray, int]  # hashes, their expiry classes, how many


@dataclass(frozen=True)
class _Segment:
    """Hashes sorted by word 0 (table 0's buckets) and the entries of tables 1-7."""

    codes: np.ndarray
    ages: np.ndarray
    k: int
    dir0: np.ndarray
    groups: np.ndarray
    offs: np.ndarray
    entries: np.ndarray
    counts: np.ndarray  # hashes of each expiry class

    @classmethod
    def build(cls, sources: Sequence[Source], dead: np.ndarray, n: int) -> _Segment | None:
        """One segment of the `n` live hashes of `sources` (the caller knows n from its class counts); None when n is 0."""
        if not n:
            return None
        k = directory_bits(n)
        buckets = 1 << k
        codes, ages = np.empty(n * CODE, np.uint8), np.empty(n, np.uint8)
        dir0, groups = np.empty(buckets + 1, np.uint32), np.empty((WORDS - 1) * (buckets // GROUP + 1), np.uint32)
        offs, entries = np.empty((WORDS - 1) * (buckets + 1), np.uint16), np.empty((WORDS - 1) * n, np.uint32)
        _pdqindex.build(sources, dead, k, codes, ages, dir0, groups, offs, entries)
        return cls(codes, ages, k, dir0, groups, offs, entries, np.bincount(ages, minlength=CLASSES))

    @property
    def n(self) -> int:
        return len(self.ages)

    @property
    def source(self) -> Source:
        return self.codes, self.ages, self.n

    @property
    def tables(self) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.codes, self.ages, self.k, self.dir0, self.groups, self.offs, self.entries

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes, self.ages, self.dir0, self.groups, self.offs, self.entries))


@dataclass(frozen=True)
class _View:
    """What a search reads: the segments, then tail_n hashes of the tail by brute force; `dead` marks
    the expired classes, `counts` holds the hashes of each class (dead ones included)."""

    segments: tuple[_Segment, ...]
    tail_codes: np.ndarray
    tail_ages: np.ndarray
    tail_n: int
    dead: np.ndarray
    counts: np.ndarray

    @property
    def tail(self) -> Source:
        return self.tail_codes, self.tail_ages, self.tail_n

    @property
    def live(self) -> int:
        return int(self.counts[self.dead == 0].sum())


@dataclass(frozen=True)
class Match:
    hash: bytes
    distance: int


def _empty_tail() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(TAIL_START * CODE, np.uint8), np.zeros(TAIL_START, np.uint8)


class PdqIndex:
    """One writer (add, maintain: the caller serialises them), any number of concurrent searches."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._expiry: dict[int, float] = {}  # live class -> its time
        self._class_at: dict[float, int] = {}  # and back
        self._free = list(range(CLASSES - 1, -1, -1))  # classes neither live nor dead (the view's mask) hold no hash
        codes, ages = _empty_tail()
        self._view = _View((), codes, ages, 0, np.zeros(CLASSES, np.uint8), np.zeros(CLASSES, np.int64))

    def __len__(self) -> int:
        return self._view.live

    @property
    def nbytes(self) -> int:
        view = self._view
        return view.tail_codes.nbytes + view.tail_ages.nbytes + sum(s.nbytes for s in view.segments)

    @property
    def layout(self) -> tuple[int, int, int]:
        """(hashes held, expired ones included; segments; hashes in the brute-forced tail)."""
        view = self._view
        return view.tail_n + sum(s.n for s in view.segments), len(view.segments), view.tail_n

    def add(self, hashes: bytes | memoryview, expires_at: float) -> int:
        """Append hashes (32 bytes each); returns how many were refused for want of capacity."""
        count = len(hashes) // CODE
        view = self._view
        taken = min(count, max(0, self.capacity - view.live))
        if taken:
            age = self._class_for(expires_at)
            codes, ages, start = view.tail_codes, view.tail_ages, view.tail_n
            end = start + taken
            if end > len(ages):  # grown into fresh arrays: a search may be reading the old ones
                size = max(end, len(ages) * 3 // 2)
                codes, ages = np.zeros(size * CODE, np.uint8), np.zeros(size, np.uint8)
                codes[: start * CODE], ages[:start] = view.tail_codes[: start * CODE], view.tail_ages[:start]
            codes[start * CODE : end * CODE] = np.frombuffer(hashes[: taken * CODE], np.uint8)
            ages[start:end] = age
            counts = view.counts.copy()
            counts[age] += taken
            self._view = replace(view, tail_codes=codes, tail_ages=ages, tail_n=end, counts=counts)
        return count - taken

    def _class_for(self, expires_at: float) -> int:
        age = self._class_at.get(expires_at)
        if age is not None:
            return age
        if self._free:
            age = self._free.pop()
        else:  # all in use: the live class expiring soonest at or after this time, else the latest, moved later
            later = [a for a, at in self._expiry.items() if at >= expires_at]
            if later:
                return min(later, key=self._expiry.__getitem__)
            age = max(self._expiry, key=self._expiry.__getitem__)
            del self._class_at[self._expiry[age]]
        self._expiry[age] = expires_at
        self._class_at[expires_at] = age
        return age

    def maintain(self, now: float) -> None:
        """Mark classes past their time dead; fold a long tail into the delta; rebuild the base when a
        quarter of the hashes are dead, half the classes wait to be freed, or the delta outgrows an
        eighth of the base."""
        died = [age for age, at in self._expiry.items() if at <= now]
        view = self._view
        if died:
            for age in died:
                del self._class_at[self._expiry.pop(age)]
            dead = view.dead.copy()
            dead[died] = 1
            view = self._view = replace(view, dead=dead)
        held_dead = np.flatnonzero(view.dead)
        rebuild = int(view.counts[held_dead].sum()) * 4 > int(view.counts.sum()) or len(held_dead) > CLASSES // 2
        if view.tail_n <= TAIL_MAX and not rebuild:
            return
        segments = view.segments
        if not segments or rebuild or sum(s.n for s in segments[1:]) + view.tail_n > max(segments[0].n, 524_288) // 8:
            built = _Segment.build([s.source for s in segments] + [view.tail], view.dead, view.live)
            self._free.extend(held_dead.tolist())
            segments, dead = (built,) if built else (), np.zeros(CLASSES, np.uint8)
        else:
            rest = view.counts - segments[0].counts  # the delta's and the tail's
            delta = _Segment.build([s.source for s in segments[1:]] + [view.tail], view.dead, int(rest[view.dead == 0].sum()))
            segments, dead = (segments[0],) + ((delta,) if delta else ()), view.dead
        codes, ages = _empty_tail()
        self._view = _View(segments, codes, ages, 0, dead, sum((s.counts for s in segments), np.zeros(CLASSES, np.int64)))

    def search(self, queries: Sequence[bytes]) -> tuple[list[Match | None], list[int]]:
        """Each query's closest hash within MATCH_DISTANCE, and how many bounds cut its search short."""
        if not queries:
            return [], []
        view = self._view
        packed = np.frombuffer(b"".join(queries), np.uint8)
        best_distance = np.full(len(queries), MATCH_DISTANCE + 1, np.int32)
        best_id = np.full(len(queries), -1, np.int64)
        capped = np.zeros(len(queries), np.int32)
        for tag, s in enumerate(view.segments):
            _pdqindex.search(s.tables, view.dead, tag, packed, MATCH_DISTANCE, PER_BUCKET, BUDGET, best_distance, best_id, capped)
        _pdqindex.scan(*view.tail, view.dead, len(view.segments), packed, MATCH_DISTANCE, best_distance, best_id)
        holders = [s.codes for s in view.segments] + [view.tail_codes]
        found: list[Match | None] = []
        for i, d in zip(best_id.tolist(), best_distance.tolist()):
            at = (i & 0xFFFF_FFFF) * CODE  # best_id is the holder's tag << 32 | the hash's place in it
            found.append(None if i < 0 else Match(holders[i >> 32][at : at + CODE].tobytes(), int(d)))
        return found, capped.tolist()
