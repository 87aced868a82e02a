"""The embedded default (`dda worker` with no broker): stdin requests, stdout verdicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.images import encode, scene
from tests.schemas import check_verdict, verdict_lines


def test_stdin_to_stdout_through_the_same_pipeline(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode(scene(400, 380, seed=i), "PNG"))
        paths.append(str(path))
    lines = [paths[0], json.dumps({"id": "j1", "url": paths[1], "metadata": {"a": 1}}), "{broken", paths[0],
             str(tmp_path / "missing.png"), paths[2], "", "  \r"]
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dda", "worker"], input="\n".join(lines) + "\n", text=True,
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verdicts = {v["id"]: v for v in verdict_lines(proc.stdout)}
    assert set(verdicts) == {"stdin/0/0", "j1", "stdin/0/3", "stdin/0/4", "stdin/0/5"}
    assert verdicts["j1"]["metadata"] == {"a": 1} and verdicts["j1"]["status"] == "ok"
    assert verdicts["stdin/0/4"]["error"]["code"] == "file_not_found"
    assert abs(verdicts["stdin/0/0"]["logit"] - verdicts["stdin/0/3"]["logit"]) < 1e-5  # same bytes (maybe another batch)
    dead = verdict_lines("\n".join(line for line in proc.stderr.splitlines() if '"reason"' in line))
    # Every line is answered once: blank lines too, as Kafka answers an empty message.
    assert [(d["reason"], d["source"]["offset"]) for d in dead] == [("not_json", 2), ("empty", 6), ("empty", 7)]


def test_invalid_configuration_fails_fast(tiny_model_dir: Path) -> None:
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_MAX_BATCH": "zero"}
    proc = subprocess.run([sys.executable, "-m", "dda", "worker"], input="", text=True, capture_output=True, env=env, timeout=60)
    assert proc.returncode == 2 and "DDA_MAX_BATCH='zero'" in proc.stderr


def test_stdin_mode_honours_sigterm_and_ctrl_c_while_waiting_for_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    import signal
    import time

    path = tmp_path / "a.png"
    path.write_bytes(encode(scene(400, 380, seed=1), "PNG"))
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1",
           "DDA_DRAIN_TIMEOUT_S": "2"}
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([sys.executable, "-m", "dda", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{path}\n".encode())
        proc.stdin.flush()  # stdin stays open: the worker waits for more input
        verdict = check_verdict(json.loads(proc.stdout.readline()))
        assert verdict["status"] == "ok"
        began = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=2 + 10) == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - began < 2 + 10
        proc.stdin.close()
        proc.stdout.close()
        assert proc.stderr is not None and b'"worker stopped"' in proc.stderr.read()
        proc.stderr.close()
