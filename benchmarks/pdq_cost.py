"""PDQ's CPU per image: the pdqhash package (Meta's C++ over whole float copies of the image, the
baseline) vs engine.imaging._pdq (one pass, 64 kept columns per row), side by side on the same pixels in
one run: every decodable image of ../shared/data, plus synthetic sizes. Also checks the hashes
are bit-identical.

    python benchmarks/pdq_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_ms, describe

from engine.imaging.decode import decode_rgb
from worker.cache.hashing import pdq_from_pixels

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pdqhash_hex(rgb: np.ndarray) -> str:
    import pdqhash

    bits, _ = pdqhash.compute(rgb)
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sets: dict[str, list[np.ndarray]] = {}
    for path in sorted(DATA.rglob("*")):
        if path.is_file() and path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"):
            try:
                rgb = np.ascontiguousarray(decode_rgb(path.read_bytes()))
            except ValueError:
                continue
            megapixels = rgb.shape[0] * rgb.shape[1] / 1e6
            sets.setdefault("under 1 MP" if megapixels < 1 else "1-3 MP" if megapixels <= 3.2 else "over 3 MP", []).append(rgb)
    rng = np.random.default_rng(0)
    sets["640x480 synthetic"] = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
    print(f"machine: {json.dumps(describe())}")
    print("| images | pdqhash ms (median) | engine.imaging._pdq ms (median) | speed-up | identical |")
    print("|---|---|---|---|---|")
    for name, images in sets.items():
        before = [cpu_ms(lambda i=i: pdqhash_hex(i), args.repeats) for i in images]  # type: ignore[misc]
        after = [cpu_ms(lambda i=i: pdq_from_pixels(i), args.repeats) for i in images]  # type: ignore[misc]
        same = all(pdqhash_hex(i) == pdq_from_pixels(i)[0] for i in images)
        print(f"| {name} x{len(images)} | {np.median(before):.2f} | {np.median(after):.2f} "
              f"| {np.median(before) / np.median(after):.1f}x | {same} |")


if __name__ == "__main__":
    main()
