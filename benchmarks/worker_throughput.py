"""Worker throughput and latency against a local broker: all-miss (end to end) vs cache hits.

Starts tansu, a local HTTP server with N distinct images, and `dda worker` (CPU torch, the
model given or a tiny random one, in-process or Redis cache), then in one run:
  1. N requests for N distinct images: every one fetched, decoded, hashed and scored;
  2. the same N images under new ids: every one an exact cache hit.
Throughput is verdicts per second from the first request produced to the last verdict read;
latency is per request, from the produce call to the verdict being read by a consumer.

    python benchmarks/worker_throughput.py [--requests 300] [--model DIR] [--redis]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe  # noqa: E402

from engine.model.checkpoint import import_checkpoint  # noqa: E402
from engine.model.synthetic import tiny_architecture, write_official_checkpoint  # noqa: E402
from tests.http_server import LocalServer, Route  # noqa: E402
from tests.images import encode, scene  # noqa: E402
from tests.services import Broker, RedisServer, Worker, unique  # noqa: E402


def phase(broker: Broker, topics: dict[str, str], reader, urls: list[str], tag: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    start = time.monotonic()
    values = []
    for i, url in enumerate(urls):
        rid = f"{tag}{i}"
        values.append(json.dumps({"id": rid, "url": url}).encode())
        sent[rid] = time.monotonic()
    broker.produce(topics["input"], values)
    deadline = time.monotonic() + 600
    while len(received) < len(urls) and time.monotonic() < deadline:
        for batch in reader.consumer.poll(timeout_ms=100).values():
            now = time.monotonic()
            for record in batch:
                v = json.loads(record.value)
                if v["id"].startswith(tag):
                    received.setdefault(v["id"], now)
                    cache = v["cache"]
    elapsed = time.monotonic() - start
    latencies = np.array([received[k] - sent[k] for k in received]) * 1000
    return {"verdicts": len(received), "seconds": elapsed, "verdicts_per_s": len(received) / elapsed,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)), "last_cache": cache}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--model", help="model directory (default: a tiny random ViT)")
    parser.add_argument("--redis", action="store_true", help="use a local redis-server instead of the in-process cache")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "tiny"
        if not args.model:
            import_checkpoint(write_official_checkpoint(Path(tmp) / "t.pth", tiny_architecture()), model)
        broker = Broker()
        broker.start()
        redis = RedisServer() if args.redis else None
        if redis:
            redis.start()
        topics = {"input": unique("req"), "output": unique("out"), "dlq": unique("dlq")}
        broker.create_topics({topics["input"]: 4, topics["output"]: 1, topics["dlq"]: 1})
        try:
            with LocalServer() as server:
                for i in range(args.requests):
                    server.routes[f"/i/{i}"] = Route(body=encode(scene(640, 480, seed=i), "JPEG", quality=90))
                env = {"DDA_REDIS_URL": redis.url} if redis else {}
                worker = Worker(model, broker, topics, unique("bench"), Path(tmp) / "worker.log", DDA_DECODE_WORKERS="1", **env)
                worker.start()
                worker.wait_ready()
                reader = broker.reader(topics["output"])
                urls = [f"{server.base}/i/{i}" for i in range(args.requests)]
                cold = phase(broker, topics, reader, urls, "cold")
                warm = phase(broker, topics, reader, urls, "warm")
                worker.terminate()
        finally:
            broker.kill()
            if redis:
                redis.stop()
    print(f"machine: {json.dumps(describe())}")
    print(f"model: {'given' if args.model else 'tiny random ViT (2 blocks, width 128)'}, cache: {'redis' if args.redis else 'in-process'}, "
          f"{args.requests} requests per phase, 640x480 JPEGs from a local HTTP server, broker tansu on 127.0.0.1")
    print("| phase | verdicts | verdicts/s | p50 latency ms | p99 latency ms |")
    print("|---|---|---|---|---|")
    for name, r in (("all misses (fetch, decode, hash, infer)", cold), ("exact cache hits", warm)):
        print(f"| {name} | {r['verdicts']} | {r['verdicts_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")


if __name__ == "__main__":
    main()
