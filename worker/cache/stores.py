"""Key-value storage behind the verdict cache: Redis (one node or a cluster) in production,
memory for local runs.

The cache needs six operations: get many, set many with a TTL, delete many, and three on append-only logs
(append records with an expiry time, read lengths, read byte ranges: the shared log the
near-duplicate index is replayed and followed from, `worker.cache.index_log`). Every operation names
one key per command, so a Redis Cluster serves them as well as one node: reads go out as
redis-py's slot-grouped MGET, writes as a pipeline that the cluster client splits by node; one
round trip a batch (a node) either way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol


class Store(Protocol):
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: int) -> None: ...

    def append_many(self, items: Iterable[tuple[str, bytes]], expire_at: int) -> None:
        """Append each value to its key (created if absent), which then expires at Unix time `expire_at`."""
        ...

    def lengths(self, keys: Sequence[str]) -> list[int]:
        """Byte length of each key's value (0 when absent)."""
        ...

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        """Bytes [start, end) of each key's value (shorter if the value is)."""
        ...

    def delete_many(self, keys: Sequence[str]) -> None: ...


class MemoryStore:
    """In-process store with the same semantics (expiry included); bounded by `max_keys`."""

    def __init__(self, max_keys: int = 1_000_000, clock: Callable[[], float] = time.time) -> None:
        self._values: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys
        self._clock = clock

    def _live(self, key: str) -> bytes | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[0] < self._clock():
            del self._values[key]
            return None
        return entry[1]

    def _put(self, key: str, expiry: float, value: bytes) -> None:
        self._values.pop(key, None)
        while len(self._values) >= self._max_keys:
            self._values.pop(next(iter(self._values)))  # oldest inserted first
        self._values[key] = (expiry, value)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._live(k) for k in keys]

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: int) -> None:
        with self._lock:
            for key, value in items:
                self._put(key, self._clock() + ttl_s, value)

    def append_many(self, items: Iterable[tuple[str, bytes]], expire_at: int) -> None:
        with self._lock:
            for key, value in items:
                self._put(key, expire_at, (self._live(key) or b"") + value)

    def lengths(self, keys: Sequence[str]) -> list[int]:
        with self._lock:
            return [len(self._live(k) or b"") for k in keys]

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        with self._lock:
            return [(self._live(key) or b"")[start:end] for key, start, end in ranges]

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._values.pop(key, None)


class RedisStore:
    """One Redis node or a Redis Cluster (`cluster=True`: the URL names any node; the client finds the rest)."""

    def __init__(self, url: str, timeout_s: float = 1.0, cluster: bool = False) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        self.cluster = cluster
        self.client: Any
        if cluster:
            # Few retries: a dead node fails fast and the cache backs off (worker.cache.verdicts), rather than each call
            # waiting out the client's own retry schedule while verdicts queue behind it.
            self.client = RedisCluster.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                                retry=Retry(NoBackoff(), 1))
        else:
            self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self.client.mget_nonatomic(keys) if self.cluster else self.client.mget(keys))

    def _pipeline(self) -> Any:
        return self.client.pipeline() if self.cluster else self.client.pipeline(transaction=False)

    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: int) -> None:
        pipe = self._pipeline()
        for key, value in items:
            pipe.set(key, value, ex=ttl_s)
        pipe.execute()

    def append_many(self, items: Iterable[tuple[str, bytes]], expire_at: int) -> None:
        pipe = self._pipeline()
        for key, value in items:
            pipe.append(key, value)
            pipe.expireat(key, expire_at)
        pipe.execute()

    def lengths(self, keys: Sequence[str]) -> list[int]:
        pipe = self._pipeline()
        for key in keys:
            pipe.strlen(key)
        return [int(n) for n in pipe.execute()] if keys else []

    def read_ranges(self, ranges: Sequence[tuple[str, int, int]]) -> list[bytes]:
        pipe = self._pipeline()
        for key, start, end in ranges:
            pipe.getrange(key, start, end - 1)  # GETRANGE's end is inclusive
        return [bytes(b) for b in pipe.execute()] if ranges else []

    def delete_many(self, keys: Sequence[str]) -> None:
        pipe = self._pipeline()
        for key in keys:
            pipe.delete(key)  # one key a command: a cluster routes each
        pipe.execute()
