"""The `mmssl` command. Subcommands live in `mmssl.commands`, one module each, added as they work."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mmssl.commands import register_all
from mmssl.config import ConfigError, parse_overrides_anywhere

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `mmssl` command."""
    parser = argparse.ArgumentParser(
        prog="mmssl", description="Self-supervised learning on images, video and audio from streaming shards.")
    register_all(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mmssl` console script. A user mistake prints one line, not a traceback."""
    parser = build_parser()
    args = parse_overrides_anywhere(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError) as err:
        print(f"mmssl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
