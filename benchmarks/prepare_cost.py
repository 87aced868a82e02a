"""CPU of `prepare()` (crop + PDQ) per image, before and after PDQ stopped costing a second full
decode, side by side with the region crop alone, in one run.

Sets from ../shared/data: single-scan JPEGs of 1-3 MP, 12 MP camera JPEGs, progressive JPEGs,
PNGs. Per image, best of --repeats, this thread's CPU clock:
- crop alone: `decode_center_crop` (the region decode, whole file checked), what `dda scan` runs;
- before: the previous composition, the same primitives: the crop (whole file checked) plus a
  second decode for PDQ (JPEG: DCT-scaled to a short side >= 256; other files and progressive
  JPEGs: decoded again in full and box-reduced) and the hash;
- after: `worker.prepare.prepare` as the decode processes run it.
PDQ distance: Hamming distance of each hash to the hash of the full decode.

    python benchmarks/prepare_cost.py [--repeats 5]
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

from engine.decode import decode_center_crop, decode_jpeg, decode_rgb
from worker.hashing import box_reduce, hamming, pdq_from_pixels
from worker.prepare import prepare

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OLD_PDQ_MIN_SIDE = 256


def progressive(data: bytes) -> bool:
    return data.startswith(b"\xff\xd8") and b"\xff\xc2" in data[: data.find(b"\xff\xda")]


def before(data: bytes) -> str:
    decode_center_crop(data, 224)
    if data.startswith(b"\xff\xd8"):
        short = min(_size(data))
        scale = next(s for s in (8, 4, 2, 1) if s == 1 or short // s >= OLD_PDQ_MIN_SIDE)
        return pdq_from_pixels(decode_jpeg(data, scale))[0]
    return pdq_from_pixels(box_reduce(decode_rgb(data)))[0]


def _size(data: bytes) -> tuple[int, int]:
    from engine.decode import open_checked

    with open_checked(data, 64_000_000) as image:
        return image.height, image.width


def sets() -> dict[str, list[bytes]]:
    files = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    out: dict[str, list[bytes]] = {"1-3 MP JPEG, single scan": [], "12 MP camera JPEG": [], "progressive JPEG": [], "PNG": []}
    for path in files:
        data = path.read_bytes()
        if data.startswith(b"\x89PNG"):
            out["PNG"].append(data)
            continue
        if progressive(data):
            out["progressive JPEG"].append(data)
            continue
        pixels = np.prod(_size(data))
        if 1e6 <= pixels <= 3.2e6:
            out["1-3 MP JPEG, single scan"].append(data)
        elif pixels >= 10e6:
            out["12 MP camera JPEG"].append(data)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {json.dumps(describe())}")
    print("| images | crop alone ms | before ms | after ms | before / crop | after / crop (median, max) "
          "| PDQ distance before (max, mean) | after (max, mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, images in sets().items():
        if not images:
            continue
        crop = [cpu_ms(lambda d=d: decode_center_crop(d, 224), args.repeats) for d in images]  # type: ignore[misc]
        old = [cpu_ms(lambda d=d: before(d), args.repeats) for d in images]  # type: ignore[misc]
        new = [cpu_ms(lambda d=d: prepare(d, 224, 1, 64_000_000), args.repeats) for d in images]  # type: ignore[misc]
        reference = [pdq_from_pixels(decode_rgb(d))[0] for d in images]
        d_old = [hamming(r, before(d)) for r, d in zip(reference, images)]
        d_new = [hamming(r, str(prepare(d, 224, 1, 64_000_000).pdq)) for r, d in zip(reference, images)]
        ratio_old = [o / c for o, c in zip(old, crop)]
        ratio_new = [n / c for n, c in zip(new, crop)]
        print(f"| {name} x{len(images)} | {np.median(crop):.2f} | {np.median(old):.2f} | {np.median(new):.2f} "
              f"| {np.median(ratio_old):.2f}x | {np.median(ratio_new):.2f}x, {max(ratio_new):.2f}x "
              f"| {max(d_old)}, {np.mean(d_old):.1f} | {max(d_new)}, {np.mean(d_new):.1f} |")


if __name__ == "__main__":
    main()
