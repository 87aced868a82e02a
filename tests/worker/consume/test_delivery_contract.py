"""Delivery's contract, against the in-process broker: every id accounted for.

Each test drives the real Delivery loop in a thread against FakeTransport with a processor
whose completions the test resolves by hand, so rebalances, losses, refusals and
shutdowns happen at exactly the point the test chooses, with work in flight.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator

import pytest

from tests.fake_broker import FakeBroker, FakeTransport, Unanswered
from tests.services import wait_for
from worker.consume.delivery import Delivery
from worker.consume.kafka_records import AHEAD_MAX_CHARS, decode_ahead, encode_ahead
from worker.consume.terms import EXIT_ABANDONED, EXIT_FATAL, EXIT_OK, Limits
from worker.consume.transport import DoneAck, Position
from worker.messages import Request, verdict
from worker.metrics import Metrics
from worker.pipeline.completion import Completion

P0, P1 = ("in", 0), ("in", 1)


class Processor:
    """Completions the test resolves: ids in `hold` wait for `release`; the rest resolve at once."""

    def __init__(self) -> None:
        self.hold: set[str] = set()
        self.pending: dict[str, tuple[Request, Completion]] = {}
        self.submitted: Counter[str] = Counter()
        self.failure: str | None = None
        self.lanes: set[Hashable] = set()
        self.lock = threading.Lock()

    def submit(self, request: Request) -> Completion:
        completion = Completion(request.id)
        with self.lock:
            self.submitted[request.id] += 1
            if request.id in self.hold:
                self.pending[request.id] = (request, completion)
                return completion
        completion.resolve(record(request))
        return completion

    def release(self, *ids: str) -> None:
        with self.lock:
            self.hold -= set(ids)
            found = [self.pending.pop(i) for i in ids if i in self.pending]
        for request, completion in found:
            completion.resolve(record(request))

    def set_partitions(self, lanes: Iterable[Hashable]) -> None:
        self.lanes = set(lanes)


def record(request: Request) -> dict:
    return verdict(request, model={"name": "dda", "version": "t"}, threshold=0.5, status="ok", label="real", score=0.1, logit=-2.0)


def req(i: str) -> bytes:
    return json.dumps({"id": i, "url": f"http://img.example/{i}"}).encode()


class Harness:
    def __init__(self, limits: Limits | None = None, transactional: bool = False) -> None:
        self.broker = FakeBroker()
        self.transport = FakeTransport(self.broker, transactional=transactional)
        self.processor = Processor()
        self.metrics = Metrics()
        self.delivery = Delivery(self.transport, self.processor, self.metrics, limits or Limits(
            max_in_flight=64, max_message_bytes=65536, revoke_timeout_s=0.4, drain_timeout_s=1.0, retry_base_s=0.001))
        self.stop = threading.Event()
        self.stages_stopped = threading.Event()
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.status = self.delivery.run(self.stop, stop_stages=self.stages_stopped.set)

    def start(self, assign: set) -> Harness:
        self.transport.rebalance(assign)
        self.thread.start()
        return self

    def finish(self, timeout_s: float = 20) -> int:
        self.stop.set()
        self.thread.join(timeout_s)
        assert not self.thread.is_alive() and self.status is not None
        return self.status

    def verdict_ids(self) -> Counter[str]:
        with self.broker.lock:
            return Counter(json.loads(v)["id"] for _, v in self.broker.published["verdict"])

    def committed(self, tp: tuple) -> int:
        return self.broker.committed.get(tp, 0)


@pytest.fixture()
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    if h.thread.is_alive():
        h.finish()


def test_revoke_with_work_in_flight_then_kept_partition_resumes_from_its_oldest_unfinished(harness: Harness) -> None:
    ids = {P0: [f"a{i}" for i in range(12)], P1: [f"b{i}" for i in range(12)]}
    harness.processor.hold = {"a3", "a7", "b5"}
    for tp, names in ids.items():
        harness.broker.produce(tp, [req(i) for i in names])
    harness.start({P0, P1})
    wait_for(lambda: len(harness.verdict_ids()) == 21, 10, "all but the three held requests")
    # Committed: the prefix before the first held request, never past it.
    wait_for(lambda: harness.committed(P0) == 3 and harness.committed(P1) == 5, 10, "the prefixes to be committed")
    # A rebalance with the three held requests in flight; P0 comes straight back, P1 goes elsewhere.
    harness.transport.rebalance({P0})
    wait_for(lambda: harness.processor.submitted["a3"] == 2, 10, "a3 read again after the rebalance")
    assert harness.processor.lanes == {P0}
    # The fake broker kept P0's read position (past a11), as kafka-python does: only the seek to
    # the revoked prefix brings a3..a11 back. Nothing held was published at revocation.
    assert harness.verdict_ids()["a3"] == 0 and harness.verdict_ids()["b5"] == 0
    harness.processor.release("a3", "a7", "b5")
    wait_for(lambda: harness.committed(P0) == 12, 10, "P0 committed to its end")
    counts = harness.verdict_ids()
    assert all(counts[i] == 1 for i in ids[P0]), counts
    assert harness.committed(P1) == 5 and counts["b5"] == 0  # P1's new owner redoes b5 from offset 5
    assert [i for i, n in counts.items() if n > 1] == []  # no duplicates: nothing published was left uncommitted
    assert harness.finish() == EXIT_OK


def test_a_partition_back_after_another_owner_moved_it_on_starts_from_their_commit(harness: Harness) -> None:
    """Issue 28: a process that missed the generations in between remembered its own position
    and sought back to it, redoing everything the other owner had answered."""
    harness.broker.produce(P0, [req(f"a{i}") for i in range(10)])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == 10, 10, "the first ten committed")
    harness.transport.rebalance(None)  # revoked; this process misses the next generations
    wait_for(lambda: not harness.delivery.ledger.partitions(), 10, "the partition revoked")
    harness.broker.produce(P0, [req(f"b{i}") for i in range(10)])
    with harness.broker.lock:
        harness.broker.committed[P0] = 20  # another owner answered and committed b0-b9
    harness.broker.produce(P0, [req("c0")])
    harness.transport.rebalance({P0})
    wait_for(lambda: harness.processor.submitted["c0"] == 1, 10, "the new request read")
    assert not any(harness.processor.submitted[f"b{i}"] for i in range(10))  # nothing the other owner did is redone


@pytest.mark.parametrize("keeps_metadata", [True, False], ids=["commit-metadata", "no-commit-metadata"])
def test_lost_partitions_are_dropped_without_committing(harness: Harness, keeps_metadata: bool) -> None:
    harness.broker.keeps_metadata = keeps_metadata
    harness.processor.hold = {"a2"}
    harness.broker.produce(P0, [req(f"a{i}") for i in range(6)])
    harness.start({P0})
    wait_for(lambda: len(harness.verdict_ids()) == 5 and harness.committed(P0) == 2, 10, "all but a2")
    wait_for(lambda: harness.transport.asked_ahead.get(P0) == {3, 4, 5}, 10, "a commit naming 3-5 as published")
    commits_before = len(harness.transport.commits)
    harness.transport.rebalance({P0}, lost=True)
    wait_for(lambda: harness.processor.submitted["a2"] == 2, 10, "a2 read again from the committed offset")
    assert all(P0 not in c or c[P0] >= 2 for c in harness.transport.commits[commits_before:])
    harness.processor.release("a2")
    wait_for(lambda: harness.committed(P0) == 6, 10, "committed to the end")
    counts = harness.verdict_ids()
    # Lost: nothing more is committed. The commits before named 3-5 as published past the stuck
    # a2, so the next reader skips them; a broker that drops commit metadata repeats them.
    assert counts["a2"] == 1 and all(counts[f"a{i}"] == (1 if keeps_metadata else 2) for i in (3, 4, 5))


def test_backpressure_pauses_at_the_limit_and_resumes_at_half() -> None:
    h = Harness(Limits(max_in_flight=4, max_message_bytes=65536, revoke_timeout_s=0.4, drain_timeout_s=1.0, retry_base_s=0.001))
    names = [f"a{i}" for i in range(20)]
    h.processor.hold = set(names)
    h.broker.produce(P0, [req(i) for i in names])
    h.start({P0})
    wait_for(lambda: P0 in h.transport.paused, 10, "the partition to pause")
    read = sum(h.processor.submitted.values())
    assert 4 <= read <= 4 + h.transport.batch
    h.processor.release(*names[:read])
    wait_for(lambda: sum(h.processor.submitted.values()) > read, 10, "reading to resume")
    h.processor.release(*names)
    wait_for(lambda: h.committed(P0) == 20, 10, "everything committed")
    h.processor.hold.clear()
    h.processor.release(*names)
    wait_for(lambda: h.committed(P0) == 20 and len(h.verdict_ids()) == 20, 10, "all verdicts")
    assert h.finish() == EXIT_OK


def test_drain_deadline_abandons_unfinished_work_without_committing_past_it(harness: Harness) -> None:
    harness.processor.hold = {"a4"}
    harness.broker.produce(P0, [req(f"a{i}") for i in range(8)])
    harness.start({P0})
    wait_for(lambda: len(harness.verdict_ids()) == 7, 10, "all but a4")
    started = time.monotonic()
    assert harness.finish() == EXIT_ABANDONED
    assert time.monotonic() - started < 1.0 + 8.0
    assert harness.committed(P0) == 4 and harness.stages_stopped.is_set() and harness.transport.closed


def test_refused_publishes_are_retried_and_never_committed_past(harness: Harness) -> None:
    refusals = {"verdict": 3, "dead_letter": 10**6}

    def refuse(kind: str, _value: bytes) -> DoneAck | None:
        if refusals[kind] > 0:
            refusals[kind] -= 1
            return DoneAck(RuntimeError("broker said no"))
        return None

    harness.transport.refuse = refuse
    harness.broker.produce(P0, [req("a0"), b"not json {", req("a2")])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == 3, 20, "the refused verdict to go through and the dead letter to be given up")
    assert harness.verdict_ids() == Counter({"a0": 1, "a2": 1})
    assert harness.metrics.dead_letters_dropped._value.get() == 1  # noqa: SLF001 - logged and counted, then passed
    assert harness.metrics.publish_failures.labels("verdict")._value.get() == 3  # noqa: SLF001


def test_a_record_too_large_for_the_broker_is_sent_compact(harness: Harness) -> None:
    harness.transport.max_record_bytes = 4000
    big = json.dumps({"id": "big", "url": "http://img.example/x", "metadata": {"blob": "m" * 3000}}).encode()
    harness.transport.refuse = lambda _k, v: DoneAck(ValueError("too large"), too_large=True) if len(v) > 2000 else None
    harness.broker.produce(P0, [big])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == 1, 10, "the compact verdict")
    out = json.loads(harness.broker.published["verdict"][0][1])
    assert out["id"] == "big" and out["truncated"] is True and out["metadata"] is None and out["status"] == "ok"


def test_failed_commits_are_retried(harness: Harness) -> None:
    harness.transport.fail_commits = True
    harness.broker.produce(P0, [req(f"a{i}") for i in range(3)])
    harness.start({P0})
    wait_for(lambda: len(harness.verdict_ids()) == 3 and harness.metrics.commit_failures._value.get() > 0, 10, "failures")  # noqa: SLF001
    harness.transport.fail_commits = False
    wait_for(lambda: harness.committed(P0) == 3, 10, "the commit to go through")


def test_poison_messages_become_dead_letters_and_never_block_the_partition(harness: Harness) -> None:
    poison = [b"", b"\xff\xfe", b"{" + b" " * 70_000 + b"}", b'{"id":"p","url":"http://a/b","metadata":' + b"9" * 5000 + b"}",
              b"[" * 30_000 + b"]" * 30_000, b'{"id":"\\ud800","url":"http://a/b"}', b'{"url":"http://a/b","metadata":NaN}', None]
    harness.broker.produce(P0, [*poison, req("ok")])
    harness.start({P0})
    wait_for(lambda: harness.committed(P0) == len(poison) + 1, 10, "every message committed")
    letters = [json.loads(v) for _, v in harness.broker.published["dead_letter"]]
    assert [d["source"]["offset"] for d in letters] == list(range(len(poison)))
    assert {d["reason"] for d in letters} == {"empty", "not_utf8", "oversized", "not_json", "too_deep", "invalid_unicode"}
    assert harness.verdict_ids() == Counter({"ok": 1})


def test_a_dead_stage_stops_the_loop_after_committing_what_is_safe(harness: Harness) -> None:
    harness.processor.hold = {"a3"}
    harness.broker.produce(P0, [req(f"a{i}") for i in range(6)])
    harness.start({P0})
    wait_for(lambda: len(harness.verdict_ids()) == 5, 10, "all but a3")
    harness.processor.failure = "stage engine died: test"
    harness.thread.join(10)
    assert harness.status == EXIT_FATAL and harness.committed(P0) == 3


def test_a_second_resolution_is_dropped_and_counted() -> None:
    seen = []
    completion = Completion("x", on_duplicate=seen.append)
    assert completion.resolve({"n": 1}) and not completion.resolve({"n": 2})
    assert completion.record == {"n": 1} and seen == ["x"]
    assert not completion.cancel()
    late = Completion("y", on_duplicate=seen.append)
    assert late.cancel() and not late.resolve({"n": 3}) and seen == ["x"]  # late work after a cancel is not a bug


STALL = Limits(max_in_flight=64, max_message_bytes=65536, revoke_timeout_s=0.4, drain_timeout_s=1.0, retry_base_s=0.001,
               publish_stall_s=0.6)
GIVE_UP_S = 2.5 * STALL.publish_stall_s


def test_a_broker_that_lost_its_state_gets_a_new_producer_and_every_record_resent() -> None:
    h = Harness(STALL)
    answered = [False]
    h.transport.refuse = lambda _kind, _value: None if answered[0] else Unanswered()

    def renew() -> bool:
        answered[0] = True  # the new producer's records are acknowledged
        return True

    h.transport.on_renew = renew
    h.broker.produce(P0, [req(f"a{i}") for i in range(5)])
    h.start({P0})
    wait_for(lambda: not h.delivery.publishing, 10, "readiness to drop while nothing is acknowledged")
    assert h.committed(P0) == 0 and h.verdict_ids() == Counter()
    wait_for(lambda: h.committed(P0) == 5, 10, "every record resent through the new producer and committed")
    assert h.verdict_ids() == Counter({f"a{i}": 1 for i in range(5)}) and h.transport.renewals == 1
    assert h.delivery.publishing and h.metrics.producer_renewals._value.get() == 1  # noqa: SLF001
    assert h.finish() == EXIT_OK


def test_when_a_new_producer_does_not_help_the_worker_stops_for_a_restart() -> None:
    h = Harness(STALL)
    h.transport.refuse = lambda _kind, _value: Unanswered()
    h.transport.on_renew = lambda: True
    h.broker.produce(P0, [req(f"a{i}") for i in range(3)])
    started = time.monotonic()
    h.start({P0})
    h.thread.join(20)
    assert h.status == EXIT_FATAL and h.transport.renewals == 1
    assert GIVE_UP_S <= time.monotonic() - started < GIVE_UP_S + 5
    assert h.committed(P0) == 0 and h.transport.closed  # nothing unacknowledged was committed: all redelivered


def test_a_broker_outage_is_waited_out_without_renewing_or_stopping() -> None:
    h = Harness(STALL)
    h.transport.reachable = False
    h.transport.refuse = lambda _kind, _value: None if h.transport.reachable else DoneAck(ConnectionError("no broker"))
    h.broker.produce(P0, [req(f"a{i}") for i in range(3)])
    h.start({P0})
    wait_for(lambda: h.metrics.publish_failures.labels("verdict")._value.get() >= 3, 10, "refusals")  # noqa: SLF001
    time.sleep(GIVE_UP_S + 0.5)  # the outage lasts past every stall limit: nothing may happen
    assert h.thread.is_alive() and h.transport.renewals == 0 and h.delivery.publishing
    h.transport.reachable = True
    wait_for(lambda: h.committed(P0) == 3, 20, "the verdicts once the broker is back")
    assert h.verdict_ids() == Counter({f"a{i}": 1 for i in range(3)}) and h.finish() == EXIT_OK


def test_commit_metadata_names_what_is_published_ahead_and_hostile_metadata_names_nothing() -> None:
    position = Position(100, frozenset({101, 105, 100_000}))
    assert decode_ahead(encode_ahead(position), 100) == position.ahead
    assert encode_ahead(Position(7)) == "" and decode_ahead("", 7) == frozenset()
    crowded = encode_ahead(Position(0, frozenset(range(1, 5000))))  # more than a broker keeps: the nearest fit
    assert len(crowded) <= AHEAD_MAX_CHARS and min(decode_ahead(crowded, 0)) == 1
    for other in ("checkpoint 42", "dda-ahead:1,x", "dda-ahead:-5", f"dda-ahead:{1 << 50}", "dda-ahead:" + "1," * 4000):
        assert decode_ahead(other, 100) == frozenset(), other
