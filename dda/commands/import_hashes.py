"""`dda import-hashes`: lists of PDQ hashes of known AI-generated images, shared between platforms.

A list is trusted input from a partner or an internal team, not from uploads, so its entries
are what `dda trust-verdicts` makes of a confirmed verdict: a near-duplicate of a listed hash
is reported with the list's name (`hash_list_match` in the verdict) and, with
DDA_NEAR_DUPLICATES=trusted, labelled ai_generated whatever the model scored (the score stays
the model's; `label_reason` names the list). Matching goes through whatever index the cache
uses, as cached verdicts' hashes do.

Two formats: plain lines `hex[,quality]` (`#` starts a comment), or CSV with a header naming
the hash column (`pdq`, `hash`, `signal_value` or `indicator`, as ThreatExchange and
python-threatexchange exports call it), optionally a type column (`signal_type`, `type` or
`indicator_type`: rows of other types than PDQ are skipped) and a quality column (`quality` or
`pdq_quality`). The whole file is checked before anything is written: one bad line and
nothing is imported, every bad line named by number. Hashes with quality below 50 are not
indexed (Meta's guidance), as for the cache's own.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from dda.commands import cache_tools
from engine.process.console import say
from worker.cache.verdicts import MIN_QUALITY

PDQ = re.compile(r"^[0-9a-f]{64}$")
SOURCE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
HASH_COLUMNS = ("pdq", "hash", "signal_value", "indicator")
TYPE_COLUMNS = ("signal_type", "type", "indicator_type")
QUALITY_COLUMNS = ("quality", "pdq_quality")
PDQ_TYPES = {"pdq", "hash_pdq", "pdq_hash", "pdqsignal", "photo_pdq"}
SHOWN_ERRORS = 20


@dataclass
class Parsed:
    hashes: list[str] = field(default_factory=list)  # unique, in file order
    low_quality: int = 0
    other_types: int = 0
    repeated: int = 0
    errors: list[str] = field(default_factory=list)


def _rows(text: str) -> Iterator[tuple[int, str, str | None, str | None]]:
    """(line number, hash, quality, type) per data line; type "?" for a plain line with too many fields."""
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    header = [c.strip().lower() for c in next(csv.reader([first]), [])]
    column = next((c for c in HASH_COLUMNS if c in header), None)
    if column is None:
        def plain() -> Iterator[tuple[int, str, str | None, str | None]]:
            for number, line in enumerate(lines, start=1):
                value = line.split("#", 1)[0].strip()
                if value:
                    parts = [p.strip() for p in value.split(",")]
                    yield number, parts[0], parts[1] if len(parts) > 1 else None, "pdq" if len(parts) <= 2 else "?"
        return plain()
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    reader.fieldnames = [c.strip().lower() for c in reader.fieldnames or []]
    kind = next((c for c in TYPE_COLUMNS if c in header), None)
    quality = next((c for c in QUALITY_COLUMNS if c in header), None)

    def rows() -> Iterator[tuple[int, str, str | None, str | None]]:
        for row in reader:
            yield (reader.line_num, (row.get(column) or "").strip(), (row.get(quality) or "").strip() or None if quality else None,
                   (row.get(kind) or "").strip() if kind else "pdq")
    return rows()


def parse(text: str) -> Parsed:
    out = Parsed()
    seen: set[str] = set()
    for number, value, quality, kind in _rows(text):
        if kind == "?":
            out.errors.append(f"line {number}: expected hex[,quality], got more fields")
            continue
        if kind is not None and kind.lower() not in PDQ_TYPES:
            out.other_types += 1
            continue
        value = value.lower()
        if not PDQ.match(value):
            out.errors.append(f"line {number}: not a PDQ hash (64 hex digits): {value[:80]!r}")
            continue
        if quality is not None:
            if not quality.isdigit() or int(quality) > 100:
                out.errors.append(f"line {number}: quality must be 0-100, got {quality[:20]!r}")
                continue
            if int(quality) < MIN_QUALITY:
                out.low_quality += 1
                continue
        if value in seen:
            out.repeated += 1
            continue
        seen.add(value)
        out.hashes.append(value)
    return out


def import_command(args: argparse.Namespace) -> int:
    redis_url = cache_tools.redis_url(args)
    if not redis_url:
        say("error: importing hashes needs the workers' Redis: --redis-url or DDA_REDIS_URL")
        return 2
    if not SOURCE.match(args.source):
        say("error: --source must be 1-64 of A-Z a-z 0-9 . _ : -")
        return 2
    try:
        manifest = cache_tools.workers_manifest(args)
        if args.remove:
            parsed = None
        elif args.file is None:
            raise ValueError("name the list FILE ('-': stdin), or --remove")
        else:
            parsed = parse(sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read())
    except (OSError, ValueError) as exc:  # a ModelDirError is a ValueError
        say(f"error: {exc}")
        return 2
    if parsed is not None and parsed.errors:
        for line in parsed.errors[:SHOWN_ERRORS]:
            say(f"error: {args.file}: {line}")
        say(f"error: {len(parsed.errors)} bad lines; nothing imported")
        return 2
    cache = cache_tools.workers_cache(args, redis_url, manifest)
    try:
        if parsed is None:
            print(json.dumps({"source": args.source, "removed": cache.remove_list(args.source)}))
            return 0
        added = cache.import_list(args.source, parsed.hashes)
    except Exception as exc:  # noqa: BLE001 - a store failure is reported, not a traceback
        say(f"error: the cache store failed: {type(exc).__name__}: {exc}")
        return 1
    print(json.dumps({"source": args.source, "imported": len(parsed.hashes), "new": added, "low_quality": parsed.low_quality,
                      "other_types": parsed.other_types, "repeated": parsed.repeated}))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("import-hashes", help="import a list of PDQ hashes of known AI-generated images (or --remove one)")
    p.add_argument("file", metavar="FILE", nargs="?", help="the list: hex[,quality] lines, or CSV with a header ('-': stdin)")
    p.add_argument("--source", required=True, help="the list's name, reported with each match (1-64 of A-Z a-z 0-9 . _ : -)")
    p.add_argument("--remove", action="store_true", help="delete the entries this source imported instead")
    cache_tools.add_arguments(p, "how long entries live: the workers' DDA_CACHE_TTL_S (re-import to refresh)")
    p.set_defaults(handler=import_command)
