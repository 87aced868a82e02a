"""`dda compare-models`: how a candidate model's decisions differ from the served one's, offline.

The same comparison a shadow model makes on live traffic (`worker.pipeline.shadow`), on inputs the
operator picks: files, folders, URLs, or JSONL files of past requests (one request object a
line, as the input topic carries them). Both models score the same crops in the same batches;
the report counts agreements and flips each way and lists every input that flipped.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dda.commands.scan import expand_inputs, scan
from engine.imaging.decode import DEFAULT_MAX_PIXELS
from engine.model.hub import resolve_model
from engine.model.model_dir import load_model_dir
from engine.process.console import say
from engine.runners.backend import make_runner
from engine.runners.contract import PRECISION_CHOICES
from engine.runners.detector import Detector
from worker.fetch.client import FetchPolicy, parse_networks
from worker.setting_values import positive_float, positive_int

MAX_REQUEST_LINE = 65_536


def request_urls(path: Path) -> list[str]:
    """The `url` of each request in a JSONL file; a line that is no request is refused with its number."""
    urls = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                if len(line) > MAX_REQUEST_LINE:
                    raise ValueError(f"longer than {MAX_REQUEST_LINE} characters")
                url = json.loads(line).get("url")
                if not isinstance(url, str) or not url:
                    raise ValueError("no url")
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: not a request ({exc})") from None
            urls.append(url)
    return urls


def inputs_of(specs: Sequence[str]) -> list[str]:
    out: list[str] = []
    for spec in specs:
        out += request_urls(Path(spec)) if spec.endswith(".jsonl") and "://" not in spec else expand_inputs([spec])
    return out


def report(records: Sequence[dict[str, Any]], names: tuple[str, str]) -> tuple[str, dict[str, Any]]:
    """A Markdown report and its numbers."""
    scored = [r for r in records if r["status"] == "ok"]
    flips = [r for r in scored if r["label"] != r["also"][0]["label"]]
    to_ai = [r for r in flips if r["also"][0]["label"] == "ai_generated"]
    deltas = [r["also"][0]["score"] - r["score"] for r in scored]
    numbers = {"inputs": len(records), "scored": len(scored), "errors": len(records) - len(scored),
               "agree": len(scored) - len(flips), "real_to_ai": len(to_ai), "ai_to_real": len(flips) - len(to_ai),
               "mean_score_delta": sum(deltas) / len(deltas) if deltas else 0.0}
    lines = [f"# {names[0]} (A) vs {names[1]} (B)", "",
             f"{numbers['inputs']} inputs, {numbers['scored']} scored by both, {numbers['errors']} errors; "
             f"{numbers['agree']} agree ({100 * numbers['agree'] / max(1, len(scored)):.1f}%), "
             f"{numbers['real_to_ai']} flip real -> ai_generated, {numbers['ai_to_real']} flip ai_generated -> real; "
             f"mean score B - A {numbers['mean_score_delta']:+.4f}", ""]
    if flips:
        lines += ["| input | A label | A score | B label | B score |", "|---|---|---|---|---|"]
        lines += [f"| {r['input']} | {r['label']} | {r['score']:.4f} | {r['also'][0]['label']} | {r['also'][0]['score']:.4f} |"
                  for r in flips]
    errors = [r for r in records if r["status"] != "ok"]
    if errors:
        lines += ["", "Errors:", *(f"- {r['input']}: {r['error']['code']}: {r['error']['message']}" for r in errors)]
    return "\n".join(lines) + "\n", numbers


def compare_command(args: argparse.Namespace) -> int:
    if len(args.model) != 2:
        say("error: name exactly two models: --model A --model B")
        return 2
    try:
        inputs = inputs_of(args.inputs)
        policy = FetchPolicy(allow_networks=parse_networks(args.allow_networks), max_bytes=args.fetch_max_bytes,
                             total_timeout_s=args.fetch_timeout)
        detectors = []
        for spec in args.model:
            model_dir = resolve_model(spec, progress=say)
            loaded = load_model_dir(model_dir)
            loaded.manifest.served_by_crops()
            runner = make_runner(loaded, model_dir, backend="torch", device=args.device, precision=args.precision,
                                 max_batch=args.batch_size, log=say)
            detectors.append(Detector(loaded.manifest, runner))
    except (ValueError, RuntimeError, OSError, ImportError) as exc:  # a ModelDirError is a ValueError
        say(f"error: {exc}")
        return 2
    if not inputs:
        say(f"error: no inputs in {', '.join(args.inputs)}")
        return 2
    if detectors[0].manifest.preprocessing != detectors[1].manifest.preprocessing:
        say("error: the two models preprocess differently; they cannot be compared on the same crops")
        return 2
    records = list(scan(detectors[0], inputs, args.batch_size, policy, args.max_pixels, provenance_policy="off",
                        also=detectors[1:]))
    text, numbers = report(records, (detectors[0].manifest.version, detectors[1].manifest.version))
    print(text, end="")
    if args.json:
        Path(args.json).write_text("".join(json.dumps(r) + "\n" for r in records) + json.dumps({"summary": numbers}) + "\n")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("compare-models", help="score inputs with two models and report where their labels differ")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder, http(s) URL, or .jsonl of past requests")
    p.add_argument("--model", action="append", default=[], required=True, help="a model directory or hf:// checkpoint; twice: A (served) then B")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--max-batch", dest="batch_size", metavar="N", type=positive_int, default=16)
    p.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--fetch-allow-networks", dest="allow_networks", metavar="CIDRS", default="")
    p.add_argument("--fetch-timeout-s", dest="fetch_timeout", metavar="SECONDS", type=positive_float, default=30.0)
    p.add_argument("--fetch-max-bytes", type=positive_int, default=50 * 1024 * 1024)
    p.add_argument("--json", metavar="PATH", help="also write every input's record and the summary as JSON lines")
    p.set_defaults(handler=compare_command)
