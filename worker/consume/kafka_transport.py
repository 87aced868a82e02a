"""Kafka behind the transport contract (`worker.consume.transport`), with kafka-python 3.

kafka-python 3 runs rebalance listeners on its own IO thread while `poll` blocks, and a
blocking consumer call there raises "Cannot block on net.run() from the IO thread
itself". So the listener is an AsyncConsumerRebalanceListener: the delivery's revocation
work (let work finish, publish, wait for the producer, which has its own IO thread) runs
inside it under the revocation deadline, and the commit is `commit_async`, awaited on that
loop. Assigned partitions are paused there and announced to the delivery at the end of
`poll`, on the caller's thread, with the group's last commit read from the broker (a blocking
call); then sought and resumed. No other thread touches the clients.

A commit's metadata names the offsets past it already published (`Position.ahead`), so the
partition's next owner skips them. Kafka and noida-db keep commit metadata; tansu drops it
(measured), and there only the process that published them skips them.

DDA_DELIVERY=exactly_once: the producer is transactional (`worker.consume.kafka_transactions`), records
leave only through `transact`, and the consumer reads offsets as of committed transactions.

Broker reachability for /readyz comes from a small probe thread that opens a TCP
connection to a bootstrap server every few seconds; it never uses the Kafka clients.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.structs import MemberState

from worker.config import WorkerConfig
from worker.consume.kafka_join import finish_rejoin
from worker.consume.kafka_records import FutureAck, commit_offsets, decode_ahead, discard, partition_of
from worker.consume.kafka_transactions import TransactionalProducer, leave_group
from worker.consume.transport import (
    Ack,
    CommitFailed,
    DoneAck,
    Kind,
    Listener,
    Message,
    Outgoing,
    Partition,
    Position,
    Transport,
    named_offsets,
)

log = structlog.get_logger("dda.kafka")
PROBE_EVERY_S = 2.0
LAG_TIMEOUT_MS = 1000  # per broker question when refreshing dda_consumer_lag
COMMITTED_TIMEOUT_MS = 5000  # reading a newly assigned partition's last commit
PRODUCER_MAX_BLOCK_MS = 2000  # send() waits this long for metadata at most; delivery retries later
RENEW_BOOTSTRAP_MS = 5000  # a replacement producer's connection, made on the delivery thread
REJOIN_MARGIN_S = 3.0  # a rejoin's time beyond the revocation (JoinGroup waits for the other members)


class BrokerUnavailable(Exception):
    """No broker answered within the bootstrap timeout at start."""


class _Rebalance(AsyncConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python has no type information
    def __init__(self, transport: KafkaTransport, listener: Listener) -> None:
        self.transport = transport
        self.listener = listener

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.transport.arrived -= {partition_of(p) for p in revoked}
        positions = self.listener.on_revoked({partition_of(p) for p in revoked})
        if positions:
            offsets = commit_offsets(positions)
            try:
                await self.transport.consumer.commit_async(offsets)
            except KafkaError as exc:  # the next owner starts from the last commit: repeats, never gaps
                log.warning("commit on revocation failed", error=f"{type(exc).__name__}: {exc}")
            else:
                log.debug("committed", positions=named_offsets(positions))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Nothing of them is fetched until `KafkaTransport.poll` has announced them."""
        self.transport.consumer.pause(*assigned)
        self.transport.arrived |= {partition_of(p) for p in assigned}
        self.transport.joined.set()

    async def on_partitions_lost(self, lost: Any) -> None:
        self.transport.arrived -= {partition_of(p) for p in lost}
        self.listener.on_lost({partition_of(p) for p in lost})


class KafkaTransport(Transport):
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.topics: dict[Kind, str] = {"verdict": config.output_topic, "dead_letter": config.dlq_topic}
        # A key is a request id (at most one input message long); the rest of a request is the record's.
        self.max_record_bytes = config.kafka_max_request_bytes - config.max_message_bytes - 1024
        self.joined = threading.Event()
        self.arrived: set[Partition] = set()  # assigned, paused, not announced to the listener yet
        self._rebalance: _Rebalance | None = None
        self._reachable = threading.Event()
        self._probe_stop = threading.Event()
        if not config.kafka_bootstrap:
            raise ValueError("KafkaTransport needs DDA_KAFKA_BOOTSTRAP")
        self._common: dict[str, Any] = {"bootstrap_servers": config.kafka_bootstrap.split(","),
                                        **config.kafka_client_options()}
        self.transactional = config.delivery == "exactly_once"
        # exactly_once: offsets read as of committed transactions; optionally a static member named for its
        # slot, so a restarted slot takes its partitions back at once (its producer fences the one it replaces)
        self.static = self.transactional and config.static_membership
        membership: dict[str, Any] = {"isolation_level": "read_committed"} if self.transactional else {}
        if self.static:
            membership["group_instance_id"] = config.member_slot()
        bootstrap_timeout = {"bootstrap_timeout_ms": int(config.kafka_connect_timeout_s * 1000)}
        started = time.monotonic()
        producer = None
        try:
            producer = self._producer(**bootstrap_timeout)
            self.consumer = KafkaConsumer(
                group_id=config.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=config.session_timeout_ms, heartbeat_interval_ms=config.session_timeout_ms // 3,
                max_poll_records=max(1, config.max_in_flight // 2), **membership, **self._common, **bootstrap_timeout,
            )
            self._transactions = (TransactionalProducer(producer, self.consumer, self.topics, config.kafka_connect_timeout_s,
                                                        replace=self._replace_producer) if self.transactional else None)
        except (KafkaError, OSError) as exc:  # kafka-python retries for DDA_KAFKA_CONNECT_TIMEOUT_S first
            if producer is not None:
                producer.close(timeout=0)
            raise BrokerUnavailable(
                f"cannot reach the Kafka brokers {config.kafka_bootstrap} (waited {time.monotonic() - started:.0f} s: "
                f"{exc if str(exc).startswith(type(exc).__name__) else f'{type(exc).__name__}: {exc}'}); check DDA_KAFKA_BOOTSTRAP, the network and the security settings. "
                "Exiting; nothing was consumed") from None
        self.producer = producer
        self._probe = threading.Thread(target=self._probe_loop, name="broker-probe", daemon=True)

    def start(self, listener: Listener) -> None:
        self._rebalance = _Rebalance(self, listener)
        self.consumer.subscribe([self.config.input_topic], listener=self._rebalance)
        self._probe.start()

    def poll(self, timeout_s: float) -> list[Message]:
        try:
            finish_rejoin(self.consumer, self.config.revoke_timeout_s + REJOIN_MARGIN_S)
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:  # e.g. a commit or rebalance error surfaced by poll: the group recovers
            log.warning("poll failed", error=f"{type(exc).__name__}: {exc}")
            batches = {}
        if self.arrived:
            self._announce()
        return [Message(r.topic, r.partition, r.offset, r.key, r.value) for records in batches.values() for r in records]

    def _announce(self) -> None:
        """Newly assigned partitions to the listener, each with the group's last commit; then
        sought where it says and resumed."""
        assert self._rebalance is not None
        arrived, self.arrived = self.arrived, set()
        committed: dict[Partition, Position | None] = {}
        for tp in sorted(arrived):
            try:
                last = self.consumer.committed(TopicPartition(*tp), metadata=True, timeout_ms=COMMITTED_TIMEOUT_MS)
            except KafkaError as exc:  # the listener falls back on what it knows; at worst work is redone
                log.warning("the last commit of an assigned partition could not be read", partition=f"{tp[0]}/{tp[1]}",
                            error=f"{type(exc).__name__}: {exc}")
                last = None
            committed[tp] = None if last is None else Position(last.offset, decode_ahead(last.metadata, last.offset))
        seeks = self._rebalance.listener.on_assigned(committed)
        for (topic, partition), offset in seeks.items():
            self.consumer.seek(TopicPartition(topic, partition), offset)
        self.consumer.resume(*(TopicPartition(*tp) for tp in arrived))

    def publish(self, kind: Kind, key: bytes, value: bytes) -> Ack:
        try:
            return FutureAck(self.producer.send(self.topics[kind], key=key, value=value))
        except MessageSizeTooLargeError as exc:
            return DoneAck(exc, too_large=True)
        except KafkaError as exc:  # KafkaTimeoutError: no metadata within max_block_ms (broker down)
            return DoneAck(exc)

    def _producer(self, **options: Any) -> KafkaProducer:
        if self.transactional:
            options |= TransactionalProducer.options(self.config.group_id, self.config.member_slot())
        return KafkaProducer(acks="all", enable_idempotence=True, linger_ms=5, max_block_ms=PRODUCER_MAX_BLOCK_MS,
                             max_request_size=self.config.kafka_max_request_bytes, **self._common, **options)

    def transact(self, records: list[Outgoing], positions: dict[Partition, Position], timeout_s: float) -> None:
        assert self._transactions is not None, "transact() needs DDA_DELIVERY=exactly_once"
        self._transactions.transact(records, commit_offsets(positions), timeout_s)

    def renew(self) -> bool:
        """A new producer (a new producer id); the old one is discarded beside the delivery's thread."""
        if self.transactional:
            return False  # records only leave in transactions, which end or fail the producer
        try:
            self._replace_producer()
        except KafkaError as exc:
            log.warning("a new producer could not connect; the old one is kept", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _replace_producer(self) -> KafkaProducer:
        fresh = self._producer(bootstrap_timeout_ms=RENEW_BOOTSTRAP_MS)
        old, self.producer = self.producer, fresh
        threading.Thread(target=discard, args=(old,), name="producer-discard", daemon=True).start()
        return fresh

    def commit(self, positions: dict[Partition, Position], timeout_s: float) -> None:
        try:
            self.consumer.commit(commit_offsets(positions), timeout_ms=int(timeout_s * 1000))
        except KafkaError as exc:
            raise CommitFailed(f"{type(exc).__name__}: {exc}") from exc

    def _assigned(self, partitions: set[Partition]) -> list[TopicPartition]:
        mine = self.consumer.assignment()
        return [tp for tp in (TopicPartition(t, p) for t, p in partitions) if tp in mine]

    def pause(self, partitions: set[Partition]) -> None:
        self.consumer.pause(*self._assigned(partitions))

    def resume(self, partitions: set[Partition]) -> None:
        self.consumer.resume(*self._assigned(partitions))

    def assignment(self) -> set[Partition]:
        return {partition_of(p) for p in self.consumer.assignment()}

    def lag(self) -> dict[Partition, int]:
        if self.consumer.group_metadata().state != MemberState.STABLE:
            # noida-db left an offset fetch sent mid-rebalance unanswered, and with it every later request on
            # that connection, the rejoin included (measured, read_committed): lag waits for a stable group
            raise KafkaError("the group is rebalancing")
        mine = list(self.consumer.assignment())
        if not mine:
            return {}
        # Short timeouts: this runs on the delivery thread, which must not stall on a broker outage.
        end = self.consumer.end_offsets(mine, timeout_ms=LAG_TIMEOUT_MS)
        beginning: dict[TopicPartition, int] | None = None
        out = {}
        for tp in mine:
            committed = self.consumer.committed(tp, timeout_ms=LAG_TIMEOUT_MS)
            if committed is None:  # nothing committed yet: the group starts from the earliest offset
                beginning = beginning or self.consumer.beginning_offsets(mine, timeout_ms=LAG_TIMEOUT_MS)
                committed = beginning[tp]
            out[partition_of(tp)] = max(0, end[tp] - committed)
        return out

    def flush(self, timeout_s: float) -> None:
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            log.warning("producer flush timed out", timeout_s=timeout_s)

    def connected(self) -> bool:
        return self.joined.is_set() and self._reachable.is_set()

    def close(self, timeout_s: float) -> None:
        self._probe_stop.set()
        end = time.monotonic() + timeout_s
        try:
            self.consumer.close(autocommit=False, timeout_ms=int(max(0.1, (end - time.monotonic()) * 0.6) * 1000))
            if self.static:  # a static member never leaves by itself: its partitions would wait a session timeout
                leave_group(self._common, self.config.group_id, self.config.member_slot(), max(0.1, (end - time.monotonic()) * 0.5))
        finally:
            self.producer.close(timeout=max(0.1, end - time.monotonic()))

    def _probe_loop(self) -> None:
        servers = self._common["bootstrap_servers"]
        while not self._probe_stop.is_set():
            reachable = False
            for server in servers:
                host, _, port = server.rpartition(":")
                try:
                    with socket.create_connection((host.strip("[]") or "localhost", int(port or 9092)), timeout=1.0):
                        reachable = True
                        break
                except (OSError, ValueError):
                    continue
            (self._reachable.set if reachable else self._reachable.clear)()
            self._probe_stop.wait(PROBE_EVERY_S)
