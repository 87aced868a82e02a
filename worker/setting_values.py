"""How a setting's text becomes its value: each parser raises ArgumentTypeError with the reason, which
argparse shows for a flag and `worker.config.load` for an environment variable."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def positive_int(text: str) -> int:
    value = whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def port(text: str) -> int:
    value = whole(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0-65535): {value}")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}")
        return text

    parse.allowed = allowed  # type: ignore[attr-defined]  # shown as the flag's choices in --help
    return parse


def switch(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("must be on or off")
    return text == "on"


switch.allowed = ("on", "off")  # type: ignore[attr-defined]


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be at most 1, got {text!r}")
    return value


def optional(text: str) -> str | None:
    return text or None


def off_or_path(text: str) -> str | None:
    return None if text in ("", "off") else text


def slot(text: str) -> str | None:
    """A member slot: Kafka's legal name characters (as for topics), short enough for the ids built from it."""
    if len(text) > 240 or text.strip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"):
        raise argparse.ArgumentTypeError("use at most 240 of the characters a-z A-Z 0-9 . _ -")
    return text or None


def pem_certificates(text: str) -> str | None:
    """A readable file holding at least one PEM certificate, or unset."""
    if not text:
        return None
    try:
        with open(text, encoding="utf-8", errors="replace") as pem:
            content = pem.read(1 << 22)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in content:
        raise argparse.ArgumentTypeError(f"no PEM certificate in {text}")
    return text
