"""Near-duplicate search at platform scale: recall, false matches, CPU and memory at N hashes.

Planted pairs: 1,000 originals are crops of the real images under ../shared/data (several
windows of each image, kept only if no two are within distance 31 and PDQ quality >= 50);
each original's partner is that crop edited and hashed again: each of four edits applied with
probability 1/2 (at least one), its strength uniform in its range: crop (at most 5% of the
area, split at random between the four sides), resize 50-200%, Gaussian noise sigma 0.5-3,
JPEG quality 50-95. PDQ is sensitive to cropping (about 16-34 bits at 1% a side on these
images, 56-126 at 5% a side), so some pairs land beyond 31, where no radius-31 index (this
one or the old) can match them: their count is reported and recall is of the pairs within 31. The index holds
the originals among N - 1,000 synthetic hashes: independent uniform bits (real PDQ hashes
have exactly half their bits set, by the median threshold; uniform bits differ from that by
+-8 bits of weight, which changes no distance statistic that matters here). Real hashes
cluster; the clustered worst case is the flood bound, measured in near_duplicate_lookup.py.
Unrelated queries: 1,000 generated scenes (tests/images.py), never indexed.

Side by side, on the same hashes and queries:
- the index (worker/cache/pdq_index.py, what every consumer process holds): recall of planted
  pairs within distance 31, false matches, CPU per lookup (batches of 64, this process's CPU
  time), lookups a second from two threads (wall: the search releases the GIL), memory per
  hash (its arrays) and build time;
- the index it replaces (16 Redis slot sets of 16 bits, at most 256 members a set, 32 read
  per key a lookup): its recall, simulated exactly on the same data (a set keeps its first
  256 members in insertion order; a read samples 32 of a set uniformly, as SRANDMEMBER does).
  Its CPU is not re-measured here (near_duplicate_lookup.py measured its lookups).

--catch-up N: a redis-server on PATH holds a shared log of N hashes (worker/cache/index_log.py);
an empty NearIndex replays it (wall and CPU seconds, Redis memory per hash).

    python benchmarks/near_duplicate_scale.py [--sizes 1e6 1e7] [--catch-up 1e7]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import structlog
from machine import describe

from tests.images import scene
from tests.services import RedisServer
from worker.cache.hashing import pdq_from_pixels
from worker.cache.keys import Keys
from worker.cache.near_index import NearIndex
from worker.cache.pdq_index import MATCH_DISTANCE, PdqIndex
from worker.cache.stores import RedisStore

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIRS = 1000
BATCH = 64
OLD_SET_CAP, OLD_READ = 256, 32


def pdq(image: Image.Image) -> tuple[bytes, int]:
    hexed, quality = pdq_from_pixels(np.asarray(image.convert("RGB")))
    return bytes.fromhex(hexed), quality


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of a and b (broadcast)."""
    return np.unpackbits(a ^ b, axis=-1).sum(axis=-1)


def edit(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    chosen = rng.random(4) < 0.5
    if not chosen.any():
        chosen[rng.integers(0, 4)] = True
    if chosen[0]:  # crop: at most 5% of the area, shared among the sides at random
        w, h = image.size
        share = rng.dirichlet(np.ones(4)) * (1 - np.sqrt(1 - rng.uniform(0, 0.05)))
        image = image.crop((int(share[0] * w), int(share[1] * h), w - int(share[2] * w), h - int(share[3] * h)))
    if chosen[1]:
        scale = rng.uniform(0.5, 2.0)
        image = image.resize((max(8, int(image.width * scale)), max(8, int(image.height * scale))), Image.Resampling.BILINEAR)
    if chosen[2]:
        noise = rng.normal(0, rng.uniform(0.5, 3.0), (image.height, image.width, 3))
        image = Image.fromarray(np.clip(np.asarray(image.convert("RGB"), np.float32) + noise, 0, 255).astype(np.uint8))
    if chosen[3]:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=int(rng.integers(50, 96)))
        image = Image.open(io.BytesIO(out.getvalue()))
    return image


def planted_pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Originals and their edited partners (PAIRS each, as rows of 32 bytes), and how many images they came from."""
    images: dict[Path, Image.Image] = {}
    for path in sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")):
        try:
            image = Image.open(path).convert("RGB")
        except (OSError, ValueError):
            continue
        if min(image.size) >= 128:
            images[path] = image
    originals: list[bytes] = []
    partners: list[bytes] = []
    used = set()
    for _window in range(64):
        for path, image in images.items():
            if len(originals) == PAIRS:
                break
            side = rng.uniform(0.35, 1.0)
            w, h = int(image.width * side), int(image.height * side)
            x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
            crop = image.crop((x, y, x + w, y + h))
            code, quality = pdq(crop)
            if quality < 50 or (originals and distances(np.frombuffer(b"".join(originals), np.uint8).reshape(-1, 32),
                                                      np.frombuffer(code, np.uint8)).min() <= MATCH_DISTANCE):
                continue
            partner, partner_quality = pdq(edit(crop, rng))
            if partner_quality < 50:
                continue
            originals.append(code)
            partners.append(partner)
            used.add(path)
        if len(originals) == PAIRS:
            break
    as_rows = lambda codes: np.frombuffer(b"".join(codes), np.uint8).reshape(-1, 32)  # noqa: E731
    return as_rows(originals), as_rows(partners), len(used)


def unrelated_queries() -> np.ndarray:
    return np.frombuffer(b"".join(pdq(scene(256, 256, seed=10_000 + i))[0] for i in range(PAIRS)), np.uint8).reshape(-1, 32)


def old_index_recall(codes: np.ndarray, planted_at: np.ndarray, partners: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Whether the slot-set index would have read each planted original for its partner's lookup."""
    slots = codes.view(">u2")  # 16 slot values a hash
    query_slots = partners.view(">u2")
    found = np.zeros(len(planted_at), bool)
    for s in range(16):
        values = slots[:, s]
        order = np.argsort(values, kind="stable")
        counts = np.bincount(values, minlength=1 << 16)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        rank = np.empty(len(values), np.int64)
        rank[order] = np.arange(len(values)) - starts[values[order]]
        original = values[planted_at].astype(np.int64)
        near = np.array([bin(int(a) ^ int(b)).count("1") <= 1 for a, b in zip(original, query_slots[:, s])])
        stored = rank[planted_at] < OLD_SET_CAP
        read = rng.random(len(planted_at)) < np.minimum(1.0, OLD_READ / np.minimum(counts[original], OLD_SET_CAP))
        found |= near & stored & read
    return found


def measure(n: int, originals: np.ndarray, partners: np.ndarray, unrelated: np.ndarray, pair_d: np.ndarray,
            rng: np.random.Generator) -> dict[str, float | int]:
    codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    planted_at = rng.choice(n, len(originals), replace=False)
    codes[planted_at] = originals
    index = PdqIndex(capacity=n)
    started, cpu = time.perf_counter(), time.process_time()
    index.add(memoryview(codes.reshape(-1)), expires_at=float("inf"))
    index.maintain(now=0)
    build_wall, build_cpu = time.perf_counter() - started, time.process_time() - cpu

    def run(queries: np.ndarray) -> tuple[list, float]:
        found, spent = [], 0.0
        for start in range(0, len(queries), BATCH):
            batch = [q.tobytes() for q in queries[start : start + BATCH]]
            cpu = time.process_time()
            got, _ = index.search(batch)
            spent += time.process_time() - cpu
            found += got
        return found, spent / len(queries)

    matchable = pair_d <= MATCH_DISTANCE
    found, per_lookup = run(partners)
    hits = np.array([m is not None and m.hash == originals[i].tobytes() for i, m in enumerate(found)])
    false, per_unrelated = run(unrelated)
    everything = np.concatenate([partners, unrelated] * 4)
    halves = [everything[: len(everything) // 2], everything[len(everything) // 2 :]]
    wall = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, halves))
    per_second_two = len(everything) / (time.perf_counter() - wall)
    old_hits = old_index_recall(codes, planted_at, partners, rng)
    return {
        "N": n, "pairs within 31": int(matchable.sum()),
        "recall": float(hits[matchable].mean()), "false matches": sum(m is not None for m in false),
        "CPU ms per lookup (pairs)": per_lookup * 1000, "CPU ms per lookup (unrelated)": per_unrelated * 1000,
        "lookups/s, 2 threads": per_second_two, "bytes per hash": index.nbytes / n, "build s": build_wall, "build CPU s": build_cpu,
        "old index recall": float(old_hits[matchable].mean()),
    }


def catch_up(n: int, rng: np.random.Generator) -> dict[str, float]:
    """A log of n hashes in a real redis-server; an empty index replays it."""
    server = RedisServer()
    server.start()
    try:
        store = RedisStore(server.url, timeout_s=60)
        before = int(store.client.info("memory")["used_memory"])
        writer = NearIndex(store, Keys("bench"), 7 * 86_400, capacity=n)
        for start in range(0, n, 65_536):
            writer.log.append([bytes(row) for row in rng.integers(0, 256, (min(65_536, n - start), 32), dtype=np.uint8)])
        used = int(store.client.info("memory")["used_memory"]) - before
        reader = NearIndex(RedisStore(server.url, timeout_s=60), Keys("bench"), 7 * 86_400, capacity=n)
        started, cpu = time.perf_counter(), time.process_time()
        assert reader.search([bytes(32)]) is not None  # no follower thread: the first search replays the log
        return {"hashes": len(reader.index), "replay s": time.perf_counter() - started, "replay CPU s": time.process_time() - cpu,
                "Redis bytes per logged hash": used / n}
    finally:
        server.stop()


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no progress lines in the table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7])
    parser.add_argument("--catch-up", type=float, default=0, help="also time a replay of this many logged hashes (needs redis-server)")
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    print(f"machine: {json.dumps(describe())}")
    started = time.perf_counter()
    originals, partners, images = planted_pairs(rng)
    unrelated = unrelated_queries()
    pair_d = distances(originals, partners)
    print(f"planted pairs: {len(originals)} originals from {images} images in {time.perf_counter() - started:.0f} s; "
          f"edit distances p50 {np.percentile(pair_d, 50):.0f}, p90 {np.percentile(pair_d, 90):.0f}, "
          f"p99 {np.percentile(pair_d, 99):.0f}, max {pair_d.max()}; over 31: {(pair_d > MATCH_DISTANCE).sum()}; "
          f"histogram by 4: {np.bincount(np.minimum(pair_d, 63) // 4).tolist()}")
    print(f"unrelated queries: nearest original at distance {distances(unrelated[:, None, :], originals[None, :, :]).min()}")
    rows = [measure(int(n), originals, partners, unrelated, pair_d, rng) for n in args.sizes]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{v:,}" if isinstance(v, int) else f"{v:.4g}" for v in row.values()) + " |", flush=True)
    if args.catch_up and shutil.which("redis-server"):
        print(f"catch-up: {json.dumps(catch_up(int(args.catch_up), rng))}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
