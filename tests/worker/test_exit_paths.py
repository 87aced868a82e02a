"""The worker's exits as an operator meets them: the documented status, only JSON lines on
stderr, and every request accounted for.

- a CPU batch still running at the drain deadline (it used to abort the process: SIGABRT after
  logging exit 3);
- no broker at start (it used to end in a 35-line traceback), and a signal while waiting for one;
- a broker that lost its state under a running worker (a memory-only broker restarted empty:
  the worker scored new requests and published none for minutes, logging thousands of lines,
  /readyz 200 throughout).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.model.checkpoint import import_checkpoint
from engine.model.synthetic import tiny_architecture, write_official_checkpoint
from tests.http_server import LocalServer, Route
from tests.images import encode, scene
from tests.services import Broker, Worker, free_port, stat_fields, stopped, unique, wait_for

pytestmark = pytest.mark.timeout(300)


def json_lines(text: str) -> list[dict]:
    """Every non-empty line parsed as one JSON object (fails on the first that is not)."""
    records = []
    for line in text.splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"a stderr line that is not JSON: {line[:300]!r}")
    return records


def cpu_seconds(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT deep and wide enough that a batch of 32 takes seconds on two cores."""
    root = tmp_path_factory.mktemp("slow")
    checkpoint = write_official_checkpoint(root / "ckpt.pth", tiny_architecture(depth=8, heads=4, pos_grid=37), seed=5)
    return import_checkpoint(checkpoint, root / "model") and root / "model"


def test_a_cpu_batch_running_at_the_drain_deadline_exits_3_without_aborting(slow_model: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(33):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode(scene(360, 360, seed=i), "PNG"))
        paths.append(str(path))
    env = {**os.environ, "DDA_MODEL": str(slow_model), "DDA_MAX_BATCH": "32", "DDA_MAX_WAIT_MS": "1000",
           "DDA_DRAIN_TIMEOUT_S": "0.5", "DDA_DECODE_WORKERS": "1", "DDA_METRICS_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "dda", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(paths[0] + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["status"] == "ok"  # past start-up; the model has run once
        before = cpu_seconds(proc.pid)
        proc.stdin.write("".join(p + "\n" for p in paths[1:]))
        proc.stdin.flush()
        # The 32 images form one batch; the worker process (decoding is in its children) spends a
        # CPU second only in that batch's forward pass, which runs for several more.
        wait_for(lambda: cpu_seconds(proc.pid) - before > 1.0, 60, "the batch of 32 to be running", interval_s=0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = json_lines(err)
    stops = [r for r in records if r["event"] == "worker stopped"]
    assert proc.returncode == 3, err[-2000:]
    assert stops and stops[-1]["exit_status"] == 3 and stops[-1]["abandoned"] >= 1
    assert "terminate called" not in err
    answered = 1 + len(out.splitlines())
    assert answered + stops[-1]["abandoned"] == len(paths)  # every request answered or counted as abandoned


def test_no_broker_at_start_is_one_clear_json_line_and_exit_1(tiny_model_dir: Path) -> None:
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "DDA_KAFKA_CONNECT_TIMEOUT_S": "3", "DDA_METRICS_PORT": "0"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dda", "worker"], capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and time.monotonic() - started < 60, proc.stderr[-2000:]
    records = json_lines(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert records[-1]["level"] == "error" and records[-1]["exit_status"] == 1
    assert "cannot reach the Kafka brokers" in records[-1]["event"] and "DDA_KAFKA_BOOTSTRAP" in records[-1]["event"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_waiting_for_an_unreachable_broker_is_one_json_line(tiny_model_dir: Path, sig: signal.Signals) -> None:
    """Ctrl-C used to print "dda: interrupted" and a kafka-python finaliser's traceback; SIGTERM
    ended the process without a word."""
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "DDA_KAFKA_CONNECT_TIMEOUT_S": "60", "DDA_METRICS_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "dda", "worker"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # until the worker is inside kafka-python's bootstrap wait
        seen.append(line)
        if '"logger": "kafka.' in line:
            break
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=30)
    records = json_lines("".join(seen) + rest)
    assert proc.returncode == 128 + sig, rest
    assert records[-1]["event"] == "stopped while starting: nothing was consumed" and records[-1]["signal"] == sig.name


@pytest.fixture()
def origin() -> Iterator[LocalServer]:
    with LocalServer() as server:
        for i in range(30):
            server.routes[f"/img/{i}"] = Route(body=encode(scene(300 + i, 280, seed=i), "PNG"))
        yield server


def test_a_broker_restarted_empty_is_survived_with_nothing_lost(tiny_model_dir: Path, origin: LocalServer, tmp_path: Path) -> None:
    broker = Broker()
    broker.start()
    topics = {"input": "in", "output": "out", "dlq": "dlq"}
    log = tmp_path / "worker.log"
    worker = Worker(tiny_model_dir, broker, topics, unique("g"), log, DDA_PUBLISH_STALL_S="3")
    try:
        broker.create_topics({"in": 1, "out": 1, "dlq": 1})
        worker.start()
        worker.wait_ready()
        broker.produce("in", [json.dumps({"id": f"before{i}", "url": f"{origin.base}/img/{i}"}).encode() for i in range(10)])
        reader = broker.reader("out")
        reader.read_until(lambda records: len(records) >= 10, 60)
        reader.close()

        broker.kill()  # everything it held is gone: topics, offsets, the group, the producer's id
        broker.start()  # same port, empty
        broker.create_topics({"in": 1, "out": 1, "dlq": 1})
        restarted = time.monotonic()
        after = [f"after{i}" for i in range(20)]
        broker.produce("in", [json.dumps({"id": i, "url": f"{origin.base}/img/{10 + n}"}).encode() for n, i in enumerate(after)])
        unready = wait_for(lambda: worker.get("/readyz")[0] == 503 and time.monotonic(), 30, "/readyz to turn false")
        # (DDA_PUBLISH_STALL_S=3 here: /readyz false after 2.25 s unacknowledged, a new producer at 3 s; default 20 s.)
        reader = broker.reader("out")
        records = reader.read_until(lambda rs: set(after) <= {json.loads(r.value)["id"] for r in rs}, 60)
        reader.close()
        recovered = time.monotonic()
        assert unready - restarted < 30 and recovered - restarted < 60
        assert worker.proc is not None and worker.proc.poll() is None  # recovered in place: a new producer
        ids = Counter(json.loads(r.value)["id"] for r in records)
        assert all(json.loads(r.value)["status"] == "ok" for r in records) and set(ids) == set(after)
        wait_for(lambda: worker.get("/readyz")[0] == 200, 30, "/readyz back to 200")
        assert worker.metric("dda_producer_renewals_total") == 1
        assert worker.terminate() == 0
    finally:
        worker.kill()
        broker.kill()
    lines = json_lines(log.read_text())
    repeats = Counter((r.get("logger"), r["level"], r["event"]) for r in lines if r["level"] in ("warning", "error"))
    # Held back past 5 a minute (engine.process.logs.RepeatLimiter); the test ran for under two minutes.
    assert max(repeats.values()) <= 2 * 5 + 1, repeats.most_common(3)


def test_a_producer_with_stuck_records_is_discarded_promptly() -> None:
    """kafka-python's close() raises while records are pending; `discard` ends such a producer
    anyway (its network thread too), so a renewal leaves nothing running behind."""
    from kafka import KafkaProducer

    from worker.consume.kafka_records import discard

    broker = Broker()
    broker.start()
    try:
        broker.create_topics({"stuck": 1})
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
        producer.send("stuck", b"first").get(timeout=10)  # connected, metadata known
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # the broker stops answering: records stay pending
        pid = broker.proc.pid
        wait_for(lambda: stopped(pid), 10, "every broker thread to stop")
        try:
            pending = [producer.send("stuck", f"r{i}".encode()) for i in range(20)]
            with pytest.raises(Exception, match="Timeout"):
                producer.flush(timeout=0.5)  # what a plain close() would raise
            started = time.monotonic()
            discard(producer, timeout_s=5)
            assert time.monotonic() - started < 10
            assert all(f.is_done and f.failed() for f in pending)
            assert not producer._sender.is_alive()  # noqa: SLF001 - its network thread is gone
        finally:
            broker.proc.send_signal(signal.SIGCONT)
    finally:
        broker.kill()
