"""Child processes that end with their parent.

A SIGKILLed parent runs no clean-up, so its decode, engine and consumer processes must notice
on their own, or they hold GPU memory, broker group slots and CPU long after the pod died.
"""

from __future__ import annotations

import os
import signal
import threading
import time


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL on the parent's death where Linux offers it; a watchdog thread everywhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
