"""What each local broker does with kafka-python's transactions (issue 22's first question).

For tansu and noida-db in turn: a consumer group reads three plain records; a transactional
producer publishes them and commits the group's offsets inside the transaction
(`send_offsets_to_transaction`); a second transaction is aborted; a read_committed and a
read_uncommitted reader say what they see; a second producer with the same transactional id
fences the first. Each step prints ok, or the error the broker or client gave.

    python benchmarks/transactions_probe.py
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SESSION_MS = 6000  # tansu holds a JoinGroup for half the session timeout


def _step(results: dict[str, str], name: str, action: Callable[[], Any]) -> Any:
    """Run one step; the result says "ok", the value it returned (a number, an offset), or the error."""
    try:
        value = action()
    except Exception as exc:  # noqa: BLE001 - the point is to report what failed
        results[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
        return None
    results[name] = str(value) if isinstance(value, (int, str)) else "ok"
    return value


def _read_all(bootstrap: str, topic: str, isolation: str) -> list[bytes]:
    from kafka import KafkaConsumer

    reader = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"r-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest",
                           enable_auto_commit=False, isolation_level=isolation, session_timeout_ms=SESSION_MS)
    seen: list[bytes] = []
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and len(seen) < 4:
            for records in reader.poll(timeout_ms=500).values():
                seen += [r.value for r in records]
    finally:
        reader.close()
    return seen


def probe(broker: Any) -> dict[str, str]:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from tests.services import unique

    results: dict[str, str] = {}
    requests, verdicts, group = unique("in"), unique("out"), unique("g")
    broker.create_topics({requests: 1, verdicts: 1})
    broker.produce(requests, [b"a", b"b", b"c"])
    consumer = KafkaConsumer(requests, bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", session_timeout_ms=SESSION_MS)
    taken: list[Any] = []
    deadline = time.monotonic() + 30
    while len(taken) < 3 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            taken += records
    results["group consumer reads 3 records"] = "ok" if len(taken) == 3 else f"read {len(taken)}"
    transactional_id = f"dda-probe-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=transactional_id, acks="all")
    _step(results, "init_transactions", producer.init_transactions)
    _step(results, "begin_transaction", producer.begin_transaction)
    for record in taken:
        producer.send(verdicts, record.value)
    _step(results, "send_offsets_to_transaction", lambda: producer.send_offsets_to_transaction(
        {TopicPartition(requests, 0): OffsetAndMetadata(3, "", -1)}, consumer.group_metadata()))
    _step(results, "commit_transaction", producer.commit_transaction)
    _step(results, "group offset after commit", lambda: consumer.committed(TopicPartition(requests, 0)))
    _step(results, "begin a second transaction", producer.begin_transaction)
    _step(results, "a record written inside it", lambda: producer.send(verdicts, b"aborted").get(timeout=10) and None)
    _step(results, "abort_transaction", producer.abort_transaction)
    results["read_committed sees"] = repr(_read_all(broker.bootstrap, verdicts, "read_committed"))
    results["read_uncommitted sees"] = repr(_read_all(broker.bootstrap, verdicts, "read_uncommitted"))
    successor = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=transactional_id, acks="all")
    _step(results, "a second producer with the same id: init_transactions", successor.init_transactions)

    def zombie() -> None:
        producer.begin_transaction()
        producer.send(verdicts, b"zombie").get(timeout=10)
        producer.commit_transaction()

    _step(results, "the first producer commits again (must be fenced)", zombie)
    consumer.close()
    for client in (successor, producer):
        try:
            client.close(timeout=1)
        except Exception:  # noqa: BLE001 - a fenced producer may refuse to close cleanly
            pass
    return results


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from machine import describe

    from tests.services import Broker, NoidaBroker

    print(f"machine: {describe()}")
    columns: dict[str, dict[str, str]] = {}
    for name, make in (("tansu", Broker), ("noida-db", NoidaBroker)):
        broker = make()
        broker.start()
        try:
            columns[name] = probe(broker)
        finally:
            broker.stop() if isinstance(broker, NoidaBroker) else broker.kill()
    steps = list(dict.fromkeys(step for column in columns.values() for step in column))
    print("| step | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for step in steps:
        print(f"| {step} | " + " | ".join(columns[name].get(step, "-") for name in columns) + " |")


if __name__ == "__main__":
    main()
