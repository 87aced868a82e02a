"""`dda trust-verdicts`: an operator confirms cached "ai_generated" verdicts (by SHA-256).

Only confirmed entries may answer near-duplicates without scoring, and only in a worker
running with DDA_NEAR_DUPLICATES=trusted: a verdict the model gave is never enough, because
an attacker can make the model give it to a noised copy of someone else's photo (see
`worker.cache`). Reads SHA-256s one per line (a file, or '-' for stdin; '#' starts a
comment) and prints one JSON line per hash saying what happened.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from engine.console import say
from engine.hub import resolve_model
from engine.manifest import ModelDirError
from engine.model_dir import load_model_dir
from worker.cache import VerdictCache, namespace_for
from worker.cache_store import RedisStore

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_hashes(source: str) -> list[str]:
    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    hashes = []
    for number, line in enumerate(text.splitlines(), start=1):
        value = line.split("#", 1)[0].strip().lower()
        if not value:
            continue
        if not SHA256.match(value):
            raise ValueError(f"line {number}: not a SHA-256 (64 hex digits): {value[:80]!r}")
        hashes.append(value)
    return hashes


def trust_command(args: argparse.Namespace) -> int:
    redis_url = args.redis_url or os.environ.get("DDA_REDIS_URL")
    if not redis_url:
        say("error: trusting verdicts needs the workers' Redis: --redis-url or DDA_REDIS_URL")
        return 2
    try:
        hashes = read_hashes(args.hashes)
        manifest = load_model_dir(resolve_model(args.model, progress=say)).manifest
    except (OSError, ValueError, ModelDirError) as exc:
        say(f"error: {exc}")
        return 2
    cluster = args.redis_cluster or os.environ.get("DDA_REDIS_CLUSTER") == "on"
    cache = VerdictCache(RedisStore(redis_url, cluster=cluster), namespace_for(manifest.version, manifest.threshold), args.ttl_s)
    try:
        outcome = cache.trust(hashes)
    except Exception as exc:  # noqa: BLE001 - a store failure is reported, not a traceback
        say(f"error: the cache store failed: {type(exc).__name__}: {exc}")
        return 1
    for sha in hashes:
        print(json.dumps({"sha256": sha, "result": outcome[sha]}), flush=True)
    return 0 if all(result == "trusted" for result in outcome.values()) else 3


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("trust-verdicts", help="confirm cached ai_generated verdicts so that near-duplicates may use them")
    p.add_argument("hashes", metavar="FILE", help="SHA-256s of confirmed AI images, one per line ('-': stdin)")
    p.add_argument("--model", default=None, help="the workers' model (its version and threshold name the cache keys)")
    p.add_argument("--redis-url", default=None, help="the workers' Redis (default: DDA_REDIS_URL)")
    p.add_argument("--redis-cluster", action="store_true", help="the URL names a node of a Redis Cluster (default: DDA_REDIS_CLUSTER=on)")
    p.add_argument("--ttl-s", type=int, default=604800, help="how long confirmed entries live (default: %(default)s)")
    p.set_defaults(handler=trust_command)
