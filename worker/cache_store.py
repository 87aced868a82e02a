"""Key-value storage behind the verdict cache: Redis in production, memory for local runs.

The cache needs four operations (get many, set many with TTL, add to size-capped sets with
TTL, a bounded sample of PDQ slot neighbourhoods); both stores offer exactly those, so the cache
logic is written once. A neighbourhood is a hash's 16 slot keys and their 16 one-bit neighbours
each (272 sets, keys named by `slot_key`); Redis builds the keys and samples the sets itself, in
one script call per batch of lookups: as 272 pipelined SRANDMEMBERs a lookup, redis-py spent
~2.9 ms of the worker's CPU packing and parsing them, and ~0.4 ms still when the script was given
the 272 keys (measured). Other Redis calls are pipelined: one round trip per batch of requests.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

SLOT_BITS = 16


def slot_key(prefix: str, slot: int, value: int) -> str:
    """The set of hashes whose `slot`-th 16 bits are `value` (the Redis script names them alike)."""
    return f"{prefix}{slot}:{value:04x}"


def neighbourhood(prefix: str, values: Sequence[int]) -> list[str]:
    """Each slot's key and the keys of its 16 one-bit neighbours."""
    return [slot_key(prefix, slot, value ^ flip) for slot, value in enumerate(values)
            for flip in (0, *(1 << bit for bit in range(SLOT_BITS)))]


class Store(Protocol):
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: int) -> None: ...

    def add_members(self, items: Iterable[tuple[str, str]], ttl_s: int, cap: int) -> int:
        """Add each member to its set unless the set already holds `cap`; returns how many were refused."""
        ...

    def sample_neighbourhoods(self, prefix: str, lookups: Sequence[Sequence[int]], per_key: int) -> list[tuple[set[str], int]]:
        """Per lookup (its slot values): the union of at most `per_key` members of each set of its
        neighbourhood, and how many of those sets had more."""
        ...


class MemoryStore:
    """In-process store with the same semantics (TTL included); bounded by `max_keys`."""

    def __init__(self, max_keys: int = 1_000_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._values: dict[str, tuple[float, bytes]] = {}
        self._sets: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._clock = clock

    def _live(self, table: dict[str, tuple[float, Any]], key: str) -> Any:
        entry = table.get(key)
        if entry is None:
            return None
        if entry[0] < self._clock():
            del table[key]
            return None
        return entry[1]

    def _make_room(self, table: dict[str, Any]) -> None:
        while len(table) >= self._max_keys:
            table.pop(next(iter(table)))  # oldest inserted first

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._live(self._values, k) for k in keys]

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: int) -> None:
        with self._lock:
            expiry = self._clock() + ttl_s
            for key, value in items:
                self._values.pop(key, None)
                self._make_room(self._values)
                self._values[key] = (expiry, value)

    def add_members(self, items: Iterable[tuple[str, str]], ttl_s: int, cap: int) -> int:
        refused = 0
        with self._lock:
            expiry = self._clock() + ttl_s
            for key, member in items:
                members = self._live(self._sets, key)
                if members is None:
                    self._make_room(self._sets)
                    members = set()
                if len(members) >= cap and member not in members:
                    refused += 1
                    continue
                members.add(member)
                self._sets[key] = (expiry, members)
        return refused

    def sample_neighbourhoods(self, prefix: str, lookups: Sequence[Sequence[int]], per_key: int) -> list[tuple[set[str], int]]:
        with self._lock:
            out = []
            for values in lookups:
                found: set[str] = set()
                capped = 0
                for key in neighbourhood(prefix, values):
                    members = self._live(self._sets, key) or set()
                    if len(members) > per_key:
                        capped += 1
                        members = set(random.sample(sorted(members), per_key))
                    found |= members
                out.append((found, capped))
            return out


# sample_neighbourhoods in one command. ARGV: key prefix, per_key, then 16 slot values a lookup.
# Per lookup: how many sets held more than per_key members, and the union of at most per_key of each.
_SAMPLE = """
local prefix, per, out = ARGV[1], tonumber(ARGV[2]), {}
for first = 3, #ARGV, 16 do
  local seen, members, capped = {}, {}, 0
  for slot = 0, 15 do
    local value = tonumber(ARGV[first + slot])
    for flip = -1, 15 do
      local v = value
      if flip >= 0 then v = bit.bxor(value, bit.lshift(1, flip)) end
      local got = redis.call('SRANDMEMBER', prefix .. slot .. ':' .. string.format('%04x', v), per + 1)
      if #got > per then capped = capped + 1 end
      for j = 1, math.min(#got, per) do
        if not seen[got[j]] then seen[got[j]] = true; members[#members + 1] = got[j] end
      end
    end
  end
  out[#out + 1] = {capped, members}
end
return out
"""


class RedisStore:
    def __init__(self, url: str, timeout_s: float = 1.0) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._sample = self.client.register_script(_SAMPLE)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [value if isinstance(value, bytes) or value is None else str(value).encode()
                for value in self.client.mget(keys)] if keys else []

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, ex=ttl_s)
        pipe.execute()

    def add_members(self, items: Iterable[tuple[str, str]], ttl_s: int, cap: int) -> int:
        items = list(items)
        pipe = self.client.pipeline(transaction=False)
        for key, _ in items:
            pipe.scard(key)
        sizes = pipe.execute()
        refused = 0
        for (key, member), size in zip(items, sizes):
            if size >= cap:
                refused += 1
                continue
            pipe.sadd(key, member)
            pipe.expire(key, ttl_s)
        pipe.execute()
        return refused

    def sample_neighbourhoods(self, prefix: str, lookups: Sequence[Sequence[int]], per_key: int) -> list[tuple[set[str], int]]:
        """One script call for the batch; the script names the keys (standalone Redis: a cluster
        would refuse keys a script does not declare)."""
        if not lookups:
            return []
        replies = self._sample(keys=[], args=[prefix, per_key, *(v for values in lookups for v in values)])
        return [({m.decode() for m in members}, int(capped)) for capped, members in replies]
