"""The "try it locally" path of the README, as a newcomer follows it offline: a random test model,
`dda local-stack` on a folder, `dda worker` with the settings it prints, Kafka verdicts back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.images import encode, scene
from tests.leftovers import leftovers
from tests.services import wait_for


def test_a_test_model_and_the_local_stack_give_kafka_verdicts(tmp_path: Path) -> None:
    model = tmp_path / "model"
    made = subprocess.run([sys.executable, "-m", "dda", "make-test-model", str(model)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and "not a detector" in made.stderr, made.stderr
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"photo{i}.jpg").write_bytes(encode(scene(400, 300, seed=i), "JPEG", quality=90))
    (folder / "notes.txt").write_text("not an image\n")
    env_file = tmp_path / "stack.env"
    out = tmp_path / "stack.out"
    with open(out, "wb") as sink:
        stack = subprocess.Popen([sys.executable, "-m", "dda", "local-stack", str(folder), "--env-file", str(env_file)],
                                 stdout=sink, stderr=subprocess.DEVNULL)
    worker = None
    try:
        wait_for(env_file.exists, 60, "the stack's settings")
        settings = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        assert settings["DDA_KAFKA_BOOTSTRAP"].startswith("127.0.0.1:") and settings["DDA_FETCH_ALLOW_NETWORKS"] == "127.0.0.0/8"
        worker = subprocess.Popen([sys.executable, "-m", "dda", "worker"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL,
                                  env={**os.environ, **settings, "DDA_MODEL": str(model), "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1"})
        def verdict_lines() -> dict[str, str]:
            return {ln.split(":", 1)[0]: ln for ln in out.read_text().splitlines() if ln.startswith(("photo", "notes"))}

        by_name = wait_for(lambda: len(verdict_lines()) == 4 and verdict_lines(), 120, "a verdict line per file")
        assert set(by_name) == {"photo0.jpg", "photo1.jpg", "photo2.jpg", "notes.txt"}
        assert all("not a detector" in by_name[f"photo{i}.jpg"] for i in range(3))
        assert "unsupported_format" in by_name["notes.txt"]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        stack.send_signal(signal.SIGINT)
        assert stack.wait(30) == 0 and not env_file.exists()
        assert not [p for p in leftovers(os.getpid()) if "tansu" in p or "redis-server" in p]
    finally:
        for proc in (worker, stack):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
