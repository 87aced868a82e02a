"""How image generators sign their files without a signature: one table.

Each row: the generator, where it writes (`png:KEY` for a PNG text chunk, `exif:FIELD`,
`xmp:CreatorTool`), what the value looks like, and the code or files the row was read from.
Rows are tried in order; the first match names the generator. Such metadata is written by
anyone who wants to (and kept by img2img on real photos), so it is reported, never treated
as a declaration: it does not set `declared_ai` and no policy acts on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Signature:
    generator: str
    where: str  # "png:parameters", "exif:Software", "xmp:CreatorTool", ...
    test: Callable[[str], bool]
    reference: str


def _all(*needles: str) -> Callable[[str], bool]:
    return lambda value: all(n in value for n in needles)


def _starts(*prefixes: str) -> Callable[[str], bool]:
    lowered = tuple(p.lower() for p in prefixes)
    return lambda value: value.strip().lower().startswith(lowered)


def _any(value: str) -> bool:
    return bool(value.strip())


A1111 = "AUTOMATIC1111/stable-diffusion-webui modules/images.py (also Forge, SD.Next)"
SIGNATURES: tuple[Signature, ...] = (
    Signature("SwarmUI", "png:parameters", _all("sui_image_params"), "mcmonkeyprojects/SwarmUI image metadata"),
    Signature("Fooocus", "png:fooocus_scheme", _any, "lllyasviel/Fooocus modules/meta_parser.py"),
    Signature("AUTOMATIC1111", "png:parameters", _all("Steps: ", "Sampler: "), A1111),
    Signature("AUTOMATIC1111", "exif:UserComment", _all("Steps: ", "Sampler: "), A1111 + ", JPEG/WebP"),
    Signature("ComfyUI", "png:prompt", _all('"class_type"'), "comfyanonymous/ComfyUI nodes.py SaveImage"),
    Signature("ComfyUI", "png:workflow", _all('"nodes"'), "comfyanonymous/ComfyUI nodes.py SaveImage"),
    Signature("InvokeAI", "png:invokeai_metadata", _any, "invoke-ai/InvokeAI (3.x and later)"),
    Signature("InvokeAI", "png:invokeai_graph", _any, "invoke-ai/InvokeAI (3.x and later)"),
    Signature("InvokeAI", "png:sd-metadata", _any, "invoke-ai/InvokeAI 2.x"),
    Signature("InvokeAI", "png:Dream", _any, "invoke-ai/InvokeAI 1.x (lstein/stable-diffusion)"),
    Signature("NovelAI", "png:Software", _starts("NovelAI"), "NovelAI image downloads (Software, Source, Comment chunks)"),
    Signature("NovelAI", "png:Source", _starts("NovelAI Diffusion"), "NovelAI image downloads"),
    Signature("Midjourney", "png:Description", _all("Job ID:"), "Midjourney downloads (Description and Author chunks)"),
    Signature("imaginAIry", "exif:Software", _starts("imaginairy"), "brycedrennan/imaginAIry (EXIF Software and ImageDescription)"),
    Signature("Draw Things", "xmp:CreatorTool", _starts("Draw Things"), "Draw Things exports (XMP CreatorTool, exif:UserComment JSON)"),
    Signature("Midjourney", "exif:Software", _starts("Midjourney"), "EXIF Software as the generator writes it"),
    Signature("Stable Diffusion", "exif:Software", _starts("Stable Diffusion"), "EXIF Software as the generator writes it"),
    Signature("Stable Diffusion", "png:Software", _starts("Stable Diffusion"), "PNG Software chunk as the generator writes it"),
)


def match(values: dict[str, list[str]]) -> tuple[str, str] | None:
    """(generator, where) of the first row whose place holds a matching value."""
    for row in SIGNATURES:
        if any(row.test(value) for value in values.get(row.where, ())):
            return row.generator, row.where
    return None
