"""`mmssl ls`: what is installed, discovered from the code and the shipped configs."""

from __future__ import annotations

import argparse

from mmssl import discover


def _grid(values: tuple[int, ...]) -> str:
    return "x".join(map(str, values))


def run(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("all", "modalities"):
        print("modalities:")
        for name, spec in discover.modalities().items():
            kind = f"{spec.num_classes} classes" if spec.categorical else f"{spec.channels} ch"
            print(f"  {name:<8} size {_grid(spec.size):<12} patch {_grid(spec.patch):<8} "
                  f"grid {_grid(spec.grid):<8} {kind:<12} key .{spec.key}")
    if what in ("all", "methods"):
        found = discover.methods()
        if found or what == "methods":
            print("methods:")
            for name, cls in found.items():
                print(f"  {name:<16} {', '.join(cls.modalities):<24} {cls.__module__}.{cls.__qualname__}")
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
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `mmssl ls`."""
    p = subparsers.add_parser("ls", help="list modalities, methods, encoders and configs")
    p.add_argument("what", nargs="?", default="all", choices=["all", "modalities", "methods", "encoders", "configs"])
    p.add_argument("--all", action="store_true", help="list every timm ViT variant, not only the plain sizes")
    p.set_defaults(func=run)
