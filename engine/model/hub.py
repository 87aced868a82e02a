"""Where models come from: local directories, local checkpoints, or the Hugging Face hub.

`hf://OWNER/REPO/PATH[@REVISION]` names a file in a hub repository. A model named that way
is downloaded through huggingface_hub's cache, imported once into DDA's cache directory,
and reused from there.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from engine.model.checkpoint import import_checkpoint
from engine.model.manifest import MANIFEST
from engine.process.timebox import Overran, call_within

OFFICIAL_CHECKPOINT = "hf://Junwei-Xi/Dual-Data-Alignment/DDA_ckpt.pth"
_HF_URI = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)/(?P<path>[^@]+?)(?:@(?P<rev>[^/]+))?$")


def cache_dir() -> Path:
    return Path(os.environ.get("DDA_CACHE_DIR") or Path.home() / ".cache" / "dda")


def is_hf_uri(spec: str) -> bool:
    return spec.startswith("hf://")


HUB_PROBE_S = 3.0  # a hub that does not answer a TCP connect in this long is unreachable


class ModelUnavailable(RuntimeError):
    """The model must come from the hub and cannot; the message says how to go on without it."""

    def __init__(self, uri: str, reason: str) -> None:
        never = "" if hub_offline() else " Set HF_HUB_OFFLINE=1 to never try the hub."
        super().__init__(
            f"the model {uri} is not in {cache_dir() / 'models'} and cannot be downloaded from the Hugging Face hub "
            f"({reason}). To run without the hub: import a copy of the checkpoint once with "
            f"`dda import-checkpoint DDA_ckpt.pth DIR`, then pass `--model DIR` (or DDA_MODEL=DIR); a model imported "
            f"before is reused from the cache without the network.{never} Set HF_ENDPOINT to use a mirror. "
            f"To try the worker without any checkpoint: `dda make-test-model DIR` writes a random model "
            f"(not a detector; every verdict says so).")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read as huggingface_hub reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout_s: float = HUB_PROBE_S) -> str | None:
    """None when the hub's host accepts a TCP connection within `timeout_s`, else why not.

    huggingface_hub retries an unreachable host for about 30 s; this answers in seconds, also
    when name resolution hangs (which the connect timeout does not cover)."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        call_within(lambda: socket.create_connection((host, port), timeout=timeout_s).close(), timeout_s, name="hub-probe")
    except Overran:
        return f"{host}:{port} did not answer within {timeout_s:g} s"
    except OSError as exc:
        return f"{host}:{port} unreachable: {exc.strerror or exc}"
    return None


def download_hf(uri: str) -> Path:
    """Fetch one file from the hub (huggingface_hub shows its own progress bar), or ModelUnavailable."""
    match = _HF_URI.match(uri)
    if not match:
        raise ValueError(f"{uri!r} is not of the form hf://OWNER/REPO/PATH[@REVISION]")
    from huggingface_hub import hf_hub_download

    offline = hub_offline()
    proxied = any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"))
    if not offline and not proxied:  # behind a proxy a direct connect says nothing: let huggingface_hub try
        unreachable = _hub_reachable()
        if unreachable:
            raise ModelUnavailable(uri, unreachable)
    try:
        return Path(hf_hub_download(repo_id=match["repo"], filename=match["path"], revision=match["rev"]))
    except Exception as exc:  # offline misses, HTTP errors, timeouts: one actionable message
        reason = "HF_HUB_OFFLINE is set and the file is not in the hub's cache" if offline else f"{type(exc).__name__}: {exc}"
        raise ModelUnavailable(uri, reason.splitlines()[0]) from exc


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
    if hub_offline():
        progress(f"model {spec} is not in {dest.parent} yet; HF_HUB_OFFLINE is set: looking in the hub's local cache only")
    else:
        progress(f"model {spec} is not in {dest.parent} yet: downloading it from the Hugging Face hub (first use only)")
    checkpoint = download_hf(spec)
    progress(f"importing {checkpoint} into {dest}")
    import_checkpoint(checkpoint, dest, source_uri=spec, progress=progress)
    return dest
