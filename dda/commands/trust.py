"""`dda trust-verdicts`: an operator confirms cached "ai_generated" verdicts (by SHA-256).

Only confirmed entries may answer near-duplicates without scoring, and only in a worker
running with DDA_NEAR_DUPLICATES=trusted: a verdict the model gave is never enough, because
an attacker can make the model give it to a noised copy of someone else's photo (see
`worker.cache.verdicts`). Reads SHA-256s one per line (a file, or '-' for stdin; '#' starts a
comment) and prints one JSON line per hash saying what happened.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from dda.commands import cache_tools
from engine.process.console import say

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
    redis_url = cache_tools.redis_url(args)
    if not redis_url:
        say("error: trusting verdicts needs the workers' Redis: --redis-url or DDA_REDIS_URL")
        return 2
    try:
        hashes = read_hashes(args.hashes)
        manifest = cache_tools.workers_manifest(args)
    except (OSError, ValueError) as exc:  # a ModelDirError is a ValueError
        say(f"error: {exc}")
        return 2
    cache = cache_tools.workers_cache(args, redis_url, manifest)
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
    cache_tools.add_arguments(p, "how long confirmed entries live (default: %(default)s)")
    p.set_defaults(handler=trust_command)
