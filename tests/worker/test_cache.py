"""The verdict cache on both stores: memory, and a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import RedisServer
from worker.cache import CachedVerdict, Key, VerdictCache, slot_values
from worker.cache_store import MemoryStore, RedisStore, Store

A = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def flip(pdq: str, bits: list[int]) -> str:
    value = int(pdq, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


def cached(label: str, sha: str = "s-a", pdq: str = A) -> CachedVerdict:
    return CachedVerdict(1.5 if label == "ai_generated" else -1.5, 0.8, label, sha, pdq, 100)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server = RedisServer()
    server.start()
    try:
        yield RedisStore(server.url)
    finally:
        server.stop()


def test_exact_hits_return_any_label(store: Store) -> None:
    cache = VerdictCache(store, "m1", 60)
    cache.store_many([(Key("s-a", A, 100), cached("real"))])
    [hit] = cache.lookup_exact_many(["s-a"])
    assert hit.kind == "exact" and hit.verdict.label == "real"


def test_near_duplicates_propagate_only_ai_generated(store: Store) -> None:
    cache = VerdictCache(store, "m1", 60)
    real_pdq, ai_pdq = A, flip(A, [255, 254, 253])
    cache.store_many([(Key("s-real", real_pdq, 100), cached("real", "s-real", real_pdq))])
    [miss] = cache.lookup_near_many([Key("other", flip(real_pdq, [0]), 100)])
    assert miss.kind == "miss"  # a near-twin of a "real" image is never served from cache
    cache.store_many([(Key("s-ai", ai_pdq, 100), cached("ai_generated", "s-ai", ai_pdq))])
    # 31 differing bits packed into two slots still match; 32 spread over every slot do not.
    packed = flip(ai_pdq, list(range(31)))
    spread = flip(ai_pdq, [slot * 16 + b for slot in range(16) for b in (0, 1)])
    found, too_far, low_quality = cache.lookup_near_many([Key("x1", packed, 90), Key("x2", spread, 90), Key("x3", packed, 49)])
    assert found.kind == "near_duplicate" and found.distance == 31 and found.verdict.sha256 == "s-ai"
    assert too_far.kind == "miss" and low_quality.kind == "miss"


def test_low_quality_hashes_are_not_indexed_and_versions_are_separate(store: Store) -> None:
    cache = VerdictCache(store, "m1", 60)
    cache.store_many([(Key("s-low", A, 30), cached("ai_generated", "s-low"))])
    assert cache.lookup_near_many([Key("other", A, 100)])[0].kind == "miss"
    assert cache.lookup_exact_many(["s-low"])[0].kind == "exact"
    assert VerdictCache(store, "m2", 60).lookup_exact_many(["s-low"])[0].kind == "miss"


def test_store_failure_degrades_to_misses_then_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer()
    server.start()
    errors: list[Exception] = []
    cache = VerdictCache(RedisStore(server.url, timeout_s=0.5), "m1", 60, on_error=errors.append)
    try:
        cache.store_many([(Key("s-a", A, 100), cached("real"))])
        server.kill()
        assert cache.lookup_exact_many(["s-a"])[0].kind == "miss" and len(errors) == 1
        assert cache.lookup_exact_many(["s-a"])[0].kind == "miss" and len(errors) == 1  # backing off, not retrying
        server.start()
        monkeypatch.setattr("worker.cache.time.monotonic", lambda: float("inf"))  # the back-off has passed
        cache.store_many([(Key("s-b", A, 100), cached("real", "s-b"))])
        assert cache.lookup_exact_many(["s-b"])[0].kind == "exact"
    finally:
        server.stop()


def test_model_scored_matches_are_untrusted_until_an_operator_confirms_them(store: Store) -> None:
    cache = VerdictCache(store, "m1", 60)
    cache.store_many([(Key("s-ai", A, 100), cached("ai_generated", "s-ai")), (Key("s-real", flip(A, [200]), 100), cached("real", "s-real"))])
    [found] = cache.lookup_near_many([Key("victim", flip(A, [1, 2, 3]), 100)])
    assert found.kind == "near_duplicate" and found.verdict.trusted is False
    assert cache.trust(["s-ai", "s-real", "s-unknown"]) == {"s-ai": "trusted", "s-real": "not_ai", "s-unknown": "not_cached"}
    [found] = cache.lookup_near_many([Key("victim", flip(A, [1, 2, 3]), 100)])
    assert found.verdict.trusted is True and found.verdict.sha256 == "s-ai"
    assert cache.lookup_exact_many(["s-ai"])[0].verdict.trusted is True


def test_a_flooded_slot_is_capped_on_write_and_sampled_on_read(store: Store) -> None:
    """5,000 AI hashes share slot 0's value: the slot set stops at MAX_SLOT_MEMBERS, a lookup reads
    at most MAX_READ_PER_KEY of it, and a real near-duplicate is still found through its other slots."""
    import random

    from worker.cache import MAX_READ_PER_KEY, MAX_SLOT_MEMBERS

    capped: list[tuple[str, int]] = []
    cache = VerdictCache(store, "m1", 60, on_capped=lambda where, n: capped.append((where, n)))
    rng = random.Random(1)
    flood = [A[:4] + "".join(rng.choice("0123456789abcdef") for _ in range(60)) for _ in range(5000)]
    for start in range(0, len(flood), 1000):
        cache.store_many([(Key(f"f{start + i}", h, 100), cached("ai_generated", f"f{start + i}", h))
                          for i, h in enumerate(flood[start : start + 1000])])
    written = sum(n for where, n in capped if where == "write")
    assert written >= len(flood) - MAX_SLOT_MEMBERS - 1000  # per batch, Redis checks sizes before adding
    [(members, _)] = store.sample_neighbourhoods(cache.slot_prefix, [slot_values(A)], 10_000)  # slot 0's set, and few more
    assert MAX_SLOT_MEMBERS <= len(members) <= MAX_SLOT_MEMBERS + 1000 + 272

    cache.store_many([(Key("s-ai", A, 100), cached("ai_generated", "s-ai"))])
    capped.clear()
    [found] = cache.lookup_near_many([Key("victim", flip(A, [0, 1]), 100)])  # slot 15 differs, slot 0 is the flooded one
    assert found.kind == "near_duplicate" and found.verdict.sha256 == "s-ai"
    assert ("read", 1) in capped
    [(sampled, _)] = store.sample_neighbourhoods(cache.slot_prefix, [slot_values(A)], MAX_READ_PER_KEY)
    assert len(sampled) <= 272 * MAX_READ_PER_KEY


def test_both_stores_sample_the_same_neighbourhood(store: Store) -> None:
    """The Redis script names a neighbourhood's keys itself: it must name exactly the sets the
    cache writes (`slot_key`), as the in-memory store does: each slot's value and its 16 one-bit
    neighbours, nothing further."""
    from worker.cache_store import neighbourhood

    base = [0x1234 + slot for slot in range(16)]
    near = neighbourhood("p:", base)
    assert len(near) == 272 and len(set(near)) == 272
    members = [(key, f"m{i}") for i, key in enumerate(near)]
    two_bits = [(f"p:{slot}:{base[slot] ^ 0b11:04x}", f"far{slot}") for slot in range(16)]
    assert store.add_members(members + two_bits, 60, 10) == 0
    [(found, capped)] = store.sample_neighbourhoods("p:", [base], 5)
    assert found == {m for _, m in members} and capped == 0
