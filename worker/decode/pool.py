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

import fcntl
import functools
import mmap
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import structlog

from worker.decode.frames import read_frame, write_frame
from worker.decode.prepare import Prepared
from worker.errors import DECODE_CRASHED, DECODE_LIMIT, DECODE_TIMEOUT
from worker.provenance import report
from worker.supervision import Supervisor

log = structlog.get_logger("dda.decode")
START_TIMEOUT_S = 60.0
START_ATTEMPTS = 3


@dataclass(frozen=True)
class DecodeLimits:
    """Per job: wall-clock deadline (the parent kills), CPU seconds and memory (the kernel enforces)."""

    timeout_s: float = 30.0
    cpu_s: int = 8
    memory_mb: int = 1536
    provenance_timeout_s: float = 2.0  # reading metadata, after the pixels are answered


@dataclass
class DecodeJob:
    data: bytes
    crop_size: int
    crops: int
    max_pixels: int
    done: Callable[[Prepared], None]
    cancelled: Callable[[], bool] = lambda: False
    hash_pdq: bool = True
    provenance: bool = False
    second: tuple[int, int] | None = None  # a second model's (shorter side scaled to, crop size)


class _ChildDied(Exception):
    pass


CHILD_MODULE = "worker.decode.child"


SLOT_BYTES = 5 * 336 * 336 * 3  # five crops of the reference's size: every answer the worker asks for fits
PIPE_BYTES = 1 << 20  # job pipes: a camera JPEG goes through in a few writes, not one per 64 KB
F_SETPIPE_SZ = 1031  # Linux fcntl


class _Child:
    """One decode process, the pipe ends to it, and its shared-memory slot for pixels."""

    def __init__(self, module: str, limits: DecodeLimits, trust_anchors: str) -> None:
        fd = os.memfd_create("dda-decode-slot", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, SLOT_BYTES)
            self.slot = mmap.mmap(fd, SLOT_BYTES)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, str(os.getpid()), str(limits.cpu_s), str(limits.memory_mb), trust_anchors,
                 str(fd), str(SLOT_BYTES)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, pass_fds=(fd,),
            )
        finally:
            os.close(fd)  # the mapping and the child's copy keep the memory
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.jobs = self.proc.stdin
        self.answers = self.proc.stdout.fileno()
        try:
            fcntl.fcntl(self.jobs.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe still works, in more trips

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, size: int, deadline: float) -> bytes:
        chunks, left = [], size
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.answers], [], [], wait)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.answers, min(left, 1 << 20))
            if not chunk:
                raise _ChildDied
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def receive(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        frame = read_frame(lambda n: self._read(n, deadline))
        assert frame is not None  # `_read` raises at the end of the stream
        return frame

    def send(self, job: DecodeJob) -> None:
        try:
            write_frame(self.jobs, {"crop_size": job.crop_size, "crops": job.crops, "max_pixels": job.max_pixels,
                                    "pdq": job.hash_pdq, "provenance": job.provenance,
                                    "second": list(job.second) if job.second else None}, job.data)
        except (BrokenPipeError, OSError, ValueError) as exc:
            raise _ChildDied from exc

    def close_input(self) -> None:
        """EOF on the job pipe: the child finishes its job and exits."""
        try:
            self.jobs.close()
        except OSError:
            pass

    def stop(self, grace_s: float) -> None:
        self.close_input()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.slot.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.stop(0)

    def pixels(self, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
        """A copy of the slot's pixels of `shape` from `offset` (the next job overwrites the slot)."""
        size = int(np.prod(shape))
        if offset + size > len(self.slot):
            raise ValueError(f"decode process claims {offset + size} bytes in a slot of {len(self.slot)}")
        return np.frombuffer(self.slot, np.uint8, size, offset).reshape(shape).copy()


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
        self._children: list[_Child | None] = [None] * workers

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

    def _spawn(self) -> _Child:
        for attempt in range(1, START_ATTEMPTS + 1):
            child = _Child(self.child_module, self.limits, self.c2pa_trust_anchors)
            try:
                header, _ = child.receive(time.monotonic() + START_TIMEOUT_S)
                if header.get("ready"):
                    return child
            except (_ChildDied, TimeoutError, ValueError, struct.error):
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
        except (_ChildDied, ValueError, KeyError, struct.error):
            exit_code = _exit_code(child)
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
                prepared = _prepared(header, payload, job, child)
                if header.get("provenance_follows"):
                    return self._provenance(slot, prepared)
                if header.get("restart"):
                    self._replace(slot, "limit")
                return prepared
            except TimeoutError:
                log.warning("decode over its deadline; process killed", seconds=timeout_s, pid=child.pid)
                self._replace(slot, "timeout")
                return _failed(DECODE_TIMEOUT, f"decoding took longer than {timeout_s:g} s", started)
            except (_ChildDied, ValueError, struct.error) as exc:
                exit_code = _exit_code(child)
                if exit_code == -signal.SIGXCPU:
                    log.warning("decode over its CPU limit; process replaced", cpu_s=self.limits.cpu_s, pid=child.pid)
                    self._replace(slot, "limit")
                    return _failed(DECODE_LIMIT, f"decoding used more than {self.limits.cpu_s} s of CPU", started)
                log.error("a decode process died while decoding", pid=child.pid, attempt=attempt,
                          exit_code=exit_code, error=type(exc).__name__)
                self._replace(slot, "crash")
        return _failed(DECODE_CRASHED, "the decoder process crashed on this image (twice)", started)


def _exit_code(child: _Child) -> int | None:
    """The exit status of a child whose pipe closed (it is dying: wait briefly for it)."""
    try:
        return child.proc.wait(1.0)
    except subprocess.TimeoutExpired:
        return None


def _failed(code: str, message: str, started: float) -> Prepared:
    return Prepared(None, None, None, (code, message), (time.perf_counter() - started) * 1000)


def _prepared(header: dict[str, Any], payload: bytes, job: DecodeJob, child: _Child) -> Prepared:
    """Rebuild the child's answer, checking its shape instead of trusting it."""
    error = header.get("error")
    if error is not None:
        return Prepared(None, None, None, (str(error[0]), str(error[1])), float(header["decode_ms"]))
    pdq_error = header.get("pdq_error")
    shape = tuple(int(n) for n in header["shape"])
    second_shape = tuple(int(n) for n in header["second_shape"]) if header.get("second_shape") is not None else None
    if shape != (job.crops, job.crop_size, job.crop_size, 3) or second_shape != ((job.second[1], job.second[1], 3) if job.second else None):
        raise ValueError(f"decode process sent a malformed answer: shapes {shape}, {second_shape}")
    size = int(np.prod(shape))
    total = size + (int(np.prod(second_shape)) if second_shape else 0)
    if header.get("in_slot") is True:
        pixels = child.pixels(shape)
        second = child.pixels(second_shape, size) if second_shape else None
    elif len(payload) == total:
        flat = np.frombuffer(payload, dtype=np.uint8)
        pixels = flat[:size].reshape(shape)
        second = flat[size:].reshape(second_shape) if second_shape else None
    else:
        raise ValueError(f"decode process sent a malformed answer: shapes {shape}, {second_shape}, {len(payload)} bytes")
    pdq, quality = header.get("pdq"), header.get("pdq_quality")
    return Prepared(pixels, str(pdq) if pdq is not None else None, int(quality) if quality is not None else None,
                    None, float(header["decode_ms"]), str(pdq_error) if pdq_error is not None else None, second=second)
