"""Blocking calls that cannot be interrupted (getaddrinfo, a TCP connect), bounded in time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Overran(Exception):
    """The call did not return in time; it is left to finish on its own."""


def call_within(fn: Callable[[], T], timeout_s: float, name: str = "timebox") -> T:
    """`fn()` on a daemon thread: its result or its exception, or Overran after `timeout_s`.

    A daemon, so that a call that hangs for good never delays the process's exit."""
    outcome: list[T] = []
    failure: list[BaseException] = []
    finished = threading.Event()

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failure.append(exc)
        finished.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not finished.wait(max(0.0, timeout_s)):
        raise Overran
    if failure:
        raise failure[0]
    return outcome[0]
