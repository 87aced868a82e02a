"""Real servers for integration tests: tansu (Kafka-compatible), redis-server, `dda worker`.

Each binds 127.0.0.1 on a free port, is started as a child process, stopped by PID, and
leaves nothing behind (tansu keeps data in memory; redis gets a temporary directory).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from dda.commands.local_stack import tansu_binary
from tests.schemas import check_record


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Process:
    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None, cwd: Path | None = None) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout_s)


class Broker(Process):
    # The session timeout workers get on this broker: tansu holds a JoinGroup for half of it, so
    # every join and rebalance costs that long (Kafka's own floor, group.min.session.timeout.ms,
    # is 6 s: noida-db keeps it and refuses less).
    session_timeout_ms = 4000

    def __init__(self) -> None:
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        super().__init__([str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                          "--storage-engine", "memory://tansu/"])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        super().start()
        wait_for(lambda: _port_open(self.port), 10, "tansu to listen")

    def create_topics(self, partitions: dict[str, int]) -> None:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            admin.create_topics([NewTopic(name, count, 1) for name, count in partitions.items()])
        finally:
            admin.close()

    def produce(self, topic: str, values: list[bytes], keys: list[bytes | None] | None = None) -> list[tuple[int, int]]:
        """Send and wait; returns (partition, offset) per message."""
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        try:
            futures = [producer.send(topic, value=v, key=(keys[i] if keys else None)) for i, v in enumerate(values)]
            producer.flush()
            return [(m.partition, m.offset) for m in (f.get(timeout=10) for f in futures)]
        finally:
            producer.close()

    def reader(self, topic: str, fetch_max_wait_ms: int = 500, isolation_level: str = "read_uncommitted") -> TopicReader:
        return TopicReader(self.bootstrap, topic, fetch_max_wait_ms, isolation_level)

    def committed(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            return {p: (consumer.committed(TopicPartition(topic, p)) or 0) for p in range(partitions)}
        finally:
            consumer.close()


class NoidaBroker(Broker):
    """noida-db's Kafka service alone, in a temporary data directory: it persists across restarts
    and reports true end offsets (tansu's are wrong), but never expires a SIGKILLed member, so
    tests on it stop their workers with SIGTERM and use a fresh group."""

    session_timeout_ms = 6000

    def __init__(self) -> None:
        import noida_db

        binary = Path(noida_db.__file__).parent / "noida-db"
        binary.chmod(0o755)
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dda-noida-")
        Process.__init__(self, [str(binary), "start", "--data-dir", self.dir, "--host", "127.0.0.1", "--only", "kafka",
                                "--kafka-port", str(self.port)])

    def start(self) -> None:
        Process.start(self)
        wait_for(lambda: _port_open(self.port), 10, "noida-db to listen")

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
            return {tp.partition: offset for tp, offset in ends.items()}
        finally:
            consumer.close()


class TopicReader:
    """Reads a whole topic from the start, without a group (tansu's end offsets are not trusted).

    A benchmark timing verdicts passes a short `fetch_max_wait_ms`: tansu answers a waiting
    fetch late (about 250 ms) instead of when a record arrives. A subscriber of exactly-once
    verdicts reads with isolation_level="read_committed"."""

    def __init__(self, bootstrap: str, topic: str, fetch_max_wait_ms: int = 500, isolation_level: str = "read_uncommitted") -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                      fetch_max_wait_ms=fetch_max_wait_ms, isolation_level=isolation_level)
        partitions = self.consumer.partitions_for_topic(topic) or {0}
        self.consumer.assign([TopicPartition(topic, p) for p in partitions])
        self.consumer.seek_to_beginning()
        self.records: list[Any] = []

    def read_until(self, condition: Callable[[list[Any]], bool], timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        while not condition(self.records):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met; {len(self.records)} records read")
            for batch in self.consumer.poll(timeout_ms=200).values():
                for record in batch:
                    check_record(json.loads(record.value))
                self.records.extend(batch)
        return self.records

    def read_to_end(self, timeout_s: float) -> list[Any]:
        """Everything up to the partitions' end offsets as the broker states them now (for a
        read_committed reader, up to the last stable offset): on noida-db, whose end offsets are true."""
        assigned = list(self.consumer.assignment())
        ends = self.consumer.end_offsets(assigned)
        return self.read_until(lambda _r: all(self.consumer.position(tp) >= ends[tp] for tp in assigned), timeout_s)

    def values(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records]

    def close(self) -> None:
        self.consumer.close()


class RedisServer(Process):
    def __init__(self, *extra: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/test installs it)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dda-redis-")
        super().__init__([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir, "--save", "",
                          "--appendonly", "no", "--daemonize", "no", *extra])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        super().start()
        wait_for(lambda: _port_open(self.port), 10, "redis-server to listen")

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """A Redis Cluster of three masters (no replicas) on 127.0.0.1. A node killed and started again
    keeps its slots (its nodes.conf stays in its folder) but not its data, like a restarted pod."""

    def __init__(self) -> None:
        # The bus port is named: by default it is the port + 10000, which may be taken or past 65535.
        self.nodes = [RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000",
                                  "--cluster-port", str(free_port())) for _ in range(3)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        """Starts the nodes and joins them; stops them again if that fails."""
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        for node in self.nodes:
            node.start()
        created = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                                  "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stdout + created.stderr
        self.wait_healthy()

    def wait_healthy(self) -> None:
        def ok(node: RedisServer) -> bool:
            info = subprocess.run(["redis-cli", "-p", str(node.port), "cluster", "info"], capture_output=True, text=True, timeout=10)
            return "cluster_state:ok" in info.stdout

        wait_for(lambda: all(ok(n) for n in self.nodes), 30, "the Redis cluster to report ok", interval_s=0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class Worker(Process):
    """`dda worker` in a subprocess with test-sized settings; logs go to a file for the test to read."""

    def __init__(self, model_dir: Path, broker: Broker, topics: dict[str, str], group: str, log: Path, cwd: Path | None = None,
                 **env: str) -> None:
        """`cwd`: run the worker of another checkout (a benchmark's baseline)."""
        self.metrics_port = free_port()
        settings = {
            "DDA_KAFKA_BOOTSTRAP": broker.bootstrap, "DDA_INPUT_TOPIC": topics["input"], "DDA_OUTPUT_TOPIC": topics["output"],
            "DDA_DLQ_TOPIC": topics["dlq"], "DDA_GROUP_ID": group, "DDA_MODEL": str(model_dir),
            "DDA_FETCH_ALLOW_NETWORKS": "127.0.0.0/8", "DDA_METRICS_HOST": "127.0.0.1", "DDA_METRICS_PORT": str(self.metrics_port),
            "DDA_KAFKA_SESSION_TIMEOUT_MS": str(broker.session_timeout_ms), "DDA_DECODE_WORKERS": "1", "DDA_FETCH_WORKERS": "8",
            "DDA_FETCH_TIMEOUT_S": "5", "DDA_MAX_WAIT_MS": "20", "DDA_LOG_LEVEL": "info", **env,
        }
        super().__init__([sys.executable, "-m", "dda", "worker"], env={**os.environ, **settings}, log=log, cwd=cwd)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_for(lambda: self.get("/readyz")[0] == 200 or (self.proc and self.proc.poll() is not None), timeout_s, "worker /readyz")
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text() if self.log else "worker exited"

    def metric(self, name: str, labels: str = "") -> float:
        return metric_value(self.get("/metrics")[1], name, labels)


def metric_value(scrape: str, name: str, labels: str = "") -> float:
    """Sum of a metric's samples in a Prometheus scrape whose label text contains `labels`."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
               if line.startswith(name) and line[len(name)] in " {" and labels in line)


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses): state,
    parent, ... (proc(5) numbering from field 3). A thread's id works as PID too."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def state(pid: int) -> str:
    """The process's state letter ("Z" for a zombie, also for one already gone)."""
    try:
        return stat_fields(pid)[0]
    except (OSError, IndexError):
        return "Z"  # gone meanwhile


def stopped(pid: int) -> bool:
    """Every thread of `pid` is stopped (state T). kill(SIGSTOP) returns before each thread has
    taken the signal; until then a busy machine may let a thread answer one more request."""
    try:
        return all(state(int(task.name)) == "T" for task in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False  # the process ended meanwhile


def descendants(root: int) -> dict[int, str]:
    """Every living process below `root` (children, grandchildren, ...): pid -> command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(stat_fields(int(entry.name))[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = commands[child]
                frontier.append(child)
    return found


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
