"""The `provenance` record of one file (verdict schema 2), built from every signal it carries.

Order of trust: a C2PA manifest whose signature validates is a declaration by its signer;
XMP's DigitalSourceType is a declaration by whoever wrote the file; generator metadata is
reported, never a declaration. `declared_ai` is True when a valid manifest or XMP declares
generative AI (either wins over a capture claim in the other: a forger adds claims, so AI
wins a conflict), False when one declares a capture and none AI, None otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from worker.provenance import c2pa_manifest, containers, exif, generators, source_types, xmp

MAX_ERROR = 512
VALID_STATES = ("valid", "trusted")
SIGNALS = ("c2pa_valid", "c2pa_invalid", "xmp_source_type", "generator", "declared_ai", "error")


def empty() -> dict[str, Any]:
    return {"c2pa": None, "xmp": None, "generator": None, "generator_evidence": None,
            "declared_ai": None, "declared_by": None, "error": None}


def read_provenance(data: bytes) -> dict[str, Any]:
    """Never raises: whatever a file's metadata does, the answer is a record, with `error` set."""
    try:
        return _read(data)
    except Exception as exc:  # noqa: BLE001 - hostile metadata costs its own provenance, never the verdict
        return {**empty(), "error": c2pa_manifest.text(f"metadata reader failed: {type(exc).__name__}: {exc}")}


def _read(data: bytes) -> dict[str, Any]:
    found = containers.find(data)
    out = empty()
    if found.c2pa_bytes > containers.MAX_C2PA_BYTES:
        out["c2pa"] = {"present": True, "validation_state": None,
                       "error": f"manifest store of {found.c2pa_bytes} bytes is over {containers.MAX_C2PA_BYTES >> 20} MiB; not read"}
    elif found.c2pa_bytes and found.mime is not None:
        out["c2pa"] = c2pa_manifest.read(data, found.mime)
    facts = xmp.read(found.xmp)
    xmp_terms: list[str] = []
    if facts is not None:
        terms = [source_types.term(uri) for uri in facts.sources]
        xmp_terms = [t for t in terms if t]
        # reported: the URI that declares AI if one does, else the first one stated
        chosen = next((uri for uri, t in zip(facts.sources, terms) if t in source_types.DECLARES_AI),
                      facts.sources[0] if facts.sources else None)
        out["xmp"] = {"digital_source_type": c2pa_manifest.text(chosen), "creator_tool": c2pa_manifest.text(facts.creator_tool)}
    places: dict[str, list[str]] = defaultdict(list)
    for where, value in found.texts:
        places[where].append(value)
    for blob in found.exif:
        try:
            for name, value in exif.fields(blob).items():
                places[f"exif:{name}"].append(value)
        except exif.TiffError as exc:
            found.problem(f"EXIF: {exc}")
    if facts is not None and facts.creator_tool:
        places["xmp:CreatorTool"].append(facts.creator_tool)
    hit = generators.match(places)
    if hit is not None:
        out["generator"], out["generator_evidence"] = hit
    out["declared_ai"], out["declared_by"] = _declaration(out["c2pa"], source_types.declaration(xmp_terms))
    if found.problems:
        out["error"] = "; ".join(found.problems)[:MAX_ERROR]
    return out


def signals(record: dict[str, Any]) -> list[str]:
    """Which of SIGNALS a provenance record carries (what `dda_provenance_signals_total` counts)."""
    c2pa = record.get("c2pa") or {}
    valid = c2pa.get("validation_state") in VALID_STATES
    present = {"c2pa_valid": valid, "c2pa_invalid": bool(c2pa) and not valid,
               "xmp_source_type": bool((record.get("xmp") or {}).get("digital_source_type")),
               "generator": record.get("generator") is not None, "declared_ai": record.get("declared_ai") is True,
               "error": record.get("error") is not None}
    return [name for name in SIGNALS if present[name]]


def _declaration(c2pa: dict[str, Any] | None, by_xmp: bool | None) -> tuple[bool | None, str | None]:
    by_c2pa = c2pa.get("declares_ai") if c2pa and c2pa.get("validation_state") in VALID_STATES else None
    if by_c2pa is True:
        return True, "c2pa"
    if by_xmp is True:
        return True, "xmp"
    if by_c2pa is False:
        return False, "c2pa"
    if by_xmp is False:
        return False, "xmp"
    return None, None
