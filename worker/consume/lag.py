"""`dda_consumer_lag{topic, partition}`, refreshed from the broker now and then: a metric's failure
never stops consumption, and partitions no longer owned lose their series."""

from __future__ import annotations

import time

import structlog

from worker.consume.transport import Partition, Transport
from worker.metrics import Metrics

log = structlog.get_logger("dda.delivery")


class LagReport:
    def __init__(self, transport: Transport, metrics: Metrics, every_s: float) -> None:
        self.transport = transport
        self.metrics = metrics
        self.every_s = every_s
        self._next = 0.0
        self._labels: set[Partition] = set()

    def refresh(self) -> None:
        """Ask the broker, at most every `every_s`."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        try:
            lag = self.transport.lag()
        except Exception as exc:  # noqa: BLE001 - a metric must never stop consumption
            log.info("consumer lag not available this time", error=f"{type(exc).__name__}: {exc}")
            return
        for topic, partition in self._labels - set(lag):
            self.metrics.consumer_lag.remove(topic, str(partition))
        for (topic, partition), value in lag.items():
            self.metrics.consumer_lag.labels(topic, str(partition)).set(value)
        self._labels = set(lag)
