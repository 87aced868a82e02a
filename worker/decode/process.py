"""One decode process as its parent sees it: the job it is given, the pipes and the shared-memory
slot to it, and its answer rebuilt and checked rather than trusted (`worker.decode.pool` runs them,
`worker.decode.child` is the process itself, `worker.decode.frames` the wire)."""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.decode.frames import read_frame, write_frame
from worker.decode.prepare import Prepared


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


class ChildDied(Exception):
    pass


CHILD_MODULE = "worker.decode.child"


SLOT_BYTES = 5 * 336 * 336 * 3  # five crops of the reference's size: every answer the worker asks for fits
PIPE_BYTES = 1 << 20  # job pipes: a camera JPEG goes through in a few writes, not one per 64 KB
F_SETPIPE_SZ = 1031  # Linux fcntl


class ChildProcess:
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
                raise ChildDied
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
            raise ChildDied from exc

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


def exit_status_of(child: ChildProcess) -> int | None:
    """The exit status of a child whose pipe closed (it is dying: wait briefly for it)."""
    try:
        return child.proc.wait(1.0)
    except subprocess.TimeoutExpired:
        return None


def answer_of(header: dict[str, Any], payload: bytes, job: DecodeJob, child: ChildProcess) -> Prepared:
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
