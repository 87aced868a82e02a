"""The suite's leftover-process check counts what the session started, not what the machine runs:
a CI machine runs other jobs (another checkout's broker, redis-server and worker failed a green
run before)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.services import Broker, RedisServer, state, wait_for

# A stand-in test session: it becomes a subreaper as conftest does, orphans one process of its own
# (a shell that backgrounds a sleeper and exits), and reports what the check finds.
SESSION = """
import json, os, subprocess, sys, time
from tests.leftovers import become_subreaper, leftovers
assert become_subreaper()
subprocess.run(["sh", "-c", "exec sleep 120 </dev/null >/dev/null 2>&1 & echo $! > " + sys.argv[1]], check=True)
orphan, deadline = int(open(sys.argv[1]).read()), time.monotonic() + 10
while not open(f"/proc/{orphan}/cmdline", "rb").read().startswith(b"sleep\\0") and time.monotonic() < deadline:
    time.sleep(0.01)  # until the forked shell has exec'd sleep: before, its command line is the shell's
    # (which names sleep too), and for a moment inside exec it is empty
print(json.dumps(leftovers(os.getpid())))
"""


def test_only_the_sessions_own_processes_are_leftovers(tiny_model_dir: Path, tmp_path: Path) -> None:
    broker, redis = Broker(), RedisServer()
    worker = subprocess.Popen([sys.executable, "-m", "dda", "worker", "--model", str(tiny_model_dir), "--metrics-port", "0"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    orphan_file = tmp_path / "orphan.pid"
    orphan = 0
    try:
        broker.start()
        redis.start()
        session = subprocess.run([sys.executable, "-c", SESSION, str(orphan_file)], capture_output=True, text=True, timeout=60,
                                 cwd=Path(__file__).resolve().parents[1])
        assert session.returncode == 0, session.stderr
        orphan = int(orphan_file.read_text())
        found = json.loads(session.stdout)
        assert [int(line.split(":")[0]) for line in found] == [orphan] and "sleep 120" in found[0]
        unrelated = {broker.proc.pid, redis.proc.pid, worker.pid}  # type: ignore[union-attr]
        assert all(Path(f"/proc/{pid}").exists() for pid in unrelated)  # running all along, never reported
    finally:
        if orphan:
            os.kill(orphan, 9)
            wait_for(lambda: state(orphan) == "Z", 10, "the orphan to end")
        worker.kill()
        worker.wait()
        broker.kill()
        redis.stop()
