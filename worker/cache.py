"""The verdict cache, and the rule that keeps it from laundering AI images.

Exact hits are keyed by the SHA-256 of the image bytes and may return any verdict.
Near-duplicates are found by PDQ hash, and only ever match "ai_generated" entries: an image
and its VAE-reconstructed twin have nearly the same PDQ hash, and that twin is exactly the
fake DDA exists to catch, so a perceptual match must never hand out "real". Hashes with
PDQ quality below 50 are neither indexed nor searched (Meta's guidance).

A match is evidence, not a verdict: anyone can upload a heavily noised copy of another
user's photo, have the model call the copy "ai_generated" and so plant an entry within a few
bits of the original. So a match carries whether its entry is trusted (an operator confirmed
it: `dda trust-verdicts`), and only the pipeline's policy decides whether a trusted match may
answer without scoring; model-scored entries never do.

Lookups are bounded whatever the index holds: a slot set takes at most MAX_SLOT_MEMBERS
hashes (more are not indexed there, counted), and a lookup reads at most MAX_READ_PER_KEY
members of each of its 272 keys (counted when a key had more), so flooding one slot with
hashes costs an attacker their uploads and the worker a bounded amount of work.

Radius search without a vector database: the 256-bit hash is cut into 16 slots of 16
bits. Two hashes within Hamming distance 31 share at least one slot within distance 1
(if every slot differed in 2 bits or more, the total would be at least 32), so a query
unions the index sets of each slot's value and its 16 one-bit neighbours (272 keys, one
pipelined round trip per batch), then checks real distances. Keys are namespaced by
model version and expire after the TTL.

If the store fails (Redis down), the cache reports misses and skips writes, counts the
error, and tries the store again after a back-off: verdicts keep flowing, uncached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import structlog

from engine.labels import AI_GENERATED
from worker.cache_store import Store, slot_key
from worker.hashing import hamming

SLOTS = 16
SLOT_HEX = 4  # 16 bits
MATCH_DISTANCE = 31
MIN_QUALITY = 50
RETRY_AFTER_S = 2.0
MAX_SLOT_MEMBERS = 256  # ~15 per slot value at a million cached AI hashes
MAX_READ_PER_KEY = 32

log = structlog.get_logger("dda.cache")


@dataclass(frozen=True)
class CachedVerdict:
    logit: float
    score: float
    label: str
    sha256: str
    pdq: str | None
    pdq_quality: int | None
    trusted: bool = False  # confirmed by an operator; only such entries may answer near-duplicates unscored
    provenance: dict[str, Any] | None = None  # of these exact bytes: exact hits carry it, near-duplicate entries never do


@dataclass(frozen=True)
class Lookup:
    kind: str  # "miss", "exact" or "near_duplicate"
    verdict: CachedVerdict | None = None
    distance: int | None = None


@dataclass(frozen=True)
class Key:
    """What a request is looked up and stored by."""

    sha256: str
    pdq: str | None
    pdq_quality: int | None

    @property
    def searchable(self) -> bool:
        return self.pdq is not None and (self.pdq_quality or 0) >= MIN_QUALITY


def namespace_for(version: str, threshold: float) -> str:
    """Keys per model version and threshold: cached labels must not outlive a recalibration."""
    return f"{version}-t{threshold!r}"


def slot_values(pdq: str) -> list[int]:
    return [int(pdq[i * SLOT_HEX : (i + 1) * SLOT_HEX], 16) for i in range(SLOTS)]


class VerdictCache:
    def __init__(self, store: Store, namespace: str, ttl_s: int, on_error: Callable[[Exception], None] = lambda e: None,
                 on_capped: Callable[[str, int], None] = lambda _where, _n: None) -> None:
        self.store = store
        self.prefix = f"dda:{namespace}:"
        self.ttl_s = ttl_s
        self.on_error = on_error
        self.on_capped = on_capped  # ("read" | "write", how many) when a bound left hashes out
        self._down_until = 0.0

    @property
    def slot_prefix(self) -> str:
        """Slot sets' keys: this prefix, then `worker.cache_store.slot_key`'s slot:value."""
        return f"{self.prefix}pdq:"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER_S
        log.warning("verdict cache unavailable, continuing uncached", error=str(exc), retry_in_s=RETRY_AFTER_S)
        self.on_error(exc)

    def _guarded(self, default: list[Lookup], lookup: Callable[[], list[Lookup]]) -> list[Lookup]:
        if not default or not self.available:
            return default
        try:
            return lookup()
        except Exception as exc:  # noqa: BLE001 - any store failure degrades to uncached
            self._failed(exc)
            return default

    def lookup_exact_many(self, shas: Sequence[str]) -> list[Lookup]:
        """By SHA-256 of the bytes: needs no decoding, so it runs before any."""
        def lookup() -> list[Lookup]:
            raw = self.store.get_many([f"{self.prefix}sha:{sha}" for sha in shas])
            return [Lookup("exact", _decode(r)) if r is not None else Lookup("miss") for r in raw]

        return self._guarded([Lookup("miss")] * len(shas), lookup)

    def lookup_near_many(self, keys: Sequence[Key]) -> list[Lookup]:
        """By PDQ within distance 31, "ai_generated" verdicts only; low-quality hashes never match."""
        return self._guarded([Lookup("miss")] * len(keys), lambda: self._near(keys))

    def _near(self, keys: Sequence[Key]) -> list[Lookup]:
        results = [Lookup("miss")] * len(keys)
        searching = [(i, k.pdq) for i, k in enumerate(keys) if k.searchable and k.pdq is not None]
        if not searching:
            return results
        groups = self.store.sample_neighbourhoods(self.slot_prefix, [slot_values(pdq) for _, pdq in searching], MAX_READ_PER_KEY)
        best: dict[int, tuple[int, str]] = {}
        for (i, pdq), (members, capped) in zip(searching, groups):
            if capped:
                self.on_capped("read", capped)
            scored = [(hamming(pdq, m), m) for m in members]
            close = [s for s in scored if s[0] <= MATCH_DISTANCE]
            if close:
                best[i] = min(close)
        if best:
            found = self.store.get_many([f"{self.prefix}pdqv:{pdq}" for _, pdq in best.values()])
            for (i, (distance, _)), blob in zip(best.items(), found):
                cached = _decode(blob) if blob is not None else None
                if cached is not None and cached.label == AI_GENERATED:  # the laundering rule, enforced on read too
                    results[i] = Lookup("near_duplicate", cached, distance)
        return results

    def _index(self, items: Sequence[tuple[Key, CachedVerdict]]) -> None:
        """Write verdicts by SHA-256 and index the AI ones by PDQ slot, within MAX_SLOT_MEMBERS."""
        blobs = [(f"{self.prefix}sha:{k.sha256}", _encode(v)) for k, v in items]
        indexed = [(k, v) for k, v in items if v.label == AI_GENERATED and k.searchable]
        blobs += [(f"{self.prefix}pdqv:{k.pdq}", _encode(replace(v, provenance=None))) for k, v in indexed]
        self.store.set_many(blobs, self.ttl_s)
        members = [(slot_key(self.slot_prefix, slot, value), pdq) for k, _ in indexed if (pdq := k.pdq) is not None
                   for slot, value in enumerate(slot_values(pdq))]
        if members:
            refused = self.store.add_members(members, self.ttl_s, MAX_SLOT_MEMBERS)
            if refused:
                self.on_capped("write", refused)

    def store_many(self, items: Sequence[tuple[Key, CachedVerdict]]) -> None:
        if not items or not self.available:
            return
        try:
            self._index(items)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def trust(self, shas: Sequence[str]) -> dict[str, str]:
        """Mark cached "ai_generated" verdicts (by SHA-256) as operator-confirmed; raises if the store fails.

        Returns, per SHA-256, what happened: "trusted", "not_cached", "not_ai" or "no_hash"."""
        outcome: dict[str, str] = {}
        confirmed: list[tuple[Key, CachedVerdict]] = []
        for sha, blob in zip(shas, self.store.get_many([f"{self.prefix}sha:{sha}" for sha in shas])):
            cached = _decode(blob) if blob is not None else None
            if cached is None:
                outcome[sha] = "not_cached"
            elif cached.label != AI_GENERATED:
                outcome[sha] = "not_ai"
            else:
                key = Key(sha, cached.pdq, cached.pdq_quality)
                outcome[sha] = "trusted" if key.searchable else "no_hash"
                confirmed.append((key, replace(cached, trusted=True)))
        self._index(confirmed)
        return outcome


def _encode(v: CachedVerdict) -> bytes:
    return json.dumps(asdict(v)).encode()


_FIELDS = frozenset(f.name for f in fields(CachedVerdict))


def _decode(blob: bytes) -> CachedVerdict:
    """Entries written before a field existed get its default (no provenance: not read); fields a
    newer version wrote are ignored, so workers of two versions can share a cache during a rollout."""
    return CachedVerdict(**{k: v for k, v in json.loads(blob).items() if k in _FIELDS})
