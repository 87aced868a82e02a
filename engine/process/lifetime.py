"""Child processes that end with their parent.

A SIGKILLed parent runs no clean-up, so its decode, engine and consumer processes must notice
on their own, or they hold GPU memory, broker group slots and CPU long after the pod died.
"""

from __future__ import annotations

import os
import signal
import threading
import time


def end_with_parent() -> None:
    """SIGKILL on the parent's death where Linux offers it (PR_SET_PDEATHSIG). Also a
    subprocess `preexec_fn`: the setting survives exec, so it holds for any program."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def die_with_parent(parent_pid: int) -> None:
    """`end_with_parent`, and a watchdog thread for systems without it."""
    end_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
