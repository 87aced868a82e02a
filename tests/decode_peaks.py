"""Files through one decode process of the worker's pool, each measured alone: what a crafted
file costs where the worker decodes it (crop, integrity and PDQ hash, under the worker's limits).

Before each job the process's peak RSS is reset (`/proc/PID/clear_refs`, "5"), so its VmHWM
after the answer is that job's peak; growth is measured from the RSS it had just before.
Used by tests/worker/test_hostile_inputs.py (small instances, a small pixel cap) and
benchmarks/hostile_inputs.py (full size).
"""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass
from pathlib import Path

from worker.decode.pool import DecodePool
from worker.decode.prepare import Prepared
from worker.decode.process import DecodeJob, DecodeLimits
from worker.supervision import Supervisor

ANSWER_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Measured:
    code: str  # "ok" or the error code
    growth_mb: float | None  # peak RSS over the RSS before the job; None when the process was replaced
    cpu_s: float | None
    idle_mb: float


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure(files: list[bytes], max_pixels: int, limits: DecodeLimits | None = None) -> list[Measured]:
    """One Measured per file, in order, through a pool of one decode process."""
    supervisor = Supervisor()
    pool = DecodePool(1, supervisor, limits or DecodeLimits())
    pool.start()
    answers: queue.Queue[Prepared] = queue.Queue()
    out = []
    try:
        for data in files:
            pid = pool.pids()[0]
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            idle_kb, cpu_before = _status_kb(pid, "VmRSS"), _cpu_s(pid)
            pool.submit(DecodeJob(data, 336, 1, max_pixels, done=answers.put))
            prepared = answers.get(timeout=ANSWER_TIMEOUT_S)
            code = prepared.error[0] if prepared.error else "ok"
            if pool.pids() == [pid]:
                growth: float | None = (_status_kb(pid, "VmHWM") - idle_kb) / 1024
                cpu: float | None = _cpu_s(pid) - cpu_before
            else:
                growth = cpu = None
            out.append(Measured(code, growth, cpu, idle_kb / 1024))
    finally:
        supervisor.stop(5.0)
        pool.close()
    return out
