"""DDA_PROVENANCE_POLICY: what a declaration may do to a verdict's label.

`report` (default): the label is the model's; provenance is only reported. `declared_ai`: a
valid C2PA manifest or XMP that declares generative AI makes the label "ai_generated", with
the reason stated, and leaves `score` and `logit` the model's. No policy lets metadata turn
an "ai_generated" verdict into "real": anyone can write metadata onto any file. `off`: no
metadata is read (`provenance: null`).
"""

from __future__ import annotations

from typing import Any

from engine.model.labels import AI_GENERATED

POLICIES = ("report", "declared_ai", "off")


def label(model_label: str, provenance: dict[str, Any] | None, policy: str) -> tuple[str, str | None]:
    """(label, reason): the reason is None when the label is the model's own."""
    if policy != "declared_ai" or model_label == AI_GENERATED or not provenance or provenance.get("declared_ai") is not True:
        return model_label, None
    by = provenance.get("declared_by")
    source = (provenance.get("c2pa") or {}).get("digital_source_type") if by == "c2pa" else (provenance.get("xmp") or {}).get("digital_source_type")
    return AI_GENERATED, f"{by} declares {source}"
