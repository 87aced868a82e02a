"""The embedded default (`dda worker` with no broker): stdin requests, stdout verdicts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.images import encode, scene
from tests.schemas import check_verdict, verdict_lines


def test_stdin_to_stdout_through_the_same_pipeline(tiny_model_dir: Path, tmp_path: Path) -> None:
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        path.write_bytes(encode(scene(400, 380, seed=i), "PNG"))
        paths.append(str(path))
    lines = [paths[0], json.dumps({"id": "j1", "url": paths[1], "metadata": {"a": 1}}), "{broken", paths[0],
             str(tmp_path / "missing.png"), paths[2], "", "  \r"]
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dda", "worker"], input="\n".join(lines) + "\n", text=True,
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = verdict_lines(proc.stdout)
    assert len(records) == len(lines)  # every line answered once on stdout: blank lines too, as Kafka answers an empty message
    verdicts = {v["id"]: v for v in records if "status" in v}
    assert set(verdicts) == {"stdin/0/0", "j1", "stdin/0/3", "stdin/0/4", "stdin/0/5"}
    assert verdicts["j1"]["metadata"] == {"a": 1} and verdicts["j1"]["status"] == "ok"
    assert verdicts["stdin/0/4"]["error"]["code"] == "file_not_found"
    assert abs(verdicts["stdin/0/0"]["logit"] - verdicts["stdin/0/3"]["logit"]) < 1e-5  # same bytes (maybe another batch)
    dead = sorted((d["source"]["offset"], d["reason"]) for d in records if "reason" in d)
    assert dead == [(2, "not_json"), (6, "empty"), (7, "empty")]
    assert all(json.loads(line) for line in proc.stderr.splitlines())  # stderr: the JSON log only


def test_every_line_that_is_not_valid_text_gets_its_own_answer_and_the_next_line_is_served(
    tiny_model_dir: Path, tmp_path: Path,
) -> None:
    """Hostile lines: not UTF-8, lone surrogates (escaped in JSON, or as CESU-8 bytes), overlong
    encodings, NULs in paths, a byte-order mark, paths to what is no regular file. Each line
    gets exactly one line on stdout, with its code; a valid line after each is answered ok."""
    good = tmp_path / "good.png"
    good.write_bytes(encode(scene(400, 380, seed=3), "PNG"))
    hostile: list[tuple[bytes, str]] = [
        (b'{"id": "L", "url": "GOOD", "x": "\\ud800"}', "invalid_unicode"),
        (b'{"id": "L\\udc00", "url": "GOOD"}', "invalid_unicode"),
        (b'{"id": "L", "url": "/img\\udfff.png"}', "invalid_unicode"),
        (b'{"id": "L", "url": "GOOD", "metadata": {"\\ud83d": 1}}', "invalid_unicode"),
        (b'{"id": "L\xff", "url": "GOOD"}', "not_utf8"),
        (b'{"id": "L", "url": "GOOD\xc0\xaf"}', "not_utf8"),  # an overlong '/'
        (b'{"id": "L", "url": "GOOD", "m": "\xed\xa0\x80"}', "not_utf8"),  # a surrogate as CESU-8 bytes
        (b'{"id": "L", "url": "GOOD"}\xe2\x82', "not_utf8"),  # cut inside a character
        (str(tmp_path).encode() + b"/\xff\xfe.png", "not_utf8"),
        (str(tmp_path).encode() + b"/a\x00b.png", "url_invalid"),
        (b'{"id": "L", "url": "GOOD\\u0000"}', "url_invalid"),
        (b"/dev/zero", "file_not_found"),
        (str(tmp_path).encode(), "file_not_found"),
        (b'\xef\xbb\xbf{"id": "L", "url": "GOOD"}', "ok"),  # a byte-order mark before valid JSON
        (b'{"id": "L\\ud83d\\ude00", "url": "GOOD"}', "ok"),  # a valid surrogate pair
    ]
    lines, expected = [], {}
    for n, (line, code) in enumerate(hostile):
        lines.append(line.replace(b"GOOD", str(good).encode()).replace(b'"L', f'"L{2 * n}'.encode()))
        lines.append(json.dumps({"id": f"L{2 * n + 1}", "url": str(good)}).encode())
        expected.update({2 * n: code, 2 * n + 1: "ok"})
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dda", "worker"], input=b"\n".join(lines) + b"\n",
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = verdict_lines(proc.stdout.decode())
    assert len(records) == len(lines), records
    got = {}
    for record in records:
        if "reason" in record:
            got[record["source"]["offset"]] = record["reason"]
        else:
            number = re.match(r"L(\d+)|stdin/0/(\d+)", record["id"])
            assert number is not None, record["id"]
            line = int(number.group(1) or number.group(2))
            got[line] = record["error"]["code"] if record["status"] == "error" else "ok"
    assert got == expected
    assert all(json.loads(line) for line in proc.stderr.splitlines())


def test_invalid_configuration_fails_fast(tiny_model_dir: Path) -> None:
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_MAX_BATCH": "zero"}
    proc = subprocess.run([sys.executable, "-m", "dda", "worker"], input="", text=True, capture_output=True, env=env, timeout=60)
    assert proc.returncode == 2 and "DDA_MAX_BATCH='zero'" in proc.stderr


def test_stdin_mode_honours_sigterm_and_ctrl_c_while_waiting_for_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    import signal
    import time

    path = tmp_path / "a.png"
    path.write_bytes(encode(scene(400, 380, seed=1), "PNG"))
    env = {**os.environ, "DDA_MODEL": str(tiny_model_dir), "DDA_METRICS_PORT": "0", "DDA_DECODE_WORKERS": "1",
           "DDA_DRAIN_TIMEOUT_S": "2"}
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([sys.executable, "-m", "dda", "worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{path}\n".encode())
        proc.stdin.flush()  # stdin stays open: the worker waits for more input
        verdict = check_verdict(json.loads(proc.stdout.readline()))
        assert verdict["status"] == "ok"
        began = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=2 + 10) == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - began < 2 + 10
        proc.stdin.close()
        proc.stdout.close()
        assert proc.stderr is not None and b'"worker stopped"' in proc.stderr.read()
        proc.stderr.close()
