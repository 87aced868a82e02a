"""Compare two JSON-lines logit files (e.g. reference_logits.py vs `dda scan`) by `input`.

Lines that are not JSON objects (the reference code prints banners on stdout) are skipped.
Exits 1 when the largest absolute difference exceeds --tolerance.

    python tools/compare_logits.py ref.jsonl ours.jsonl --tolerance 1e-4
"""

from __future__ import annotations

import argparse
import json
import sys


def read_logits(path: str) -> dict[str, float]:
    out = {}
    with open(path) as f:
        for line in f:
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("logit") is not None:
                    out[record["input"]] = float(record["logit"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference")
    parser.add_argument("candidate")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    ref, cand = read_logits(args.reference), read_logits(args.candidate)
    missing = sorted(ref.keys() - cand.keys())
    if missing:
        print(f"candidate has no logit for {missing[0]} (+{len(missing) - 1} more)")
        return 1
    diffs = {k: abs(cand[k] - v) for k, v in ref.items()}
    for key in sorted(diffs):
        print(f"{diffs[key]:.3e}  ref {ref[key]:+.8f}  ours {cand[key]:+.8f}  {key}")
    worst = max(diffs, key=diffs.__getitem__)
    flips = sum((ref[k] > 0) != (cand[k] > 0) for k in ref)
    print(f"images {len(diffs)}  max |diff| {diffs[worst]:.3e} ({worst})  mean {sum(diffs.values()) / len(diffs):.3e}  flips at 0.5: {flips}")
    return 0 if diffs[worst] <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
