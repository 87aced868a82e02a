"""The in-memory PDQ index against brute force: what it must find, across its tail, delta and base."""

from __future__ import annotations

import numpy as np
import pytest

from worker.cache import pdq_index
from worker.cache.pdq_index import MATCH_DISTANCE, PdqIndex


def flipped(rng: np.random.Generator, code: np.ndarray, d: int) -> bytes:
    bits = np.unpackbits(code.copy())
    bits[rng.choice(256, d, replace=False)] ^= 1
    return np.packbits(bits).tobytes()


def brute_force(codes: np.ndarray, query: bytes) -> int:
    q = np.unpackbits(np.frombuffer(query, np.uint8))
    return int((np.unpackbits(codes, axis=1) != q).sum(axis=1).min())


def test_every_hash_within_23_is_found_and_distances_match_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """Added in pieces, so queries cross the base, the delta and the brute-forced tail."""
    monkeypatch.setattr(pdq_index, "TAIL_MAX", 1000)
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 256, (30_000, 32), dtype=np.uint8)
    index = PdqIndex(10**6)
    for start in range(0, len(codes), 7_000):
        index.add(codes[start : start + 7_000].tobytes(), expires_at=1e12)
        index.maintain(now=0)
    index.add(codes[:1].tobytes(), expires_at=1e12)  # a duplicate in the tail
    _, segments, tail = index.layout
    assert segments == 2 and tail > 0  # base, delta and a tail
    targets = rng.integers(0, len(codes), 300)
    distances = rng.integers(0, 24, 300)
    queries = [flipped(rng, codes[t], int(d)) for t, d in zip(targets, distances)]
    found, capped = index.search(queries)
    assert sum(capped) == 0
    for query, match in zip(queries, found):
        best = brute_force(codes, query)
        assert match is not None and match.distance == best
        assert brute_force(np.frombuffer(match.hash, np.uint8)[None, :], query) == best
    far = [flipped(rng, codes[t], MATCH_DISTANCE + 1) for t in targets[:50]]
    assert all(m is None for m in index.search(far)[0])


def test_expired_hashes_are_skipped_then_compacted_away() -> None:
    rng = np.random.default_rng(4)
    old = rng.integers(0, 256, (8_000, 32), dtype=np.uint8)
    new = rng.integers(0, 256, (5_000, 32), dtype=np.uint8)
    index = PdqIndex(10**6)
    index.add(old.tobytes(), expires_at=100)
    index.add(new.tobytes(), expires_at=200)
    index.maintain(now=50)
    assert len(index) == len(old) + len(new) and index.search([old[0].tobytes()])[0][0] is not None
    index.maintain(now=150)
    assert len(index) == 5_000
    assert index.search([old[0].tobytes()])[0][0] is None and index.search([new[0].tobytes()])[0][0] is not None
    assert index.layout[0] == 5_000  # over a quarter dead: rebuilt without them


def test_with_every_expiry_class_taken_no_hash_leaves_before_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 distinct expiry times for 256 classes: the later ones share classes, and each stays
    searchable until its own time at least, through rebuilds that free the dead classes."""
    monkeypatch.setattr(pdq_index, "TAIL_MAX", 50)
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    times = rng.permutation(np.arange(1, 301)).astype(float)
    index = PdqIndex(10**6)
    for code, at in zip(codes, times):
        index.add(code.tobytes(), expires_at=at)
    for now in (0, 100, 200, 250):
        index.maintain(now=now)
        found = index.search([c.tobytes() for c in codes])[0]
        assert all(m is not None and m.distance == 0 for m, at in zip(found, times) if at > now)
        assert len(index) >= int((times > now).sum())
    index.maintain(now=300)
    assert len(index) == 0 and all(m is None for m in index.search([c.tobytes() for c in codes])[0])


def test_a_crowded_bucket_neither_hides_its_hashes_nor_its_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    """70,000 hashes share word 3 (bucket 0 of its table), more than a directory group's 16-bit
    offsets could span: the table keeps at most 1,024 of them there (a lookup compares at most
    PER_BUCKET) and each is found through its other words; a hash in the next bucket, whose
    query is near in word 3 only, is found through that word."""
    monkeypatch.setattr(pdq_index, "TAIL_MAX", 100)
    rng = np.random.default_rng(6)
    codes = rng.integers(0, 256, (70_001, 32), dtype=np.uint8)
    codes[:-1, 12:16] = 0
    codes[-1, 12:16] = [0, 1, 0, 0]  # word 3 in bucket 1 (k = 16 at this size)
    index = PdqIndex(10**6)
    index.add(codes.tobytes(), expires_at=1e12)
    index.maintain(now=0)
    assert index.layout == (70_001, 1, 0) and pdq_index.directory_bits(70_001) == 16
    sample = codes[rng.choice(len(codes) - 1, 300, replace=False)]
    found, capped = index.search([c.tobytes() for c in sample])
    assert all(m is not None and m.hash == c.tobytes() and m.distance == 0 for m, c in zip(found, sample))
    assert all(capped)
    bits = np.unpackbits(codes[-1].copy())
    for word in (0, 1, 2, 4, 5, 6, 7):
        bits[32 * word + rng.choice(32, 3, replace=False)] ^= 1
    [match], _ = index.search([np.packbits(bits).tobytes()])
    assert match is not None and match.hash == codes[-1].tobytes() and match.distance == 21


def test_a_million_hashes_take_at_most_64_bytes_each() -> None:
    codes = np.random.default_rng(7).integers(0, 256, 10**6 * 32, dtype=np.uint8)
    index = PdqIndex(10**6)
    index.add(memoryview(codes), expires_at=1e12)
    index.maintain(now=0)
    assert index.layout == (10**6, 1, 0) and index.nbytes <= 64 * 10**6


def test_capacity_is_a_hard_bound() -> None:
    index = PdqIndex(capacity=10)
    assert index.add(bytes(32 * 8), 1e12) == 0
    assert index.add(bytes(32 * 5), 1e12) == 3
    assert len(index) == 10
