"""The embedded default: requests from stdin, verdicts to stdout, dead letters to stderr.

Same pipeline as Kafka; lines may be JSON requests, bare URLs or (here only) local paths.
Reading stops while the pipeline holds `max_in_flight` requests, so memory stays bounded
however fast the input arrives.
"""

from __future__ import annotations

import json
import threading
import time
from typing import IO, Any

from worker.messages import Malformed, Request, Source, dead_letter, parse_request
from worker.metrics import Metrics
from worker.pipeline import Pipeline


class LineWriter:
    """Thread-safe JSON lines."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def __call__(self, _request: Request | None, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        with self.lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def run_local(pipeline: Pipeline, metrics: Metrics, *, max_in_flight: int, max_message_bytes: int,
              stop: threading.Event, stdin: IO[bytes], dead_letters: LineWriter) -> int:
    """Feed stdin to the pipeline until EOF (or stop), then wait for every verdict."""
    for number, line in enumerate(stdin):
        if stop.is_set():
            break
        if not line.strip():
            continue
        metrics.consumed.inc()
        source = Source("stdin", 0, number)
        try:
            request = parse_request(line.rstrip(b"\r\n"), source, max_message_bytes, allow_paths=True)
        except Malformed as exc:
            metrics.dead_letters.labels(exc.reason).inc()
            dead_letters(None, dead_letter(line, source, exc))
            continue
        while pipeline.in_flight >= max_in_flight and not stop.is_set():
            time.sleep(0.005)
        pipeline.submit(request)
    while pipeline.in_flight and not stop.is_set():
        time.sleep(0.01)
    return 0
