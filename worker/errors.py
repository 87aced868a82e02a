"""Every per-image error code a verdict can carry: fetching and serving here, decoding from
`engine.imaging.errors` (re-exported, so the worker's contract reads in one place).

Consumers of verdicts branch on `code`; the message is for people. Codes are part of the
output contract: add new ones, never rename.
"""

from __future__ import annotations

from engine.imaging.errors import (
    DECODE_FAILED,
    DECODE_LIMIT,
    IMAGE_TOO_COMPLEX,
    IMAGE_TOO_LARGE,
    IMAGE_TRUNCATED,
    UNSUPPORTED_FORMAT,
    InputError,
)

__all__ = [
    "DECODE_CRASHED", "DECODE_FAILED", "DECODE_LIMIT", "DECODE_TIMEOUT", "FETCH_FAILED", "FETCH_HTTP_STATUS",
    "FETCH_TIMEOUT", "FETCH_TOO_LARGE", "FILE_NOT_FOUND", "IMAGE_TOO_COMPLEX", "IMAGE_TOO_LARGE", "IMAGE_TRUNCATED",
    "INFERENCE_FAILED", "INTERNAL_ERROR", "UNSUPPORTED_FORMAT", "URL_BLOCKED", "URL_INVALID", "InputError",
]

URL_INVALID = "url_invalid"
URL_BLOCKED = "url_blocked"
FETCH_TIMEOUT = "fetch_timeout"
FETCH_HTTP_STATUS = "fetch_http_status"
FETCH_TOO_LARGE = "fetch_too_large"
FETCH_FAILED = "fetch_failed"
FILE_NOT_FOUND = "file_not_found"
INFERENCE_FAILED = "inference_failed"  # the model raised on a batch (worker only)
DECODE_CRASHED = "decode_crashed"  # the decode process died on this image, twice (worker only)
DECODE_TIMEOUT = "decode_timeout"  # decoding ran past DDA_DECODE_TIMEOUT_S; its process was killed (worker only)
INTERNAL_ERROR = "internal_error"  # a bug (worker only)
