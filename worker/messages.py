"""The worker's message contract, versioned (SCHEMA_VERSION) and documented in the README.

Input value: a JSON object {"id": str, "url": str, "metadata": any?} or a bare http(s) URL
(id = "topic/partition/offset"). Anything else is malformed and goes to the dead-letter
topic with its raw bytes (cut to fit the producer's limit) and a reason. Output: one
verdict per request, keyed by id.

Parsing classifies every failure as `Malformed` (the json module also raises ValueError
for huge integers and RecursionError for deep nesting), and accepts only what can be
written back out: no NaN or infinities, no lone surrogates, bounded nesting. So every
record the worker builds from a request encodes as valid JSON in UTF-8.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from worker.records import DeadLetter, Failure, Hashes, ListMatch, ModelAnswer, NearMatch, Record, ShadowAnswer, Verdict

SCHEMA_VERSION = 4  # 2 added `provenance` and `label_reason` to verdicts, 3 `shadow`, 4 `models` and `assessment`; a version only ever adds fields
MAX_DEPTH = 64  # nesting levels accepted in a request (the verdict adds two around metadata)
MAX_DETAIL = 1000  # characters of a parse error kept in a dead letter
URL_KEPT_WHEN_COMPACT = 2048
COMPACT_RAW_BASE64 = 4096  # base64 characters (3 KiB of raw bytes) in a compact dead letter


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
        stripped = value.decode("utf-8").strip().lstrip("\ufeff")  # a byte-order mark some writers put first
    except UnicodeDecodeError as exc:
        raise Malformed("not_utf8", "message is not UTF-8 text") from exc
    if not stripped.startswith(("{", "[", '"')):
        if stripped.startswith(("http://", "https://")) or (allow_paths and "://" not in stripped):
            return Request(id=source.ref(), url=stripped, source=source)
        raise Malformed("not_json", "neither a JSON object nor an http(s) URL")
    obj = _loads(stripped)
    if not isinstance(obj, dict):
        raise Malformed("not_object", "JSON value is not an object")
    url = obj.get("url")
    if not isinstance(url, str) or not url.strip():
        raise Malformed("no_url", "object has no 'url' string")
    request_id = obj.get("id", source.ref())
    if not isinstance(request_id, str) or not request_id:
        raise Malformed("bad_id", "'id' must be a non-empty string")
    return Request(id=request_id, url=url.strip(), source=source, metadata=obj.get("metadata"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _loads(text: str) -> Any:
    """json.loads that raises only Malformed, and only returns what encodes back to UTF-8 JSON."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise Malformed("too_deep", "JSON nesting too deep to parse") from exc
    except ValueError as exc:  # JSONDecodeError, over-long integers, NaN/Infinity, float overflow
        raise Malformed("not_json", f"invalid JSON: {str(exc)[:MAX_DETAIL]}") from exc
    _check_tree(obj)
    return obj


def _check_tree(obj: Any) -> None:
    """Nesting depth and lone surrogates (valid JSON escapes, not valid Unicode), without recursion."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Malformed("too_deep", f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, dict):
            for key, item in node.items():
                _check_text(key)
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Malformed("invalid_unicode", f"string holds a lone surrogate at index {exc.start}") from exc


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
    hashes: Hashes | None = None,
    cache: str = "miss",
    error: Failure | None = None,
    cache_match: NearMatch | None = None,
    provenance: dict[str, Any] | None = None,
    label_reason: str | None = None,
    near_duplicate_search: str | None = None,
    shadow: ShadowAnswer | None = None,
    hash_list_match: ListMatch | None = None,
    models: list[ModelAnswer] | None = None,
    assessment: str | None = None,
) -> Verdict:
    """A verdict record (schema/verdict.v4.schema.json). `models` and `assessment` only when an
    ensemble scored the image (worker.pipeline.ensemble). `label_reason` is set only when a
    provenance policy, not the model, decided the label; `near_duplicate_search` only when the
    image was not compared with cached AI hashes ("not_searched": the index was loading);
    `shadow` only on misses the shadow model scored; `hash_list_match` only for a near-duplicate of
    a hash an imported list holds."""
    out: Verdict = {
        "schema_version": SCHEMA_VERSION,
        "id": request.id,
        "url": request.url,
        "status": status,
        "label": label,
        "label_reason": label_reason,
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
        "provenance": provenance,
    }
    if cache_match is not None:
        out["cache_match"] = cache_match
    if near_duplicate_search is not None:
        out["near_duplicate_search"] = near_duplicate_search
    if shadow is not None:
        out["shadow"] = shadow
    if hash_list_match is not None:
        out["hash_list_match"] = hash_list_match
    if models is not None:
        out["models"], out["assessment"] = models, assessment
    return out


def encode_record(record: Record, limit: int, compact: bool = False) -> bytes:
    """UTF-8 JSON of a record, at most `limit` bytes.

    A record over the limit, or one the broker refused for its size (`compact`), is sent in
    its compact form (`compact_record`) rather than not at all. Parsing already rejected
    everything JSON cannot carry, so encoding itself does not fail.
    """
    if not compact:
        blob = _dumps(record)
        if len(blob) <= limit:
            return blob
    blob = _dumps(compact_record(record))
    if len(blob) > limit:
        raise ValueError(f"record of {len(blob)} bytes is over {limit} even in its compact form")
    return blob


def compact_record(record: Record) -> Record:
    """A verdict without `metadata` and with the URL cut, or a dead letter with 3 KiB of its raw bytes."""
    if "raw_base64" in record:
        return {**record, "raw_base64": record["raw_base64"][:COMPACT_RAW_BASE64], "raw_truncated": True}
    return {**record, "metadata": None, "truncated": True, "url": record["url"][:URL_KEPT_WHEN_COMPACT]}


def _dumps(record: Record) -> bytes:
    return json.dumps(record, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def dead_letter(value: bytes | None, source: Source, error: Malformed, limit: int) -> DeadLetter:
    """The dead-letter record: the raw bytes as base64, cut so the record stays under `limit` bytes.

    `raw_size` and `raw_sha256` describe the whole message either way, so an operator can
    match a truncated letter with the original still on the input topic.
    """
    raw = value or b""
    detail = error.detail[:MAX_DETAIL]
    keep = max(0, (limit - 1024 - 6 * len(detail)) * 3 // 4)  # JSON may escape each detail character to 6 bytes
    return {
        "schema_version": SCHEMA_VERSION,
        "reason": error.reason,
        "detail": detail,
        "source": {"topic": source.topic, "partition": source.partition, "offset": source.offset},
        "raw_base64": base64.b64encode(raw[:keep]).decode(),
        "raw_size": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_truncated": len(raw) > keep,
        "received_at": now_iso(),
    }
