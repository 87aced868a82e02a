"""Fixtures shared by the real-server tests: one tansu broker (and noida-db where asked) per module, fresh topics per test
(a fresh redis-server: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Broker, NoidaBroker, Worker, unique

INPUT_PARTITIONS = 4


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    b = Broker()
    b.start()
    yield b
    b.kill()


@pytest.fixture(scope="module")
def noida() -> Iterator[NoidaBroker]:
    """noida-db, for what tansu does not do faithfully (end offsets, read_committed)."""
    broker = NoidaBroker()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture()
def topics(broker: Broker) -> dict[str, str]:
    """Fresh topics (and, in each test, a fresh group: tansu can keep a group stuck after a member leaves)."""
    names = {"input": unique("requests"), "output": unique("verdicts"), "dlq": unique("dead")}
    broker.create_topics({names["input"]: INPUT_PARTITIONS, names["output"]: 2, names["dlq"]: 1})
    return names


@pytest.fixture()
def workers() -> Iterator[list[Worker]]:
    """Workers (or pods) a test started: killed by PID at its end, whatever happened."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.kill()
