"""CPU of `prepare()` (a decode process's work per image: crop + PDQ) before and after, side by
side in one run, with the region crop alone as the yardstick.

Each tree is measured in a process of its own (this checkout, and --baseline: a checkout of the
code before, its C extensions built), on the same files: single-scan JPEGs of 1-3 MP and the
12 MP camera JPEGs of ../shared/data, its progressive JPEGs and PNGs, and 640x480 JPEGs made here
(what benchmarks/pipeline_rate.py floods with). Per image, best of --repeats, the thread's CPU:
- crop alone: `decode_center_crop`, the region decode with the whole file checked (what
  `dda scan` runs), in this checkout;
- before / after: `worker.decode.prepare.prepare` of the baseline / of this checkout.
PDQ distance: Hamming distance of each hash to pdqhash's hash of the full decode.

    python benchmarks/prepare_cost.py --baseline ../base [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_ms, describe

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def progressive(data: bytes) -> bool:
    return data.startswith(b"\xff\xd8") and b"\xff\xc2" in data[: data.find(b"\xff\xda")]


def sets() -> dict[str, list[bytes]]:
    sys.path.insert(0, str(ROOT))
    from engine.imaging.decode import open_checked
    from tests.images import encode, scene

    out: dict[str, list[bytes]] = {"640x480 JPEG (made here)": [encode(scene(640, 480, seed=i), "JPEG", quality=90) for i in range(8)],
                                   "1-3 MP JPEG, single scan": [], "12 MP camera JPEG": [], "progressive JPEG": [], "PNG": []}
    for path in sorted(p for p in DATA.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        data = path.read_bytes()
        if data.startswith(b"\x89PNG"):
            out["PNG"].append(data)
        elif progressive(data):
            out["progressive JPEG"].append(data)
        else:
            with open_checked(data, 64_000_000) as image:
                pixels = image.width * image.height
            if 1e6 <= pixels <= 3.2e6:
                out["1-3 MP JPEG, single scan"].append(data)
            elif pixels >= 10e6:
                out["12 MP camera JPEG"].append(data)
    return {name: images for name, images in out.items() if images}


def measure(repeats: int) -> None:
    """In the tree on sys.path: per set, per image, (crop alone ms, prepare ms, PDQ hash)."""
    from engine.imaging.decode import decode_center_crop
    from worker.decode.prepare import prepare

    results = {}
    for name, images in sets().items():
        results[name] = [(cpu_ms(lambda d=d: decode_center_crop(d, 224), repeats),  # type: ignore[misc]
                          cpu_ms(lambda d=d: prepare(d, 224, 1, 64_000_000), repeats),  # type: ignore[misc]
                          prepare(d, 224, 1, 64_000_000).pdq) for d in images]
    print(json.dumps(results))


def run_tree(tree: Path, repeats: int) -> dict[str, list[list[object]]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, __file__, "--measure", "--repeats", str(repeats)], cwd=tree, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before, its C extensions built")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.repeats)
        return
    sys.path.insert(0, str(ROOT))
    import pdqhash

    from engine.imaging.decode import decode_rgb
    from worker.cache.hashing import hamming

    after = run_tree(ROOT, args.repeats)
    before = run_tree(args.baseline, args.repeats) if args.baseline else None
    images = sets()
    print(f"machine: {json.dumps(describe())}")
    print("| images | crop alone ms | before ms | after ms | before / crop | after / crop (median, max) "
          "| PDQ distance before (max, mean) | after (max, mean) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in after.items():
        reference = [np.packbits(pdqhash.compute(np.ascontiguousarray(decode_rgb(d)))[0].astype(np.uint8)).tobytes().hex()
                     for d in images[name]]
        crop = [float(r[0]) for r in rows]  # type: ignore[arg-type]
        new = [float(r[1]) for r in rows]  # type: ignore[arg-type]
        d_new = [hamming(ref, str(r[2])) for ref, r in zip(reference, rows)]
        ratio_new = [n / c for n, c in zip(new, crop)]
        before_ms = before_ratio = before_distance = "-"
        if before is not None:
            old = [float(r[1]) for r in before[name]]  # type: ignore[arg-type]
            d_old = [hamming(ref, str(r[2])) for ref, r in zip(reference, before[name])]
            before_ms, before_ratio = f"{np.median(old):.2f}", f"{np.median([o / c for o, c in zip(old, crop)]):.2f}x"
            before_distance = f"{max(d_old)}, {np.mean(d_old):.1f}"
        print(f"| {name} x{len(rows)} | {np.median(crop):.2f} | {before_ms} | {np.median(new):.2f} | {before_ratio} "
              f"| {np.median(ratio_new):.2f}x, {max(ratio_new):.2f}x | {before_distance} | {max(d_new)}, {np.mean(d_new):.1f} |")


if __name__ == "__main__":
    main()
