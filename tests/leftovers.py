"""What the test session left running: its own descendants, and nothing else on the machine.

The session's process becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so a process
a test started and orphaned (a worker's decode process after a SIGKILL, a daemonised server)
is re-parented to the session instead of to init, and stays in its tree. Processes of other
checkouts or CI jobs on the same machine are never in it, whatever their command line.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from tests.services import descendants

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """False where the kernel has no such call (then orphans go to init and are not seen)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def state(pid: int) -> str:
    """The process's state letter ("Z" for a zombie, also for one already gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"  # gone meanwhile


def leftovers(root: int) -> list[str]:
    """Living (not zombie) descendants of `root`, as 'pid: command line'."""
    return [f"{pid}: {command[:160]}" for pid, command in sorted(descendants(root).items()) if state(pid) != "Z"]
