"""The `mmssl` command. Subcommands are added as the pieces behind them land."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mmssl import discover

__all__ = ["main", "build_parser"]


def _ls(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("all", "modalities"):
        print("modalities:")
        for name, spec in discover.modalities().items():
            kind = f"{spec.num_classes} classes" if spec.categorical else f"{spec.channels} ch"
            print(f"  {name:<8} size {'x'.join(map(str, spec.size)):<12} patch {'x'.join(map(str, spec.patch)):<8} "
                  f"grid {'x'.join(map(str, spec.grid)):<8} {kind:<12} key .{spec.key}")
    if what in ("all", "encoders"):
        names = discover.encoders(all_names=args.all)
        print(f"encoders (timm ViT names, {len(names)}{'' if args.all else '; --all for every variant'}):")
        for i in range(0, len(names), 3):
            print("  " + "".join(f"{n:<32}" for n in names[i:i + 3]).rstrip())
    if what in ("all", "configs"):
        found = discover.configs()
        if found or what == "configs":
            print("configs:")
            for modality, names in found.items():
                print(f"  {modality}: {', '.join(names)}")
            if not found:
                print("  (none shipped yet)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `mmssl` command."""
    parser = argparse.ArgumentParser(
        prog="mmssl", description="Self-supervised learning on images, video and audio from streaming shards.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    ls = sub.add_parser("ls", help="list modalities, encoders and configs")
    ls.add_argument("what", nargs="?", default="all", choices=["all", "modalities", "encoders", "configs"])
    ls.add_argument("--all", action="store_true", help="list every timm ViT variant, not only the plain sizes")
    ls.set_defaults(func=_ls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mmssl` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
