"""IPTC `DigitalSourceType` and `xmp:CreatorTool` from XMP packets, without an XML parser.

An XML parser on hostile XMP brings entity expansion, deep nesting and quadratic cases for
two values; a bounded scan for the property names does not. The three ways XMP writes a
property are recognised (attribute, element text, `rdf:resource`), whatever the prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_OCCURRENCES = 16
WINDOW = 1024  # characters after a property name in which its value must appear
_ATTRIBUTE = re.compile(r"""\s*=\s*["']([^"'<>]{1,512})["']""")
_RESOURCE = re.compile(r"""[^>]{0,512}?rdf:resource\s*=\s*["']([^"'<>]{1,512})["']""")
_ELEMENT = re.compile(r"""\s*>\s*([^<]{1,512}?)\s*<""")
_LIST_ITEM = re.compile(r"""\s*>\s*<rdf:(?:Alt|Seq|Bag)>\s*<rdf:li[^>]{0,256}>([^<]{1,512})<""")


def values(text: str, name: str) -> list[str]:
    """Every value of property `name` (local name, any prefix) in `text`."""
    found: list[str] = []
    start = 0
    for _ in range(MAX_OCCURRENCES):
        at = text.find(name, start)
        if at < 0:
            break
        start = at + len(name)
        if at == 0 or text[at - 1] != ":":  # a prefixed property name, not a substring of another
            continue
        window = text[start : start + WINDOW]
        for pattern in (_ATTRIBUTE, _ELEMENT, _LIST_ITEM, _RESOURCE):
            match = pattern.match(window)
            if match:
                found.append(match.group(1).strip())
                break
    return found


@dataclass(frozen=True)
class XmpFacts:
    sources: list[str]  # every DigitalSourceType value, in order
    creator_tool: str | None


def read(packets: list[bytes]) -> XmpFacts | None:
    """What the file's XMP says, or None when it has none."""
    if not packets:
        return None
    text = "\n".join(p.decode("utf-8", "replace") for p in packets)
    tools = values(text, "CreatorTool")
    return XmpFacts(values(text, "DigitalSourceType"), tools[0] if tools else None)
