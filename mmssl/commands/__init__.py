"""Subcommands of `mmssl`: each module here defines `register(subparsers)`; the CLI finds them itself."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

__all__ = ["register_all"]


def register_all(subparsers: argparse._SubParsersAction) -> None:
    """Calls `register(subparsers)` of every module in this package, in name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
