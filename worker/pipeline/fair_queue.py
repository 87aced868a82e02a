"""Fetch slots shared fairly across partitions, and an in-flight byte budget.

One slow origin must not starve the other partitions: each lane (a partition) has its
own FIFO, free slots go to the lane with the fewest fetches running (round robin among
equals), and a lane may take a slot beyond its fair share only while one slot stays free
for a lane that has none running, so work arriving in an idle partition starts at once. Fetching also waits while the bodies already held reach the
byte budget, so memory is bounded by the budget plus one body per fetch slot.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self, slots: int, max_bytes: int) -> None:
        self.slots = slots
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._queues: dict[Hashable, deque[T]] = {}
        self._running: dict[Hashable, int] = {}
        self._lanes: set[Hashable] = set()
        self._turn = 0
        self._held_bytes = 0
        self._closed = False

    # --- lanes and bytes -----------------------------------------------------------------------

    def set_lanes(self, lanes: set[Hashable]) -> None:
        """The lanes that may get work (assigned partitions); fair shares are computed over them."""
        with self._cond:
            self._lanes = set(lanes)
            self._cond.notify_all()

    def hold(self, size: int, on_change: Callable[[int], object] = lambda _n: None) -> Callable[[], None]:
        """Count `size` bytes against the budget until the returned release is called (once counts;
        later calls do nothing). `on_change` is told the bytes held after each change."""
        with self._cond:
            self._held_bytes += size
            held = self._held_bytes
        on_change(held)
        released: list[bool] = []

        def release() -> None:
            with self._cond:
                if released:
                    return
                released.append(True)
                was_full = self._held_bytes >= self.max_bytes
                self._held_bytes -= size
                held = self._held_bytes
                if was_full and self._queues:  # only the byte budget held fetches back: each may go now
                    self._cond.notify_all()
            on_change(held)

        return release

    @property
    def held_bytes(self) -> int:
        with self._cond:
            return self._held_bytes

    # --- work ----------------------------------------------------------------------------------

    def put(self, lane: Hashable, item: T) -> None:
        with self._cond:
            self._queues.setdefault(lane, deque()).append(item)
            self._cond.notify()

    def get(self, timeout_s: float) -> tuple[Hashable, T] | None:
        """The next (lane, item) a free slot should run, or None after `timeout_s` or close."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._closed:
                    return None
                lane = self._pick() if self._held_bytes < self.max_bytes else None
                if lane is not None:
                    item = self._queues[lane].popleft()
                    if not self._queues[lane]:
                        del self._queues[lane]
                    self._running[lane] = self._running.get(lane, 0) + 1
                    return lane, item
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def done(self, lane: Hashable) -> None:
        """A slot of `lane` is free again. No waiting thread is woken: the caller, a slot's own
        loop, calls `get` next and takes the freed slot itself, and waking another thread to hand
        it over cost the consumer a tenth of its CPU under load (measured); a waiter still wakes
        at its timeout."""
        with self._cond:
            self._running[lane] -= 1
            if not self._running[lane]:
                del self._running[lane]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _pick(self) -> Hashable | None:
        running = sum(self._running.values())
        if running >= self.slots:
            return None
        waiting = list(self._queues)
        if not waiting:
            return None
        lanes = self._lanes | set(waiting) | set(self._running)
        share = max(1, self.slots // max(1, len(lanes)))
        free = self.slots - running
        self._turn += 1
        order = sorted(waiting, key=lambda lane: (self._running.get(lane, 0), hash((lane, self._turn)) & 0xFFFF))
        for lane in order:
            mine = self._running.get(lane, 0)
            if mine < share:
                return lane
            idle_others = any(other != lane and not self._running.get(other) for other in lanes)
            if free - 1 >= int(idle_others):
                return lane
        return None
