"""What reading provenance costs next to `prepare()`, per image, side by side in one run.

For every image in ../shared/data (dev set and PDQ corpus), CPU milliseconds (this thread's
CPU clock, best of --repeats) of `prepare()` as the worker runs it (centre crop + PDQ) and of
`read_provenance()` on the same bytes; then C2PA-signed JPEG/PNG/WebP made here with a
throwaway chain, and every hostile metadata case of tests/provenance_files.py (time and the
Python heap's peak). Also counts, over ../shared/data/dev, how many files carry each signal.

    python benchmarks/provenance_cost.py [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_ms, describe

from tests.provenance_files import HOSTILE, picture, save, sign
from worker.decode.prepare import prepare
from worker.provenance.report import empty, read_provenance

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"n": len(a), "median": round(float(np.median(a)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "max": round(float(a.max()), 3)}


def signals(record: dict[str, Any]) -> list[str]:
    c2pa, xmp = record["c2pa"] or {}, record["xmp"] or {}
    found = [name for name, present in (
        ("c2pa manifest", bool(c2pa)), ("c2pa valid", c2pa.get("validation_state") in ("valid", "trusted")),
        ("xmp packet", bool(xmp)), ("xmp DigitalSourceType", bool(xmp.get("digital_source_type"))),
        ("generator metadata", record["generator"] is not None), ("declared_ai true", record["declared_ai"] is True),
        ("declared_ai false", record["declared_ai"] is False), ("provenance error", record["error"] is not None)) if present]
    return found or ["no signal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    files = sorted(p for p in DATA.rglob("*") if p.suffix.lower() in SUFFIXES)
    rows, dev_signals, generators = [], Counter[str](), Counter[str]()
    for path in files:
        data = path.read_bytes()
        record = read_provenance(data)
        if "/dev/" in str(path):
            dev_signals.update(signals(record))
            if record["generator"]:
                generators[record["generator"]] += 1
        rows.append({"file": str(path.relative_to(DATA)), "bare": record == empty(),
                     "prepare_ms": cpu_ms(lambda d=data: prepare(d, 224, 1, 64_000_000), args.repeats),  # type: ignore[misc]
                     "provenance_ms": cpu_ms(lambda d=data: read_provenance(d), args.repeats)})  # type: ignore[misc]
    ratios = [r["provenance_ms"] / r["prepare_ms"] for r in rows]
    signed = {}
    for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")):
        data = sign(save(picture((1024, 768)), fmt), mime)
        signed[fmt] = {"bytes": len(data), "provenance_ms": round(cpu_ms(lambda d=data: read_provenance(d), args.repeats), 3),  # type: ignore[misc]
                       "prepare_ms": round(cpu_ms(lambda d=data: prepare(d, 224, 1, 64_000_000), args.repeats), 3)}  # type: ignore[misc]
    hostile = {}
    for case, (make, _message) in HOSTILE.items():
        data = make()
        spent = cpu_ms(lambda d=data: read_provenance(d), args.repeats)  # type: ignore[misc]
        tracemalloc.start()  # a second run for memory: tracing slows Python code severalfold
        record = read_provenance(data)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        hostile[case] = {"file_bytes": len(data), "ms": round(spent, 2), "python_peak_mb": round(peak / 2**20, 1),
                         "error": (record["error"] or (record["c2pa"] or {}).get("error") or "")[:70]}
    out = {
        "machine": describe(),
        "images": len(rows),
        "prepare_ms": summary([r["prepare_ms"] for r in rows]),
        "provenance_ms": summary([r["provenance_ms"] for r in rows]),
        "provenance_ms_files_without_metadata": summary([r["provenance_ms"] for r in rows if r["bare"]]),
        "provenance_ms_files_with_metadata": summary([r["provenance_ms"] for r in rows if not r["bare"]]),
        "provenance_over_prepare": {"median": round(float(np.median(ratios)), 4), "p99": round(float(np.percentile(ratios, 99)), 4),
                                    "sum_ratio": round(sum(r["provenance_ms"] for r in rows) / sum(r["prepare_ms"] for r in rows), 4)},
        "signed_1024x768": signed,
        "hostile": hostile,
        "dev_set": {"files": sum(1 for p in files if "/dev/" in str(p)), "signals": dict(dev_signals), "generators": dict(generators)},
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**out, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
