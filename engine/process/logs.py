"""JSON log lines on stderr, one format for every process of a worker (pod, consumers, engine).

stdout is reserved for verdicts in the embedded mode, and a log pipeline parses stderr, so
every line there is one JSON object with `event`, `level` and an ISO-8601 UTC `timestamp`.
Libraries' own records (kafka-python, redis, httpx) go through the same renderer at WARNING
and above, with their logger's name. A library that retries in a loop (kafka-python against
a broker that lost its state wrote ~4,200 lines in 2 minutes) is rate-limited per message:
a few lines per minute, then one line saying how many were held back.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import structlog

LEVELS = ("debug", "info", "warning", "error")  # what every process of the worker accepts as its log level
REPEATS_PER_WINDOW = 5
WINDOW_S = 60.0


class RepeatLimiter(logging.Filter):
    """Passes at most `limit` records at WARNING or above with the same logger, level and
    message per window; the first one after a window in which some were held back carries
    `suppressed_before` (how many). Records below WARNING (a line per batch) all pass."""

    def __init__(self, limit: int = REPEATS_PER_WINDOW, window_s: float = WINDOW_S) -> None:
        super().__init__()
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[tuple[str, int, str], tuple[float, int, int]] = {}  # key -> (window start, passed, held)
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.msg.get("event") if isinstance(record.msg, dict) else record.msg  # structlog's or a template
        key = (record.name, record.levelno, str(message))
        now = time.monotonic()
        with self._lock:
            start, passed, held = self._seen.get(key, (now, 0, 0))
            if now - start >= self.window_s:
                if held:
                    if isinstance(record.msg, dict):
                        record.msg["suppressed_before"] = held
                    else:
                        record.suppressed_before = held
                self._seen[key] = (now, 1, 0)
                return True
            if passed < self.limit:
                self._seen[key] = (start, passed + 1, held)
                return True
            self._seen[key] = (start, passed, held + 1)
            if len(self._seen) > 10_000:  # templates are a bounded set; this only guards against a leak
                self._seen.clear()
            return False


def configure_logging(level: str = "info", **bound: object) -> None:
    """Every record (structlog's and the standard library's) to stderr as one JSON line,
    through one handler and its RepeatLimiter; `bound` fields (e.g. the process's role) go
    on every line. The project's loggers ("dda.*") log at `level`, libraries at WARNING."""
    numeric = getattr(logging, level.upper())
    shared: list[structlog.typing.Processor] = [structlog.processors.add_log_level,
                                                structlog.processors.TimeStamper(fmt="iso", utc=True)]
    if bound:
        shared.append(lambda _logger, _name, event: {**bound, **event})
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RepeatLimiter())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer()],
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, structlog.stdlib.ExtraAdder()]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("dda").setLevel(numeric)
    logging.captureWarnings(True)  # Python warnings too, as JSON from the "py.warnings" logger
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
