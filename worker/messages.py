"""The worker's message contract, versioned (SCHEMA_VERSION) and documented in the README.

Input value: a JSON object {"id": str, "url": str, "metadata": any?} or a bare http(s) URL
(id = "topic/partition/offset"). Anything else is malformed and goes to the dead-letter
topic with its raw bytes and a reason. Output: one verdict per request, keyed by id.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Source:
    """Where a message came from; the unit of offset tracking."""

    topic: str
    partition: int
    offset: int

    def ref(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass
class Request:
    id: str
    url: str
    source: Source
    metadata: Any = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    received: float = field(default_factory=time.monotonic)
    lease: int = 0  # the partition assignment it was consumed under; stale leases are not published


class Malformed(ValueError):
    """The message cannot become a request; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_request(value: bytes | None, source: Source, max_bytes: int, allow_paths: bool = False) -> Request:
    """A Request, or Malformed. Local paths are accepted only when `allow_paths` (stdin mode)."""
    if value is None or not value.strip():
        raise Malformed("empty", "message has no value")
    if len(value) > max_bytes:
        raise Malformed("oversized", f"{len(value)} bytes, over the limit of {max_bytes}")
    try:
        stripped = value.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise Malformed("not_utf8", "message is not UTF-8 text") from exc
    if not stripped.startswith(("{", "[", '"')):
        if stripped.startswith(("http://", "https://")) or (allow_paths and "://" not in stripped):
            return Request(id=source.ref(), url=stripped, source=source)
        raise Malformed("not_json", "neither a JSON object nor an http(s) URL")
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise Malformed("not_json", f"invalid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise Malformed("not_object", "JSON value is not an object")
    url = obj.get("url")
    if not isinstance(url, str) or not url.strip():
        raise Malformed("no_url", "object has no 'url' string")
    request_id = obj.get("id", source.ref())
    if not isinstance(request_id, str) or not request_id:
        raise Malformed("bad_id", "'id' must be a non-empty string")
    return Request(id=request_id, url=url.strip(), source=source, metadata=obj.get("metadata"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def verdict(
    request: Request,
    *,
    model: dict[str, str],
    threshold: float,
    status: str,
    logit: float | None = None,
    score: float | None = None,
    label: str | None = None,
    hashes: dict[str, Any] | None = None,
    cache: str = "miss",
    error: dict[str, str] | None = None,
    cache_match: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out = {
        "schema_version": SCHEMA_VERSION,
        "id": request.id,
        "url": request.url,
        "status": status,
        "label": label,
        "score": score,
        "logit": logit,
        "threshold": threshold,
        "model": model,
        "hashes": hashes or {"sha256": None, "pdq": None, "pdq_quality": None},
        "cache": cache,
        "error": error,
        "timings_ms": {k: round(v, 3) for k, v in request.timings_ms.items()},
        "processed_at": now_iso(),
        "metadata": request.metadata,
    }
    if cache_match is not None:
        out["cache_match"] = cache_match
    return out


def dead_letter(value: bytes | None, source: Source, error: Malformed) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "reason": error.reason,
        "detail": error.detail,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "raw_base64": base64.b64encode(value or b"").decode(),
        "received_at": now_iso(),
    }
