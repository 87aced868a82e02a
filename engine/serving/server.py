"""The engine process's server: owns the model (and the GPU) and scores crops for every worker process.

Why a process of its own: a worker process spends milliseconds of Python per request
(Kafka, fetch threads, cache lookups, pool feeding) under one GIL, which caps one process
far below what a GPU scores. A pod therefore runs several worker processes and one engine
process, whose work per request is a crop copy and two short messages (`engine.serving.wire`).

Batching: each turn takes every request waiting for the model the oldest one names, whole,
up to `max_batch` crops, and scores them as one batch; requests that arrive meanwhile make
the next batch. Two more models are optional, each batched on its own and run synchronously:
a shadow (`--shadow-model`: a candidate scored beside the served one on the same crops, never
answering for it; one that fails to load or to score fails only its own requests) and a second
detector (`--second-model`: an ensemble's other model, on crops of its own size, which a
worker sends over a connection of that size; one that fails to load stops the engine, since
the ensemble's verdict needs it). There is no wait
timer here: the workers' own micro-batch window (DDA_MAX_WAIT_MS) already gathered them.
Two host buffers are reused in turn; with a runner that can `start` a batch and answer
later (torch on CUDA), the next batch is copied into one buffer while the other is on the
GPU, and the buffers are page-locked so the copy to the device runs asynchronously.
The process around it: `engine.serving.main`.
"""

from __future__ import annotations

import mmap
import os
import selectors
import socket
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.runners.contract import Runner, StartingRunner, Waiter
from engine.serving import wire


@dataclass
class _Client:
    sock: socket.socket
    slots: np.ndarray  # [capacity, S, S, 3] uint8 over the worker's memfd
    mapping: mmap.mmap

    @property
    def size(self) -> int:
        return int(self.slots.shape[1])


@dataclass
class _Request:
    client: _Client
    sequence: int
    count: int
    model: int


class EngineServer:
    """Serves workers on `address` until `stop()`; one thread, no locks."""

    def __init__(self, runner: Runner, address: str, log: Callable[[str], None] = lambda _m: None,
                 shadow: Runner | None = None, second: Runner | None = None) -> None:
        self.runner = runner
        self.runners = {wire.SERVED: runner}
        if shadow is not None:
            self.runners[wire.SHADOW] = shadow
        if second is not None:
            self.runners[wire.SECOND] = second
        self.sizes = {r.preprocessing.crop_size for r in self.runners.values()}
        self.max_batch = runner.max_batch
        self.log = log
        if os.path.exists(address) and stat.S_ISSOCK(os.stat(address).st_mode):
            os.unlink(address)  # left by the engine process this one replaces
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(address)
        self.listener.listen(64)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.queue: deque[_Request] = deque()
        self.clients: dict[int, _Client] = {}
        # Overlap only where a launch returns before the batch is computed (CUDA): on the CPU,
        # launching the next batch first would hold the previous batch's answer for a whole batch.
        self._starting = runner if isinstance(runner, StartingRunner) and runner.asynchronous else None
        # Two host buffers a crop size, used in turn: the batch on the GPU keeps the other turn's.
        self.buffers = {size: [self._buffer(size), self._buffer(size)] for size in self.sizes}
        self._wake_r, self._wake_w = os.pipe()
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        self._stopping = False
        self.batches = 0
        self.images = 0

    def _buffer(self, size: int) -> np.ndarray:
        if self._starting is not None and size == self.runner.preprocessing.crop_size:
            return self._starting.host_buffer(self.max_batch)
        return np.empty((self.max_batch, size, size, 3), np.uint8)

    def stop(self) -> None:
        """Safe from a signal handler or another thread: `serve` returns after the batch it is on."""
        os.write(self._wake_w, b"x")

    def serve(self) -> None:
        turn = 0
        running: tuple[list[_Request], Waiter] | None = None
        while not self._stopping:
            self._read_messages(block=running is None and not self.queue)
            started = self._launch(turn) if self.queue else None
            if running is not None:
                self._answer(*running)
                running = None
            if started is not None:
                turn ^= 1
                taken, wait, computing = started
                if computing:
                    running = taken, wait
                else:  # already computed: answer now, not after the next batch
                    self._answer(taken, wait)
        if running is not None:
            self._answer(*running)
        for client in list(self.clients.values()):
            self._drop(client)
        self.listener.close()

    def close(self) -> None:
        """After `serve` has returned (a `stop` that comes later must still find its pipe)."""
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # --- messages -----------------------------------------------------------------------------

    def _read_messages(self, block: bool) -> None:
        for key, _ in self.selector.select(None if block else 0):
            if key.fileobj is self.listener:
                self._accept()
            elif key.fileobj == self._wake_r:
                os.read(self._wake_r, 64)
                self._stopping = True
            elif key.data is None:
                self._greet(key.fileobj)  # type: ignore[arg-type]
            else:
                self._receive(key.data)

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.setblocking(False)  # a peer that never sends its hello, or never reads, cannot hold the loop
        self.selector.register(sock, selectors.EVENT_READ, None)  # no client yet: its hello comes next

    def _greet(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        try:
            client = self._hello(sock)
        except (OSError, ValueError) as exc:
            self.log(f"refused a worker connection: {exc}")
            sock.close()
            return
        self.clients[sock.fileno()] = client
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _hello(self, sock: socket.socket) -> _Client:
        message, fds, _flags, _addr = socket.recv_fds(sock, wire.HELLO.size, 1)
        if len(fds) != 1 or len(message) != wire.HELLO.size:
            for fd in fds:
                os.close(fd)
            raise ValueError("malformed hello")
        magic, capacity, size = wire.HELLO.unpack(message)
        try:
            if magic != wire.MAGIC or size not in self.sizes or not 1 <= capacity <= self.max_batch:
                raise ValueError(f"hello for crop size {size} x {capacity} slots; this engine takes {sorted(self.sizes)}, "
                                 f"at most {self.max_batch} per request")
            length = capacity * wire.crop_bytes(size)
            if os.fstat(fds[0]).st_size < length:
                raise ValueError("the crop memory is smaller than its slots")
            mapping = mmap.mmap(fds[0], length)
        finally:
            os.close(fds[0])
        sock.send(wire.WELCOME.pack(wire.MAGIC, self.max_batch, sum(1 << m for m in self.runners)))
        return _Client(sock, np.ndarray((capacity, size, size, 3), np.uint8, buffer=mapping), mapping)

    def _receive(self, client: _Client) -> None:
        try:
            message = client.sock.recv(wire.REQUEST.size + 1)
        except OSError:
            message = b""
        if len(message) != wire.REQUEST.size:  # end of file (the worker is gone) or not our protocol
            self._drop(client)
            return
        sequence, count, model = wire.REQUEST.unpack(message)
        reason = self._refusal(client, count, model)
        if reason:
            self._send(client, wire.ANSWER.pack(sequence, wire.FAILED, 0) + reason.encode())
            return
        self.queue.append(_Request(client, sequence, count, model))

    def _refusal(self, client: _Client, count: int, model: int) -> str:
        if model not in self.runners:
            return f"no model {model} here"
        size = self.runners[model].preprocessing.crop_size
        if size != client.size:
            return f"model {model} scores {size} px crops; this connection's slots hold {client.size} px"
        if not 1 <= count <= len(client.slots):
            return f"count {count} outside 1..{len(client.slots)}"
        return ""

    def _drop(self, client: _Client) -> None:
        if self.clients.pop(client.sock.fileno(), None) is None:
            return
        self.selector.unregister(client.sock)
        client.sock.close()
        self.queue = deque(r for r in self.queue if r.client is not client)

    def _send(self, client: _Client, message: bytes) -> None:
        try:
            client.sock.send(message)
        except OSError:  # died while its batch ran, or does not read its answers (a full socket)
            self._drop(client)

    # --- batches ------------------------------------------------------------------------------

    def _launch(self, turn: int) -> tuple[list[_Request], Waiter, bool]:
        """The batch of the model the oldest request names; True while it is still computing."""
        model = self.queue[0].model
        buffer = self.buffers[self.runners[model].preprocessing.crop_size][turn]
        taken: list[_Request] = []
        filled = 0
        for request in list(self.queue):
            if request.model != model:
                continue
            if filled + request.count > self.max_batch:
                break
            self.queue.remove(request)
            buffer[filled : filled + request.count] = request.client.slots[: request.count]
            filled += request.count
            taken.append(request)
        batch = buffer[:filled]
        try:
            if self._starting is not None and model == wire.SERVED:
                return taken, self._starting.start(batch), True
            logits = self.runners[model].logits(batch)
        except Exception as exc:  # noqa: BLE001 - the batch's requests are told why; the engine goes on
            return taken, _raiser(exc), False
        return taken, lambda: logits, False

    def _answer(self, taken: list[_Request], wait: Waiter) -> None:
        total = sum(r.count for r in taken)
        try:
            logits = np.asarray(wait(), dtype="<f4")
        except Exception as exc:  # noqa: BLE001
            reason = f"{type(exc).__name__}: {exc}".encode()[: wire.MAX_REASON]
            for request in taken:
                self._send(request.client, wire.ANSWER.pack(request.sequence, wire.FAILED, total) + reason)
            return
        self.batches += 1
        self.images += total
        start = 0
        for request in taken:
            part = logits[start : start + request.count]
            start += request.count
            self._send(request.client, wire.ANSWER.pack(request.sequence, wire.OK, total) + part.tobytes())


def _raiser(exc: Exception) -> Waiter:
    def wait() -> np.ndarray:
        raise exc

    return wait
