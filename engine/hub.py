"""Where models come from: local directories, local checkpoints, or the Hugging Face hub.

`hf://OWNER/REPO/PATH[@REVISION]` names a file in a hub repository. A model named that way
is downloaded through huggingface_hub's cache, imported once into DDA's cache directory,
and reused from there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from engine.checkpoint import import_checkpoint
from engine.model_dir import MANIFEST

OFFICIAL_CHECKPOINT = "hf://Junwei-Xi/Dual-Data-Alignment/DDA_ckpt.pth"
_HF_URI = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)/(?P<path>[^@]+?)(?:@(?P<rev>[^/]+))?$")


def cache_dir() -> Path:
    return Path(os.environ.get("DDA_CACHE_DIR") or Path.home() / ".cache" / "dda")


def is_hf_uri(spec: str) -> bool:
    return spec.startswith("hf://")


def download_hf(uri: str) -> Path:
    """Fetch one file from the hub (huggingface_hub shows its own progress bar)."""
    match = _HF_URI.match(uri)
    if not match:
        raise ValueError(f"{uri!r} is not of the form hf://OWNER/REPO/PATH[@REVISION]")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=match["repo"], filename=match["path"], revision=match["rev"]))


def resolve_checkpoint(src: str) -> Path:
    return download_hf(src) if is_hf_uri(src) else Path(src)


def resolve_model(spec: str | None, progress: Callable[[str], None] = lambda _m: None) -> Path:
    """A model directory for `spec`: a directory as is; an hf:// checkpoint imported on first use.

    With no spec the authors' released checkpoint is used.
    """
    spec = spec or OFFICIAL_CHECKPOINT
    if not is_hf_uri(spec):
        return Path(spec)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec[len("hf://") :])
    dest = cache_dir() / "models" / slug
    if (dest / MANIFEST).is_file():
        return dest
    progress(f"model {spec} is not in {dest.parent} yet: downloading it from the Hugging Face hub (first use only)")
    checkpoint = download_hf(spec)
    progress(f"importing {checkpoint} into {dest}")
    import_checkpoint(checkpoint, dest, source_uri=spec, progress=progress)
    return dest
