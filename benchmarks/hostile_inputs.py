"""Hostile files at full size through the worker's decode process: the code each gets, and its cost.

Every case goes through one decode process of the worker's pool (crop, integrity and PDQ hash,
the default limits and 64 MP pixel cap), followed by a valid photo that must still come back
ok. Peak RSS is that process's own for that job (its peak reset before each job, see
tests/decode_peaks.py), over the RSS it had just before; CPU is the process's for the job. The
first row, a legal 64 MP 8-bit RGB PNG, is the baseline every other file is held to (2x).

    python benchmarks/hostile_inputs.py [--only WORD ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAP = 64_000_000


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
        ("PNG 64,000,000 x 1 (wide)", lambda: h.wide_png(64_000_000)),
        ("TIFF 64 tiles sharing one blob", h.tiff_with_shared_tiles),
        ("progressive 8000x8000 JPEG, 6,000 scans", lambda: h.progressive_jpeg_with_scans(8000, 8000, 6000)),
        ("BMP RLE8, 64 MP of line ends", lambda: h.bmp_rle(8000, 8000)),
        ("BMP RLE4, 64 MP of line ends", lambda: h.bmp_rle(8000, 8000, rle4=True)),
        ("BMP RLE8, 4 MP of line ends (under its limit)", lambda: h.bmp_rle(2000, 2000)),
        ("JPEG cut short, end marker appended", lambda: h.jpeg_cut_with_end_marker(4000, 3000)),
        ("JPEG 8000x8000 with no scan data", lambda: h.jpeg_declaring(8000, 8000)),
        ("arithmetic-coded JPEG", lambda: h.jpeg_with_frame_marker(0xC9)),
        ("PNG 1 x 64,000,000 (tall)", lambda: h.extreme_shape("PNG", 1, CAP)),
        ("TIFF 1 x 64,000,000 (tall)", lambda: h.extreme_shape("TIFF", 1, CAP)),
        ("BMP 1 x 64,000,000 (tall)", lambda: h.extreme_shape("BMP", 1, CAP)),
        ("PNG 1 x 64,000,000 RGB (tall)", lambda: h.extreme_shape("PNG", 1, CAP, "RGB")),
        ("PNG 4 x 16,000,000 grey", lambda: h.extreme_shape("PNG", 4, CAP // 4)),
        ("PNG 16 x 4,000,000 RGB", lambda: h.extreme_shape("PNG", 16, CAP // 16, "RGB")),
        ("TIFF 64,000,000 x 1 (wide)", lambda: h.extreme_shape("TIFF", CAP, 1)),
        ("BMP 64,000,000 x 1 (wide)", lambda: h.extreme_shape("BMP", CAP, 1)),
        ("TIFF 12,800,000 x 5 RGB", lambda: h.extreme_shape("TIFF", CAP // 5, 5, "RGB")),
        ("GIF 65535 x 976", lambda: h.extreme_shape("GIF", 65535, 976)),
        ("GIF 976 x 65535", lambda: h.extreme_shape("GIF", 976, 65535)),
        ("animated GIF, 8000x8000 canvas, tiny frames", lambda: h.animation("GIF", 8000)),
        ("animated PNG, 8000x8000 canvas, tiny frames", lambda: h.animation("PNG", 8000)),
        ("animated WebP, 8000x8000 canvas, tiny frames", lambda: h.animation("WEBP", 8000)),
        ("animated WebP, 6800x6800 canvas, tiny frames", lambda: h.animation("WEBP", 6800)),
        ("animated WebP, 5000x5000 canvas, tiny frames", lambda: h.animation("WEBP", 5000)),
        ("WebP declaring a 16383x16383 canvas", lambda: h.webp_declaring_canvas(16383, 16383)),
        ("legal: WebP 16383 x 3900 RGB", lambda: h.extreme_shape("WEBP", 16383, 3900, "RGB")),
        ("legal: AVIF 8000x8000 RGB", lambda: h.extreme_shape("AVIF", 8000, 8000, "RGB")),
        ("AVIF 8000x8000 RGBA 4:4:4", lambda: h.extreme_shape("AVIF", 8000, 8000, "RGBA")),
    ]

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="case names containing these words")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    sys.path.insert(0, str(ROOT))
    from machine import describe

    from engine.imaging.budget import peak_budget
    from tests.decode_peaks import measure
    from tests.images import encode, photo

    print(f"machine: {json.dumps(describe())}")
    good = encode(photo(640, 480, seed=4), "JPEG", quality=90)
    chosen = [(name, build) for i, (name, build) in enumerate(cases())
              if i == 0 or not args.only or any(word in name for word in args.only)]
    print(f"pixel cap {CAP:,}; decode memory budget {peak_budget(CAP) >> 20} MB (engine.imaging.decode)")
    print("| case | file size | code | next input | peak RSS over idle, MB | x baseline | CPU s |")
    print("|---|---|---|---|---|---|---|")
    baseline = None
    for name, build in chosen:
        data = build()
        first, after = measure([data, good], CAP)
        growth = "-" if first.growth_mb is None else f"{first.growth_mb:.0f}"
        baseline = baseline or first.growth_mb
        ratio = "-" if first.growth_mb is None or not baseline else f"{first.growth_mb / baseline:.2f}"
        cpu = "-" if first.cpu_s is None else f"{first.cpu_s:.2f}"
        print(f"| {name} | {len(data):,} B | {first.code} | {after.code} | {growth} | {ratio} | {cpu} |", flush=True)


if __name__ == "__main__":
    main()
