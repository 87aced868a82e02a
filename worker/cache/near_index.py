"""The near-duplicate index of one consumer process: a `PdqIndex` fed from the shared `IndexLog`.

Indexing is publishing: a worker that caches an "ai_generated" verdict appends its PDQ hash to
the shared log, and every worker (this one included) adds what appears there to its own
in-memory index. So lookups never leave the process, and adding workers adds lookup capacity;
the store holds the log and the verdicts, not the search.

A process that starts replays the whole log in the background (`start`). Until that replay is
done, `search` answers None, which the cache reports as "not searched": an index half loaded
would say "no match" where it had not looked. Afterwards a thread follows the log every
FOLLOW_S, and a worker's own writes are read back at once (its next lookup sees them). Without
a thread (`start` not called: tests, command-line tools) each search first reads the log
itself, and publishing only appends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import structlog

from worker.cache.index_log import IndexLog
from worker.cache.keys import Keys
from worker.cache.pdq_index import Match, PdqIndex
from worker.cache.stores import Store

FOLLOW_S = 1.0

log = structlog.get_logger("dda.near_index")


class NearIndex:
    def __init__(self, store: Store, keys: Keys, ttl_s: int, capacity: int, on_refused: Callable[[int], None] = lambda _n: None,
                 on_error: Callable[[Exception], None] = lambda _e: None, clock: Callable[[], float] = time.time) -> None:
        self.log = IndexLog(store, keys, ttl_s, clock)
        self.index = PdqIndex(capacity)
        self.on_refused = on_refused
        self.on_error = on_error
        self.clock = clock
        self.ready = False
        self._lock = threading.Lock()  # one reader of the log at a time: it owns the offsets and the index's writes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="near-index", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops following; a replay still reading a large log is not waited for beyond a few
        seconds (the thread is a daemon: it ends with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                with self._lock:
                    self._catch_up(maintain=True)
            except Exception as exc:  # noqa: BLE001 - the store is down: keep what is loaded, try again
                log.warning("near-duplicate index cannot read the shared log", error=str(exc), ready=self.ready)
                self.on_error(exc)
            self._stop.wait(FOLLOW_S)

    def _catch_up(self, maintain: bool) -> None:
        """Read the log to its end (the whole of it until the first replay is done); `maintain`: fold the
        tail into the tables too (a rebuild can take seconds: the follower's work, not a request's)."""
        started = time.monotonic()
        while True:
            found, more = self.log.read_new(everything=not self.ready)
            for records in found:
                refused = self.index.add(records.hashes, records.expires_at)
                if refused:
                    self.on_refused(refused)
            if not more:
                break
        if maintain or not self.ready:
            self.index.maintain(self.clock())
        if not self.ready:
            self.ready = True
            log.info("near-duplicate index loaded", hashes=len(self.index), seconds=round(time.monotonic() - started, 2))

    def publish(self, hashes: Sequence[bytes]) -> None:
        """Index hashes for every worker; a following worker reads them back now unless its follower is busy."""
        self.log.append(hashes)
        if self._thread is not None and self.ready and self._lock.acquire(blocking=False):
            try:
                self._catch_up(maintain=False)
            finally:
                self._lock.release()

    def search(self, queries: Sequence[bytes]) -> tuple[list[Match | None], list[int]] | None:
        """Each query's closest indexed hash within distance 31 and the bounds applied, or None while loading."""
        if self._thread is None:
            with self._lock:
                self._catch_up(maintain=True)
        return self.index.search(queries) if self.ready else None
