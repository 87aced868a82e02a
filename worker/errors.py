"""Stable, machine-readable error codes for per-image failures.

Consumers of verdicts branch on `code`; the message is for people. Codes are part of the
output contract: add new ones, never rename.
"""

from __future__ import annotations

URL_INVALID = "url_invalid"
URL_BLOCKED = "url_blocked"
FETCH_TIMEOUT = "fetch_timeout"
FETCH_HTTP_STATUS = "fetch_http_status"
FETCH_TOO_LARGE = "fetch_too_large"
FETCH_FAILED = "fetch_failed"
FILE_NOT_FOUND = "file_not_found"
UNSUPPORTED_FORMAT = "unsupported_format"
IMAGE_TOO_LARGE = "image_too_large"
IMAGE_TRUNCATED = "image_truncated"
IMAGE_TOO_COMPLEX = "image_too_complex"  # structure that costs far more to decode than its pixels (scans, shared tiles, RLE)
DECODE_FAILED = "decode_failed"
INFERENCE_FAILED = "inference_failed"  # the model raised on a batch (worker only)
DECODE_CRASHED = "decode_crashed"  # the decode process died on this image, twice (worker only)
DECODE_LIMIT = "decode_limit"  # decoding passed its CPU or memory limit; its process was replaced
DECODE_TIMEOUT = "decode_timeout"  # decoding ran past DDA_DECODE_TIMEOUT_S; its process was killed (worker only)
INTERNAL_ERROR = "internal_error"  # a bug (worker only)


class InputError(Exception):
    """One input could not become pixels; the batch and the process carry on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}
