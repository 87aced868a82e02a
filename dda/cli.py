"""The `dda` command: one entry point, each sub-command registered by its module (`dda/commands/`, and the worker's `worker.service`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, cast

from dda.commands import compare, import_hashes, local_stack, models, scan, training, trust
from dda.commands import compile as compile_commands
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
    models.register(commands)
    compile_commands.register(commands)
    scan.register(commands)
    compare.register(commands)
    service.register(commands)
    trust.register(commands)
    import_hashes.register(commands)
    local_stack.register(commands)
    training.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:  # the worker handles SIGINT itself (drain); everything else stops here
        print("dda: interrupted", file=sys.stderr)
        return 130
