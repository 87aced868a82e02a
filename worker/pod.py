"""`dda worker` with DDA_CONSUMERS > 1: one engine process, N consumer processes, supervised.

Why: one Python process spends milliseconds of CPU per request under its GIL (Kafka,
fetch threads, cache lookups, feeding decode processes), which caps it far below what a
GPU scores. Here each consumer is a whole worker (`worker.service` with its own Kafka group
membership, pipeline, decode processes and delivery guarantees) that scores through the
engine process (`engine.serving.main`), the only process that loads the model. The consumers
share the pod's cores; the engine's work per request is a crop copy and two messages.

Supervision: every child dies with this process (even SIGKILLed). An engine process that
exits is started again (its consumers keep their work and resend the batch it held), a few
times in ten minutes; past that, or when a consumer exits, the pod stops the others
(consumers drain and commit what is safe, as on SIGTERM) and exits 1 for Kubernetes to
restart it; nothing unacknowledged was committed, so nothing is lost. /metrics merges the consumers' scrapes (label `consumer`); /healthz and /readyz hold
only while every child runs and every consumer says so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from engine.serving.main import EngineSettings
from worker.config import WorkerConfig, environment
from worker.consume.terms import EXIT_ABANDONED, EXIT_CONFIG, EXIT_FATAL

log = structlog.get_logger("dda.pod")
POLL_S = 0.2
STOP_ENGINE_S = 10.0
ENGINE_RESTARTS = 3
ENGINE_RESTART_WINDOW_S = 600.0
WORKDIR_PREFIX = "dda-pod-"


def remove_stale_workdirs() -> None:
    """Directories of pods that were SIGKILLed (no clean-up ran): named after their pod's pid."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name[len(WORKDIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


class Pod:
    def __init__(self, config: WorkerConfig, model_dir: Path, stop: threading.Event, hard_deadline_s: float) -> None:
        self.config = config
        self.model_dir = model_dir
        self.stop = stop
        self.hard_deadline_s = hard_deadline_s
        remove_stale_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))  # 0700: only this user reaches it
        self.socket = str(self.workdir / "engine.sock")
        self.engine: subprocess.Popen[bytes] | None = None
        self.consumers: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.engine_restarts: deque[float] = deque()

    # --- children -----------------------------------------------------------------------------

    def start_engine(self) -> str | None:
        """The engine process, up and listening; None, or why it could not start."""
        c = self.config
        settings = EngineSettings(self.model_dir, self.socket, os.getpid(), backend=c.backend, device=c.device, precision=c.precision,
                                  max_batch=c.max_batch, engine_dir=Path(c.engine_dir) if c.engine_dir else None, compile=c.compile,
                                  shadow_model=Path(c.shadow_model) if c.shadow_model else None,
                                  second_model=Path(c.second_model) if c.ensemble and c.second_model else None, log_level=c.log_level)
        command = settings.command()
        self.engine = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.engine.stdout is not None
        line = self.engine.stdout.readline()  # the model loads first: minutes for ViT-L from a slow volume
        if not line:
            return f"the engine process exited with status {self.engine.wait()} before it was ready (its reason is logged above)"
        log.info("engine process ready", pid=self.engine.pid, **json.loads(line))
        return None

    def start_consumers(self) -> None:
        shares = decode_shares(self.config.decode_workers, self.config.consumers)
        for n, share in enumerate(shares):
            port = _free_loopback_port()
            # the whole configuration, flags included, in the form each consumer parses; what is its own overridden
            env = {**os.environ, **environment(self.config, consumers=1, engine_socket=self.socket, model=str(self.model_dir),
                                               metrics_host="127.0.0.1", metrics_port=port, decode_workers=share,
                                               instance_id=f"{self.config.member_slot()}-c{n}")}  # its own slot, the same after a restart
            self.consumers.append(subprocess.Popen([sys.executable, "-m", "worker.service"], env=env, stdin=subprocess.DEVNULL))
            self.ports.append(port)
        log.info("consumer processes started", consumers=len(self.consumers), decode_workers_each=shares,
                 pids=[p.pid for p in self.consumers])

    def children(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        named = [(f"consumer-{n}", p) for n, p in enumerate(self.consumers)]
        return named + ([("engine", self.engine)] if self.engine is not None else [])

    # --- running ------------------------------------------------------------------------------

    def run(self) -> int:
        """Until a stop signal or a child's exit; then stop every child in order. A dead engine
        process is restarted (its workers resend their batch when it is back), at most
        ENGINE_RESTARTS times in ENGINE_RESTART_WINDOW_S; a dead consumer stops the pod."""
        failed: tuple[str, int] | None = None
        while not self.stop.is_set() and failed is None:
            for name, proc in self.children():
                status = proc.poll()
                if status is None:
                    continue
                if name == "engine" and self._restart_engine(status):
                    continue
                failed = (name, status)
                break
            else:
                self.stop.wait(POLL_S)
        if failed is not None:
            log.error("a pod process exited; stopping the pod", process=failed[0], exit_status=failed[1])
        statuses = self.shutdown()
        if failed is None:
            return max(statuses, default=0)
        refused_settings = failed[1] == 2 and failed[0] != "engine"  # a consumer found its configuration bad
        return 2 if refused_settings else EXIT_FATAL

    def _restart_engine(self, status: int) -> bool:
        now = time.monotonic()
        while self.engine_restarts and self.engine_restarts[0] < now - ENGINE_RESTART_WINDOW_S:
            self.engine_restarts.popleft()
        if len(self.engine_restarts) >= ENGINE_RESTARTS:
            return False
        self.engine_restarts.append(now)
        log.error("the engine process exited; restarting it", exit_status=status, restarts_in_window=len(self.engine_restarts))
        reason = self.start_engine()
        if reason is not None:
            log.error("the engine process could not be restarted", reason=reason)
        return reason is None

    def shutdown(self) -> list[int]:
        """Consumers first (they drain and commit), then the engine they score through."""
        for proc in self.consumers:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.hard_deadline_s + 2
        statuses = [_wait(proc, deadline) for proc in self.consumers]
        if self.engine is not None:
            _signal(self.engine, signal.SIGTERM)
            _wait(self.engine, time.monotonic() + STOP_ENGINE_S)
        return [EXIT_ABANDONED if s is None else s for s in statuses]

    # --- what the endpoints show --------------------------------------------------------------

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def _all_running(self) -> bool:
        return bool(self.consumers) and all(proc.poll() is None for _, proc in self.children())

    def alive(self) -> bool:
        return self._all_running() and all(self._get(port, "/healthz")[0] == 200 for port in self.ports)

    def ready(self) -> bool:
        return not self.stop.is_set() and self._all_running() and all(self._get(port, "/readyz")[0] == 200 for port in self.ports)

    def scrape(self) -> bytes:
        """Every consumer's metrics, each sample labelled with its consumer."""
        families: dict[str, Metric] = {}
        for n, port in enumerate(self.ports):
            status, text = self._get(port, "/metrics")
            if status != 200:
                continue
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "consumer": str(n)}, sample.value)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(list(families.values())))
        return generate_latest(registry)


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def decode_shares(total: int, consumers: int) -> list[int]:
    """Each consumer's decode processes: the pod's total split as evenly as it goes (11 over 4 is
    3, 3, 3, 2: a remainder left out idles cores the node has; measured on a 16-core GPU node),
    and at least one each."""
    return [max(1, total // consumers + (i < total % consumers)) for i in range(consumers)]


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> int | None:
    """Its exit status; SIGKILLed (None) if it is still there at `deadline`."""
    try:
        return proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        log.error("a pod process did not stop in time; killing it", pid=proc.pid)
        proc.kill()
        proc.wait()
        return None


def serve_pod(config: WorkerConfig, model_dir: Path, stop: threading.Event, hard_deadline_s: float,
              endpoints: Callable[[Pod], None]) -> int:
    """Start the engine, then the consumers, then serve the endpoints until the pod stops."""
    pod = Pod(config, model_dir, stop, hard_deadline_s)
    try:
        reason = pod.start_engine()
        if reason is not None:
            log.error(f"cannot start the engine process: {reason}", exit_status=EXIT_CONFIG)
            return EXIT_CONFIG
        if stop.is_set():
            return pod.run()
        pod.start_consumers()
        endpoints(pod)
        return pod.run()
    finally:
        for _, proc in pod.children():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(pod.workdir, ignore_errors=True)
