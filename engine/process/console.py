"""Human-facing progress and error lines, on stderr so stdout stays machine-readable."""

from __future__ import annotations

import sys


def say(message: str) -> None:
    print(f"dda: {message}", file=sys.stderr, flush=True)
