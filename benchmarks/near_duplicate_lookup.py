"""One batch of 64 near-duplicate lookups against a PDQ index flooded through one 16-bit slot.

An attacker uploads many images whose hashes share one slot value (here 20,000 of them), so
every lookup that touches that slot reads and compares them all. In one run, on the memory
store and on a local redis-server when one is on PATH: the index without bounds (the
baseline: slot sets and reads unlimited) and with the shipped bounds (MAX_SLOT_MEMBERS on
write, MAX_READ_PER_KEY on read). CPU seconds of this process (the worker's lookup stage)
and wall seconds, best of --repeats.

    python benchmarks/near_duplicate_lookup.py [--flood 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe

from tests.services import RedisServer
from worker import cache as cache_module
from worker.cache import CachedVerdict, Key, VerdictCache
from worker.cache_store import MemoryStore, RedisStore, Store

SLOT0 = "f8f8"


def random_hash(rng: random.Random, prefix: str = "") -> str:
    return prefix + "".join(rng.choice("0123456789abcdef") for _ in range(64 - len(prefix)))


def measure(store: Store, flood: int, bounded: bool, repeats: int) -> tuple[float, float, int]:
    unbounded = 10**9
    cache_module.MAX_SLOT_MEMBERS = cache_module.MAX_SLOT_MEMBERS if bounded else unbounded
    cache_module.MAX_READ_PER_KEY = cache_module.MAX_READ_PER_KEY if bounded else unbounded
    rng = random.Random(7)
    cache = VerdictCache(store, f"bench-{bounded}", 600)
    hashes = [random_hash(rng, SLOT0) for _ in range(flood)]
    for start in range(0, flood, 2000):
        cache.store_many([(Key(f"s{start + i}", h, 100), CachedVerdict(2.0, 0.88, "ai_generated", f"s{start + i}", h, 100))
                          for i, h in enumerate(hashes[start : start + 2000])])
    queries = [Key(f"q{i}", random_hash(rng, SLOT0), 100) for i in range(64)]
    best_cpu = best_wall = float("inf")
    found = 0
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        results = cache.lookup_near_many(queries)
        best_cpu, best_wall = min(best_cpu, time.process_time() - cpu), min(best_wall, time.perf_counter() - wall)
        found = sum(r.kind == "near_duplicate" for r in results)
    return best_cpu, best_wall, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    defaults = (cache_module.MAX_SLOT_MEMBERS, cache_module.MAX_READ_PER_KEY)
    print(f"machine: {json.dumps(describe())}")
    print("| store | index | hashes in the slot | CPU s per 64 lookups | wall s | matches |")
    print("|---|---|---|---|---|---|")
    redis = RedisServer() if shutil.which("redis-server") else None
    try:
        stores: list[tuple[str, Store]] = [("memory", MemoryStore())]
        if redis is not None:
            redis.start()
            stores.append(("redis", RedisStore(redis.url, timeout_s=30)))
        for name, store in stores:
            for bounded in (False, True):
                cache_module.MAX_SLOT_MEMBERS, cache_module.MAX_READ_PER_KEY = defaults
                cpu, wall, found = measure(store, args.flood, bounded, args.repeats)
                label = f"bounded ({defaults[0]} per slot, {defaults[1]} read per key)" if bounded else "unbounded (baseline)"
                print(f"| {name} | {label} | {args.flood:,} | {cpu:.3f} | {wall:.3f} | {found} |", flush=True)
    finally:
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
