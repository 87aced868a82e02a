"""Hostile URLs, servers and files: each gets its specific error code, and the process keeps serving.

Address checks run in-process against a Fetcher with no allow-list (nothing is ever sent
to a non-loopback address: the check refuses before connecting). Server behaviours and
files run through `dda scan` in a subprocess, allow-listed to 127.0.0.0/8 like the
tests' own servers, with the subprocess's peak memory measured.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.http_server import LocalServer, RawServer, Route, serve
from tests.images import encode, photo
from worker.errors import InputError
from worker.fetch.client import Fetcher, FetchPolicy, is_public, parse_networks

server = pytest.fixture(serve)
LOOPBACK = parse_networks("127.0.0.0/8")


def code_of(fetcher: Fetcher, url: str) -> str:
    with pytest.raises(InputError) as info:
        fetcher.get(url)
    return info.value.code


@pytest.fixture()
def strict() -> Fetcher:
    fetcher = Fetcher(FetchPolicy(total_timeout_s=5))
    yield fetcher
    fetcher.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/", "http://10.1.2.3/x.jpg", "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://2130706433/",
        "http://0x7f.0.0.1/", "http://0x7f000001/", "http://100.64.0.1/", "http://192.168.1.1/",
        "http://172.16.0.1/", "http://0.0.0.0/", "http://224.0.0.1/", "http://240.0.0.1/", "http://[fc00::1]/",
        "http://[fe80::1]/", "http://[64:ff9b::a00:1]/", "http://[2002:7f00:1::]/", "http://localhost/",
    ],
)
def test_non_public_addresses_are_blocked(strict: Fetcher, url: str) -> None:
    assert code_of(strict, url) == "url_blocked"


@pytest.mark.parametrize(
    "url",
    # httpx refuses an octal dotted quad as a malformed IPv4 literal before any resolution.
    ["file:///etc/passwd", "gopher://example.com/1", "ftp://example.com/x", "http:///nohost", "not a url", "http://0177.0.0.1/"],
)
def test_other_schemes_and_malformed_urls_are_invalid(strict: Fetcher, url: str) -> None:
    assert code_of(strict, url) == "url_invalid"


def test_public_address_classification() -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert is_public(ipaddress.ip_address("2606:4700::1111"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))
    assert is_public(ipaddress.ip_address("::ffff:93.184.216.34"))


def test_public_name_resolving_to_private_address_is_blocked() -> None:
    """DNS is simulated (tests have none): the name answers with a private address."""
    fetcher = Fetcher(FetchPolicy(resolver=lambda host, port: ["10.0.0.7"]))
    try:
        assert code_of(fetcher, "http://images.example.com/cat.jpg") == "url_blocked"
    finally:
        fetcher.close()


def test_any_private_answer_among_several_blocks_the_name() -> None:
    fetcher = Fetcher(FetchPolicy(resolver=lambda host, port: ["93.184.216.34", "127.0.0.1"]))
    try:
        assert code_of(fetcher, "http://images.example.com/cat.jpg") == "url_blocked"
    finally:
        fetcher.close()


def test_connection_goes_to_the_address_that_was_checked(server: LocalServer) -> None:
    """A rebinding resolver answers differently on each call; only one answer is ever used."""
    png = encode(photo(50, 40), "PNG")
    server.routes["/a.png"] = Route(body=png)
    port = int(server.base.rsplit(":", 1)[1])
    answers = iter([["127.0.0.1"], ["10.0.0.9"]])
    calls: list[str] = []

    def rebinding(host: str, _port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    fetcher = Fetcher(FetchPolicy(allow_networks=LOOPBACK, resolver=rebinding))
    try:
        assert fetcher.get(f"http://images.example.com:{port}/a.png") == png
    finally:
        fetcher.close()
    assert calls == ["images.example.com"]


def test_redirect_to_private_address_is_blocked(server: LocalServer) -> None:
    server.routes["/go"] = Route(status=302, headers=(("Location", "http://169.254.169.254/latest/meta-data/"),))
    server.routes["/go10"] = Route(status=301, headers=(("Location", "http://10.0.0.1/x"),))
    fetcher = Fetcher(FetchPolicy(allow_networks=LOOPBACK))
    try:
        assert code_of(fetcher, f"{server.base}/go") == "url_blocked"
        assert code_of(fetcher, f"{server.base}/go10") == "url_blocked"
    finally:
        fetcher.close()


def test_transient_errors_are_retried_and_client_errors_are_not(server: LocalServer) -> None:
    png = encode(photo(30, 30), "PNG")
    server.routes["/flaky"] = Route(body=png, fail_first=2)
    server.routes["/gone"] = Route(status=404)
    server.routes["/down"] = Route(body=png, fail_first=100)
    fetcher = Fetcher(FetchPolicy(allow_networks=LOOPBACK, retries=2, retry_backoff_s=0.01))
    try:
        assert fetcher.get(f"{server.base}/flaky") == png
        assert server.routes["/flaky"].hits == 3
        assert code_of(fetcher, f"{server.base}/gone") == "fetch_http_status"
        assert server.routes["/gone"].hits == 1
        assert code_of(fetcher, f"{server.base}/down") == "fetch_http_status"
        assert server.routes["/down"].hits == 3
    finally:
        fetcher.close()


def test_proxy_environment_is_ignored(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    png = encode(photo(30, 30), "PNG")
    server.routes["/p.png"] = Route(body=png)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    fetcher = Fetcher(FetchPolicy(allow_networks=LOOPBACK))
    try:
        assert fetcher.get(f"{server.base}/p.png") == png
    finally:
        fetcher.close()


# --- misbehaving servers and hostile files, through the real CLI ------------------------------


def never_answers(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait()


def trickles_body(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
    while not stop.wait(1.0):
        conn.sendall(b"\xff")


def trickles_headers(conn: socket.socket, stop: threading.Event) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
        if stop.wait(0.5):
            return
        conn.sendall(bytes([byte]))


def endless_body(conn: socket.socket, stop: threading.Event) -> None:
    """Claims nothing, sends up to 1 GB (connection-delimited), stops when the client leaves."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n")
    block = b"\xff\xd8\xff" + b"\x00" * (1 << 20)
    for _ in range(1024):
        if stop.is_set():
            return
        conn.sendall(block)


def lies_small(conn: socket.socket, stop: threading.Event) -> None:
    """Claims 2,000 bytes and then keeps sending a JPEG far longer than that."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n")
    jpeg = encode(photo(800, 600), "JPEG", quality=95)
    for _ in range(200):
        if stop.is_set():
            return
        conn.sendall(jpeg)


def gif_with_many_frames(count: int = 3000) -> bytes:
    frames = [Image.new("P", (8, 8), i % 256) for i in range(count)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    return buf.getvalue()


def png_bomb() -> bytes:
    from tests.worker.decode.test_decode import png_header_only

    return png_header_only(100_000, 100_000)


# Peak RSS of the scanning process over a benign run of the same process (measured: +13 MB,
# with a 8 MB fetch cap, a 1 GB stream, a 100k x 100k PNG and a 3,000-frame GIF among the inputs).
GROWTH_LIMIT_MB = 64


def scan_with_peak_rss(model: Path, inputs: list[str | bytes], *options: str) -> tuple[list[dict], int, float]:
    """Records, peak RSS of the scan process or its largest decode process, and wall seconds."""
    code = ("import resource, sys; from dda.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK_RSS_KB', max(resource.getrusage(r).ru_maxrss for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)),"
            " file=sys.stderr); sys.exit(rc)")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, "scan", "--model", str(model), *options, *inputs],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")))
    return [json.loads(line) for line in proc.stdout.splitlines()], peak_kb, time.monotonic() - started


def test_hostile_servers_and_files_get_specific_codes_within_a_memory_bound(
    tiny_model_dir: Path, tmp_path: Path, server: LocalServer
) -> None:
    good = encode(photo(640, 480, seed=4), "JPEG", quality=90)
    truncated_jpeg = good[: len(good) // 2]
    server.routes["/good.jpg"] = Route(body=good)
    server.routes["/missing.jpg"] = Route(status=404)
    server.routes["/page.html"] = Route(body=b"<!doctype html><html><body>hello</body></html>", headers=(("Content-Type", "text/html"),))
    server.routes["/claims-huge.jpg"] = Route(body=b"\xff\xd8\xff" + b"\x00" * 1000, headers=(("Content-Length", str(600 * 1024 * 1024)),))
    server.routes["/to-metadata"] = Route(status=302, headers=(("Location", "http://169.254.169.254/latest/meta-data/"),))
    server.routes["/loop"] = Route(status=302, headers=(("Location", "/loop"),))

    files = {
        "bomb.png": png_bomb(),
        "truncated.jpg": truncated_jpeg,
        "frames.gif": gif_with_many_frames(),
        "random.bin": os.urandom(50_000),
        "page.html": b"<html><body>not an image</body></html>",
        "empty.jpg": b"",
        "vector.svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "good.png": encode(photo(500, 400, seed=5), "PNG"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    with RawServer(never_answers) as silent, RawServer(trickles_body) as slow_body, RawServer(trickles_headers) as slow_headers, \
            RawServer(endless_body) as gigabyte, RawServer(lies_small) as liar:
        cases = [
            (silent.url, "fetch_timeout"),
            (slow_body.url, "fetch_timeout"),
            (slow_headers.url, "fetch_timeout"),
            (gigabyte.url, "fetch_too_large"),
            (liar.url, "image_truncated"),
            (f"{server.base}/claims-huge.jpg", "fetch_too_large"),
            (f"{server.base}/missing.jpg", "fetch_http_status"),
            (f"{server.base}/page.html", "unsupported_format"),
            (f"{server.base}/to-metadata", "url_blocked"),
            (f"{server.base}/loop", "fetch_failed"),
            ("gopher://127.0.0.1/1", "url_invalid"),
            ("file:///etc/passwd", "url_invalid"),
            (str(tmp_path / "bomb.png"), "image_too_large"),
            (str(tmp_path / "truncated.jpg"), "image_truncated"),
            (str(tmp_path / "random.bin"), "unsupported_format"),
            (str(tmp_path / "page.html"), "unsupported_format"),
            (str(tmp_path / "empty.jpg"), "unsupported_format"),
            (str(tmp_path / "vector.svg"), "unsupported_format"),
        ]
        servable = [(f"{server.base}/good.jpg", "ok"), (str(tmp_path / "frames.gif"), "ok"), (str(tmp_path / "good.png"), "ok")]
        inputs = [u for u, _ in cases + servable]
        options = ("--allow-networks", "127.0.0.0/8", "--fetch-timeout", "3", "--fetch-max-bytes", str(8 << 20))
        _, baseline_kb, _ = scan_with_peak_rss(tiny_model_dir, [u for u, _ in servable], *options)
        records, peak_kb, seconds = scan_with_peak_rss(tiny_model_dir, inputs, *options)

    got = [(r["input"], r["error"]["code"] if r["status"] == "error" else "ok") for r in records]
    assert got == cases + servable, json.dumps(records, indent=1)
    growth_mb = (peak_kb - baseline_kb) / 1024
    assert growth_mb < GROWTH_LIMIT_MB, f"peak RSS {peak_kb / 1024:.0f} MB, {growth_mb:.0f} MB over a benign run"
    assert seconds < 120  # three 3-second deadlines and one read timeout, not a hang


def test_crafted_files_get_their_codes_within_bounds_and_the_next_input_is_served(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Every class of the second red-team pass, small instances under an 8 MP cap (the budgets scale
    with the cap; `benchmarks/hostile_inputs.py` runs the full-size ones). Valid files sit between
    the hostile ones: each is still answered ok."""
    from tests import hostile_files as h

    cases = [
        ("jpeg-65500.jpg", h.jpeg_declaring(65500, 65500), "image_too_large"),
        ("broken.avif", h.avif_that_fails_to_open(), "decode_failed"),
        ("giant-tile.tif", h.tiff_with_giant_tile(400, 26752), "image_too_large"),
        ("shared-tiles.tif", h.tiff_with_shared_tiles(1024, 256), "image_too_complex"),
        ("float.tif", h.float_tiff(2800), "ok"),
        ("grey16.png", h.grey16_png(2800), "ok"),
        ("wide.png", h.wide_png(8_000_000), "ok"),
        ("scans.jpg", h.progressive_jpeg_with_scans(800, 600, 80), "image_too_complex"),
        ("rle8-big.bmp", h.bmp_rle(2500, 2000), "image_too_complex"),
        ("rle4-big.bmp", h.bmp_rle(2500, 2000, rle4=True), "image_too_complex"),
        ("rle8-small.bmp", h.bmp_rle(600, 400), "ok"),
        ("cut.jpg", h.jpeg_cut_with_end_marker(1600, 1200), "image_truncated"),
        ("no-scan.jpg", h.jpeg_declaring(2000, 2000), "image_truncated"),
        ("arithmetic.jpg", h.jpeg_with_frame_marker(0xC9), "unsupported_format"),
        ("lossless.jpg", h.jpeg_with_frame_marker(0xC3), "unsupported_format"),
    ]
    good = encode(photo(640, 480, seed=4), "JPEG", quality=90)
    inputs: list[str | bytes] = []
    expected = []
    for name, data, code in cases:
        (tmp_path / name).write_bytes(data)
        (tmp_path / f"good-{name}.jpg").write_bytes(good)
        inputs += [str(tmp_path / name), str(tmp_path / f"good-{name}.jpg")]
        expected += [code, "ok"]
    _, baseline_kb, _ = scan_with_peak_rss(tiny_model_dir, [str(tmp_path / "float.tif")], "--max-pixels", "8000000")
    records, peak_kb, _ = scan_with_peak_rss(tiny_model_dir, inputs, "--max-pixels", "8000000", "--batch-size", "4")
    got = [r["error"]["code"] if r["status"] == "error" else "ok" for r in records]
    assert got == expected, json.dumps([r for r in records if r["status"] == "error"], indent=1)
    assert peak_kb < 2 * baseline_kb, f"peak RSS {peak_kb // 1024} MB, the largest legal file alone {baseline_kb // 1024} MB"


def test_extreme_shapes_and_animation_canvases_are_answered_or_refused_within_the_memory_bound() -> None:
    """The third red-team pass, through the worker's own decode process (crop and PDQ hash), each
    file's peak measured alone, under an 8 MP cap (the budget scales with it): legal files that
    cost far more per pixel than an ordinary image (a row pointer per pixel of a 1-pixel-wide
    image, libwebp's canvases) are refused from their headers as `image_too_large`, the rest are
    answered; every peak stays within twice the largest ordinary image's, and the next file is
    served."""
    from tests import hostile_files as h
    from tests.decode_peaks import measure

    cap = 8_000_000
    cases = [
        ("baseline: 8 MP 8-bit RGB PNG", h.png(Image.new("RGB", (2828, 2828), (90, 140, 200))), "ok"),
        ("PNG 1 x 8,000,000", h.extreme_shape("PNG", 1, cap), "image_too_large"),
        ("TIFF 1 x 8,000,000", h.extreme_shape("TIFF", 1, cap), "image_too_large"),
        ("BMP 1 x 8,000,000", h.extreme_shape("BMP", 1, cap), "image_too_large"),
        ("PNG 4 x 2,000,000", h.extreme_shape("PNG", 4, cap // 4), "ok"),
        ("PNG 16 x 500,000 RGB", h.extreme_shape("PNG", 16, cap // 16, "RGB"), "ok"),
        ("PNG 8,000,000 x 1", h.extreme_shape("PNG", cap, 1), "ok"),
        ("TIFF 8,000,000 x 1", h.extreme_shape("TIFF", cap, 1), "ok"),
        ("BMP 8,000,000 x 1", h.extreme_shape("BMP", cap, 1), "ok"),
        ("TIFF 1,600,000 x 5 RGB", h.extreme_shape("TIFF", cap // 5, 5, "RGB"), "ok"),
        ("GIF 65535 x 122", h.extreme_shape("GIF", 65535, 122), "ok"),
        ("GIF 122 x 65535", h.extreme_shape("GIF", 122, 65535), "ok"),
        ("animated GIF, 2828 canvas", h.animation("GIF", 2828), "ok"),
        ("animated PNG, 2828 canvas", h.animation("PNG", 2828), "ok"),
        ("animated WebP, 2828 canvas", h.animation("WEBP", 2828), "image_too_large"),
        ("animated WebP, 2000 canvas", h.animation("WEBP", 2000), "ok"),
        ("WebP declaring a 16383 canvas", h.webp_declaring_canvas(16383, 16383), "image_too_large"),
        ("WebP declaring a 3000 canvas", h.webp_declaring_canvas(3000, 3000), "image_too_large"),
        ("AVIF 2828 RGBA 4:4:4", h.extreme_shape("AVIF", 2828, 2828, "RGBA"), "image_too_large"),
        ("AVIF 2828 RGB", h.extreme_shape("AVIF", 2828, 2828, "RGB"), "ok"),
    ]
    good = encode(photo(640, 480, seed=4), "JPEG", quality=90)
    measured = measure([data for _, data, _ in cases for data in (data, good)], cap)
    baseline = measured[0].growth_mb
    assert baseline is not None and baseline > 40  # a real decode of 8 MP, not a refusal
    rows = [(name, m.code, after.code, m.growth_mb) for (name, _, _), m, after in zip(cases, measured[::2], measured[1::2])]
    assert [(name, code, "ok") for name, _, code in cases] == [row[:3] for row in rows], rows
    over = [row for row in rows if row[3] is None or row[3] > 2 * baseline]
    assert not over, f"over twice the baseline's {baseline:.0f} MB: {over}"


@pytest.mark.parametrize("location", ["javascript:alert(1)", "data:image/png;base64,AAAA", "http://[::1"])
def test_scan_answers_every_url_class_and_goes_on(tiny_model_dir: Path, server: LocalServer, location: str) -> None:
    good = encode(photo(500, 400, seed=5), "PNG")
    server.routes["/good.png"] = Route(body=good)
    server.routes["/r"] = Route(status=302, headers=(("Location", location),))
    server.routes["/bare"] = Route(status=302)
    inputs: list[str | bytes] = [f"{server.base}/r", f"{server.base}/bare", b"http://127.0.0.1/\xff\xfe", f"{server.base}/good.png"]
    records, _, _ = scan_with_peak_rss(tiny_model_dir, inputs, "--allow-networks", "127.0.0.0/8", "--fetch-timeout", "5")
    got = [r["error"]["code"] if r["status"] == "error" else "ok" for r in records]
    assert got == ["url_invalid", "fetch_http_status", "url_invalid", "ok"], json.dumps(records, indent=1)
