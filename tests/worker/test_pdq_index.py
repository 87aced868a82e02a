"""The in-memory PDQ index against brute force: what it must find, across its tail, delta and base."""

from __future__ import annotations

import numpy as np
import pytest

from worker import pdq_index
from worker.pdq_index import MATCH_DISTANCE, PdqIndex


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


def test_expired_blocks_are_skipped_then_compacted_away() -> None:
    """Expiry goes by whole blocks of ids, each at its latest entry's time (an entry may outlive its
    time by sharing a block, never leave early): here the old hashes fill two blocks exactly."""
    rng = np.random.default_rng(4)
    old = rng.integers(0, 256, (2 * pdq_index.EXPIRY_BLOCK, 32), dtype=np.uint8)
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


def test_capacity_is_a_hard_bound() -> None:
    index = PdqIndex(capacity=10)
    assert index.add(bytes(32 * 8), 1e12) == 0
    assert index.add(bytes(32 * 5), 1e12) == 3
    assert len(index) == 10
