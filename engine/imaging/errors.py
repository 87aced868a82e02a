"""Why bytes could not become model input: stable, machine-readable codes.

These are the decoding half of the error codes a verdict carries (`worker.errors` adds
fetching and serving); consumers branch on `code`, the message is for people. Codes are part
of the output contract: add new ones, never rename.
"""

from __future__ import annotations

UNSUPPORTED_FORMAT = "unsupported_format"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_TRUNCATED = "image_truncated"
IMAGE_TOO_COMPLEX = "image_too_complex"  # structure that costs far more to decode than its pixels (scans, shared tiles, RLE)
DECODE_FAILED = "decode_failed"
DECODE_LIMIT = "decode_limit"  # decoding passed its CPU or memory limit; its process was replaced


class InputError(Exception):
    """One input could not become pixels (or be fetched); the batch and the process carry on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
