"""The micro-batch window: what turns a stream of requests into batches.

A stage blocks for its first item (up to `poll_s`, so it can notice a stop), then keeps taking
until it holds `limit` items or `window_s` has passed since the first. The engine stage's window
is DDA_MAX_WAIT_MS, which trades latency for fuller batches; the lookup stages' is 0 (take what is
already waiting: one store round trip for all of it). The engine process batches nothing more:
the batches it gets were gathered here.
"""

from __future__ import annotations

import queue
import time
from typing import TypeVar

T = TypeVar("T")


def gather(q: queue.Queue[T], limit: int, window_s: float, poll_s: float) -> list[T]:
    """Up to `limit` items; empty when none came within `poll_s`."""
    try:
        items = [q.get(timeout=poll_s)]
    except queue.Empty:
        return []
    deadline = time.monotonic() + window_s
    while len(items) < limit:
        left = deadline - time.monotonic()
        try:
            items.append(q.get(timeout=left) if left > 0 else q.get_nowait())
        except queue.Empty:
            break
    return items
