"""Stage threads that cannot die silently.

Every long-running thread of the pipeline is started here. If its target returns or
raises while the pipeline is running, the failure is recorded; health checks read it and
the delivery loop stops the worker (after committing what is safe), so a dead stage is
never a worker that looks healthy while nothing moves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("dda.supervision")


class Supervisor:
    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._threads: list[threading.Thread] = []

    @property
    def failure(self) -> str | None:
        """Why a stage died, or None while every stage runs."""
        with self._lock:
            return self._failure

    def fail(self, reason: str) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = reason
        log.error("pipeline stage failed; the worker will stop", reason=reason)

    def spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - recorded: this is the supervision point
                self.fail(f"stage {name} died: {type(exc).__name__}: {exc}")
                return
            if not self.stopping.is_set():
                self.fail(f"stage {name} returned while the pipeline was running")

        thread = threading.Thread(target=run, name=name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return thread

    def stop(self, timeout_s: float) -> None:
        """Ask every stage to stop and join them within one deadline."""
        self.stopping.set()
        end = time.monotonic() + timeout_s
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, end - time.monotonic()))
