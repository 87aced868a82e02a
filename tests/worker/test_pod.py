"""A pod (DDA_CONSUMERS > 1): consumer processes scoring through one engine process, against
a real broker (tansu), a real HTTP origin and the tiny model.

Every request id is accounted for: answered, lost (committed past with no verdict),
duplicates; and every process of the pod is gone when it stops or is killed.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.imaging.decode import decode_rgb
from engine.model.combiner import Combiner
from engine.model.model_dir import load_model_dir
from engine.runners.detector import Detector
from engine.runners.torch_runner import TorchRunner
from tests.http_server import LocalServer, Route
from tests.images import encode, scene
from tests.models import shifted_copy
from tests.services import Broker, TopicReader, Worker, descendants, state, unique, wait_for
from tests.worker.conftest import INPUT_PARTITIONS
from tests.worker.consume.test_delivery_kafka import account, committed_all
from worker.pod import decode_shares, remove_stale_workdirs

pytestmark = pytest.mark.timeout(300)
POD = {"DDA_CONSUMERS": "2", "DDA_DECODE_WORKERS": "2", "DDA_DRAIN_TIMEOUT_S": "8", "DDA_REVOKE_TIMEOUT_S": "2",
       "DDA_FETCH_WORKERS": "4", "DDA_MAX_IN_FLIGHT": "32"}
SLOW = 160


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    return [encode(scene(400 + 9 * i, 360, seed=900 + i), "JPEG", quality=90) for i in range(30)]


@pytest.fixture(scope="module")
def server(images: list[bytes]) -> Iterator[LocalServer]:
    """/img/0..29: the images above; /slow/0..159: 160 other images (all cache misses), 0.2 s each."""
    with LocalServer() as s:
        for i, data in enumerate(images):
            s.routes[f"/img/{i}"] = Route(body=data)
        for i in range(SLOW):
            s.routes[f"/slow/{i}"] = Route(body=encode(scene(240, 200, seed=2000 + i), "JPEG", quality=85), delay_s=0.2)
        yield s


def start_pod(started: list[Worker], model: Path, broker: Broker, topics: dict[str, str], group: str, log: Path, **env: str) -> Worker:
    pod = Worker(model, broker, topics, group, log, **POD, **env)
    started.append(pod)
    pod.start()
    pod.wait_ready(120)
    return pod


def members(pod: Worker) -> dict[str, list[int]]:
    assert pod.proc is not None
    found: dict[str, list[int]] = {"engine": [], "consumer": [], "decode": []}
    for pid, command in descendants(pod.proc.pid).items():
        kind = "engine" if "engine.serving.main" in command else "decode" if "worker.decode.child" in command else "consumer"
        found[kind].append(pid)
    return found


def replaced(pod: Worker, old: int) -> bool:
    """A new engine process runs: one look at the pod (the old one may vanish between two looks)."""
    engines = members(pod)["engine"]
    return bool(engines) and engines[0] != old


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def send(broker: Broker, topic: str, ids: list[str], url: str, distinct: int = SLOW) -> dict[str, tuple[int, int]]:
    """Request i fetches `url` with n = i modulo `distinct`."""
    values = [json.dumps({"id": i, "url": url.format(n=n % distinct)}).encode() for n, i in enumerate(ids)]
    return dict(zip(ids, broker.produce(topic, values, keys=[i.encode() for i in ids])))


def kill_the_engine_mid_flight(pod: Worker, broker: Broker, topics: dict[str, str], group: str, reader: TopicReader, scenario: str,
                               count: int, url: str, kill_after: int) -> list[dict[str, Any]]:
    """Send `count` slow requests, SIGKILL the engine process once `kill_after` of them are answered, and
    account for every one: each answered once, none lost, every offset committed. Their verdicts."""
    answered = len(reader.values())
    placed = send(broker, topics["input"], [f"k{n}" for n in range(count)], url)
    reader.read_until(lambda r: len(r) >= answered + kill_after, 90)
    old = members(pod)["engine"][0]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: replaced(pod, old), 60, "a new engine process")
    assert len({v["id"] for v in reader.values()} & set(placed)) < len(placed)  # the kill landed with work left
    reader.read_until(lambda r: {json.loads(x.value)["id"] for x in r} >= set(placed), 120)
    wait_for(lambda: committed_all(broker, group, topics["input"], placed), 30, "every offset committed")
    verdicts = [v for v in reader.values() if v["id"] in placed]
    row = account(scenario, placed, verdicts, broker.committed(group, topics["input"], INPUT_PARTITIONS),
                  [pod.proc.poll()])  # type: ignore[union-attr]
    assert row == {"sent": count, "answered": count, "lost": 0, "duplicates": 0}
    return verdicts


def test_a_pod_answers_every_request_once_and_outlives_its_engine_process(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, images: list[bytes], workers: list[Worker],
    tmp_path: Path,
) -> None:
    """The engine process also holds a shadow model (the served one, its logit shifted by 0.5):
    every miss carries the shadow's answer, computed there on the same crops."""
    group = unique("group")
    shadow_dir = shifted_copy(tiny_model_dir, tmp_path / "shadow", 0.5)
    pod = start_pod(workers, tiny_model_dir, broker, topics, group, tmp_path / "pod.log", DDA_SHADOW_MODEL=str(shadow_dir))
    family = members(pod)
    assert len(family["engine"]) == 1 and len(family["consumer"]) == 2 and len(family["decode"]) == 2
    assert maps_torch(family["engine"][0])
    assert not any(maps_torch(pid) for pid in family["consumer"] + family["decode"])  # one copy of the model, one torch

    placed = send(broker, topics["input"], [f"p{n}" for n in range(180)], server.base + "/img/{n}", distinct=30)
    missing = send(broker, topics["input"], [f"m{n}" for n in range(20)], server.base + "/missing/{n}")
    reader = broker.reader(topics["output"])
    reader.read_until(lambda r: {json.loads(x.value)["id"] for x in r} >= set(placed) | set(missing), 120)
    every = placed | missing
    wait_for(lambda: committed_all(broker, group, topics["input"], every), 30, "every offset committed")
    verdicts = reader.values()
    row = account("pod", every, verdicts, broker.committed(group, topics["input"], INPUT_PARTITIONS), [pod.proc.poll()])  # type: ignore[union-attr]
    assert row == {"sent": 200, "answered": 200, "lost": 0, "duplicates": 0}

    loaded = load_model_dir(tiny_model_dir)
    detector = Detector(loaded.manifest, TorchRunner(loaded.network, loaded.manifest.preprocessing))
    expected = [p.logit for p in detector.predict([decode_rgb(data) for data in images])]
    for v in verdicts:
        if v["id"].startswith("m"):
            assert v["status"] == "error" and v["error"]["code"] == "fetch_http_status"
        else:
            n = int(v["id"][1:]) % 30
            assert v["status"] == "ok" and abs(v["logit"] - expected[n]) < 1e-4, v
            assert ("shadow" in v) == (v["cache"] == "miss")
            assert v["cache"] != "miss" or abs(v["shadow"]["logit"] - v["logit"] - 0.5) < 1e-4

    scrape = pod.get("/metrics")[1]
    consumed = [float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines() if line.startswith("dda_messages_consumed_total{")]
    assert len(consumed) == 2 and sum(consumed) == 200 and min(consumed) > 0  # both consumers took partitions
    assert 'consumer="0"' in scrape and 'consumer="1"' in scrape
    assert pod.metric("dda_engine_batch_images_count") >= 1 and pod.metric("dda_duplicate_resolutions_total") == 0
    assert pod.get("/healthz")[0] == 200

    # The engine process SIGKILLed with work in flight: the pod starts a new one, the consumers
    # resend the batches it held, and every request gets one ok verdict: no error verdict, no
    # rebalance, nothing lost.
    revoked = pod.metric("dda_rebalances_total", 'kind="revoked"')
    verdicts = kill_the_engine_mid_flight(pod, broker, topics, group, reader, "pod-engine-killed", 160, server.base + "/slow/{n}", 20)
    assert Counter(v["status"] for v in verdicts) == Counter(ok=160)  # no inference_failed from the kill
    assert pod.metric("dda_engine_reconnects_total") >= 1 and pod.metric("dda_rebalances_total", 'kind="revoked"') == revoked
    assert "the engine process exited; restarting it" in (tmp_path / "pod.log").read_text()
    assert pod.terminate(40) == 0
    wait_for(lambda: not descendants(pod.proc.pid), 10, "every pod process gone")  # type: ignore[union-attr]


def test_a_pods_engine_process_scores_both_models_of_an_ensemble(
    tiny_model_dir: Path, tiny_commfor_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, images: list[bytes],
    workers: list[Worker], tmp_path: Path,
) -> None:
    """DDA_ENSEMBLE in a pod: the engine process holds DDA and the second detector (crops of
    different sizes), each consumer scores the second over a connection of its own; every verdict
    carries both models' logits as the models give them run directly, and the combiner's verdict,
    also across the engine process's death. A combiner fitted for other models stops the pod
    before it loads anything."""
    served, second = load_model_dir(tiny_model_dir), load_model_dir(tiny_commfor_dir)
    rgb = [decode_rgb(data) for data in images[:12]]
    expected = [[p.logit for p in Detector(m.manifest, TorchRunner(m.network, m.manifest.preprocessing)).predict(rgb)]
                for m in (served, second)]
    combiner = Combiner((served.manifest.version, second.manifest.version), (1.0, 2.0), 0.1, 0.45, 0.55)
    combiner.save(tmp_path / "combiner.json")
    group = unique("group")
    pod = start_pod(workers, tiny_model_dir, broker, topics, group, tmp_path / "pod.log",
                    DDA_SECOND_MODEL=str(tiny_commfor_dir), DDA_ENSEMBLE=str(tmp_path / "combiner.json"))
    family = members(pod)
    assert len(family["engine"]) == 1 and not any(maps_torch(pid) for pid in family["consumer"])  # both models in the engine alone

    placed = send(broker, topics["input"], [f"e{n}" for n in range(36)], server.base + "/img/{n}", distinct=12)
    reader = broker.reader(topics["output"])
    reader.read_until(lambda r: {json.loads(x.value)["id"] for x in r} >= set(placed), 120)
    wait_for(lambda: committed_all(broker, group, topics["input"], placed), 30, "every offset committed")
    verdicts = reader.values()
    row = account("pod-ensemble", placed, verdicts, broker.committed(group, topics["input"], INPUT_PARTITIONS),
                  [pod.proc.poll()])  # type: ignore[union-attr]
    assert row == {"sent": 36, "answered": 36, "lost": 0, "duplicates": 0}
    for v in verdicts:
        n = int(v["id"][1:]) % 12
        assert v["status"] == "ok" and [m["name"] for m in v["models"]] == [served.manifest.name, second.manifest.name], v
        logits = [m["logit"] for m in v["models"]]
        assert np.abs(np.subtract(logits, [expected[0][n], expected[1][n]])).max() < 1e-4, v
        assert abs(v["logit"] - combiner.logit(logits)) < 1e-9 and v["assessment"] == combiner.label(v["score"])

    # The engine process SIGKILLed with both models' batches in flight: both connections of each
    # consumer find the new one, and every request still gets one verdict from both models.
    verdicts = kill_the_engine_mid_flight(pod, broker, topics, group, reader, "pod-ensemble-engine-killed", 80,
                                          server.base + "/slow/{n}", 10)
    assert all(v["status"] == "ok" and len(v["models"]) == 2 and v["assessment"] for v in verdicts)
    assert pod.metric("dda_engine_reconnects_total") >= 1
    assert pod.terminate(40) == 0

    other = Combiner(("dda-other", second.manifest.version), (1.0, 1.0), 0.0, 0.4, 0.6)
    other.save(tmp_path / "other.json")
    refused = Worker(tiny_model_dir, broker, topics, unique("group"), tmp_path / "refused.log", **POD,
                     DDA_SECOND_MODEL=str(tiny_commfor_dir), DDA_ENSEMBLE=str(tmp_path / "other.json"))
    workers.append(refused)
    refused.start()
    assert refused.proc is not None and refused.proc.wait(60) == 2
    assert "refit it with dda calibrate --second" in (tmp_path / "refused.log").read_text()
    assert "engine process" not in (tmp_path / "refused.log").read_text()


def test_a_dead_consumer_stops_the_pod_and_nothing_unanswered_is_committed(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], server: LocalServer, workers: list[Worker], tmp_path: Path,
) -> None:
    group = unique("group")
    pod = start_pod(workers, tiny_model_dir, broker, topics, group, tmp_path / "pod.log")
    placed = send(broker, topics["input"], [f"c{n}" for n in range(160)], server.base + "/slow/{n}")
    reader = broker.reader(topics["output"])
    reader.read_until(lambda r: len(r) >= 20, 90)
    os.kill(members(pod)["consumer"][0], signal.SIGKILL)
    assert pod.proc is not None
    wait_for(lambda: pod.proc.poll() is not None, 60, "the pod to stop")  # type: ignore[union-attr]
    assert pod.proc.returncode == 1
    committed = broker.committed(group, topics["input"], INPUT_PARTITIONS)
    due = {i for i, (p, o) in placed.items() if o < committed.get(p, 0)}  # committed: each must have its verdict
    reader.read_until(lambda r: {json.loads(x.value)["id"] for x in r} >= due, 30)
    row = account("pod-consumer-killed", placed, reader.values(), committed, [pod.proc.returncode])
    assert row["lost"] == 0 and row["answered"] < row["sent"]  # the rest is redelivered to the group's next member
    assert '"process": "consumer-0"' in (tmp_path / "pod.log").read_text()


def test_a_sigkilled_pod_takes_every_process_with_it(
    tiny_model_dir: Path, broker: Broker, topics: dict[str, str], workers: list[Worker], tmp_path: Path,
) -> None:
    pod = Worker(tiny_model_dir, broker, topics, unique("group"), tmp_path / "pod.log", **POD)
    workers.append(pod)
    pod.start()  # no need to wait for the group: killed as soon as all its processes exist
    wait_for(lambda: len([pid for pids in members(pod).values() for pid in pids]) == 5, 60, "the pod's 5 processes")
    family = [pid for pids in members(pod).values() for pid in pids]
    pod.kill()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() and "Z" not in state(pid) for pid in family), 15,
             "the engine, consumer and decode processes to die with the pod")
    assert pod.proc is not None
    left = list(Path(tempfile.gettempdir()).glob(f"dda-pod-{pod.proc.pid}-*"))
    assert len(left) == 1  # SIGKILL ran no clean-up; the next pod's start removes it
    remove_stale_workdirs()
    assert not left[0].exists()


def test_a_pod_refuses_what_it_cannot_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "DDA_CONSUMERS": "2", "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": "0"}
    stdin_pod = subprocess.run([sys.executable, "-m", "dda", "worker"], env=env, capture_output=True, timeout=60, input=b"")
    assert stdin_pod.returncode == 2 and b"DDA_CONSUMERS=2 needs DDA_KAFKA_BOOTSTRAP" in stdin_pod.stderr
    broken = {**env, "DDA_KAFKA_BOOTSTRAP": "127.0.0.1:9", "DDA_MODEL": str(tmp_path)}
    no_model = subprocess.run([sys.executable, "-m", "dda", "worker"], env=broken, capture_output=True, timeout=60)
    assert no_model.returncode == 2 and b"cannot load the model" in no_model.stderr


def test_the_pods_decode_processes_are_all_given_out() -> None:
    assert decode_shares(11, 4) == [3, 3, 3, 2]  # the remainder was left out before: 8 of 11
    assert decode_shares(8, 4) == [2, 2, 2, 2]
    assert decode_shares(2, 4) == [1, 1, 1, 1]  # every consumer decodes
    assert all(sum(decode_shares(total, n)) == max(total, n) for total in range(1, 40) for n in range(1, 9))
