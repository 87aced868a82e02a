"""A Runner whose model runs in the engine process (`engine.serving.main`).

A worker process writes its batch's crops into its own shared memory (a memfd the engine
maps once) and waits for the logits. It imports no torch: a worker process of a pod stays
small, and the only copy of the model is the engine's.
"""

from __future__ import annotations

import mmap
import os
import socket
import threading
import time
from collections.abc import Callable

import numpy as np

from engine.imaging.preprocess import Preprocessing
from engine.runners.contract import EngineLost, Runner, check_crops, run_in_chunks
from engine.serving import wire

ANSWER_TIMEOUT_S = 600.0  # a CPU engine scoring a full batch of ViT-L takes minutes at worst
RECONNECT_S = 300.0  # a restarted engine process loads the model first
RETRY_S = 0.2


class _Disconnected(Exception):
    """The connection ended (the engine process died or restarts): worth reconnecting."""


class RemoteRunner(Runner):
    """`Runner` over the engine process's socket at `address` for one of its models (`model`:
    the served one unless told; `engine.serving.wire`), one batch at a time.

    When the connection ends (the engine process died; the pod restarts it) the batch is
    sent again on a new connection for up to `reconnect_s`, so an engine restart costs
    latency, not verdicts. An engine that stops answering, or stays away longer, is
    EngineLost."""

    def __init__(self, address: str, preprocessing: Preprocessing, capacity: int,
                 on_batch: Callable[[int], None] = lambda _n: None, timeout_s: float = ANSWER_TIMEOUT_S,
                 reconnect_s: float = RECONNECT_S, on_reconnect: Callable[[], None] = lambda: None,
                 model: int = wire.SERVED) -> None:
        self.preprocessing = preprocessing
        self.model = model
        self.on_batch = on_batch
        self.on_reconnect = on_reconnect
        self.address = address
        self.timeout_s = timeout_s
        self.reconnect_s = reconnect_s
        self.max_batch = capacity
        size = preprocessing.crop_size
        self._fd = os.memfd_create("dda-crops")  # kept: a new connection is handed the same memory
        os.ftruncate(self._fd, capacity * wire.crop_bytes(size))
        self._mapping = mmap.mmap(self._fd, capacity * wire.crop_bytes(size))
        self._slots = np.ndarray((capacity, size, size, 3), np.uint8, buffer=self._mapping)
        self._answer_size = wire.answer_size(capacity)
        self._sequence = 0
        self.held = {wire.SERVED}  # the engine's welcome says which models it holds
        self._lock = threading.Lock()
        try:
            self._sock = self._connect()
        except (OSError, _Disconnected) as exc:
            os.close(self._fd)
            raise EngineLost(f"cannot reach the engine process at {address}: {exc}") from exc

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.address)
            socket.send_fds(sock, [wire.HELLO.pack(wire.MAGIC, self.max_batch, self.preprocessing.crop_size)], [self._fd])
            welcome = sock.recv(wire.WELCOME.size)
        except OSError:
            sock.close()
            raise
        if len(welcome) != wire.WELCOME.size or welcome[:4] != wire.MAGIC:
            sock.close()
            raise _Disconnected(f"the engine process refused {self.max_batch} slots of {self.preprocessing.crop_size} px crops")
        self.held = wire.held(wire.WELCOME.unpack(welcome)[2])
        if self.model not in self.held:
            sock.close()
            raise _Disconnected(f"the engine process holds no {wire.MODEL_NAMES[self.model]} model (its log says why)")
        return sock

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """float32 [N] logits; raises EngineLost when the engine process is gone or silent,
        RuntimeError when it failed this batch alone."""
        return self.score(crops, self.model)

    def shadow(self) -> RemoteShadow | None:
        """The engine's shadow model as a Runner, when it holds one."""
        return RemoteShadow(self) if wire.SHADOW in self.held else None

    def score(self, crops: np.ndarray, model: int) -> np.ndarray:
        check_crops(crops, self.preprocessing.crop_size)
        with self._lock:
            return run_in_chunks(crops, self.max_batch, lambda chunk: self._run(chunk, model))

    def _run(self, chunk: np.ndarray, model: int) -> np.ndarray:
        count = len(chunk)
        self._slots[:count] = chunk
        deadline = None
        while True:
            try:
                return self._exchange(count, model)
            except _Disconnected as exc:
                deadline = deadline or time.monotonic() + self.reconnect_s
                self.on_reconnect()
                self._reconnect(deadline, str(exc))

    def _reconnect(self, deadline: float, why: str) -> None:
        self._sock.close()
        while True:
            try:
                self._sock = self._connect()
                return
            except (OSError, _Disconnected) as exc:
                why = str(exc)
            if time.monotonic() > deadline:
                raise EngineLost(f"the engine process is gone and did not come back in {self.reconnect_s:g} s: {why}")
            time.sleep(RETRY_S)

    def _exchange(self, count: int, model: int) -> np.ndarray:
        self._sequence += 1
        try:
            self._sock.send(wire.REQUEST.pack(self._sequence, count, model))
            answer = self._sock.recv(self._answer_size)
        except TimeoutError as exc:
            raise EngineLost(f"the engine process did not answer in {self.timeout_s:g} s") from exc
        except OSError as exc:  # reset, broken pipe: it died with our batch
            raise _Disconnected(f"{exc}") from exc
        if len(answer) < wire.ANSWER.size:
            raise _Disconnected("the engine process closed its connection")
        sequence, status, batch = wire.ANSWER.unpack_from(answer)
        body = answer[wire.ANSWER.size :]
        if sequence != self._sequence:
            raise EngineLost(f"answer {sequence} for request {self._sequence}: the connection is out of step")
        if status != wire.OK:
            raise RuntimeError(f"the engine failed this batch: {body.decode('utf-8', 'replace')}")
        if len(body) != 4 * count:
            raise EngineLost(f"{len(body) // 4} logits for {count} crops")
        self.on_batch(batch)
        return np.frombuffer(body, dtype="<f4").astype(np.float32)

    def close(self) -> None:
        self._sock.close()
        os.close(self._fd)


class RemoteShadow(Runner):
    """The engine process's shadow model, over its served model's connection and crop memory."""

    def __init__(self, remote: RemoteRunner) -> None:
        self.remote = remote
        self.preprocessing = remote.preprocessing
        self.max_batch = remote.max_batch

    def logits(self, crops: np.ndarray) -> np.ndarray:
        return self.remote.score(crops, wire.SHADOW)
