"""The `dda` command as a person meets it: wrong values, missing files, busy ports, no hub, Ctrl-C.
Every one ends in a clear message and a documented exit status, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.images import encode, photo
from worker.config import GROUPS, _settings


def dda(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dda", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def clean_error(proc: subprocess.CompletedProcess[str], status: int, *phrases: str) -> None:
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr and all(p in proc.stderr for p in phrases), proc.stderr


WRONG_VALUES = [
    (["scan", "--max-batch", "abc", "x.jpg"], "not a whole number: 'abc'"),
    (["scan", "--batch-size", "0", "x.jpg"], "must be at least 1"),  # the old name, kept as a hidden alias
    (["scan", "--fetch-timeout-s", "soon", "x.jpg"], "not a number: 'soon'"),
    (["scan", "--crops", "3", "x.jpg"], "invalid choice"),
    (["worker", "--max-batch", "abc"], "--max-batch='abc': not a whole number"),
    (["worker", "--metrics-port", "70000"], "not a TCP port (0-65535): 70000"),
    (["worker", "--decode-cpu-s", "-1"], "must be at least 1"),
]
# Each case runs `main()` in one interpreter (a process per case would spend 2 s importing torch each):
# the exit status and stderr are what a shell would see.
RUN_EACH = """
import contextlib, io, json, sys
from dda.cli import main
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main(args)
        except SystemExit as exc:
            status = exc.code
    print(json.dumps({"status": status, "stderr": err.getvalue()}))
"""


def test_wrong_values_are_named_without_a_traceback() -> None:
    cases = [[*args, "--model", "/nonexistent"] for args, _ in WRONG_VALUES]
    proc = subprocess.run([sys.executable, "-c", RUN_EACH, json.dumps(cases)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(WRONG_VALUES)
    for (args, phrase), result in zip(WRONG_VALUES, results):
        assert result["status"] == 2 and phrase in result["stderr"] and "Traceback" not in result["stderr"], (args, result)


def test_help_shows_defaults_and_choices() -> None:
    scan = " ".join(dda("scan", "--help").stdout.split())
    assert "(default: 16)" in scan and "{cpu,cuda}" in scan and "--max-batch" in scan and "--batch-size" not in scan
    worker = " ".join(dda("worker", "--help").stdout.split())
    assert "--max-batch N" in worker and "[DDA_MAX_BATCH; default: 32]" in worker and "--fetch-timeout-s SECONDS" in worker
    assert "--device {cpu,cuda}" in worker and "--backend {auto,torch,tensorrt}" in worker and "--compile {on,off}" in worker
    assert "--log-level {debug,info,warning,error}" in worker and "--engine-socket" not in worker  # the pod sets it
    assert all(f"{title}:" in worker for title, _ in GROUPS) and "--max-batch DDA_MAX_BATCH" not in worker


def test_every_worker_setting_is_in_exactly_one_help_group() -> None:
    grouped = [name for _, names in GROUPS for name in names]
    assert sorted(grouped) == sorted(name for name, _ in _settings())


def test_a_busy_metrics_port_is_reported_before_the_model_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = dda("worker", "--metrics-host", "127.0.0.1", "--metrics-port", str(port), "--model", "/nonexistent")
    clean_error(proc, 2, f"cannot listen on 127.0.0.1:{port}", "DDA_METRICS_PORT")
    assert "model" not in proc.stderr.split("cannot listen")[0]  # the model was never looked at


def test_files_that_are_no_checkpoint_are_clear_import_errors(tmp_path: Path) -> None:
    cases = []
    for i, content in enumerate([b"not a checkpoint", b"# DDA\n\nA README, not weights.\n" * 20]):
        path = tmp_path / f"file{i}.pth"
        path.write_bytes(content)
        cases.append(["import-checkpoint", str(path), str(tmp_path / f"out{i}")])
    proc = subprocess.run([sys.executable, "-c", RUN_EACH, json.dumps(cases)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for result in map(json.loads, proc.stdout.splitlines()):
        assert result["status"] == 2 and "not a PyTorch checkpoint" in result["stderr"], result
        assert "Traceback" not in result["stderr"] and "file an issue" not in result["stderr"]


def test_missing_model_and_missing_inputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    clean_error(dda("scan", "--model", str(tmp_path / "nope"), "x.jpg"), 2, "error:")
    proc = dda("scan", "--model", str(tiny_model_dir), str(tmp_path / "missing.jpg"))
    assert proc.returncode == 0 and '"file_not_found"' in proc.stdout and "Traceback" not in proc.stderr


def test_without_the_hub_the_first_run_says_how_to_go_on(tmp_path: Path) -> None:
    """No model cached, the hub unreachable (a closed local port stands in for no network)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {"DDA_CACHE_DIR": str(tmp_path / "cache"), "HF_ENDPOINT": f"http://127.0.0.1:{port}", "DDA_MODEL": ""}
    proc = subprocess.run([sys.executable, "-m", "dda", "worker", "--metrics-port", "0"], input="x\n", text=True,
                          capture_output=True, timeout=60, env={**os.environ, **env})
    clean_error(proc, 2, "dda import-checkpoint", "--model", "HF_HUB_OFFLINE", "unreachable")
    offline = subprocess.run([sys.executable, "-m", "dda", "worker", "--metrics-port", "0"], input="x\n", text=True,
                             capture_output=True, timeout=60, env={**os.environ, **env, "HF_HUB_OFFLINE": "1"})
    clean_error(offline, 2, "HF_HUB_OFFLINE is set", "make-test-model")
    # Offline, nothing claims a download, and the advice is not to set what is set already.
    assert "downloading" not in offline.stderr and "Set HF_HUB_OFFLINE=1" not in offline.stderr, offline.stderr


def test_ctrl_c_stops_a_scan_with_one_line_and_status_130(tiny_model_dir: Path, tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(encode(photo(640, 480, seed=2), "JPEG", quality=90))
    # Ctrl-C as on a terminal: a run started in the background (a CI job under `cmd &`) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all.
    proc = subprocess.Popen([sys.executable, "-m", "dda", "scan", "--model", str(tiny_model_dir), "--max-batch", "1",
                             *[str(image)] * 400], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None and proc.stderr is not None
    assert '"status": "ok"' in proc.stdout.readline()  # running, past start-up
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # drains stdout too: a full pipe would hold the exit's flush
    assert proc.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "dda: interrupted"
