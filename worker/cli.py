"""The `dda` command: one entry point, sub-commands registered by each package."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from engine import cli as engine_cli
from engine import compile_cli
from training import cli as training_cli
from worker import scan, service, trust_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dda", description="DDA AI-generated image detector")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_cli.register(commands)
    compile_cli.register(commands)
    scan.register(commands)
    service.register(commands)
    trust_cli.register(commands)
    training_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
