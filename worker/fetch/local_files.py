"""Local files named by an input (`dda scan` arguments, stdin-mode lines): the one rule for reading them.

A path is as hostile as a URL: it may hold a NUL, name a directory, a FIFO that never ends
(`/dev/stdin`), a device that never ends (`/dev/zero`) or a file of any size. Only regular
files are read, at most `max_bytes` of them (the fetch cap, so a path and a URL cost the same),
and every failure is the input's own error code.
"""

from __future__ import annotations

import os
import stat

from worker.errors import FETCH_TOO_LARGE, FILE_NOT_FOUND, URL_INVALID, InputError

SHOWN_CHARS = 200  # of a path in an error message: the record carries the path itself already


def read_path(path: str, max_bytes: int) -> bytes:
    shown = path if len(path) <= SHOWN_CHARS else path[:SHOWN_CHARS] + "..."
    if "\x00" in path:
        raise InputError(URL_INVALID, "a path cannot hold a NUL character")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: opening a FIFO must not wait
    except (OSError, ValueError) as exc:  # ValueError: a lone surrogate the file system cannot encode
        raise InputError(FILE_NOT_FOUND, f"cannot read {shown}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(FILE_NOT_FOUND, f"cannot read {shown}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(FILE_NOT_FOUND, f"cannot read {shown}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(FETCH_TOO_LARGE, f"{shown} is larger than the {max_bytes}-byte limit")
    return data
