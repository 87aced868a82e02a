"""benchmarks/gpu_check.sh cannot rot: its CPU rehearsal runs every step the GPU run does (servers,
extension build, package check, engine rows with drift and a kernel profile, a whole pod through
a real broker, Redis and HTTP origin, the second detector's cost beside DDA's) and must leave a complete results folder; a failed step
must show as failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_rehearsal_runs_every_step_and_reports_each_figure(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "DDA_GPU_CARRY": str(tmp_path / "nothing-carried"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--rehearse", str(out)],
                          capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    steps = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [(name, status) for name, status, _ in steps] == [
        (name, "0") for name in ("machine", "servers", "build", "wheels", "engine", "pipeline", "second")]

    results = json.loads((out / "results.json").read_text())
    engine = results["engine"]
    assert engine["distinct_crops"] == engine["images"] >= 10
    first, *others = engine["rows"]
    assert (first["precision"], first["batch"], first["mode"]) == ("fp32", 1, "eager")
    assert any(row["mode"] == "graphs" for row in others)
    for row in others:  # every fast row is compared with the reference's way
        assert row["max_abs_logit_diff_vs_baseline"] < 0.5 and row["decision_flips"] >= 0 and row["ms_per_batch"] > 0
    by_kind = engine["kernels"]["ms_per_batch_by_kind"]
    assert by_kind["matmul"] > 0 and by_kind["attention"] > 0 and 0 < engine["kernels"]["kernel_share_of_wall"]

    (pod,) = results["pipeline"]["results"]
    assert pod["name"] == "pod-tiny" and pod["exit"] == 0
    assert pod["flood"]["verdicts"] == pod["flood"]["ok"] == 20 and pod["paced"]["verdicts"] == 10
    assert pod["hits"]["verdicts"] == 20
    assert {"consumer", "decode", "engine"} <= set(pod["cpu_ms_per_miss"])
    assert pod["gpu_flood"] is None  # no GPU here: no samples, said as "-"
    second = results["second"]  # the second detector's table: a header, a rule, a row for each model
    assert len(second) == 4 and "bf16" not in second[0] and second[2].startswith("| DDA") and second[3].startswith("| Community Forensics")
    page = (out / "results.md").read_text()
    assert "| engine | ok |" in page and "| pod-tiny |" in page and "| fp32 | 1 | eager |" in page


def test_a_failed_step_fails_the_report(tmp_path: Path) -> None:
    (tmp_path / "steps.tsv").write_text("machine\t0\t1\nengine\t124\t300\n")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "| engine | FAILED 124 | 300 |" in proc.stdout and "No engine results (see engine.log)." in proc.stdout
    assert json.loads((tmp_path / "results.json").read_text())["engine"] is None
