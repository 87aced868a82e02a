"""worker.fetch.local_files: a local path is read as hostile input, with the input's own error code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.errors import InputError
from worker.fetch.local_files import read_path


def code_of(path: str, max_bytes: int = 1000) -> str:
    with pytest.raises(InputError) as info:
        read_path(path, max_bytes)
    return info.value.code


def test_regular_files_up_to_the_cap_are_read_and_everything_else_has_its_code(tmp_path: Path) -> None:
    small, large, fifo = tmp_path / "small", tmp_path / "large", tmp_path / "fifo"
    small.write_bytes(b"x" * 1000)
    large.write_bytes(b"x" * 1001)
    os.mkfifo(fifo)  # nobody writes to it: opening or reading it must not wait
    assert read_path(str(small), 1000) == b"x" * 1000
    assert code_of(str(large)) == "fetch_too_large"
    assert code_of(str(fifo)) == "file_not_found"
    assert code_of("/dev/zero") == "file_not_found"
    assert code_of(str(tmp_path)) == "file_not_found"
    assert code_of(str(tmp_path / "missing")) == "file_not_found"
    assert code_of(str(tmp_path / "a\x00b")) == "url_invalid"
    assert code_of(str(tmp_path / "lone\ud800")) == "file_not_found"
    with pytest.raises(InputError) as info:
        read_path("/" + "a" * 10_000, 1000)  # ENAMETOOLONG: the message shows a bounded part of the path
    assert len(info.value.message) < 400
