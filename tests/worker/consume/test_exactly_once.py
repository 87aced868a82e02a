"""DDA_DELIVERY=exactly_once against a real broker: noida-db, whose read_committed readers do not
see aborted records (tansu's do: `benchmarks/transactions_probe.py`).

A read_committed subscriber accounts for every request id in each scenario: a worker SIGKILLed
three times mid-stream, a second worker joining and leaving with work in flight, a rolling
restart of two workers, and transactions aborted by a record the broker refuses. Each: every id
has exactly one committed verdict, none lost, none twice. Each worker has its own slot
(DDA_INSTANCE_ID), so a restarted one fences what its predecessor left open. The SIGKILLed worker
is a static member (DDA_STATIC_MEMBERSHIP=on): noida-db never expires a dead dynamic member, so
only a static member's restart gets its partitions back there; the others are dynamic members
(static ones passed the same scenarios too, 3 runs by hand).
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from tests.http_server import LocalServer, Route
from tests.images import encode, scene
from tests.services import NoidaBroker, TopicReader, Worker, unique, wait_for

pytestmark = pytest.mark.timeout(300)
PARTITIONS = 4
# Four fetch slots on a 0.25 s origin: about 16 requests/s, so every stop lands with work in flight.
SETTINGS = {"DDA_DELIVERY": "exactly_once", "DDA_DRAIN_TIMEOUT_S": "8", "DDA_REVOKE_TIMEOUT_S": "2", "DDA_FETCH_WORKERS": "4",
            "DDA_MAX_IN_FLIGHT": "32"}


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        for i in range(20):
            body = encode(scene(400 + 9 * i, 340, seed=900 + i), "JPEG", quality=90)
            s.routes[f"/img/{i}"] = Route(body=body)
            s.routes[f"/slow/{i}"] = Route(body=body, delay_s=0.25)
        yield s


def make_topics(noida: NoidaBroker, output_max_bytes: int | None = None) -> dict[str, str]:
    names = {"input": unique("requests"), "output": unique("verdicts"), "dlq": unique("dead")}
    admin = KafkaAdminClient(bootstrap_servers=noida.bootstrap)
    try:
        limit = {"max.message.bytes": str(output_max_bytes)} if output_max_bytes else {}
        admin.create_topics([NewTopic(names["input"], PARTITIONS, 1), NewTopic(names["output"], 2, 1, topic_configs=limit),
                             NewTopic(names["dlq"], 1, 1)])
    finally:
        admin.close()
    return names


def start(started: list[Worker], model: Path, noida: NoidaBroker, topics: dict[str, str], group: str, slot: str, log: Path,
          **env: str) -> Worker:
    worker = Worker(model, noida, topics, group, log, **{**SETTINGS, "DDA_INSTANCE_ID": slot, **env})
    started.append(worker)
    worker.start()
    worker.wait_ready()
    return worker


def send(noida: NoidaBroker, topic: str, requests: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    placed = noida.produce(topic, [json.dumps(r).encode() for r in requests], keys=[r["id"].encode() for r in requests])
    return {r["id"]: p for r, p in zip(requests, placed)}


def stop_then_settle(leaving: Worker, staying: Worker, exits: list[int]) -> None:
    """SIGTERM `leaving`, then wait until `staying` has its new partitions, so the next join meets
    a settled group: noida-db left an offset fetch sent mid-rebalance unanswered, and the
    requests behind it on that connection (`KafkaTransport.lag` no longer asks mid-rebalance)."""
    assigned = staying.metric("dda_rebalances_total", 'kind="assigned"')
    exits.append(leaving.terminate(30))
    wait_for(lambda: staying.metric("dda_rebalances_total", 'kind="assigned"') > assigned, 30, "the staying worker's new assignment")


def account(name: str, noida: NoidaBroker, group: str, topic: str, placed: dict[str, tuple[int, int]], reader: TopicReader,
            exits: list[int | None]) -> Counter[str]:
    """Waits until every offset is committed and the committed verdicts are read to their end;
    prints and returns how many committed verdicts each request got."""
    ends = {p: max(o for q, o in placed.values() if q == p) + 1 for p, _ in placed.values()}
    wait_for(lambda: noida.committed(group, topic, PARTITIONS) == {p: ends.get(p, 0) for p in range(PARTITIONS)}, 60,
             "every input offset committed")
    reader.read_to_end(60)
    counts = Counter(v["id"] for v in reader.values())
    row = {"sent": len(placed), "answered": sum(1 for i in placed if counts[i]), "lost": sum(1 for i in placed if not counts[i]),
           "duplicates": sum(n - 1 for i, n in counts.items() if i in placed and n > 1), "stray": sum(1 for i in counts if i not in placed)}
    print(f"\nSCENARIO exactly-once {name}: {row} exits={exits}")
    return counts


def test_a_worker_sigkilled_three_times_mid_stream_publishes_each_verdict_once(
    tiny_model_dir: Path, noida: NoidaBroker, server: LocalServer, workers: list[Worker], tmp_path: Path,
) -> None:
    topics, group = make_topics(noida), unique("group")
    placed = send(noida, topics["input"], [{"id": f"k{n}", "url": f"{server.base}/slow/{n % 20}"} for n in range(120)])
    reader = noida.reader(topics["output"], isolation_level="read_committed")
    static = {"DDA_STATIC_MEMBERSHIP": "on"}
    worker = start(workers, tiny_model_dir, noida, topics, group, "slot-a", tmp_path / "w0.log", **static)
    for kill in range(3):
        reader.read_until(lambda r: len(r) >= 20 * (kill + 1), 90)  # noqa: B023 - read before the next kill
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(10)
        worker = start(workers, tiny_model_dir, noida, topics, group, "slot-a", tmp_path / f"w{kill + 1}.log", **static)
    counts = account("sigkill-x3", noida, group, topics["input"], placed, reader, [w.proc.poll() for w in workers])  # type: ignore[union-attr]
    assert set(counts) == set(placed) and set(counts.values()) == {1}
    assert worker.terminate(30) == 0


def test_a_second_worker_joins_and_leaves_while_work_is_in_flight(
    tiny_model_dir: Path, noida: NoidaBroker, server: LocalServer, workers: list[Worker], tmp_path: Path,
) -> None:
    """Two fetch slots per worker (8 requests/s): 80 slow requests outlast the second worker's
    start, so every partition it is given still has work when it joins and when it leaves."""
    topics, group = make_topics(noida), unique("group")
    reader = noida.reader(topics["output"], isolation_level="read_committed")
    first = start(workers, tiny_model_dir, noida, topics, group, "slot-a", tmp_path / "first.log", DDA_FETCH_WORKERS="2")
    placed = send(noida, topics["input"], [{"id": f"j{n}", "url": f"{server.base}/slow/{n % 20}"} for n in range(80)])
    reader.read_until(lambda r: len(r) >= 6, 90)
    second = start(workers, tiny_model_dir, noida, topics, group, "slot-b", tmp_path / "second.log", DDA_FETCH_WORKERS="2")
    wait_for(lambda: second.metric("dda_messages_consumed_total") > 0, 60, "the second worker to take work")
    exits: list[int] = []
    stop_then_settle(second, first, exits)
    counts = account("join-leave", noida, group, topics["input"], placed, reader, exits)
    assert set(counts) == set(placed) and set(counts.values()) == {1}
    assert exits == [0] and first.terminate(30) == 0


def test_a_rolling_restart_of_two_workers_publishes_each_verdict_once(
    tiny_model_dir: Path, noida: NoidaBroker, server: LocalServer, workers: list[Worker], tmp_path: Path,
) -> None:
    topics, group = make_topics(noida), unique("group")
    pair = [start(workers, tiny_model_dir, noida, topics, group, f"slot-{i}", tmp_path / f"w{i}.log") for i in range(2)]
    placed = send(noida, topics["input"], [{"id": f"r{n}", "url": f"{server.base}/slow/{n % 20}"} for n in range(140)])
    reader = noida.reader(topics["output"], isolation_level="read_committed")
    reader.read_until(lambda r: len(r) >= 30, 60)
    exits: list[int] = []
    for i, old in enumerate(pair):  # one at a time, as a Deployment rolls
        stop_then_settle(old, workers[-1] if i else pair[1], exits)
        start(workers, tiny_model_dir, noida, topics, group, f"slot-{i}", tmp_path / f"w{i}b.log")
    counts = account("rolling-restart", noida, group, topics["input"], placed, reader, exits)
    assert set(counts) == set(placed) and set(counts.values()) == {1}
    assert exits == [0, 0] and all(w.terminate(30) == 0 for w in workers[2:])


def test_a_record_the_broker_refuses_aborts_its_transaction_and_nothing_of_it_is_seen_twice(
    tiny_model_dir: Path, noida: NoidaBroker, server: LocalServer, workers: list[Worker], tmp_path: Path,
) -> None:
    """The output topic takes records of at most 3,000 bytes; every tenth request carries 4 KB of
    metadata, so its verdict is refused inside a transaction with others: the transaction aborts,
    the big verdict goes again compact (`truncated`), and a read_committed reader sees each once
    while a read_uncommitted one also sees the aborted copies."""
    topics, group = make_topics(noida, output_max_bytes=3000), unique("group")
    worker = start(workers, tiny_model_dir, noida, topics, group, "slot-a", tmp_path / "w.log", DDA_FETCH_WORKERS="8")
    requests = [{"id": f"a{n}", "url": f"{server.base}/img/{n % 20}", **({"metadata": {"note": "x" * 4000}} if n % 10 == 9 else {})}
                for n in range(80)]
    placed = send(noida, topics["input"], requests)
    reader = noida.reader(topics["output"], isolation_level="read_committed")
    counts = account("forced-abort", noida, group, topics["input"], placed, reader, [worker.proc.poll()])  # type: ignore[union-attr]
    assert set(counts) == set(placed) and set(counts.values()) == {1}
    committed = {v["id"]: v for v in reader.values()}
    assert all(committed[f"a{n}"].get("truncated") is (True if n % 10 == 9 else None) for n in range(80))
    aborted = worker.metric("dda_transactions_total", 'outcome="aborted"')
    assert aborted >= 1 and worker.metric("dda_transactions_total", 'outcome="committed"') >= 1
    uncommitted = noida.reader(topics["output"])
    everything = Counter(json.loads(r.value)["id"] for r in uncommitted.read_to_end(30))
    print(f"aborted transactions: {aborted:.0f}; records a read_uncommitted reader saw: {sum(everything.values())} for {len(placed)} requests")
    assert sum(everything.values()) > len(placed)  # the aborted transactions' records, visible to it
    assert worker.terminate(30) == 0
