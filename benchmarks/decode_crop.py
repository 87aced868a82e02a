"""Decode cost per image: the reference's Pillow decode + crop vs the region decode, side by side.

For 12 MP camera JPEGs (../shared/data/pdq/reg-test-input/exif-rotn) and 2000x1500 photos
made from them (resized, JPEG quality 92, 4:2:0), in one run: the model's centre crop by
Pillow's full decode + `center_crop` (the reference's way, the baseline), by our strict full
decode (`decode_rgb`), and by `decode_center_crop(...)` (region colour conversion, the rest
entropy-decoded for integrity), checked bit-identical. Best of --repeats timings, milliseconds
per image. (PDQ's cost: benchmarks/pdq_cost.py; crop and hash together: benchmarks/prepare_cost.py.)

    python benchmarks/decode_crop.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from engine.imaging.decode import decode_center_crop, decode_rgb
from engine.imaging.preprocess import center_crop

CAMERA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pdq" / "reg-test-input" / "exif-rotn"


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def photo_sets() -> dict[str, list[bytes]]:
    camera = [p.read_bytes() for p in sorted(CAMERA.glob("*.jpg"))]
    if not camera:
        raise SystemExit(f"no camera JPEGs in {CAMERA}")
    resized = []
    for data in camera:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize((2000, 1500), Image.LANCZOS).save(buf, "JPEG", quality=92)
        resized.append(buf.getvalue())
    return {"12 MP camera JPEG (4032x3024)": camera, "2000x1500 JPEG q92": resized}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {json.dumps(describe())}")
    print("| images | crop: Pillow full decode ms | crop: our full decode ms | crop: region ms | speed-up vs Pillow | identical |")
    print("|---|---|---|---|---|---|")
    for name, images in photo_sets().items():
        pillow = [best_ms(lambda d=d: center_crop(pillow_rgb(d)), args.repeats) for d in images]
        full = [best_ms(lambda d=d: center_crop(decode_rgb(d)), args.repeats) for d in images]
        fast = [best_ms(lambda d=d: decode_center_crop(d), args.repeats) for d in images]
        same = all(np.array_equal(decode_center_crop(d), center_crop(pillow_rgb(d)))
                   and np.array_equal(decode_rgb(d), pillow_rgb(d)) for d in images)
        p, f, r = (float(np.mean(v)) for v in (pillow, full, fast))
        print(f"| {name} x{len(images)} | {p:.1f} | {f:.1f} | {r:.1f} | {p / r:.1f}x | {same} |")


if __name__ == "__main__":
    main()
