"""Kafka in, Kafka out, at least once.

Guarantees, and where they live:
- An input offset is committed only when every message at or below it has a verdict (or a
  dead-letter record) that the broker acknowledged: `OffsetTracker` keeps the contiguous
  watermark, producer acknowledgements close offsets, `_commit` commits the watermark.
- The producer is idempotent with acks=all; verdicts are keyed by request id, so a replay
  after a crash repeats verdicts but never loses one.
- Backpressure: above `max_in_flight` the assigned partitions are paused and polling goes
  on (a consumer that stops polling is evicted from its group); they resume at half.
- Revocation: work from revoked partitions is not published (the new owner redoes it from
  the committed offset); what is complete is committed before the partitions go.
- SIGTERM: stop taking messages, let in-flight work finish within the drain deadline,
  flush the producer, commit, leave the group.
- A verdict the broker refuses after the producer's own retries stops the worker (exit 1)
  without committing past it: nothing is dropped silently.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from worker.config import WorkerConfig
from worker.messages import Malformed, Request, Source, dead_letter, parse_request
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.pipeline import Pipeline

log = structlog.get_logger("dda.kafka")
COMMIT_EVERY_S = 1.0
POLL_MS = 100


class KafkaTransport:
    def __init__(self, config: WorkerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.tracker = OffsetTracker()
        self.leases: dict[TopicPartition, int] = {}
        self._assignments = 0
        self.lock = threading.Lock()
        self.failed: BaseException | None = None
        self.paused = False
        self.joined = threading.Event()  # the group coordinator answered: the broker is reachable
        self.consumer: KafkaConsumer | None = None
        common = {"bootstrap_servers": config.kafka_bootstrap.split(","), **config.kafka_client_options()}  # type: ignore[union-attr]
        self.producer = KafkaProducer(acks="all", enable_idempotence=True, linger_ms=5, retries=10, **common)
        self._common = common

    # --- publishing (called from pipeline threads) --------------------------------------------

    def _publish(self, topic: str, key: bytes | None, value: dict[str, Any], source: Source, lease: int) -> None:
        tp = TopicPartition(source.topic, source.partition)

        def acked(_meta: Any) -> None:
            self.tracker.finished(tp, source.offset)

        def refused(exc: BaseException) -> None:
            log.error("broker refused a record; stopping without committing past it", topic=topic, error=str(exc),
                      source=source.ref())
            self.failed = exc

        with self.lock:
            if self.leases.get(tp) != lease:
                return  # revoked since it was consumed: the partition's new owner redoes it
        try:
            future = self.producer.send(topic, key=key, value=json.dumps(value).encode())
        except KafkaError as exc:  # e.g. no broker for max_block_ms: same as a refusal
            refused(exc)
            return
        future.add_callback(acked)
        future.add_errback(refused)

    def emit(self, request: Request, record: dict[str, Any]) -> None:
        self._publish(self.config.output_topic, request.id.encode(), record, request.source, request.lease)

    # --- consuming (main thread) -----------------------------------------------------------------

    def _commit(self) -> None:
        assert self.consumer is not None
        positions = {tp: pos for tp, pos in self.tracker.committable().items() if tp in self.leases}
        if not positions:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(pos, "", -1) for tp, pos in positions.items()})
        except KafkaError as exc:  # e.g. a rebalance in progress: the next commit carries it
            log.warning("commit failed, will retry", error=str(exc))
            return
        self.tracker.mark_committed(positions)

    def _handle(self, pipeline: Pipeline, message: Any) -> None:
        tp = TopicPartition(message.topic, message.partition)
        source = Source(message.topic, message.partition, message.offset)
        self.tracker.started(tp, message.offset)
        self.metrics.consumed.inc()
        with self.lock:
            lease = self.leases.get(tp, 0)
        try:
            request = parse_request(message.value, source, self.config.max_message_bytes)
        except Malformed as exc:
            self.metrics.dead_letters.labels(exc.reason).inc()
            self._publish(self.config.dlq_topic, message.key, dead_letter(message.value, source, exc), source, lease)
            return
        request.lease = lease
        pipeline.submit(request)

    def _backpressure(self, pipeline: Pipeline) -> None:
        assert self.consumer is not None
        if not self.paused and pipeline.in_flight >= self.config.max_in_flight:
            self.consumer.pause(*self.consumer.assignment())
            self.paused = True
        elif self.paused and pipeline.in_flight <= self.config.max_in_flight // 2:
            self.consumer.resume(*self.consumer.assignment())
            self.paused = False
        self.metrics.paused.set(1 if self.paused else 0)

    def run(self, pipeline: Pipeline, stop: threading.Event, heartbeat: list[float]) -> int:
        transport = self

        class Rebalance(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                transport.producer.flush(timeout=10)  # acknowledgements in, so the watermark is current
                transport._commit()
                with transport.lock:
                    for tp in revoked:
                        transport.leases.pop(tp, None)
                transport.tracker.forget(list(revoked))
                log.info("partitions revoked", partitions=sorted(str(tp) for tp in revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                with transport.lock:
                    transport._assignments += 1
                    for tp in assigned:
                        transport.leases[tp] = transport._assignments
                if transport.paused:
                    transport.consumer.pause(*assigned)  # type: ignore[union-attr]
                transport.joined.set()
                log.info("partitions assigned", partitions=sorted(str(tp) for tp in assigned))

        self.consumer = KafkaConsumer(
            group_id=self.config.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=self.config.session_timeout_ms, heartbeat_interval_ms=self.config.session_timeout_ms // 3,
            max_poll_records=max(1, self.config.max_in_flight // 2),
            **self._common,
        )
        self.consumer.subscribe([self.config.input_topic], listener=Rebalance())
        last_commit = time.monotonic()
        try:
            while not stop.is_set() and self.failed is None:
                heartbeat[0] = time.monotonic()
                for records in self.consumer.poll(timeout_ms=POLL_MS).values():
                    for message in records:
                        self._handle(pipeline, message)
                self._backpressure(pipeline)
                if time.monotonic() - last_commit >= COMMIT_EVERY_S:
                    self._commit()
                    last_commit = time.monotonic()
            return self._shutdown(pipeline, heartbeat)
        finally:
            self.consumer.close(autocommit=False)
            self.producer.close(timeout=10)

    def _shutdown(self, pipeline: Pipeline, heartbeat: list[float]) -> int:
        """Stop taking messages, finish in-flight work within the drain deadline, commit."""
        assert self.consumer is not None
        self.consumer.pause(*self.consumer.assignment())
        deadline = time.monotonic() + self.config.drain_timeout_s
        while pipeline.in_flight and time.monotonic() < deadline and self.failed is None:
            heartbeat[0] = time.monotonic()
            self.consumer.poll(timeout_ms=POLL_MS)  # keep the group membership while draining
        self.producer.flush(timeout=10)
        self._commit()
        left = pipeline.in_flight
        log.info("drained", abandoned=left, committed=True)
        return 1 if self.failed is not None else 0

    def broker_reachable(self) -> bool:
        return self.joined.is_set()
