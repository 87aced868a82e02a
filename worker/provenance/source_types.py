"""The IPTC NewsCodes digital source types, and which of them declare generative AI.

Both C2PA actions and XMP carry a term as a URI in
http://cv.iptc.org/newscodes/digitalsourcetype/. Only the two terms defined as made with a
model trained on sampled content declare AI here; `algorithmicMedia` (pure algorithm, no
training data: fractals, procedural scenes) and `compositeSynthetic` are reported but do not
move a label. The capture terms declare "not AI", which never moves a label either.
"""

from __future__ import annotations

PREFIX = "cv.iptc.org/newscodes/digitalsourcetype/"
DECLARES_AI = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
DECLARES_CAPTURE = frozenset({"digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm", "print"})
KNOWN = DECLARES_AI | DECLARES_CAPTURE | frozenset({
    "algorithmicMedia", "compositeSynthetic", "compositeCapture", "algorithmicallyEnhanced", "dataDrivenMedia",
    "digitalArt", "digitalCreation", "humanEdits", "minorHumanEdits", "screenCapture", "virtualRecording",
    "softwareImage", "composite",
})


def term(uri: str) -> str | None:
    """The vocabulary term of a source-type URI ("trainedAlgorithmicMedia"), or None if it is not one."""
    at = uri.find(PREFIX)
    name = uri[at + len(PREFIX) :].strip().rstrip("/") if at >= 0 else uri.strip()
    return name if name in KNOWN else None


def declaration(terms: list[str]) -> bool | None:
    """True if any term declares AI, False if one declares a capture and none AI, else None."""
    if any(t in DECLARES_AI for t in terms):
        return True
    if any(t in DECLARES_CAPTURE for t in terms):
        return False
    return None
