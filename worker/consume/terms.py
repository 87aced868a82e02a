"""What delivery is given and what it ends with: the processor it feeds (the pipeline), its
limits, and the exit statuses a worker process reports (README, "Guarantees")."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from worker.messages import Request
from worker.pipeline.completion import Completion

EXIT_OK = 0  # drained and committed everything
EXIT_FATAL = 1  # a pipeline stage died, or the broker could not be reached at start; what was safe was committed
EXIT_CONFIG = 2  # bad configuration or model: nothing was consumed
EXIT_ABANDONED = 3  # stopped with work unfinished or uncommitted; it is redelivered


class Processor(Protocol):
    """What delivery needs from the pipeline."""

    def submit(self, request: Request) -> Completion: ...

    @property
    def failure(self) -> str | None: ...

    def set_partitions(self, lanes: Iterable[Hashable]) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_in_flight: int
    max_message_bytes: int
    revoke_timeout_s: float
    drain_timeout_s: float
    post_drain_s: float = 6.0  # stop stages, flush, commit, close: well inside the 10 s after the drain
    lag_every_s: float = 10.0  # how often consumer lag is asked of the broker
    retry_base_s: float = 0.2  # first retry of a refused record; doubles, capped at 10 s
    publish_stall_s: float = 20.0  # records unacknowledged this long, broker reachable: a new producer (see above)
    transaction_interval_s: float = 0.1  # exactly_once: how often a transaction commits what finished
