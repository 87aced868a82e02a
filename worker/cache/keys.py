"""Every key the verdict cache and its near-duplicate index write, named in one place.

    dda:<namespace>:sha:<sha256>             a verdict, by the bytes' SHA-256
    dda:<namespace>:pdqv:<pdq>               the verdict a PDQ hash was indexed with (no provenance)
    dda:<namespace>:pdql:<pdq>               a hash an imported list holds, and which list
    dda:<namespace>:list:<source>            the hashes a list imported (its removal reads them)
    dda:<namespace>:lists                    the registry of imported lists and their sizes
    dda:<namespace>:pdqlog:<epoch>:<shard>   the shared log of indexed hashes (`worker.cache.index_log`)

The namespace is the served model's version and threshold (cached labels must not outlive a
recalibration), and with an ensemble the second model's version and the combiner file's digest.
"""

from __future__ import annotations

from dataclasses import dataclass


def namespace_for(version: str, threshold: float) -> str:
    return f"{version}-t{threshold!r}"


def ensemble_namespace(served: str, second_version: str, combiner_digest: str) -> str:
    return f"{served}+{second_version}+c{combiner_digest}"


@dataclass(frozen=True)
class Keys:
    namespace: str

    @property
    def prefix(self) -> str:
        return f"dda:{self.namespace}:"

    def verdict(self, sha256: str) -> str:
        return f"{self.prefix}sha:{sha256}"

    def indexed(self, pdq: str) -> str:
        return f"{self.prefix}pdqv:{pdq}"

    def listed(self, pdq: str) -> str:
        return f"{self.prefix}pdql:{pdq}"

    def list(self, source: str) -> str:
        return f"{self.prefix}list:{source}"

    @property
    def lists(self) -> str:
        return f"{self.prefix}lists"

    def log(self, epoch: int, shard: int) -> str:
        return f"{self.prefix}pdqlog:{epoch}:{shard}"
