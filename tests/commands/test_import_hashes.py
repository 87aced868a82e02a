"""`dda import-hashes` against a real redis-server, and what a listed hash does to a verdict."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from dda.commands.import_hashes import parse
from engine.model.manifest import read_manifest
from tests.services import RedisServer
from worker.cache.keys import namespace_for
from worker.cache.stores import RedisStore
from worker.cache.verdicts import Key, VerdictCache
from worker.metrics import Metrics


def flip(pdq: str, bits: list[int]) -> str:
    value = int(pdq, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


def run(model: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dda", "import-hashes", *args, "--model", str(model), "--redis-url", redis_url],
                          capture_output=True, text=True, timeout=120)


def test_a_list_is_checked_whole_imported_matched_by_source_and_removed(tiny_model_dir: Path, redis_server: RedisServer,
                                                                       tmp_path: Path) -> None:
    rng = random.Random(5)
    hashes = [f"{rng.getrandbits(256):064x}" for _ in range(10_000)]
    lines = [f"{h},{90 if i % 3 else 100}" for i, h in enumerate(hashes)]
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines[:7000] + ["not-a-hash,90"] + lines[7001:]) + "\n")
    refused = run(tiny_model_dir, redis_server.url, str(bad), "--source", "partner-a")
    client = RedisStore(redis_server.url).client
    assert refused.returncode == 2 and "line 7001: not a PDQ hash" in refused.stderr and "nothing imported" in refused.stderr
    assert client.dbsize() == 0

    good = tmp_path / "good.txt"
    good.write_text("# partner A, 2026-12\n" + "\n".join(lines) + "\n" + f"{hashes[0]},90\n" + f"{'ab' * 32},20\n")
    done = run(tiny_model_dir, redis_server.url, str(good), "--source", "partner-a")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"source": "partner-a", "imported": 10_000, "new": 10_000, "low_quality": 1, "other_types": 0,
                                       "repeated": 1}
    again = run(tiny_model_dir, redis_server.url, str(good), "--source", "partner-a")
    assert again.returncode == 0 and json.loads(again.stdout)["new"] == 0  # a refresh adds nothing twice

    manifest = read_manifest(tiny_model_dir)
    cache = VerdictCache(RedisStore(redis_server.url), namespace_for(manifest.version, manifest.threshold), 604800)
    assert cache.list_counts() == {"partner-a": 10_000}
    metrics = Metrics()
    metrics.watch_lists(cache.list_counts)
    assert 'dda_hash_list_entries{source="partner-a"} 10000.0' in metrics.render().decode()
    near = [Key(f"q{i}", flip(hashes[i * 997], [3, 90, 200]), 100) for i in range(10)]
    found = cache.lookup_near_many(near)
    assert {(r.kind, r.source, r.distance) for r in found} == {("hash_list", "partner-a", 3)}

    removed = run(tiny_model_dir, redis_server.url, "--source", "partner-a", "--remove")
    assert removed.returncode == 0 and json.loads(removed.stdout) == {"source": "partner-a", "removed": 10_000}
    assert {r.kind for r in cache.lookup_near_many(near)} == {"miss"}
    assert cache.list_counts() == {} and "dda_hash_list_entries{" not in metrics.render().decode()
    redis_server.kill()  # a scrape while the store is down still answers, without the gauge's samples
    assert "dda_hash_list_entries{" not in metrics.render().decode()


def test_csv_exports_name_their_columns_and_other_types_are_skipped() -> None:
    a, b = "a" * 64, "b" * 64
    text = "indicator,type,description\n" f"{a},HASH_PDQ,one\n" "http://x,URI,not a hash\n" f"{b.upper()},hash_pdq,two\n"
    parsed = parse(text)
    assert parsed.hashes == [a, b] and parsed.other_types == 1 and not parsed.errors
    parsed = parse("signal_type,signal_value,pdq_quality\npdq," + a + ",49\npdq,zz,90\n")
    assert parsed.low_quality == 1 and parsed.errors == ["line 3: not a PDQ hash (64 hex digits): 'zz'"]
    assert parse(f"{a},90,extra\n").errors == ["line 1: expected hex[,quality], got more fields"]
