"""The verdict cache on every store: memory, a real redis-server, and a real three-node Redis Cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import RedisClusterServers, RedisServer
from worker.cache.stores import MemoryStore, RedisStore, Store
from worker.cache.verdicts import CachedVerdict, Key, VerdictCache

A = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def flip(pdq: str, bits: list[int]) -> str:
    value = int(pdq, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


def cached(label: str, sha: str = "s-a", pdq: str = A) -> CachedVerdict:
    return CachedVerdict(1.5 if label == "ai_generated" else -1.5, 0.8, label, sha, pdq, 100)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "cluster":
        servers = request.getfixturevalue("cluster")
        client = RedisStore(servers.url, cluster=True)
        client.client.flushall()
        yield client
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
        monkeypatch.setattr("worker.cache.verdicts.time.monotonic", lambda: float("inf"))  # the back-off has passed
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


def test_a_flooded_region_bounds_lookups_and_the_index_its_size(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """2,000 AI hashes share A's first 32-bit word: a lookup compares at most PER_BUCKET of that
    bucket (counted as "read") and still finds A's true near-duplicate through its other words;
    an index at capacity refuses more hashes (counted as "write")."""
    import random

    monkeypatch.setattr("worker.cache.pdq_index.TAIL_MAX", 100)  # into the tables, not the brute-forced tail

    from worker.cache.pdq_index import PER_BUCKET

    capped: list[tuple[str, int]] = []
    cache = VerdictCache(store, "m1", 60, on_capped=lambda where, n: capped.append((where, n)), index_capacity=2100)
    rng = random.Random(1)
    flood = [A[:8] + "".join(rng.choice("0123456789abcdef") for _ in range(56)) for _ in range(2000)]
    assert PER_BUCKET < len(flood)
    for start in range(0, len(flood), 1000):
        cache.store_many([(Key(f"f{start + i}", h, 100), cached("ai_generated", f"f{start + i}", h))
                          for i, h in enumerate(flood[start : start + 1000])])
    cache.store_many([(Key("s-ai", A, 100), cached("ai_generated", "s-ai"))])
    [found] = cache.lookup_near_many([Key("victim", flip(A, [0, 1, 40, 41, 42]), 100)])
    assert found.kind == "near_duplicate" and found.verdict.sha256 == "s-ai" and found.distance == 5
    assert ("read", 1) in capped
    cache.store_many([(Key(f"g{i}", flip(A, [100 + i]), 100), cached("ai_generated", f"g{i}", flip(A, [100 + i]))) for i in range(150)])
    cache.lookup_near_many([Key("any", A, 100)])  # reads the log, where the index refuses what is over capacity
    assert sum(n for where, n in capped if where == "write") == 2000 + 1 + 150 - 2100


def test_every_worker_finds_what_any_worker_indexed_and_a_late_one_replays_it(store: Store) -> None:
    first, second = VerdictCache(store, "m1", 60), VerdictCache(store, "m1", 60)
    first.store_many([(Key("s-ai", A, 100), cached("ai_generated", "s-ai"))])
    near = Key("victim", flip(A, [7, 70, 170]), 100)
    assert second.lookup_near_many([near])[0].verdict.sha256 == "s-ai"
    second.store_many([(Key("s-ai2", flip(A, [128]), 100), cached("ai_generated", "s-ai2", flip(A, [128])))])
    late = VerdictCache(store, "m1", 60)
    assert late.lookup_near_many([Key("v2", flip(A, [128, 3]), 100)])[0].verdict.sha256 == "s-ai2"
    assert len(late.index.index) == 2
    assert VerdictCache(store, "m2", 60).lookup_near_many([near])[0].kind == "miss"  # another model's index is its own


class _HeldStore(MemoryStore):
    """Reads of the log wait until released: a replay that takes its time."""

    def __init__(self) -> None:
        super().__init__()
        import threading

        self.release = threading.Event()

    def read_ranges(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:  # type: ignore[override]
        self.release.wait(30)
        return super().read_ranges(ranges)


def test_a_loading_index_answers_not_searched_never_a_false_miss() -> None:
    store = _HeldStore()
    VerdictCache(store, "m1", 60).store_many([(Key("s-ai", A, 100), cached("ai_generated", "s-ai"))])
    cache = VerdictCache(store, "m1", 60)
    cache.index.start()
    try:
        assert [r.kind for r in cache.lookup_near_many([Key("v", flip(A, [1]), 100), Key("low", A, 10)])] == ["not_searched", "miss"]
        store.release.set()
        from tests.services import wait_for

        wait_for(lambda: cache.index.ready, 10, "the index to load")
        assert cache.lookup_near_many([Key("v", flip(A, [1]), 100)])[0].kind == "near_duplicate"
    finally:
        store.release.set()
        cache.index.close()


def test_the_follower_reads_other_workers_hashes_within_a_follow_interval() -> None:
    from tests.services import wait_for

    store = MemoryStore()
    cache = VerdictCache(store, "m1", 60)
    cache.index.start()
    try:
        wait_for(lambda: cache.index.ready, 10, "the index to load")
        VerdictCache(store, "m1", 60).store_many([(Key("s-ai", A, 100), cached("ai_generated", "s-ai"))])
        wait_for(lambda: len(cache.index.index) == 1, 10, "the other worker's hash to be followed")
        assert cache.lookup_near_many([Key("v", flip(A, [9]), 100)])[0].verdict.sha256 == "s-ai"
    finally:
        cache.index.close()
