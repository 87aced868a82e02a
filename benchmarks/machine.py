"""A description of the machine a benchmark ran on, printed with its results, and the CPU timer
the per-image benchmarks share."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path


def describe() -> dict[str, object]:
    info: dict[str, object] = {"python": platform.python_version(), "cpu_cores": os.cpu_count(),
                               "cpu": platform.processor() or platform.machine()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Best of `repeats` runs, this thread's CPU milliseconds (other processes' load aside)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time_ns()
        fn()
        best = min(best, (time.thread_time_ns() - start) / 1e6)
    return best
