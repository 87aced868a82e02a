"""What the cache's command-line tools share (`dda trust-verdicts`, `dda import-hashes`): the
options that name the workers' cache, and opening it: their Redis (one node or a cluster) and
the key namespace of their model's version and threshold."""

from __future__ import annotations

import argparse
import os

from engine.model.hub import resolve_model
from engine.model.manifest import Manifest
from engine.model.model_dir import load_model_dir
from engine.process.console import say
from worker.cache.keys import namespace_for
from worker.cache.stores import RedisStore
from worker.cache.verdicts import VerdictCache


def add_arguments(p: argparse.ArgumentParser, ttl_help: str) -> None:
    p.add_argument("--model", default=None, help="the workers' model (its version and threshold name the cache keys)")
    p.add_argument("--redis-url", default=None, help="the workers' Redis (default: DDA_REDIS_URL)")
    p.add_argument("--redis-cluster", action="store_true", help="the URL names a node of a Redis Cluster (default: DDA_REDIS_CLUSTER=on)")
    p.add_argument("--ttl-s", type=int, default=604800, help=ttl_help)


def redis_url(args: argparse.Namespace) -> str | None:
    return args.redis_url or os.environ.get("DDA_REDIS_URL")


def workers_manifest(args: argparse.Namespace) -> Manifest:
    """The manifest of the workers' model; raises ModelDirError (a ValueError) or OSError."""
    return load_model_dir(resolve_model(args.model, progress=say)).manifest


def workers_cache(args: argparse.Namespace, url: str, manifest: Manifest) -> VerdictCache:
    cluster = args.redis_cluster or os.environ.get("DDA_REDIS_CLUSTER") == "on"
    return VerdictCache(RedisStore(url, cluster=cluster), namespace_for(manifest.version, manifest.threshold), args.ttl_s)
