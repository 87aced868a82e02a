"""Decode cost per image: full decode + reference crop vs the region decode, side by side.

For 12 MP camera JPEGs (../shared/data/pdq/reg-test-input/exif-rotn) and 2000x1500 photos
made from them (resized, JPEG quality 92, 4:2:0), in one run: the model's centre crop
by `center_crop(decode_rgb(...))` (baseline) and by `decode_center_crop(...)`, checked
bit-identical; and PDQ on a full decode vs on the DCT-scaled decode, with the Hamming
distance between the two hashes. Best of --repeats timings, milliseconds per image.

    python benchmarks/decode_crop.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from engine.preprocess import center_crop  # noqa: E402
from worker import hashing  # noqa: E402
from worker.decode import decode_center_crop, decode_region, decode_rgb  # noqa: E402

CAMERA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pdq" / "reg-test-input" / "exif-rotn"


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


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
    if decode_region is None:
        raise SystemExit("worker._jpegregion is not built (libjpeg headers missing at install): nothing to compare")
    print(f"machine: {json.dumps(describe())}")
    print("| images | crop: full decode ms | crop: region ms | speed-up | identical | PDQ full ms | PDQ draft ms | speed-up | max PDQ distance |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, images in photo_sets().items():
        full = [best_ms(lambda d=d: center_crop(decode_rgb(d)), args.repeats) for d in images]
        fast = [best_ms(lambda d=d: decode_center_crop(d), args.repeats) for d in images]
        same = all(np.array_equal(decode_center_crop(d), center_crop(decode_rgb(d))) for d in images)
        pdq_full = [best_ms(lambda d=d: hashing.pdq_from_pixels(hashing.pdq_pixels(d, draft=False)), args.repeats) for d in images]
        pdq_draft = [best_ms(lambda d=d: hashing.pdq_from_pixels(hashing.pdq_pixels(d)), args.repeats) for d in images]
        distance = max(hashing.hamming(hashing.pdq_from_pixels(hashing.pdq_pixels(d, draft=False))[0],
                                       hashing.pdq_from_pixels(hashing.pdq_pixels(d))[0]) for d in images)
        f, r, pf, pd = (float(np.mean(v)) for v in (full, fast, pdq_full, pdq_draft))
        print(f"| {name} x{len(images)} | {f:.1f} | {r:.1f} | {f / r:.1f}x | {same} | {pf:.0f} | {pd:.0f} | {pf / pd:.1f}x | {distance} |")


if __name__ == "__main__":
    main()
