"""The records the worker publishes, typed field for field: a verdict and a dead letter. Their JSON
Schemas (`worker/schemas/`) stay the wire contract; these are how the code builds and reads them
(`worker.messages` builds both). Provenance stays a plain mapping: its shape is
`worker.provenance.report`'s, and a verdict only carries it."""

from __future__ import annotations

from typing import Any, TypedDict, final


class _HashesBase(TypedDict):
    sha256: str | None
    pdq: str | None
    pdq_quality: int | None


class Hashes(_HashesBase, total=False):
    pdq_error: str  # why the pixels have no PDQ hash


class Failure(TypedDict):
    code: str  # worker.errors: stable, what consumers branch on
    message: str  # for people


class NearMatch(TypedDict):
    """A cached AI verdict within PDQ distance, reported beside the model's own answer (or answering, when trusted)."""

    sha256: str
    pdq_distance: int | None
    trusted: bool


class ListMatch(TypedDict):
    """A near-duplicate of a hash an imported list holds."""

    source: str
    pdq_distance: int | None


class ShadowAnswer(TypedDict):
    version: str
    logit: float
    score: float
    label: str


class _ModelAnswerBase(TypedDict):
    name: str
    version: str
    logit: float
    score: float


class ModelAnswer(_ModelAnswerBase, total=False):
    warning: str  # the manifest's, for a model that is not a detector


class _VerdictBase(TypedDict):
    schema_version: int
    id: str
    url: str
    status: str  # "ok" or "error"
    label: str | None
    label_reason: str | None
    score: float | None
    logit: float | None
    threshold: float
    model: dict[str, str]
    hashes: Hashes
    cache: str
    error: Failure | None
    timings_ms: dict[str, float]
    processed_at: str
    metadata: Any  # the request's own, echoed as sent
    provenance: dict[str, Any] | None


@final
class Verdict(_VerdictBase, total=False):
    cache_match: NearMatch
    near_duplicate_search: str
    shadow: ShadowAnswer
    hash_list_match: ListMatch
    models: list[ModelAnswer]  # with an ensemble
    assessment: str | None  # with an ensemble: real, suspicious or ai_generated
    truncated: bool  # the compact form: no metadata, the URL cut


class SourceRef(TypedDict):
    topic: str
    partition: int
    offset: int


@final
class DeadLetter(TypedDict):
    schema_version: int
    reason: str
    detail: str
    source: SourceRef
    raw_base64: str
    raw_size: int
    raw_sha256: str
    raw_truncated: bool
    received_at: str


Record = Verdict | DeadLetter
