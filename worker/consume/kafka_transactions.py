"""kafka-python's transactions behind `Transport.transact` (DDA_DELIVERY=exactly_once).

One transactional producer per consumer process, its transactional.id built from the group and
the member slot (`WorkerConfig.member_slot`): stable across restarts of the slot, so a restarted
process's init_transactions aborts whatever its predecessor left open and fences it (the zombie's
next request fails with ProducerFenced); unique across slots. The consumer's group metadata goes
with the offsets (KIP-447), so a broker also fences a member the group has moved past.

kafka-python's send_offsets_to_transaction and commit_transaction wait without a time limit,
which would hang the delivery loop through a broker outage; the same requests are made here
through its transaction manager and waited for with one deadline per transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, MemberToRemove
from kafka.errors import (
    AuthorizationError,
    FencedInstanceIdError,
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
)
from kafka.structs import OffsetAndMetadata

from worker.consume.transport import Kind, Outgoing, ProducerUnusable, Refusal, TransactionAborted

log = structlog.get_logger("dda.kafka")
TRANSACTION_TIMEOUT_MS = 20000  # the broker aborts a transaction open longer (one whose producer died mid-way)
FENCED = (ProducerFencedError, InvalidProducerEpochError, FencedInstanceIdError, AuthorizationError)


def transactional_id(group_id: str, slot: str) -> str:
    return f"dda.{group_id}.{slot}"


class TransactionalProducer:
    @staticmethod
    def options(group_id: str, slot: str) -> dict[str, Any]:
        """KafkaProducer settings of a slot's transactional producer."""
        return {"transactional_id": transactional_id(group_id, slot), "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS}

    def __init__(self, producer: KafkaProducer, consumer: Any, topics: dict[Kind, str], init_timeout_s: float,
                 replace: Callable[[], KafkaProducer]) -> None:
        """`replace`: a new producer of the same transactional id, the old one retired (after an abort)."""
        self.consumer = consumer
        self.topics = topics
        self.init_timeout_s = init_timeout_s
        self._replace = replace
        self._use(producer)

    def _use(self, producer: KafkaProducer) -> None:
        """Registers the transactional id (aborting a predecessor's open transaction and fencing it);
        retried for `init_timeout_s`, as the first connection is."""
        self.producer = producer
        # kafka-python 3: the transaction manager whose requests its blocking methods wrap, and the
        # sender thread to wake for them (no public way to wait with a deadline)
        self._manager = producer._transaction_manager  # noqa: SLF001
        self._sender = producer._sender  # noqa: SLF001
        deadline = time.monotonic() + self.init_timeout_s
        while True:
            try:
                producer.init_transactions()
                return
            except KafkaTimeoutError:  # a predecessor's transaction is still being settled, or no coordinator yet
                if time.monotonic() > deadline:
                    raise

    def transact(self, records: list[Outgoing], offsets: dict[TopicPartition, OffsetAndMetadata], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            self.producer.begin_transaction()
        except KafkaError as exc:
            raise ProducerUnusable(_text(exc)) from exc
        futures = []
        refused: dict[int, Refusal] = {}
        for index, record in enumerate(records):
            try:
                futures.append(self.producer.send(self.topics[record.kind], key=record.key, value=record.value))
            except KafkaError as exc:  # refused before it left (too large for max_request_size, no metadata)
                refused[index] = Refusal(exc, isinstance(exc, MessageSizeTooLargeError))
                break
        try:
            if not refused:
                self._acknowledged(futures, records, refused, deadline)
            if refused:
                raise TransactionAborted(f"{len(refused)} of {len(records)} records refused")
            self._wait(self._manager.send_offsets_to_transaction(offsets, self.consumer.group_metadata()), deadline, "adding the offsets")
            self._wait(self._manager.begin_commit(), deadline, "committing")
        except TransactionAborted as exc:
            self._abort(deadline)
            raise TransactionAborted(str(exc), refused) from None
        except FENCED as exc:
            raise _fenced(exc) from exc
        except KafkaError as exc:  # an abortable error: the offsets refused
            self._abort(deadline)
            raise TransactionAborted(_text(exc), refused) from exc

    def _acknowledged(self, futures: list[Any], records: list[Outgoing], refused: dict[int, Refusal],
                      deadline: float) -> None:
        """Every record's answer before the commit is asked for: kafka-python 3 never completes a
        commit requested after a record of its transaction failed (measured on noida-db: its
        commit_transaction waits for ever), so refusals are found here and the transaction aborted.

        Once one record is refused, kafka-python fails every batch not yet sent with that same
        exception; so of the records failed by one size refusal, only the largest is known to be
        too large (any record larger than the refused one is too), and the others only fell with
        it. Each future is waited for itself: a batch refused for size is split and resent, and
        flush() returns before the pieces are answered."""
        failed: dict[int, list[int]] = {}  # id of the exception -> indexes of the records it failed
        for index, future in enumerate(futures):
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as exc:
                if not future.is_done:
                    raise ProducerUnusable("the broker did not acknowledge the transaction's records in time") from exc
                failed.setdefault(id(future.exception), []).append(index)
        for indexes in failed.values():
            error = futures[indexes[0]].exception
            if isinstance(error, MessageSizeTooLargeError):
                largest = max(indexes, key=lambda i: len(records[i].value))
                refused[largest] = Refusal(error, True)
        if failed and not refused:
            raise TransactionAborted(_text(futures[next(iter(failed.values()))[0]].exception))

    def _wait(self, result: Any, deadline: float, step: str) -> None:
        self._sender.wakeup()
        if not result.wait(timeout_ms=max(0.0, deadline - time.monotonic()) * 1000):
            raise ProducerUnusable(f"the broker did not confirm {step} the transaction in time")

    def _abort(self, deadline: float) -> None:
        """Abort, then go on with a new producer: after an abort with refused records, kafka-python 3
        sent the next transaction's records with sequence numbers the broker refused
        (OutOfOrderSequenceNumber, then records never answered; measured on noida-db). The new
        producer's init_transactions fences the old one."""
        try:
            self._wait(self._manager.begin_abort(), max(deadline, time.monotonic() + 1.0), "aborting")
            self._use(self._replace())
        except KafkaError as exc:
            if isinstance(exc, FENCED) or isinstance(self._manager.last_error, FENCED):
                raise _fenced(self._manager.last_error or exc) from exc
            raise ProducerUnusable(f"the transaction could not be aborted: {_text(exc)}") from exc


def leave_group(client_options: dict[str, Any], group_id: str, slot: str, timeout_s: float) -> None:
    """Remove this static member from its group now (an orderly stop): its partitions move at once
    instead of after a session timeout. Best effort; the session timeout remains the fallback."""
    try:
        admin = KafkaAdminClient(request_timeout_ms=int(timeout_s * 1000), **client_options)
        try:
            admin.remove_group_members(group_id, [MemberToRemove(group_instance_id=slot)])
        finally:
            admin.close()
    except (KafkaError, OSError) as exc:
        log.warning("could not leave the group; its partitions move after the session timeout", error=_text(exc))


def _fenced(error: BaseException) -> ProducerUnusable:
    return ProducerUnusable(f"fenced: another worker runs this member slot ({_text(error)}); give each worker its own DDA_INSTANCE_ID")


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
