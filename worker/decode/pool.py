"""Decode processes, one job at a time each, supervised.

Why not ProcessPoolExecutor: when one of its processes dies, every pending job fails and
the whole pool must be replaced, so a crafted file that crashes a decoder takes valid
images down with it; and its processes import the parent's main module (torch) and
outlive a SIGKILLed parent. Here each slot thread owns one child process and knows the one
job it holds: a crash costs only that job (retried once in a fresh process, then
`decode_crashed`), a job over the deadline kills its process (`decode_timeout`), a job past
its CPU or memory limit ends or replaces its process (`decode_limit`, not retried), and
children die with the worker (see `worker.decode.child`).
"""

from __future__ import annotations

import functools
import queue
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import replace

import structlog

from worker.decode.prepare import Prepared
from worker.decode.process import CHILD_MODULE, ChildDied, ChildProcess, DecodeJob, DecodeLimits, answer_of, exit_status_of
from worker.errors import DECODE_CRASHED, DECODE_LIMIT, DECODE_TIMEOUT
from worker.provenance import report
from worker.supervision import Supervisor

log = structlog.get_logger("dda.decode")
START_TIMEOUT_S = 60.0
START_ATTEMPTS = 3


class DecodePool:
    def __init__(self, workers: int, supervisor: Supervisor, limits: DecodeLimits,
                 on_restart: Callable[[str], None] = lambda _reason: None, child_module: str = CHILD_MODULE,
                 c2pa_trust_anchors: str | None = None) -> None:
        self.workers = workers
        self.child_module = child_module
        self.c2pa_trust_anchors = c2pa_trust_anchors or ""  # a PEM file the children read at start
        self.limits = limits
        self.supervisor = supervisor
        self.on_restart = on_restart
        self.jobs: queue.Queue[DecodeJob] = queue.Queue()
        self._children: list[ChildProcess | None] = [None] * workers

    def start(self) -> None:
        """Start every decode process and wait until each is ready, then the slot threads."""
        for slot in range(self.workers):
            self._children[slot] = self._spawn()
        for slot in range(self.workers):
            self.supervisor.spawn(f"decode-{slot}", functools.partial(self._serve, slot))

    def pids(self) -> list[int]:
        return [c.pid for c in self._children if c is not None]

    def submit(self, job: DecodeJob) -> None:
        self.jobs.put(job)

    def close(self, grace_s: float = 1.0) -> None:
        """After the supervisor stopped the slot threads: end the children within one grace period."""
        children = [c for c in self._children if c is not None]
        self._children = [None] * self.workers
        for child in children:
            child.close_input()
        end = time.monotonic() + grace_s
        for child in children:
            child.stop(max(0.0, end - time.monotonic()))

    def _spawn(self) -> ChildProcess:
        for attempt in range(1, START_ATTEMPTS + 1):
            child = ChildProcess(self.child_module, self.limits, self.c2pa_trust_anchors)
            try:
                header, _ = child.receive(time.monotonic() + START_TIMEOUT_S)
                if header.get("ready"):
                    return child
            except (ChildDied, TimeoutError, ValueError, struct.error):
                pass
            child.kill()
            log.error("a decode process failed to start", attempt=attempt)
        raise RuntimeError(f"decode process failed to start {START_ATTEMPTS} times")

    def _serve(self, slot: int) -> None:
        while not self.supervisor.stopping.is_set():
            try:
                job = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            if job.cancelled():
                continue
            job.done(self._run(slot, job))

    def _replace(self, slot: int, reason: str) -> None:
        child = self._children[slot]
        if child is not None:
            child.kill()
        self.on_restart(reason)
        self._children[slot] = self._spawn()

    def _provenance(self, slot: int, prepared: Prepared) -> Prepared:
        """The second frame: the file's provenance. Its failure is the provenance's, never the image's."""
        child = self._children[slot]
        assert child is not None
        timeout_s = self.limits.provenance_timeout_s
        try:
            header, _ = child.receive(time.monotonic() + timeout_s)
            record = header["provenance"]
            if not isinstance(record, dict):
                raise ValueError("provenance is not an object")
            return replace(prepared, provenance=record, provenance_ms=float(header.get("provenance_ms", 0.0)))
        except TimeoutError:
            log.warning("reading metadata over its deadline; process killed", seconds=timeout_s, pid=child.pid)
            self._replace(slot, "timeout")
            message = f"reading the file's metadata took longer than {timeout_s:g} s"
        except (ChildDied, ValueError, KeyError, struct.error):
            exit_code = exit_status_of(child)
            log.error("a decode process died reading metadata", pid=child.pid, exit_code=exit_code)
            self._replace(slot, "limit" if exit_code == -signal.SIGXCPU else "crash")
            message = "the metadata reader crashed or passed its limits on this file"
        return replace(prepared, provenance={**report.empty(), "error": message})

    def _run(self, slot: int, job: DecodeJob) -> Prepared:
        started = time.perf_counter()
        timeout_s = self.limits.timeout_s
        for attempt in (1, 2):
            child = self._children[slot]
            assert child is not None
            try:
                child.send(job)
                header, payload = child.receive(time.monotonic() + timeout_s)
                prepared = answer_of(header, payload, job, child)
                if header.get("provenance_follows"):
                    return self._provenance(slot, prepared)
                if header.get("restart"):
                    self._replace(slot, "limit")
                return prepared
            except TimeoutError:
                log.warning("decode over its deadline; process killed", seconds=timeout_s, pid=child.pid)
                self._replace(slot, "timeout")
                return _failed(DECODE_TIMEOUT, f"decoding took longer than {timeout_s:g} s", started)
            except (ChildDied, ValueError, struct.error) as exc:
                exit_code = exit_status_of(child)
                if exit_code == -signal.SIGXCPU:
                    log.warning("decode over its CPU limit; process replaced", cpu_s=self.limits.cpu_s, pid=child.pid)
                    self._replace(slot, "limit")
                    return _failed(DECODE_LIMIT, f"decoding used more than {self.limits.cpu_s} s of CPU", started)
                log.error("a decode process died while decoding", pid=child.pid, attempt=attempt,
                          exit_code=exit_code, error=type(exc).__name__)
                self._replace(slot, "crash")
        return _failed(DECODE_CRASHED, "the decoder process crashed on this image (twice)", started)


def _failed(code: str, message: str, started: float) -> Prepared:
    return Prepared(None, None, None, (code, message), (time.perf_counter() - started) * 1000)
