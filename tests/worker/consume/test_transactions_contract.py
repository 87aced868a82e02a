"""Exactly-once delivery's contract (DDA_DELIVERY=exactly_once), against the in-process broker:
what a transaction carries, when it aborts, at revocation, and when the producer is fenced.
The real-broker scenarios are in test_exactly_once.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.services import metric_value, wait_for
from tests.worker.consume.test_delivery_contract import P0, P1, Harness, req
from worker.consume.terms import EXIT_FATAL, EXIT_OK
from worker.consume.transport import Outgoing, Refusal


@pytest.fixture()
def harness() -> Iterator[Harness]:
    h = Harness(transactional=True)
    yield h
    if h.thread.is_alive():
        h.finish()


def offsets_of(records: list[Outgoing]) -> list[tuple[str, int]]:
    """(topic/partition, offset) of each verdict: the tests put request aN at offset N of in/0, bN of in/1."""
    out = []
    for record in records:
        request_id = json.loads(record.value)["id"]
        out.append(({"a": "in/0", "b": "in/1"}[request_id[0]], int(request_id[1:])))
    return out


def test_a_transaction_carries_exactly_the_finished_run_it_commits(harness: Harness) -> None:
    harness.processor.hold = {"a3", "b1"}
    harness.broker.produce(P0, [req(f"a{i}") for i in range(10)])
    harness.broker.produce(P1, [req(f"b{i}") for i in range(6)])
    harness.start({P0, P1})
    wait_for(lambda: harness.committed(P0) == 3 and harness.committed(P1) == 1, 10, "the runs before the held requests")
    assert set(harness.verdict_ids()) == {"a0", "a1", "a2", "b0"}  # a4..a9 and b2..b5 finished, and wait
    harness.processor.release("a3", "b1")
    wait_for(lambda: harness.committed(P0) == 10 and harness.committed(P1) == 6, 10, "everything committed")
    assert harness.finish() == EXIT_OK
    assert harness.verdict_ids() == {**{f"a{i}": 1 for i in range(10)}, **{f"b{i}": 1 for i in range(6)}}
    start = {"in/0": 0, "in/1": 0}
    for records, positions in harness.transport.transactions:  # each carries [last commit, its commit) of its partitions
        carried = offsets_of(records)
        for (topic, partition), end in positions.items():
            name = f"{topic}/{partition}"
            assert sorted(o for n, o in carried if n == name) == list(range(start[name], end))
            start[name] = end
        assert {n for n, _ in carried} <= {f"{t}/{p}" for t, p in positions}
    assert harness.transport.plain_publishes == 0


def test_aborted_transactions_go_again_and_publish_nothing_twice(harness: Harness) -> None:
    aborts = iter([{}, {}])  # the first two abort with no record to blame (the broker refused the offsets)
    harness.transport.abort = lambda _records: next(aborts, None)
    harness.broker.produce(P0, [req(f"a{i}") for i in range(8)])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == 8, 10, "everything committed after two aborts")
    assert harness.finish() == EXIT_OK
    assert harness.transport.aborted == 2 and harness.verdict_ids() == {f"a{i}": 1 for i in range(8)}
    assert metric_value(harness.metrics.render().decode(), "dda_transactions_total", 'outcome="aborted"') == 2


def test_a_record_refused_for_size_goes_again_compact_with_its_transaction(harness: Harness) -> None:
    def too_large(records: list[Outgoing]) -> dict[int, Refusal] | None:
        big = [i for i, r in enumerate(records) if b'"truncated"' not in r.value and b'"a2"' in r.value]
        return {big[0]: Refusal(ValueError("too large"), too_large=True)} if big else None

    harness.transport.abort = too_large
    harness.broker.produce(P0, [req(f"a{i}") for i in range(5)])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == 5, 10, "everything committed")
    assert harness.finish() == EXIT_OK
    published = {json.loads(v)["id"]: json.loads(v) for _, v in harness.broker.published["verdict"]}
    assert harness.verdict_ids() == {f"a{i}": 1 for i in range(5)} and harness.transport.aborted == 1
    assert published["a2"]["truncated"] is True and all("truncated" not in published[f"a{i}"] for i in (0, 1, 3, 4))


def test_revocation_commits_what_finished_and_the_next_assignment_redoes_only_the_rest(harness: Harness) -> None:
    harness.processor.hold = {"a4"}
    harness.broker.produce(P0, [req(f"a{i}") for i in range(8)])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == 4 and harness.processor.submitted["a7"] == 1, 10,
             "the run before the held request committed, everything read")
    harness.transport.rebalance({P0})  # revoked with a4 unfinished (cancelled at the deadline), then given back
    wait_for(lambda: harness.processor.submitted["a5"] == 2, 10, "a4.. read again")
    harness.processor.release("a4")
    wait_for(lambda: harness.committed(P0) == 8, 10, "everything committed")
    assert harness.finish() == EXIT_OK
    assert harness.verdict_ids() == {f"a{i}": 1 for i in range(8)}
    assert all(harness.processor.submitted[f"a{i}"] == 1 for i in range(4))  # committed before: not redone


def test_a_fenced_producer_stops_the_worker_and_nothing_more_is_published(harness: Harness) -> None:
    harness.broker.produce(P0, [req(f"a{i}") for i in range(4)])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == 4, 10, "the first requests")
    harness.transport.fenced = True  # a second process took this member slot
    harness.broker.produce(P0, [req(f"b{i}") for i in range(4)])
    wait_for(lambda: not harness.thread.is_alive(), 10, "the loop to stop by itself")
    assert harness.status == EXIT_FATAL
    assert harness.verdict_ids() == {f"a{i}": 1 for i in range(4)} and harness.committed(P0) == 4
    assert "fenced" in (harness.delivery.publish_failure or "")
