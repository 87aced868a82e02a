"""What an operator sees: consumer lag as the broker counts it (on noida-db, whose end offsets are
true), every metric the dashboard and the alert rules name really exported by a running worker,
and stderr that is JSON lines only, library records included."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import yaml

from tests.http_server import LocalServer, Route
from tests.images import encode, scene
from tests.schemas import check_verdict
from tests.services import NoidaBroker, Worker, metric_value, unique, wait_for

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "dda-worker"
PARTITIONS = 2

pytestmark = pytest.mark.timeout(300)


def exported_families(text: str) -> set[str]:
    """Metric names a scrape exposes, with the sample suffixes Prometheus queries use."""
    names = set()
    for line in text.splitlines():
        match = re.match(r"# TYPE (\S+) (\S+)", line)
        if match:
            name, kind = match.groups()
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(dda_[a-z_]+)", expr))


def dashboard_and_alert_metrics() -> set[str]:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["panels"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), str)]
    groups = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    rules = [rule for group in groups for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"DDANoVerdictsWhileLagGrows", "DDAErrorRateHigh", "DDACacheDown",
                                          "DDADecodeRestarts", "DDAGpuIdleWithLag"}
    exprs += [r["expr"] for r in rules]
    return set().union(*map(named_metrics, exprs))


def test_lag_matches_the_broker_and_the_kit_names_only_exported_metrics(
    tiny_model_dir: Path, noida: NoidaBroker, tmp_path: Path,
) -> None:
    """Partition 0 holds a request whose image never arrives within the test: the committed offset
    stays before it while the rest is done. The worker's dda_consumer_lag must equal the broker's
    end offset minus the group's committed offset on both partitions."""
    topics = {"input": unique("requests"), "output": unique("verdicts"), "dlq": unique("dead")}
    noida.create_topics({topics["input"]: PARTITIONS, topics["output"]: 1, topics["dlq"]: 1})
    group = unique("group")
    with LocalServer() as server:
        server.routes["/ok.png"] = Route(body=encode(scene(400, 360, seed=3), "PNG"))
        server.routes["/stuck.png"] = Route(body=b"", delay_s=120)
        values = [json.dumps({"id": f"r{i}", "url": f"{server.base}/ok.png"}).encode() for i in range(20)]
        values[6] = json.dumps({"id": "stuck", "url": f"{server.base}/stuck.png"}).encode()
        keys = [b"p0" if i % 2 == 0 else b"p1" for i in range(20)]
        placed = noida.produce(topics["input"], values, keys)
        stuck_partition, stuck_offset = placed[6]

        worker = Worker(tiny_model_dir, noida, topics, group, tmp_path / "w.log", DDA_LAG_EVERY_S="1",
                        DDA_FETCH_TIMEOUT_S="200", DDA_DRAIN_TIMEOUT_S="1")
        worker.start()
        try:
            worker.wait_ready()
            ends = noida.end_offsets(topics["input"], PARTITIONS)

            def lag_agrees() -> bool:
                committed = noida.committed(group, topics["input"], PARTITIONS)
                expected = {p: ends[p] - committed[p] for p in range(PARTITIONS)}
                shown = {p: worker.metric("dda_consumer_lag", f'partition="{p}"') for p in range(PARTITIONS)}
                return committed[stuck_partition] == stuck_offset and shown == expected and shown[1 - stuck_partition] == 0

            wait_for(lag_agrees, 90, "dda_consumer_lag to equal end offsets minus committed offsets")
            assert worker.metric("dda_consumer_lag", f'partition="{stuck_partition}"') == ends[stuck_partition] - stuck_offset > 0

            status, scrape = worker.get("/metrics")
            assert status == 200
            missing = dashboard_and_alert_metrics() - exported_families(scrape)
            assert not missing, f"named in the dashboard or alerts but not exported: {sorted(missing)}"
        finally:
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGTERM)
            worker.proc.wait(timeout=30)
    lines = (tmp_path / "w.log").read_text().splitlines()
    assert lines and all(line.startswith("{") and json.loads(line) for line in lines), [line for line in lines if not line.startswith("{")][:5]


def test_library_warnings_reach_stderr_as_json(tiny_model_dir: Path, tmp_path: Path) -> None:
    """kafka-python complains (plain text, before) when its broker is unreachable."""
    from tests.services import free_port

    class Nowhere:
        bootstrap = f"127.0.0.1:{free_port()}"
        session_timeout_ms = 6000

    worker = Worker(tiny_model_dir, Nowhere(), {"input": "i", "output": "o", "dlq": "d"}, unique("group"),  # type: ignore[arg-type]
                    tmp_path / "w.log", DDA_DRAIN_TIMEOUT_S="1")
    worker.start()
    try:
        wait_for(lambda: '"logger": "kafka' in (tmp_path / "w.log").read_text(), 60, "a kafka-python record in the log")
    finally:
        worker.kill()
    lines = (tmp_path / "w.log").read_text().splitlines()
    assert all(json.loads(line) for line in lines), [line for line in lines if not line.startswith("{")][:5]


def test_every_metric_reads_back_what_a_known_workload_did(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Embedded mode, one request at a time: 3 images scored, 1 repeat (an exact hit), 1 missing
    file, 1 malformed line. Each metric is read from /metrics afterwards and must say exactly that."""
    import os
    import subprocess
    import sys
    import urllib.request

    from tests.services import free_port

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(encode(scene(400, 360, seed=40 + i), "PNG"))
    port = free_port()
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": str(port), "DDA_DECODE_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dda", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    assert proc.stdin is not None and proc.stdout is not None

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()

    try:
        verdicts = []
        for line in [str(paths[0]), str(paths[1]), str(paths[0]), str(tmp_path / "missing.png"), str(paths[2])]:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            verdicts.append(check_verdict(json.loads(proc.stdout.readline())))  # one at a time: the repeat follows its original
        proc.stdin.write("{broken\n")
        proc.stdin.flush()
        wait_for(lambda: metric_value(scrape(), "dda_dead_letters_total") == 1, 30, "the dead letter to be counted")
        wait_for(lambda: metric_value(scrape(), "dda_verdicts_total") == 5, 30, "acknowledged verdicts to be counted")
        text = scrape()
        assert [v["cache"] for v in verdicts if v["status"] == "ok"] == ["miss", "miss", "exact", "miss"]
        expected = {
            ("dda_messages_consumed_total", ""): 6,
            ("dda_verdicts_total", 'status="ok"'): 4,
            ("dda_verdicts_total", 'status="error"'): 1,
            ("dda_request_errors_total", 'code="file_not_found"'): 1,
            ("dda_request_errors_total", ""): 1,
            ("dda_dead_letters_total", 'reason="not_json"'): 1,
            ("dda_cache_lookups_total", 'kind="exact"'): 1,
            ("dda_cache_lookups_total", 'kind="miss"'): 3,
            ("dda_engine_images_total", ""): 3,
            ("dda_batch_size_sum", ""): 3,
            ("dda_stage_seconds_count", 'stage="total"'): 5,
            ("dda_in_flight", ""): 0,
            ("dda_in_flight_bytes", ""): 0,
            ("dda_queue_depth", ""): 0,
            ("dda_partitions_paused", ""): 0,
            ("dda_decode_restarts_total", ""): 0,
            ("dda_duplicate_resolutions_total", ""): 0,
            ("dda_requests_cancelled_total", ""): 0,
            ("dda_publish_failures_total", ""): 0,
            ("dda_cache_errors_total", ""): 0,
        }
        got = {key: metric_value(text, *key) for key in expected}
        assert got == expected, {k: (v, expected[k]) for k, v in got.items() if v != expected[k]}
    finally:
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
