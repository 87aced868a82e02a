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

Near-duplicate search is an in-memory index in each process (`worker.cache.near_index`), fed from a
log in the store that every worker appends its indexed hashes to: lookups cost no round trip
but the one that fetches a match's verdict, and the store holds nothing that grows with lookups.
Keys are namespaced by model version and expire after the TTL; a match whose verdict entry has
expired is no match.

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

from engine.model.labels import AI_GENERATED
from worker.cache.keys import Keys
from worker.cache.near_index import NearIndex
from worker.cache.stores import Store
from worker.records import ModelAnswer

MIN_QUALITY = 50
RETRY_AFTER_S = 2.0
INDEX_CAPACITY = 20_000_000  # hashes a process indexes (~63 bytes each) unless told otherwise

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
    models: list[ModelAnswer] | None = None  # with an ensemble: each model's answer (worker.pipeline.ensemble)
    assessment: str | None = None  # with an ensemble: real, suspicious or ai_generated


@dataclass(frozen=True)
class Lookup:
    kind: str  # "miss", "exact", "near_duplicate", "hash_list", or "not_searched" (the near-duplicate index was loading)
    verdict: CachedVerdict | None = None
    distance: int | None = None
    source: str | None = None  # "hash_list": the list that holds the matching hash


@dataclass(frozen=True)
class Key:
    """What a request is looked up and stored by."""

    sha256: str
    pdq: str | None
    pdq_quality: int | None

    @property
    def searchable(self) -> bool:
        return self.pdq is not None and (self.pdq_quality or 0) >= MIN_QUALITY


class VerdictCache:
    def __init__(self, store: Store, namespace: str, ttl_s: int, on_error: Callable[[Exception], None] = lambda e: None,
                 on_capped: Callable[[str, int], None] = lambda _where, _n: None, index_capacity: int = INDEX_CAPACITY) -> None:
        self.store = store
        self.keys = Keys(namespace)
        self.ttl_s = ttl_s
        self.on_error = on_error
        self.on_capped = on_capped  # ("read" | "write", how many) when a bound left hashes out
        self.index = NearIndex(store, self.keys, ttl_s, index_capacity, on_refused=lambda n: on_capped("write", n),
                               on_error=on_error)
        self._down_until = 0.0

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
            raw = self.store.get_many([self.keys.verdict(sha) for sha in shas])
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
        answer = self.index.search([bytes.fromhex(pdq) for _, pdq in searching])
        if answer is None:
            for i, _ in searching:
                results[i] = Lookup("not_searched")
            return results
        matches, capped = answer
        if sum(capped):
            self.on_capped("read", sum(capped))
        best = {i: m for (i, _), m in zip(searching, matches) if m is not None}
        if best:
            found = self.store.get_many([k for m in best.values() for k in (self.keys.listed(m.hash.hex()), self.keys.indexed(m.hash.hex()))])
            for n, (i, m) in enumerate(best.items()):
                listed, blob = found[2 * n], found[2 * n + 1]
                cached = _decode(blob) if blob is not None else None
                if listed is not None:  # an imported list's word outranks a model's
                    results[i] = Lookup("hash_list", None, m.distance, json.loads(listed)["source"])
                elif cached is not None and cached.label == AI_GENERATED:  # the laundering rule, enforced on read too
                    results[i] = Lookup("near_duplicate", cached, m.distance)
        return results

    def _index(self, items: Sequence[tuple[Key, CachedVerdict]]) -> None:
        """Write verdicts by SHA-256; publish the AI ones' PDQ hashes to every worker's index."""
        blobs = [(self.keys.verdict(k.sha256), _encode(v)) for k, v in items]
        indexed = [(k.pdq, v) for k, v in items if v.label == AI_GENERATED and k.searchable and k.pdq is not None]
        blobs += [(self.keys.indexed(pdq), _encode(replace(v, provenance=None))) for pdq, v in indexed]
        self.store.set_many(blobs, self.ttl_s)
        hashes = [bytes.fromhex(pdq) for pdq, _ in indexed]
        if hashes:
            self.index.publish(hashes)

    def store_many(self, items: Sequence[tuple[Key, CachedVerdict]]) -> None:
        if not items or not self.available:
            return
        try:
            self._index(items)
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)

    def import_list(self, source: str, hashes: Sequence[str]) -> int:
        """Index PDQ hashes (lowercase hex) of a list of known AI-generated images, attributed to `source`;
        raises if the store fails. Returns how many were new to the source: the list's own key records
        those (for `remove_list`), and the registry of lists counts them (`list_counts`)."""
        added = 0
        for start in range(0, len(hashes), 10_000):
            chunk = hashes[start : start + 10_000]
            keys = [self.keys.listed(h) for h in chunk]
            new = [h for h, v in zip(chunk, self.store.get_many(keys)) if v is None or json.loads(v)["source"] != source]
            self.store.set_many([(k, json.dumps({"source": source}).encode()) for k in keys], self.ttl_s)  # refreshes the TTL of all
            if new:
                self.store.append_many([(self.keys.list(source), b"".join(bytes.fromhex(h) for h in new))],
                                       int(time.time()) + self.ttl_s)
                self.index.publish([bytes.fromhex(h) for h in new])
            added += len(new)
        counts = self.list_counts()
        self.store.set_many([(self.keys.lists, json.dumps({**counts, source: counts.get(source, 0) + added}).encode())], self.ttl_s)
        return added

    def list_counts(self) -> dict[str, int]:
        """Entries each imported list holds (the registry `import_list` and `remove_list` keep)."""
        [blob] = self.store.get_many([self.keys.lists])
        return {str(k): int(v) for k, v in json.loads(blob).items()} if blob is not None else {}

    def remove_list(self, source: str) -> int:
        """Delete the entries `source` imported (those another list imported since keep theirs); how many."""
        key = self.keys.list(source)
        [length] = self.store.lengths([key])
        removed = 0
        for start in range(0, length, 32 * 10_000):
            [blob] = self.store.read_ranges([(key, start, min(length, start + 32 * 10_000))])
            keys = list(dict.fromkeys(self.keys.listed(blob[i : i + 32].hex()) for i in range(0, len(blob) - 31, 32)))
            owned = [k for k, v in zip(keys, self.store.get_many(keys)) if v is not None and json.loads(v)["source"] == source]
            self.store.delete_many(owned)
            removed += len(owned)
        self.store.delete_many([key])
        counts = self.list_counts()
        counts.pop(source, None)
        self.store.set_many([(self.keys.lists, json.dumps(counts).encode())], self.ttl_s)
        return removed

    def trust(self, shas: Sequence[str]) -> dict[str, str]:
        """Mark cached "ai_generated" verdicts (by SHA-256) as operator-confirmed; raises if the store fails.

        Returns, per SHA-256, what happened: "trusted", "not_cached", "not_ai" or "no_hash"."""
        outcome: dict[str, str] = {}
        confirmed: list[tuple[Key, CachedVerdict]] = []
        for sha, blob in zip(shas, self.store.get_many([self.keys.verdict(sha) for sha in shas])):
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
