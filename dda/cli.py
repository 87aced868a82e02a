"""The `dda` command: one entry point, sub-commands registered by each package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, cast

from dda.commands import compare as compare_cli
from dda.commands import compile as compile_cli
from dda.commands import import_hashes as hash_lists
from dda.commands import local_stack, scan
from dda.commands import models as engine_cli
from dda.commands import training as training_cli
from dda.commands import trust as trust_cli
from worker import service


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help unless the help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, False, argparse.SUPPRESS)
                or text == argparse.SUPPRESS):
            return action.help
        return f"{text} (default: {action.default})"


class HelpfulParser(argparse.ArgumentParser):
    """Every sub-command's --help shows defaults (and argparse shows choices)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dda", description="DDA AI-generated image detector")
    # Sub-commands register against plain ArgumentParser; the class only changes help formatting.
    commands = cast("argparse._SubParsersAction[argparse.ArgumentParser]",  # noqa: SLF001 - argparse has no public name for it
                    parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=HelpfulParser))
    engine_cli.register(commands)
    compile_cli.register(commands)
    scan.register(commands)
    compare_cli.register(commands)
    service.register(commands)
    trust_cli.register(commands)
    hash_lists.register(commands)
    local_stack.register(commands)
    training_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:  # the worker handles SIGINT itself (drain); everything else stops here
        print("dda: interrupted", file=sys.stderr)
        return 130
