"""One verdict per request, as a structure: a Completion resolves once.

The pipeline hands back a Completion for every request it accepts and resolves it with
a fully built record; it never publishes anything itself. Delivery (on the consumer
thread) publishes what has resolved. A second resolution is a bug somewhere upstream: it
is logged and counted, and its record is dropped, so no request can get two verdicts.
Cancellation (a revoked partition, shutdown) also ends a Completion; stages that finish
the work later find it done and their result is discarded quietly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from worker.records import Record

log = structlog.get_logger("dda.completion")


class Completion:
    __slots__ = ("request_id", "_lock", "_record", "_cancelled", "_callbacks", "_on_duplicate")

    def __init__(self, request_id: str, on_duplicate: Callable[[str], None] = lambda _id: None) -> None:
        self.request_id = request_id
        self._lock = threading.Lock()
        self._record: Record | None = None
        self._cancelled = False
        self._callbacks: list[Callable[[Completion], None]] = []
        self._on_duplicate = on_duplicate

    @property
    def done(self) -> bool:
        with self._lock:
            return self._record is not None or self._cancelled

    @property
    def cancelled(self) -> bool:
        with self._lock:
            return self._cancelled

    @property
    def record(self) -> Record | None:
        """The resolved record, or None while pending or after cancellation."""
        with self._lock:
            return self._record

    def resolve(self, record: Record) -> bool:
        """True if this call ended the completion; a late call after cancel is ignored."""
        with self._lock:
            if self._cancelled:
                return False
            if self._record is not None:
                duplicate = True
            else:
                duplicate = False
                self._record = record
                callbacks, self._callbacks = self._callbacks, []
        if duplicate:
            log.error("a request was resolved twice; the second verdict is dropped", request_id=self.request_id)
            self._on_duplicate(self.request_id)
            return False
        self._run(callbacks)
        return True

    def cancel(self) -> bool:
        """End it without a record; False if it had already ended."""
        with self._lock:
            if self._record is not None or self._cancelled:
                return False
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        self._run(callbacks)
        return True

    def add_done_callback(self, callback: Callable[[Completion], None]) -> None:
        """Called once when the completion ends (at once if it already has), on the resolving thread."""
        with self._lock:
            if self._record is None and not self._cancelled:
                self._callbacks.append(callback)
                return
        callback(self)

    def _run(self, callbacks: list[Callable[[Completion], None]]) -> None:
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a callback's bug must not undo the resolution
                log.exception("completion callback failed", request_id=self.request_id)
