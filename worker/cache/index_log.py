"""The shared log of indexed PDQ hashes: every worker appends its indexed hashes, every worker
replays it on start and follows it after (`worker.cache.near_index`).

Keys `dda:<namespace>:pdqlog:<epoch>:<shard>` (`worker.cache.keys`): an epoch is `span` seconds (the cache TTL / 64, at
least a minute), and 16 shards spread a busy epoch over a cluster's nodes. A key's value is
32-byte hashes appended whole (APPEND is atomic), so a reader that reads up to a length it has
seen reads whole records, and remembers that length as its offset. A key expires `ttl` after
its epoch ends, so it outlives every verdict entry written during the epoch and no longer.
Replaying reads every live epoch; following reads the current and the previous epoch (a
worker whose clock runs a little late still writes into one of them), 32 lengths a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.cache.keys import Keys
from worker.cache.stores import Store

SHARDS = 16
RECORD = 32
READ_CHUNK = 4 << 20  # bytes of one key a call reads (131,072 hashes)


@dataclass(frozen=True)
class Records:
    hashes: bytes  # whole 32-byte records
    expires_at: float  # when the log key holding them expires


class IndexLog:
    def __init__(self, store: Store, keys: Keys, ttl_s: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.keys = keys
        self.ttl_s = ttl_s
        self.span = max(60, ttl_s // 64)
        self.clock = clock
        self._offsets: dict[tuple[int, int], int] = {}

    def _key(self, epoch: int, shard: int) -> str:
        return self.keys.log(epoch, shard)

    def _expires_at(self, epoch: int) -> int:
        return (epoch + 1) * self.span + self.ttl_s

    def append(self, hashes: Sequence[bytes]) -> None:
        epoch = int(self.clock() // self.span)
        shards: dict[int, list[bytes]] = {}
        for h in hashes:
            shards.setdefault(h[0] % SHARDS, []).append(h)
        self.store.append_many([(self._key(epoch, shard), b"".join(group)) for shard, group in shards.items()],
                               self._expires_at(epoch))

    def read_new(self, everything: bool) -> tuple[list[Records], bool]:
        """What was appended since the last call, of every live epoch (`everything`: a replay) or of the
        latest two; and whether some key had more than one read takes (call again)."""
        now_epoch = int(self.clock() // self.span)
        oldest_live = now_epoch - self.ttl_s // self.span - 1
        first = oldest_live if everything else now_epoch - 1
        self._offsets = {at: offset for at, offset in self._offsets.items() if at[0] >= oldest_live}
        places = [(epoch, shard) for epoch in range(first, now_epoch + 1) for shard in range(SHARDS)]
        lengths = self.store.lengths([self._key(*at) for at in places])
        wanted = []
        more = False
        for at, length in zip(places, lengths):
            start = self._offsets.get(at, 0)
            if length < start:  # the store lost the key (a restarted node): read it again from the start
                start = 0
            end = min(length, start + READ_CHUNK) // RECORD * RECORD
            more |= end < length // RECORD * RECORD
            if end > start:
                wanted.append((at, start, end))
        if not wanted:
            return [], more
        data = self.store.read_ranges([(self._key(*at), start, end) for at, start, end in wanted])
        out = []
        for (at, start, _), blob in zip(wanted, data):
            whole = len(blob) // RECORD * RECORD  # a key that expired and came back shorter gives less
            self._offsets[at] = start + whole
            out.append(Records(blob[:whole], self._expires_at(at[0])))
        return out, more
