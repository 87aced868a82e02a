"""Verdicts remembered: cache keys and the rule against laundering, the stores (memory, Redis,
Redis Cluster), content hashes, and the near-duplicate index with its shared log. Imports
engine and the worker's root modules."""
