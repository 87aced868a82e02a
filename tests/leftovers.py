"""What the test session left running: its own descendants, and nothing else on the machine.

The session's process becomes a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so a process
a test started and orphaned (a worker's decode process after a SIGKILL, a daemonised server)
is re-parented to the session instead of to init, and stays in its tree. Processes of other
checkouts or CI jobs on the same machine are never in it, whatever their command line.
"""

from __future__ import annotations

import ctypes

from tests.services import descendants, state

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """False where the kernel has no such call (then orphans go to init and are not seen)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def leftovers(root: int) -> list[str]:
    """Living (not zombie) descendants of `root`, as 'pid: command line'."""
    return [f"{pid}: {command[:160]}" for pid, command in sorted(descendants(root).items()) if state(pid) != "Z"]
