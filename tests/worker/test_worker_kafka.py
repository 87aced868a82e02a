"""The worker end to end: real broker (tansu), real redis-server, real HTTP server, real images.

Each test gets fresh topics and a fresh consumer group (tansu can keep a group stuck after a
member leaves mid-rebalance), and stops its workers by PID.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.imaging.decode import decode_rgb
from engine.model.model_dir import load_model_dir
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner
from tests.http_server import LocalServer, Route
from tests.images import encode, scene
from tests.provenance_files import IPTC, sign, with_xmp, xmp_packet
from tests.services import Broker, RedisClusterServers, RedisServer, TopicReader, Worker, unique, wait_for
from worker.cache.hashing import hamming
from worker.decode.prepare import prepare

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """24 pictures; the first carries a C2PA manifest declaring AI, the second XMP declaring a camera."""
    made = [encode(scene(480 + 13 * i, 400, seed=i), "JPEG" if i % 2 else "PNG", **({"quality": 90} if i % 2 else {}))
            for i in range(24)]
    made[0] = sign(made[0], "image/png")
    made[1] = with_xmp("JPEG", xmp_packet(IPTC + "digitalCapture"), seed=1)
    return made


@pytest.fixture(scope="module")
def server(images: list[bytes]) -> Iterator[LocalServer]:
    with LocalServer() as s:
        for i, data in enumerate(images):
            s.routes[f"/img/{i}"] = Route(body=data)
        s.routes["/page.html"] = Route(body=b"<!doctype html><title>x</title>", headers=(("Content-Type", "text/html"),))
        yield s


def start_worker(started: list[Worker], model: Path, broker: Broker, topics: dict[str, str], group: str, log: Path, **env: str) -> Worker:
    worker = Worker(model, broker, topics, group, log, **env)
    started.append(worker)
    worker.start()
    worker.wait_ready()
    return worker


def request(i: str, url: str, **extra: object) -> bytes:
    return json.dumps({"id": i, "url": url, **extra}).encode()


def by_id(values: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for v in values:
        out.setdefault(v["id"], []).append(v)
    return out


def test_500_mixed_requests_get_exactly_one_verdict_each(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, redis_server: RedisServer,
    workers: list[Worker], tmp_path: Path,
) -> None:
    messages, expected = [], {}
    for n in range(500):
        kind = n % 10
        rid = f"r{n}"
        if kind < 5:  # 250 valid, 24 distinct images, so most are repeats
            messages.append(request(rid, f"{server.base}/img/{n % 24}", metadata={"n": n}))
            expected[rid] = "ok"
        elif kind == 5:
            messages.append(request(rid, f"{server.base}/missing/{n}"))
            expected[rid] = "fetch_http_status"
        elif kind == 6:
            messages.append(request(rid, f"{server.base}/page.html"))
            expected[rid] = "unsupported_format"
        elif kind == 7:
            messages.append(request(rid, "http://10.0.0.1/private.jpg"))
            expected[rid] = "url_blocked"
        elif kind == 8:
            messages.append(b"this is not json {" if n % 20 == 8 else json.dumps({"id": rid, "note": "no url"}).encode())
        else:
            messages.append(b"{" + b" " * 70_000 + b"}" if n % 20 == 9 else f"{server.base}/img/{n % 24}".encode())
            if n % 20 != 9:
                expected[f"{topics['input']}/?/{n}"] = "ok"  # bare URL: id is topic/partition/offset
    placed = broker.produce(topics["input"], messages)
    bare = {f"{topics['input']}/{p}/{o}" for (p, o), m in zip(placed, messages) if m.startswith(b"http")}
    expected = {k: v for k, v in expected.items() if "/?/" not in k} | {k: "ok" for k in bare}
    malformed = 500 - len(expected)

    group = unique("group")
    # A shadow model that cannot load (no such directory) is logged and counted; serving goes on without it.
    worker = start_worker(workers, tiny_model_dir, broker, topics, group, tmp_path / "w.log", DDA_REDIS_URL=redis_server.url,
                          DDA_SHADOW_MODEL=str(tmp_path / "no-such-model"))
    assert worker.metric("dda_shadow_failures_total", 'reason="load"') == 1
    verdicts = broker.reader(topics["output"])
    verdicts.read_until(lambda r: len({json.loads(x.value)["id"] for x in r}) >= len(expected), 180)
    dead = broker.reader(topics["dlq"])
    dead.read_until(lambda r: len(r) >= malformed, 60)

    got = by_id(verdicts.values())
    assert set(got) == set(expected)
    assert all(len(v) == 1 for v in got.values()), "a request got more than one verdict"
    for rid, want in expected.items():
        v = got[rid][0]
        assert (v["status"] if want == "ok" else v["error"]["code"]) == want, v
        assert v["schema_version"] == 4 and v["model"]["version"].startswith("dda-") and "shadow" not in v and "models" not in v
        if want == "ok":
            assert v["label"] in ("ai_generated", "real") and len(v["hashes"]["sha256"]) == 64 and v["error"] is None
    assert got["r0"][0]["metadata"] == {"n": 0}
    letters = dead.values()
    assert len(letters) == malformed and {d["reason"] for d in letters} == {"not_json", "no_url", "oversized"}
    assert all(base64.b64decode(d["raw_base64"]) in messages for d in letters)
    assert Counter(v[0]["cache"] for rid, v in got.items() if expected[rid] == "ok")["exact"] > 0

    per_partition: dict[int, int] = {}
    for p, o in placed:
        per_partition[p] = max(per_partition.get(p, -1), o + 1)
    wait_for(lambda: broker.committed(group, topics["input"], 4) == {p: per_partition.get(p, 0) for p in range(4)}, 30,
             "committed offsets to cover every message")

    # Replay: the same images under new ids are exact cache hits; the model is not called again.
    engine_before = worker.metric("dda_engine_images_total")
    replay = [request(f"again{i}", f"{server.base}/img/{i}") for i in range(24)]
    broker.produce(topics["input"], replay)
    verdicts.read_until(lambda r: sum(json.loads(x.value)["id"].startswith("again") for x in r) >= 24, 60)
    again = [v for v in verdicts.values() if v["id"].startswith("again")]
    assert {v["cache"] for v in again} == {"exact"}
    provenance = {v["id"]: v["provenance"] for v in again}  # exact hits carry it, through Redis
    assert provenance["again0"]["c2pa"]["validation_state"] == "valid" and provenance["again0"]["declared_by"] == "c2pa"
    assert provenance["again1"]["declared_ai"] is False and provenance["again1"]["declared_by"] == "xmp"
    assert all(p == {**p, "c2pa": None, "xmp": None, "declared_ai": None} for i, p in provenance.items() if i not in ("again0", "again1"))
    assert worker.metric("dda_engine_images_total") == engine_before
    assert worker.metric("dda_cache_lookups_total", 'kind="exact"') >= 24
    status, _ = worker.get("/healthz")
    assert status == 200
    assert worker.terminate() == 0  # SIGTERM: drains, commits, exits cleanly


def labelled(model_dir: Path, candidates: list[bytes]) -> dict[str, bytes]:
    """One image the tiny model calls real and one it calls AI, with PDQ quality >= 50."""
    loaded = load_model_dir(model_dir)
    detector = Detector(loaded.manifest, TorchRunner(loaded.network, loaded.manifest.preprocessing))
    found: dict[str, bytes] = {}
    for data, p in zip(candidates, detector.predict([decode_rgb(d) for d in candidates])):
        if (prepare(data, 336, 1, 64_000_000).pdq_quality or 0) >= 50:
            found.setdefault(p.label, data)
    assert set(found) == {"real", "ai_generated"}, "the tiny model should label some scenes each way"
    return found


def twin(data: bytes, pixel: int = 0) -> bytes:
    """Different bytes, same picture: one pixel nudged, re-encoded losslessly."""
    pixels = decode_rgb(data).copy()
    pixels[0, pixel, 0] ^= 1
    from PIL import Image

    return encode(Image.fromarray(pixels), "PNG")


def test_perceptual_matches_are_reported_and_only_trusted_ones_answer_unscored(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, redis_server: RedisServer,
    workers: list[Worker], tmp_path: Path,
) -> None:
    """The pre-poisoning attack: B is a planted copy the model called AI; B2, a near-twin of it
    (the victim's photo), must be scored by the model, not answered from B. Once an operator
    confirms B (`dda trust-verdicts`), a worker in `trusted` mode answers twins of B unscored."""
    candidates = [encode(scene(500, 420, seed=100 + i), "PNG") for i in range(16)]
    chosen = labelled(tiny_model_dir, candidates)
    for label, data in chosen.items():
        server.routes[f"/orig/{label}"] = Route(body=data)
        server.routes[f"/twin/{label}"] = Route(body=twin(data))
        server.routes[f"/twin2/{label}"] = Route(body=twin(data, 1))
        assert hamming(str(prepare(data, 336, 1, 64_000_000).pdq), str(prepare(twin(data), 336, 1, 64_000_000).pdq)) <= 2
    worker = start_worker(workers, tiny_model_dir, broker, topics, unique("group"), tmp_path / "w.log",
                          DDA_REDIS_URL=redis_server.url, DDA_NEAR_DUPLICATES="trusted")
    verdicts = broker.reader(topics["output"])
    broker.produce(topics["input"], [request("A", f"{server.base}/orig/real"), request("B", f"{server.base}/orig/ai_generated")])
    verdicts.read_until(lambda r: len(r) >= 2, 60)
    broker.produce(topics["input"], [request("A2", f"{server.base}/twin/real"), request("B2", f"{server.base}/twin/ai_generated")])
    verdicts.read_until(lambda r: len(r) >= 4, 60)
    got = {v["id"]: v for v in verdicts.values()}
    assert got["A"]["label"] == "real" and got["B"]["label"] == "ai_generated"
    assert got["A2"]["cache"] == "miss" and "cache_match" not in got["A2"]  # a near-twin of "real" matches nothing
    assert got["B2"]["cache"] == "miss"  # scored by the model: the match is only reported
    assert got["B2"]["cache_match"] == {"sha256": got["B"]["hashes"]["sha256"], "pdq_distance": got["B2"]["cache_match"]["pdq_distance"],
                                        "trusted": False}
    assert worker.metric("dda_engine_images_total") == 4

    trusted = subprocess.run([sys.executable, "-m", "dda", "trust-verdicts", "-", "--model", str(tiny_model_dir),
                              "--redis-url", redis_server.url], input=got["B"]["hashes"]["sha256"] + "\n",
                             capture_output=True, text=True, timeout=120)
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout) == {"sha256": got["B"]["hashes"]["sha256"], "result": "trusted"}
    broker.produce(topics["input"], [request("B3", f"{server.base}/twin2/ai_generated")])
    verdicts.read_until(lambda r: len(r) >= 5, 60)
    b3 = next(v for v in verdicts.values() if v["id"] == "B3")
    assert b3["cache"] == "near_duplicate" and b3["label"] == "ai_generated" and b3["cache_match"]["trusted"] is True
    assert worker.metric("dda_engine_images_total") == 4  # answered without scoring


def test_sigkill_mid_batch_then_restart_loses_nothing(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, workers: list[Worker], tmp_path: Path,
) -> None:
    total = 200
    placed = broker.produce(topics["input"], [request(f"k{i}", f"{server.base}/img/{i % 24}") for i in range(total)])
    offsets = {f"k{i}": placed[i] for i in range(total)}
    group = unique("group")
    first = start_worker(workers, tiny_model_dir, broker, topics, group, tmp_path / "w1.log", DDA_MAX_IN_FLIGHT="32")
    verdicts = broker.reader(topics["output"])
    verdicts.read_until(lambda r: len(r) >= 40, 120)
    first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    first.proc.wait(timeout=10)  # type: ignore[union-attr]
    committed_at_kill = broker.committed(group, topics["input"], 4)

    start_worker(workers, tiny_model_dir, broker, topics, group, tmp_path / "w2.log")
    verdicts.read_until(lambda r: len({json.loads(x.value)["id"] for x in r}) >= total, 180)
    counts = Counter(v["id"] for v in verdicts.values())
    assert set(counts) == set(offsets)
    duplicates = sorted(i for i, c in counts.items() if c > 1)
    # Only requests not yet committed when the worker died may be repeated.
    assert all(offsets[i][1] >= committed_at_kill[offsets[i][0]] for i in duplicates), duplicates
    assert len(duplicates) <= 32 + 4 * 16 + 40  # in flight + one poll per partition + verdicts not yet committed
    print(f"SIGKILL: {len(duplicates)} duplicate verdicts of {total}, committed at kill {committed_at_kill}")


def wait_until_cached_again(broker: Broker, topic: str, verdicts: TopicReader, url: str) -> None:
    """After a store outage the cache retries on its own schedule: request one image until a
    verdict for it is an exact hit (a write landed in the store that came back, then a read)."""

    def cached_again() -> bool:
        n = len(verdicts.records)
        broker.produce(topic, [request(f"retry{n}", url)])
        verdicts.read_until(lambda r: len(r) > n, 30)
        return json.loads(verdicts.records[-1].value)["cache"] == "exact"

    wait_for(cached_again, 60, "caching to resume once the store is back", interval_s=0.5)


def test_redis_cluster_serves_both_cache_paths_and_a_dead_master_loses_nothing(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, workers: list[Worker], tmp_path: Path,
) -> None:
    """A three-master cluster: exact hits and near-duplicate matches go through it; a master killed
    with requests in flight costs cache misses (counted), no verdict; caching resumes once it is back."""
    chosen = labelled(tiny_model_dir, [encode(scene(500, 420, seed=100 + i), "PNG") for i in range(16)])
    server.routes["/cl/ai"], server.routes["/cl/twin"] = Route(body=chosen["ai_generated"]), Route(body=twin(chosen["ai_generated"]))
    cluster = RedisClusterServers()
    cluster.start()
    try:
        worker = start_worker(workers, tiny_model_dir, broker, topics, unique("group"), tmp_path / "w.log",
                              DDA_REDIS_URL=cluster.url, DDA_REDIS_CLUSTER="on")
        wait_for(lambda: worker.metric("dda_near_index_ready") == 1, 30, "the near-duplicate index to load")
        verdicts = broker.reader(topics["output"])
        broker.produce(topics["input"], [request(f"a{i}", f"{server.base}/img/{i}") for i in range(12)] +
                       [request("ai", f"{server.base}/cl/ai")])
        verdicts.read_until(lambda r: len(r) >= 13, 60)
        broker.produce(topics["input"], [request(f"r{i}", f"{server.base}/img/{i}") for i in range(12)] +
                       [request("ai-twin", f"{server.base}/cl/twin")])
        verdicts.read_until(lambda r: len(r) >= 26, 60)
        got = {v["id"]: v for v in verdicts.values()}
        assert all(got[f"r{i}"]["cache"] == "exact" for i in range(12))  # keys spread over all three masters
        assert got["ai-twin"]["cache_match"]["sha256"] == got["ai"]["hashes"]["sha256"]

        broker.produce(topics["input"], [request(f"b{i}", f"{server.base}/img/{i % 24}") for i in range(40)])
        verdicts.read_until(lambda r: len(r) >= 30, 60)
        cluster.nodes[1].kill()  # with most of the 40 still in flight
        verdicts.read_until(lambda r: len(r) >= 66, 90)
        assert worker.metric("dda_cache_errors_total") > 0
        cluster.nodes[1].start()
        cluster.wait_healthy()
        wait_until_cached_again(broker, topics["input"], verdicts, f"{server.base}/img/5")
        ids = Counter(v["id"] for v in verdicts.values())
        assert all(ids[f"b{i}"] == 1 for i in range(40)) and all(v["status"] == "ok" for v in verdicts.values())
    finally:
        cluster.stop()


def test_two_workers_split_partitions_and_produce_every_verdict_once(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, redis_server: RedisServer,
    workers: list[Worker], tmp_path: Path,
) -> None:
    group = unique("group")
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    pair = [start_worker(workers, tiny_model_dir, broker, topics, group, log, DDA_REDIS_URL=redis_server.url) for log in logs]

    def assigned(log: Path) -> set[str]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if '"partitions assigned"' in line]
        return set(lines[-1]["partitions"]) if lines else set()

    wait_for(lambda: all(assigned(log) for log in logs) and not (assigned(logs[0]) & assigned(logs[1]))
             and len(assigned(logs[0]) | assigned(logs[1])) == 4, 60, "both workers to hold disjoint partitions")
    total = 160
    broker.produce(topics["input"], [request(f"t{i}", f"{server.base}/img/{i % 24}") for i in range(total)], keys=[str(i).encode() for i in range(total)])
    verdicts = broker.reader(topics["output"])
    verdicts.read_until(lambda r: len({json.loads(x.value)["id"] for x in r}) >= total, 120)
    counts = Counter(v["id"] for v in verdicts.values())
    assert len(counts) == total and max(counts.values()) == 1
    consumed = [w.metric("dda_messages_consumed_total") for w in pair]
    assert all(c > 0 for c in consumed) and sum(consumed) == total


def test_promoting_the_shadow_loses_nothing_and_never_serves_the_old_models_cache(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, redis_server: RedisServer,
    workers: list[Worker], tmp_path: Path,
) -> None:
    """A serves with B as its shadow (B: A's logit + 0.8); then B is promoted: A stops (SIGTERM),
    requests keep arriving, a worker serving B starts on the same group and Redis. Every request
    gets one verdict; B's verdicts for images A had cached are B's own scores (cache miss, B's
    version), equal to what the shadow had said; A's entries remain under A's namespace until
    their TTL."""
    import redis

    from tests.models import shifted_copy
    from worker.cache.keys import namespace_for

    b_dir = shifted_copy(tiny_model_dir, tmp_path / "b", 0.8)
    group = unique("group")
    verdicts = broker.reader(topics["output"])
    first = start_worker(workers, tiny_model_dir, broker, topics, group, tmp_path / "a.log", DDA_REDIS_URL=redis_server.url,
                         DDA_SHADOW_MODEL=str(b_dir))
    broker.produce(topics["input"], [request(f"a{i}", f"{server.base}/img/{i}") for i in range(10)])
    verdicts.read_until(lambda r: len(r) >= 10, 60)
    shadowed = {v["id"]: v for v in verdicts.values()}
    assert all(v["shadow"]["version"].endswith("-shift0.8") for v in shadowed.values())
    assert first.terminate() == 0
    broker.produce(topics["input"], [request(f"b{i}", f"{server.base}/img/{i}") for i in range(10)])  # during the switch
    start_worker(workers, b_dir, broker, topics, group, tmp_path / "b.log", DDA_REDIS_URL=redis_server.url)
    verdicts.read_until(lambda r: len(r) >= 20, 60)
    got = by_id(verdicts.values())
    assert sorted(got) == sorted([*(f"a{i}" for i in range(10)), *(f"b{i}" for i in range(10))])
    assert all(len(v) == 1 for v in got.values())
    for i in range(10):
        promoted, before = got[f"b{i}"][0], shadowed[f"a{i}"]
        assert promoted["cache"] == "miss" and promoted["model"]["version"] == before["shadow"]["version"]
        assert abs(promoted["logit"] - before["shadow"]["logit"]) < 1e-4 and promoted["label"] == before["shadow"]["label"]
        assert "shadow" not in promoted
    client = redis.Redis.from_url(redis_server.url)
    old = list(client.scan_iter(f"dda:{namespace_for(before['model']['version'], before['threshold'])}:sha:*"))
    assert len(old) == 10 and all(0 < client.ttl(k) <= 604800 for k in old)
