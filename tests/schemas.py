"""The published JSON Schemas (worker/schemas/), applied to every record the tests see.

Every verdict is checked against versions 4, 3, 2 and 1 (a version-1 consumer must
keep working: versions only add fields); dead letters against their own schema. The test
session checks each record a pipeline resolves in-process (tests/conftest.py), each record
read from a topic (tests/services.TopicReader) and each line a worker writes to stdout.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

import worker

SCHEMAS = Path(worker.__file__).parent / "schemas"


@cache
def _validators() -> dict[str, jsonschema.protocols.Validator]:
    documents = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}
    registry: Registry = Registry().with_resources((doc["$id"], Resource.from_contents(doc)) for doc in documents.values())
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    out = {}
    for name, doc in documents.items():
        jsonschema.Draft202012Validator.check_schema(doc)
        out[name] = jsonschema.Draft202012Validator(doc, registry=registry, format_checker=checker)
    provenance = {"$ref": documents["verdict.v2.schema.json"]["$id"] + "#/$defs/provenance"}
    out["provenance"] = jsonschema.Draft202012Validator(provenance, registry=registry, format_checker=checker)
    return out


def check(name: str, record: Any) -> Any:
    errors = sorted(_validators()[name].iter_errors(record), key=lambda e: list(e.path))
    if errors:
        raise AssertionError(f"not a valid {name}: " + "; ".join(f"{list(e.path)}: {e.message[:300]}" for e in errors[:5]))
    return record


def check_verdict(record: dict[str, Any]) -> dict[str, Any]:
    check("verdict.v4.schema.json", record)
    check("verdict.v3.schema.json", record)
    check("verdict.v2.schema.json", record)
    return check("verdict.v1.schema.json", record)


def check_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record from the output or dead-letter topic, whichever it is."""
    if "raw_base64" in record:
        return check("dead_letter.schema.json", record)
    return check_verdict(record)


def verdict_lines(text: str) -> list[dict[str, Any]]:
    """Parse and check the JSON lines a worker wrote to stdout."""
    return [check_record(json.loads(line)) for line in text.splitlines() if line.strip()]
