"""Fixtures shared by the real-broker tests: one tansu broker per module, fresh topics per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Broker, Worker, unique

INPUT_PARTITIONS = 4


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    b = Broker()
    b.start()
    yield b
    b.kill()


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
