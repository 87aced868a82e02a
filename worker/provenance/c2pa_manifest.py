"""C2PA Content Credentials through `c2pa-python`, the Content Authenticity Initiative's bindings.

Called only when the container walk found an embedded manifest store, so a file without
one never reaches the library. Offline by construction: remote manifests and OCSP are
never fetched (a URL inside an upload must not make the worker open connections), so a
signature is checked against the certificates in the file. `validation_state` is the
library's: "valid" (the claim's signature and the hashes binding it to these bytes check
out; the signer is not on a trust list this worker was given), "trusted" (also chains to a
trust anchor) or "invalid" (tampered, or not verifiable).

Every string taken from a manifest is cut to MAX_TEXT characters and made encodable (a
manifest's JSON can hold lone surrogates), so what is read always fits a verdict.
"""

from __future__ import annotations

import io
import json
from typing import Any

from worker.provenance import source_types

MAX_TEXT = 256
MAX_ACTIONS = 16
OFFLINE = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
ACTION_LABELS = ("c2pa.actions", "c2pa.actions.v2")

_context: list[Any] = []
_trust_anchors: list[str] = []


def trust(anchors_pem: str) -> None:
    """Root certificates (PEM) whose chains make a manifest "trusted"; before the first read."""
    _trust_anchors[:] = [anchors_pem]


def available() -> bool:
    """Load the library (once per process); False when it is not installed."""
    if _context:
        return True
    try:
        import c2pa
    except ImportError:
        return False
    settings: dict[str, Any] = dict(OFFLINE)
    if _trust_anchors:
        settings["trust"] = {"trust_anchors": _trust_anchors[0]}
    _context.append(c2pa.Context.from_dict(settings))
    return True


def text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:MAX_TEXT].encode("utf-8", "replace").decode("utf-8")


def read(data: bytes, mime: str) -> dict[str, Any]:
    """The `provenance.c2pa` record of an asset that embeds a manifest store; never raises."""
    if not available():
        return {"present": True, "validation_state": None, "error": "c2pa-python is not installed"}
    import c2pa

    try:
        with c2pa.Reader(mime, io.BytesIO(data), None, _context[0]) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return {"present": True, "validation_state": None, "error": "the embedded manifest store holds no manifest"}
    except Exception as exc:  # noqa: BLE001 - whatever the library raises on hostile JUMBF is this file's error
        return {"present": True, "validation_state": None, "error": text(f"c2pa: {exc}")}
    try:
        return _summary(store)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        return {"present": True, "validation_state": None, "error": text(f"c2pa: unexpected manifest layout: {exc}")}


def _summary(store: dict[str, Any]) -> dict[str, Any]:
    manifests: dict[str, Any] = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "") or {}
    actions = _actions(active)
    terms = [t for _, t in actions if t]
    for manifest in manifests.values():  # an edit's parents: what the ingredients were made with
        if manifest is not active:
            terms += [t for _, t in _actions(manifest) if t]
    declared = source_types.declaration(terms)
    chosen = next((t for t in terms if t in source_types.DECLARES_AI), terms[0] if terms else None)
    signature = active.get("signature_info") or {}
    return {
        "present": True,
        "validation_state": str(store.get("validation_state") or "").lower()[:MAX_TEXT] or None,
        "generator": _generator(active),
        "digital_source_type": f"http://{source_types.PREFIX}{chosen}" if chosen else None,
        "declares_ai": declared,
        "signer": {"organization": text(signature.get("issuer")), "common_name": text(signature.get("common_name"))}
        if signature else None,
        "actions": [text(name) for name, _ in actions[:MAX_ACTIONS]],
        "ingredients": len(active.get("ingredients") or []),
        "error": None,
    }


def _actions(manifest: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(action name, source-type term) of every action in a manifest."""
    out: list[tuple[str, str | None]] = []
    for assertion in manifest.get("assertions") or []:
        if assertion.get("label") not in ACTION_LABELS:
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            uri = action.get("digitalSourceType")
            out.append((str(action.get("action")), source_types.term(str(uri)) if uri else None))
    return out


def _generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict) and info[0].get("name"):
        version = info[0].get("version")
        return text(f"{info[0]['name']} {version}" if version else info[0]["name"])
    return text(manifest.get("claim_generator"))
