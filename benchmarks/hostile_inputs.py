"""Hostile files at full size through `dda scan`: the code each gets, and what it costs.

Each case runs in its own `dda scan` process (tiny random model, default 64 MP pixel cap),
followed by a valid photo that must still come back ok (the process survives and serves
the next input). Peak RSS is the larger of the scan process's and its decode processes'
(`ru_maxrss`); CPU is both together (user + system). The baseline rows are legal images at
the pixel cap: the 64 MP 8-bit PNG's peak RSS is the bound the others are held to (2x).
The files are made by a separate process (`--make`): Linux carries a process's peak RSS
across exec, so the measuring parent must stay small.

    python benchmarks/hostile_inputs.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cases() -> list[tuple[str, Callable[[], bytes]]]:
    from PIL import Image

    from tests import hostile_files as h
    from tests.images import encode, photo

    return [
        ("legal: 64 MP 8-bit RGB PNG (baseline)", lambda: h.png(Image.new("RGB", (8000, 8000), (90, 140, 200)))),
        ("legal: 64 MP RGBA PNG", lambda: h.png(Image.new("RGBA", (8000, 8000), (90, 140, 200, 128)))),
        ("legal: 48 MP progressive JPEG", lambda: encode(photo(8000, 6000, seed=1), "JPEG", quality=90, progressive=True)),
        ("JPEG header declaring 65500x65500", lambda: h.jpeg_declaring(65500, 65500)),
        ("AVIF that fails to open", h.avif_that_fails_to_open),
        ("TIFF 400x400 in one 26752x26752 tile", h.tiff_with_giant_tile),
        ("TIFF 64 MP float32", lambda: h.float_tiff(8000)),
        ("PNG 64 MP 16-bit grey", lambda: h.grey16_png(8000)),
        ("PNG 1 x 64,000,000", lambda: h.wide_png(64_000_000)),
        ("TIFF 64 tiles sharing one blob", h.tiff_with_shared_tiles),
        ("progressive 8000x8000 JPEG, 6,000 scans", lambda: h.progressive_jpeg_with_scans(8000, 8000, 6000)),
        ("BMP RLE8, 64 MP of line ends", lambda: h.bmp_rle(8000, 8000)),
        ("BMP RLE4, 64 MP of line ends", lambda: h.bmp_rle(8000, 8000, rle4=True)),
        ("BMP RLE8, 4 MP of line ends (under its limit)", lambda: h.bmp_rle(2000, 2000)),
        ("JPEG cut short, end marker appended", lambda: h.jpeg_cut_with_end_marker(4000, 3000)),
        ("JPEG 8000x8000 with no scan data", lambda: h.jpeg_declaring(8000, 8000)),
        ("arithmetic-coded JPEG", lambda: h.jpeg_with_frame_marker(0xC9)),
    ]

RUN = ("import resource, sys; from dda.cli import main; rc = main(sys.argv[1:]); "
       "s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN); "
       "print('USAGE', max(s.ru_maxrss, c.ru_maxrss), s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, file=sys.stderr); "
       "sys.exit(rc)")


def run_case(model: Path, path: Path, good: Path) -> tuple[str, str, float, float]:
    proc = subprocess.run([sys.executable, "-c", RUN, "scan", "--model", str(model), "--batch-size", "1", str(path), str(good)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return "exit " + str(proc.returncode), "-", 0.0, 0.0
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    rss_kb, cpu_s = next(line.split()[1:] for line in proc.stderr.splitlines() if line.startswith("USAGE"))
    code = records[0]["error"]["code"] if records[0]["status"] == "error" else "ok"
    return code, records[1]["status"], int(rss_kb) / 1024, float(cpu_s)


def make(root: Path, only: list[str] | None) -> None:
    """In its own process: the model, a valid photo and every case file; prints the machine line."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    from machine import describe

    from engine.checkpoint import import_checkpoint
    from engine.synthetic import tiny_architecture, write_official_checkpoint
    from tests.images import encode, photo

    print(f"machine: {json.dumps(describe())}")
    import_checkpoint(write_official_checkpoint(root / "ckpt.pth", tiny_architecture(), seed=3), root / "tiny")
    (root / "good.jpg").write_bytes(encode(photo(640, 480, seed=4), "JPEG", quality=90))
    for i, (name, build) in enumerate(cases()):
        if not only or any(word in name for word in only):
            (root / f"case{i:02d}").write_bytes(build())
            (root / f"case{i:02d}.name").write_text(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="case names containing these words")
    parser.add_argument("--make", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make(Path(args.make), args.only)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, __file__, "--make", tmp, *(["--only", *args.only] if args.only else [])], check=True)
        print("| case | file size | code | next input | peak RSS MB | CPU s |")
        print("|---|---|---|---|---|---|")
        for path in sorted(p for p in root.glob("case*") if p.suffix != ".name"):
            code, after, rss_mb, cpu_s = run_case(root / "tiny", path, root / "good.jpg")
            name = path.with_suffix(".name").read_text()
            print(f"| {name} | {path.stat().st_size:,} B | {code} | {after} | {rss_mb:.0f} | {cpu_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
