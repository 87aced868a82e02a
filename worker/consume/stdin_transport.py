"""The embedded default behind the transport contract: stdin in, one answer per line on stdout.

One partition ("stdin", 0) whose offsets are line numbers. Every line is a request, a blank one
too: it gets a dead letter (`empty`) as an empty Kafka message does. Verdicts and dead letters
share stdout, so each input line has exactly one output line there (in completion order; a
verdict carries its `id`, a dead letter its line as `source.offset`), and stderr holds only the
JSON log. A
reader thread fills a bounded queue, so the delivery loop never blocks on input and
SIGTERM or Ctrl-C are honoured while waiting for it; the queue bound and pausing keep
memory bounded however fast lines arrive. Writes are acknowledged as soon as they are
flushed, and there is nothing to commit.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import IO

from worker.consume.transport import Ack, DoneAck, Kind, Listener, Message, Partition, Position, Transport

PARTITION: Partition = ("stdin", 0)
READ_AHEAD = 1024
MAX_RECORD_BYTES = 16 * 1024 * 1024
MAX_LINE = 4 * 1024 * 1024


class StdinTransport(Transport):
    allows_paths = True
    max_record_bytes = MAX_RECORD_BYTES

    def __init__(self, stdin: IO[bytes], out: IO[str]) -> None:
        self._stdin = stdin
        self._out = out
        self._write_lock = threading.Lock()
        self._lines: queue.Queue[tuple[int, bytes] | None] = queue.Queue(READ_AHEAD)
        self._eof = False
        self._paused = False

    def start(self, listener: Listener) -> None:
        threading.Thread(target=self._read, name="stdin-reader", daemon=True).start()
        listener.on_assigned({PARTITION: None})

    def _read(self) -> None:
        """Lines from the raw descriptor: a daemon thread must not hold the interpreter's stdin buffer
        (Python aborts at exit if it does). A line longer than MAX_LINE is cut there (it is
        oversized anyway) and the rest of it skipped."""
        fd, pending, number, skipping = self._stdin.fileno(), b"", 0, False
        while chunk := os.read(fd, 1 << 16):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not skipping:
                    self._line(number, line)
                skipping = False
                number += 1
            if len(pending) > MAX_LINE and not skipping:
                self._line(number, pending[:MAX_LINE])
                pending, skipping = b"", True
            elif skipping:
                pending = b""
        if pending and not skipping:
            self._line(number, pending)
        self._lines.put(None)

    def _line(self, number: int, line: bytes) -> None:
        self._lines.put((number, line.rstrip(b"\r")))

    def poll(self, timeout_s: float) -> list[Message]:
        if self._paused or self._eof:
            time.sleep(timeout_s)
            return []
        out: list[Message] = []
        try:
            item = self._lines.get(timeout=timeout_s)
            while True:
                if item is None:
                    self._eof = True
                    break
                out.append(Message(PARTITION[0], PARTITION[1], item[0], None, item[1]))
                if len(out) >= READ_AHEAD:
                    break
                item = self._lines.get_nowait()
        except queue.Empty:
            pass
        return out

    def publish(self, kind: Kind, key: bytes, value: bytes) -> Ack:
        try:
            with self._write_lock:
                self._out.write(value.decode("utf-8") + "\n")
                self._out.flush()
        except (OSError, ValueError) as exc:  # a closed pipe: the record is not out, say so
            return DoneAck(exc)
        return DoneAck()

    def commit(self, positions: dict[Partition, Position], timeout_s: float) -> None:
        pass

    def pause(self, partitions: set[Partition]) -> None:
        self._paused = self._paused or PARTITION in partitions

    def resume(self, partitions: set[Partition]) -> None:
        self._paused = self._paused and PARTITION not in partitions

    def assignment(self) -> set[Partition]:
        return {PARTITION}

    def flush(self, timeout_s: float) -> None:
        pass

    def connected(self) -> bool:
        return True

    def exhausted(self) -> bool:
        return self._eof

    def close(self, timeout_s: float) -> None:
        pass
