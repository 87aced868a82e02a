"""The two labels a verdict can carry; a module of its own so that code which only names them
(settings, policies, the cache) does not import the model's runtime."""

from __future__ import annotations

AI_GENERATED = "ai_generated"
REAL = "real"
