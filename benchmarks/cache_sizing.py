"""Redis memory per cached verdict, for sizing a cache (one node or a cluster's total).

Writes --count verdicts through the worker's own cache code into a fresh redis-server and
reads `used_memory` before and after: "real" verdicts (one key by SHA-256), then
"ai_generated" ones with a searchable PDQ hash (the SHA-256 key, the PDQ key that near-duplicate
matches read, and 32 bytes in the shared log the index replays). Entries carry no provenance
(an image with C2PA or XMP adds its report's JSON, typically a few hundred bytes). A cluster
holds the same keys spread over its masters, plus its own per-key slot bookkeeping.

    python benchmarks/cache_sizing.py [--count 200000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import describe

from tests.services import RedisServer
from worker.cache.stores import RedisStore
from worker.cache.verdicts import CachedVerdict, Key, VerdictCache


def used(store: RedisStore) -> int:
    return int(store.client.info("memory")["used_memory"])


def fill(cache: VerdictCache, count: int, label: str) -> None:
    for start in range(0, count, 1000):
        batch = []
        for i in range(start, min(count, start + 1000)):
            sha = hashlib.sha256(f"{label}{i}".encode()).hexdigest()
            pdq = hashlib.sha256(f"pdq{label}{i}".encode()).hexdigest()
            batch.append((Key(sha, pdq, 100), CachedVerdict(1.234567, 0.774567, label, sha, pdq, 100)))
        cache.store_many(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    print(f"machine: {json.dumps(describe())}")
    server = RedisServer()
    server.start()
    try:
        store = RedisStore(server.url, timeout_s=30)
        cache = VerdictCache(store, "sizing-t0.5", 604_800)
        print("| verdicts | keys each | Redis bytes each (= MB per million) |")
        print("|---|---|---|")
        for label, keys in (("real", "SHA-256"), ("ai_generated", "SHA-256 + PDQ + 32 B of log")):
            before = used(store)
            fill(cache, args.count, label)
            each = (used(store) - before) / args.count
            print(f"| {label} | {keys} | {each:.0f} |", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
