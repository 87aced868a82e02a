"""The results folder of benchmarks/gpu_check.sh as one JSON and one Markdown page.

Reads OUTDIR/steps.tsv (each step's status and seconds), engine.json and pipeline.json (absent
when their step failed), the second detector's table from second.log, and OUTDIR/machine.log; writes results.json and results.md and prints
the page. Exits 1 when a step failed or a result is missing, so the check's status says so.

    python benchmarks/gpu_report.py OUTDIR [--mode gpu|rehearse]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tables import engine_table, pipeline_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--mode", default="gpu", choices=("gpu", "rehearse"))
    args = parser.parse_args()
    out: Path = args.outdir
    steps = [dict(zip(("step", "status", "seconds"), line.split("\t"))) for line in (out / "steps.tsv").read_text().splitlines()]
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mode": args.mode,
                               "machine_log": (out / "machine.log").read_text() if (out / "machine.log").exists() else "",
                               "steps": steps}
    for name in ("engine", "pipeline"):
        path = out / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else None
    machine = (results["engine"] or results["pipeline"] or {}).get("machine", {})
    lines = [f"# GPU check, {results['date']} ({args.mode})", "", f"Machine: {json.dumps(machine)}", "", "```",
             results["machine_log"].strip(), "```", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {'ok' if s['status'] == '0' else 'FAILED ' + s['status']} | {s['seconds']} |" for s in steps]
    for name, table in (("engine", engine_table), ("pipeline", pipeline_table)):
        lines += [""] + (table(results[name]) if results[name] else [f"No {name} results (see {name}.log)."])
    second = (out / "second.log").read_text().splitlines() if (out / "second.log").exists() else []
    results["second"] = [line for line in second if line.startswith("|")]
    lines += ["", "Second detector beside DDA (benchmarks/second_detector_cost.py):", ""] + (results["second"] or ["No results (see second.log)."])
    page = "\n".join(lines) + "\n"
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(page)
    print(page)
    failed = any(s["status"] != "0" for s in steps) or results["engine"] is None or results["pipeline"] is None
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
