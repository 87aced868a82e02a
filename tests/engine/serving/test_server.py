"""The engine process and the workers that score through it: a real process, a real Unix
socket and shared memory, the tiny model; hostile peers; the engine's death."""

from __future__ import annotations

import json
import mmap
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from engine.imaging.preprocess import Preprocessing
from engine.model.model_dir import load_model_dir
from engine.runners.contract import EngineLost, Runner
from engine.runners.torch_runner import TorchRunner
from engine.serving import wire
from engine.serving.client import RemoteRunner
from engine.serving.server import EngineServer
from tests.models import shifted_copy
from tests.services import wait_for

pytestmark = pytest.mark.timeout(120)
MAX_BATCH = 8


def crops(n: int, seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def engine(tiny_model_dir: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    address = str(tmp_path / "engine.sock")
    proc = start_engine(tiny_model_dir, address)
    yield proc, address
    proc.kill()
    proc.wait()


def test_workers_get_the_logits_the_model_gives_in_process(tiny_model_dir: Path, engine: tuple[subprocess.Popen[bytes], str]) -> None:
    """Two workers at once (capacities 8 and 3, so 20 crops go as several chunks each): every
    logit equals the in-process runner's, whatever batch the engine put it in."""
    loaded = load_model_dir(tiny_model_dir)
    pre = loaded.manifest.preprocessing
    local = TorchRunner(loaded.network, pre, max_batch=MAX_BATCH)
    batches: list[int] = []
    runners = [RemoteRunner(engine[1], pre, 8, on_batch=batches.append), RemoteRunner(engine[1], pre, 3, on_batch=batches.append)]
    inputs = [crops(20, seed, pre.crop_size) for seed in (1, 2)]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, runners[i].logits(inputs[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(2):
        assert results[i].shape == (20,) and results[i].dtype == np.float32
        assert np.abs(results[i] - local.logits(inputs[i])).max() < 1e-5
    assert len(batches) == 3 + 7 and all(1 <= b <= MAX_BATCH for b in batches)
    for runner in runners:
        runner.close()


class _Gate(Runner):
    """A runner that holds its first batch until released, and records every batch size."""

    def __init__(self, size: int) -> None:
        self.preprocessing = Preprocessing(crop_size=size)
        self.max_batch = MAX_BATCH
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def logits(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(len(batch))
        self.entered.set()
        self.release.wait(10)
        if len(self.sizes) == 3:
            raise RuntimeError("this batch failed")
        return batch.reshape(len(batch), -1)[:, 0].astype(np.float32)  # the first byte of each crop


class _WireClient:
    """A worker speaking the wire by hand, to place requests exactly."""

    def __init__(self, address: str, capacity: int, size: int, fds: bool = True) -> None:
        fd = os.memfd_create("test-crops")
        os.ftruncate(fd, capacity * wire.crop_bytes(size))
        self.slots = np.ndarray((capacity, size, size, 3), np.uint8, buffer=mmap.mmap(fd, capacity * wire.crop_bytes(size)))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(10)
        self.sock.connect(address)
        socket.send_fds(self.sock, [wire.HELLO.pack(wire.MAGIC, capacity, size)], [fd] if fds else [])
        os.close(fd)
        self.welcome = self.sock.recv(64)

    def ask(self, sequence: int, values: list[int]) -> None:
        for i, v in enumerate(values):
            self.slots[i] = v
        self.sock.send(wire.REQUEST.pack(sequence, len(values), wire.SERVED))

    def answer(self) -> tuple[int, int, int, bytes]:
        message = self.sock.recv(wire.answer_size(len(self.slots)))
        return (*wire.ANSWER.unpack_from(message), message[wire.ANSWER.size :])


@contextmanager
def serving(runner: _Gate, address: str) -> Iterator[EngineServer]:
    """An engine server on a thread of this process, stopped and closed at the end."""
    server = EngineServer(runner, address)
    thread = threading.Thread(target=server.serve)
    thread.start()
    try:
        yield server
    finally:
        runner.release.set()
        server.stop()
        thread.join(10)
    assert not thread.is_alive()
    server.close()


def test_requests_waiting_together_become_one_batch_and_a_failed_batch_fails_only_its_requests(tmp_path: Path) -> None:
    gate = _Gate(14)
    with serving(gate, str(tmp_path / "e.sock")):
        a, b, c = (_WireClient(str(tmp_path / "e.sock"), 4, 14) for _ in range(3))
        a.ask(1, [10])
        assert gate.entered.wait(10)  # the engine holds a's batch of 1
        b.ask(1, [20, 21])
        c.ask(1, [30, 31, 32])  # both wait in their sockets while the first batch runs
        gate.release.set()
        assert a.answer() == (1, wire.OK, 1, np.float32([10]).tobytes())
        assert b.answer() == (1, wire.OK, 5, np.float32([20, 21]).tobytes())  # one batch of 5 for b and c
        assert c.answer() == (1, wire.OK, 5, np.float32([30, 31, 32]).tobytes())
        c.ask(2, [33])
        sequence, status, _, reason = c.answer()  # the gate fails its third batch: only c's request
        assert (sequence, status) == (2, wire.FAILED) and b"this batch failed" in reason
        b.ask(2, [22])
        assert b.answer()[:2] == (2, wire.OK) and gate.sizes == [1, 5, 1, 1]


class _Launcher(_Gate):
    """An asynchronous runner (as torch on CUDA): `start` returns a waiter; events are recorded."""

    asynchronous = True

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.events: list[str] = []
        self.second_sent = threading.Event()

    def host_buffer(self, n: int) -> np.ndarray:
        return np.empty((n, 14, 14, 3), np.uint8)

    def start(self, batch: np.ndarray) -> Callable[[], np.ndarray]:
        n = len(self.events) + 1
        self.events.append(f"start {len(batch)}")
        if n == 1:
            self.second_sent.wait(10)  # the next request is queued while this batch "computes"
        logits = batch.reshape(len(batch), -1)[:, 0].astype(np.float32)

        def wait() -> np.ndarray:
            self.events.append(f"wait {len(batch)}")
            return logits

        return wait


def test_an_asynchronous_runner_gets_the_next_batch_before_the_previous_is_awaited(tmp_path: Path) -> None:
    launcher = _Launcher(14)
    with serving(launcher, str(tmp_path / "e.sock")) as server:
        a, b = (_WireClient(str(tmp_path / "e.sock"), 4, 14) for _ in range(2))
        a.ask(1, [10])
        wait_for(lambda: launcher.events, 10, "the first launch")
        b.ask(1, [20, 21])
        launcher.second_sent.set()
        assert a.answer()[3] == np.float32([10]).tobytes() and b.answer()[3] == np.float32([20, 21]).tobytes()
        assert launcher.events == ["start 1", "start 2", "wait 1", "wait 2"]  # copy and compute overlap
        assert server.buffers[14][0] is not server.buffers[14][1]


def test_hostile_or_dying_peers_cost_only_their_own_connection(tiny_model_dir: Path, engine: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, address = engine
    pre = load_model_dir(tiny_model_dir).manifest.preprocessing
    size = pre.crop_size
    no_fd = _WireClient(address, 2, size, fds=False)
    assert no_fd.welcome == b""  # refused: closed without a welcome
    wrong_size = _WireClient(address, 2, size + 1)
    too_many = _WireClient(address, MAX_BATCH + 1, size)
    assert wrong_size.welcome == b"" and too_many.welcome == b""
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.connect(address)
    silent.close()  # connects and leaves before its hello
    bad_count = _WireClient(address, 2, size)
    bad_count.sock.send(wire.REQUEST.pack(7, 3, wire.SERVED))  # more crops than its slots
    sequence, status, _, reason = bad_count.answer()
    assert (sequence, status) == (7, wire.FAILED) and b"outside 1..2" in reason
    garbage = _WireClient(address, 2, size)
    garbage.sock.send(b"\xff" * 5)  # not a request: the connection is dropped
    assert garbage.sock.recv(64) == b""
    for n in range(5):  # workers that die with a batch in flight
        leaver = _WireClient(address, 2, size)
        leaver.ask(1, [n, n])
        leaver.sock.close()
    good = RemoteRunner(address, pre, 4)
    batch = crops(4, 9, size)
    first = good.logits(batch)
    assert np.array_equal(good.logits(batch), first) and proc.poll() is None
    good.close()


def start_engine(model: Path, address: str, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "engine.serving.main", str(model), address, str(os.getpid()),
                             "--max-batch", str(MAX_BATCH), *extra], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline())["ready"] is True
    return proc


def test_a_restarted_engine_gets_the_batch_again_and_a_gone_one_is_engine_lost(
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    loaded = load_model_dir(tiny_model_dir)
    pre = loaded.manifest.preprocessing
    address = str(tmp_path / "engine.sock")
    proc = start_engine(tiny_model_dir, address)
    reconnects: list[int] = []
    runner = RemoteRunner(address, pre, 4, reconnect_s=60, on_reconnect=lambda: reconnects.append(1))
    batch = crops(4, 3, pre.crop_size)
    expected = TorchRunner(loaded.network, pre).logits(batch)
    assert np.abs(runner.logits(batch) - expected).max() < 1e-5
    proc.kill()
    proc.wait()
    results: list[np.ndarray] = []
    waiting = threading.Thread(target=lambda: results.append(runner.logits(batch)))
    waiting.start()  # it finds the engine gone and keeps trying while a new one loads
    wait_for(lambda: reconnects, 10, "the runner to notice")
    proc = start_engine(tiny_model_dir, address)  # the same socket path, as the pod restarts it
    try:
        waiting.join(60)
        assert len(results) == 1 and np.abs(results[0] - expected).max() < 1e-5 and len(reconnects) == 1
    finally:
        proc.kill()
        proc.wait()
    runner.reconnect_s = 0.5
    with pytest.raises(EngineLost, match="did not come back in 0.5 s"):
        runner.logits(batch)
    with pytest.raises(EngineLost, match="cannot reach the engine process"):
        RemoteRunner(str(tmp_path / "nobody.sock"), pre, 2)
    runner.close()


def test_a_silent_engine_is_engine_lost_after_the_timeout(tmp_path: Path) -> None:
    gate = _Gate(14)
    with serving(gate, str(tmp_path / "e.sock")):
        runner = RemoteRunner(str(tmp_path / "e.sock"), gate.preprocessing, 2, timeout_s=0.5)
        with pytest.raises(EngineLost, match="did not answer"):
            runner.logits(np.zeros((1, 14, 14, 3), np.uint8))
        runner.close()


def test_the_engine_process_refuses_a_model_it_cannot_load(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "engine.serving.main", str(tmp_path), str(tmp_path / "s"), str(os.getpid())],
                            capture_output=True, timeout=60)
    assert result.returncode == 2 and b"cannot start the engine" in result.stderr and result.stdout == b""
    wait_for(lambda: not (tmp_path / "s").exists(), 1, "no socket left")


def test_a_compiling_engine_compiles_its_buckets_before_it_is_ready(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model_dir(tiny_model_dir)
    pre = loaded.manifest.preprocessing
    address = str(tmp_path / "engine.sock")
    proc = subprocess.Popen([sys.executable, "-m", "engine.serving.main", str(tiny_model_dir), address, str(os.getpid()),
                             "--max-batch", "8", "--compile"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert json.loads(proc.stdout.readline())["ready"] is True
        runner = RemoteRunner(address, pre, 8)
        batch = crops(3, 5, pre.crop_size)  # padded to the bucket of 8 on the engine's side
        assert np.abs(runner.logits(batch) - TorchRunner(loaded.network, pre).logits(batch)).max() < 1e-4
        runner.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert b"compiled batch buckets [8]" in err
    # The engine process logs as the worker does: one JSON object a line, with level and an ISO UTC timestamp.
    for line in err.decode().splitlines():
        record = json.loads(line)
        assert record["process"] == "engine" and record["level"] in ("info", "warning", "error"), record
        assert record["timestamp"].endswith("Z") and "T" in record["timestamp"], record


def test_a_shadow_model_scores_the_same_crops_on_request_and_a_broken_one_is_left_out(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The engine process holds the served model and a shadow (here the served model with its
    logit shifted by 1.5): a worker's shadow requests get the shadow's logits for its crops, its
    served requests the served ones. A shadow that cannot load leaves the engine serving without it."""
    shadow_dir = shifted_copy(tiny_model_dir, tmp_path / "shadow", 1.5)
    pre = load_model_dir(tiny_model_dir).manifest.preprocessing
    batch = crops(5, 3, pre.crop_size)
    proc = start_engine(tiny_model_dir, str(tmp_path / "a.sock"), "--shadow-model", str(shadow_dir))
    try:
        runner = RemoteRunner(str(tmp_path / "a.sock"), pre, 4)
        shadow = runner.shadow()
        assert shadow is not None
        served, shadowed = runner.logits(batch), shadow.logits(batch)
        assert np.abs(shadowed - served - 1.5).max() < 1e-4
        runner.close()
    finally:
        proc.kill()
        proc.wait()
    proc = start_engine(tiny_model_dir, str(tmp_path / "b.sock"), "--shadow-model", str(tmp_path / "missing"))
    try:
        runner = RemoteRunner(str(tmp_path / "b.sock"), pre, 4)
        assert runner.shadow() is None and runner.logits(batch).shape == (5,)
        client = _WireClient(str(tmp_path / "b.sock"), 2, pre.crop_size)
        client.sock.send(wire.REQUEST.pack(1, 1, wire.SHADOW))
        sequence, status, _, reason = client.answer()
        assert (sequence, status) == (1, wire.FAILED) and b"no model 1" in reason
        runner.close()
    finally:
        proc.kill()
        proc.wait()


def test_a_second_model_scores_crops_of_its_own_size_over_a_connection_of_that_size(
    tiny_model_dir: Path, tiny_commfor_dir: Path, tmp_path: Path,
) -> None:
    """An ensemble's engine holds DDA and the second detector (their crop sizes differ): a worker
    scores each through its own connection, and gets what each model gives in process. A request
    for a model of another crop size than its connection's slots is refused, not scored on the
    wrong pixels; a worker that asks for a second model the engine does not hold is told so, and
    a second model that cannot load stops the engine (the verdicts need it)."""
    served, second = load_model_dir(tiny_model_dir), load_model_dir(tiny_commfor_dir)
    pre, pre2 = served.manifest.preprocessing, second.manifest.preprocessing
    assert pre.crop_size != pre2.crop_size
    address = str(tmp_path / "a.sock")
    proc = start_engine(tiny_model_dir, address, "--second-model", str(tiny_commfor_dir))
    try:
        dda, other = RemoteRunner(address, pre, 4), RemoteRunner(address, pre2, 3, model=wire.SECOND)
        batch, batch2 = crops(6, 1, pre.crop_size), crops(7, 2, pre2.crop_size)
        results: dict[str, np.ndarray] = {}
        threads = [threading.Thread(target=lambda: results.__setitem__("dda", dda.logits(batch))),
                   threading.Thread(target=lambda: results.__setitem__("second", other.logits(batch2)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert np.abs(results["dda"] - TorchRunner(served.network, pre).logits(batch)).max() < 1e-5
        assert np.abs(results["second"] - TorchRunner(second.network, pre2).logits(batch2)).max() < 1e-5
        assert dda.shadow() is None
        client = _WireClient(address, 2, pre.crop_size)
        client.sock.send(wire.REQUEST.pack(1, 1, wire.SECOND))
        sequence, status, _, reason = client.answer()
        assert (sequence, status) == (1, wire.FAILED) and f"scores {pre2.crop_size} px crops".encode() in reason
        dda.close()
        other.close()
    finally:
        proc.kill()
        proc.wait()
    proc = start_engine(tiny_model_dir, str(tmp_path / "b.sock"))
    try:
        with pytest.raises(EngineLost, match="holds no second model"):
            RemoteRunner(str(tmp_path / "b.sock"), pre, 2, model=wire.SECOND)
    finally:
        proc.kill()
        proc.wait()
    result = subprocess.run([sys.executable, "-m", "engine.serving.main", str(tiny_model_dir), str(tmp_path / "c.sock"), str(os.getpid()),
                             "--second-model", str(tmp_path / "missing")], capture_output=True, timeout=60)
    assert result.returncode == 2 and b"cannot start the engine" in result.stderr and result.stdout == b""
