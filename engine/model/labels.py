"""The two labels a verdict can carry, and the logistic function from a logit to a score; a module
of its own so that code which only names them (settings, policies, the cache, the combiner) does
not import the model's runtime."""

from __future__ import annotations

import math

AI_GENERATED = "ai_generated"
REAL = "real"


def sigmoid(logit: float) -> float:
    """P(AI-generated) from a logit, without overflow for large negative logits."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)
