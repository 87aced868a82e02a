"""How a pipeline runs, apart from what it runs with: the micro-batch and its window, the stages'
widths, the bounds on input, and the policies that decide what an answer may say."""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.decode.process import DecodeLimits


@dataclass(frozen=True)
class Settings:
    max_batch: int  # crops a batch (images: max_batch // crops)
    max_wait_ms: int  # the micro-batch window (`worker.pipeline.window`)
    fetch_workers: int
    decode_workers: int
    max_pixels: int
    max_in_flight_bytes: int = 1 << 30  # fetched bodies held before fetching pauses
    decode_limits: DecodeLimits = field(default_factory=DecodeLimits)
    crops: int = 1  # views an image: 1, or 5 with the corners
    allow_paths: bool = False  # local paths as inputs (stdin mode only)
    trust_near_duplicates: bool = False  # a trusted near-duplicate (or imported list) may answer unscored
    provenance_policy: str = "report"
    c2pa_trust_anchors: str | None = None
