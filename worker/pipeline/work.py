"""One request on its way through the pipeline's stages, what each stage learned about it, and the
requests still open (submitted, neither resolved nor cancelled)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from worker.cache.verdicts import Key
from worker.decode.prepare import Prepared
from worker.messages import Request
from worker.pipeline.completion import Completion
from worker.records import Hashes, ListMatch, NearMatch, ShadowAnswer


@dataclass
class Work:
    request: Request
    completion: Completion
    data: bytes | None = None
    sha256: str = ""
    prepared: Prepared | None = None
    queued_at: float = 0.0
    held: int = 0
    release: Callable[[], None] = field(default=lambda: None)
    match: NearMatch | None = None  # a near-duplicate reported beside the model's own verdict
    near_unsearched: bool = False  # the near-duplicate index was still loading: say so rather than "no match"
    shadow: ShadowAnswer | None = None  # the shadow model's answer (sampled misses only)
    list_match: ListMatch | None = None  # a near-duplicate of a hash an imported list holds

    @property
    def done(self) -> bool:
        """Resolved or cancelled (its partition was revoked): no stage should spend more on it."""
        return self.completion.done

    @property
    def lane(self) -> Hashable:
        """Its partition: fetch slots are shared fairly among lanes."""
        return (self.request.source.topic, self.request.source.partition)

    @property
    def provenance(self) -> dict[str, Any] | None:
        """This request's own bytes' provenance (never another file's)."""
        return self.prepared.provenance if self.prepared is not None else None

    @property
    def key(self) -> Key:
        assert self.prepared is not None
        return Key(self.sha256, self.prepared.pdq, self.prepared.pdq_quality)

    @property
    def hashes(self) -> Hashes:
        prepared = self.prepared
        out: Hashes = {"sha256": self.sha256 or None, "pdq": prepared.pdq if prepared else None,
                               "pdq_quality": prepared.pdq_quality if prepared else None}
        if prepared is not None and prepared.pdq_error is not None:
            out["pdq_error"] = prepared.pdq_error
        return out


class OpenRequests:
    """Completions not yet ended: counted (`on_count`, delivery's in-flight figure) and cancelled at close."""

    def __init__(self, on_count: Callable[[int], object]) -> None:
        self._open: set[Completion] = set()
        self._lock = threading.Lock()
        self._on_count = on_count

    def add(self, completion: Completion) -> None:
        with self._lock:
            self._open.add(completion)
            self._on_count(len(self._open))

    def discard(self, completion: Completion) -> None:
        with self._lock:
            self._open.discard(completion)
            self._on_count(len(self._open))

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def cancel_all(self) -> None:
        with self._lock:
            left = list(self._open)
        for completion in left:
            completion.cancel()
