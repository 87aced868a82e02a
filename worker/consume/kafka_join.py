"""A consumer's pending rejoin, driven to its end with time for the revocation.

kafka-python 3.0.12 runs a rejoin inside whichever call drives the group: usually the delivery's
`poll`, whose 0.1 s is spent by the revocation listener, so the JoinGroup/SyncGroup task is left in
flight when that poll returns. Two things then went wrong (both measured with the library's
coordinator logs, exactly-once workers on noida-db):

- the next short poll gave up on the same task again, and the rejoin never finished in time;
- a task that finished meanwhile, with nobody waiting for it, was thrown away: the library checks
  "no task, or a finished one" and sends a new JoinGroup, so the member's assignment was dropped
  and the group started one more round. noida-db never completed that round (the other member's
  JoinGroup, held from the round before, was not counted in it): the group stayed in rebalance
  for good, in about one run in ten of the join/leave and rolling-restart scenarios.

`finish_rejoin` hands a finished join back to the library as a result still to be collected, and
waits for a pending one (long enough for the revocation and the other members' joins).
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer
from kafka.future import Future


class _Collected(Future):  # type: ignore[misc]  # kafka-python has no type information
    """A finished join's result, given to the first waiter that registers for it: pending when the
    library asks whether to start a new join, resolved as soon as it waits."""

    __slots__ = ("_result",)

    def __init__(self, result: Any) -> None:
        super().__init__()
        self._result = result

    def add_callback(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self._resolved(super().add_callback(f, *args, **kwargs))

    def _add_cb_eb(self, cb: Any, eb: Any) -> Any:
        return self._resolved(super()._add_cb_eb(cb, eb))

    def _resolved(self, registered: Any) -> Any:
        if not self.is_done:
            self.success(self._result)
        return registered


def finish_rejoin(consumer: KafkaConsumer, timeout_s: float) -> None:
    """Completes a rejoin the group asked for, if any; returns at once otherwise."""
    coordinator = consumer._coordinator  # noqa: SLF001 - kafka-python 3 has no public way to ask
    if not coordinator.need_rejoin():
        return
    finished = coordinator._join_task  # noqa: SLF001
    if finished is not None and finished.succeeded():
        coordinator._join_task = _Collected(finished.value)  # noqa: SLF001
    coordinator.ensure_active_group(timeout_ms=int(timeout_s * 1000))
