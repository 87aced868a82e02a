"""`finish_rejoin` against kafka-python's own join driver (`join_group_async`), with the group
requests replaced: a join that finished while nobody waited is collected, not sent again.

The scenario it protects is measured on a real broker (tests/worker/consume/test_exactly_once.py:
the rolling restart and the join/leave with work in flight); here the library's decision alone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer
from kafka.future import Future
from kafka.structs import MemberState

from tests.services import Broker
from worker.consume.kafka_join import finish_rejoin


@pytest.fixture()
def consumer() -> Iterator[KafkaConsumer]:
    broker = Broker()
    broker.start()
    try:
        broker.create_topics({"joins": 1})
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="joins", session_timeout_ms=6000)
        consumer.subscribe(["joins"])
        try:
            yield consumer
        finally:
            consumer.close(autocommit=False)
    finally:
        broker.kill()


def test_a_join_that_finished_unawaited_is_collected_not_sent_again(consumer: KafkaConsumer, monkeypatch: pytest.MonkeyPatch) -> None:
    coordinator = consumer._coordinator  # noqa: SLF001
    sent: list[str] = []

    async def another_join_round() -> bytes:  # what the library would start in place of the finished one
        sent.append("JoinGroup")
        return b""

    assignment: list[bytes] = []

    async def on_join_complete(generation: int, member_id: str, protocol: str, member_assignment_bytes: bytes) -> None:
        assignment.append(member_assignment_bytes)

    monkeypatch.setattr(coordinator, "_do_join_and_sync_async", another_join_round)
    monkeypatch.setattr(coordinator, "_on_join_complete_async", on_join_complete)
    coordinator.ensure_coordinator_ready(timeout_ms=10_000)
    coordinator._join_task = Future().success(b"the finished round's assignment")  # noqa: SLF001 - as a poll left it
    coordinator.rejoining = True  # the revocation ran in the poll that started it
    coordinator.request_rejoin()
    finish_rejoin(consumer, 5.0)
    assert sent == [] and assignment == [b"the finished round's assignment"]
    assert coordinator.state is MemberState.STABLE and coordinator._join_task is None  # noqa: SLF001 - collected
