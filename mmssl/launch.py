"""Running the layers above the library by name: the CLI's way to reach `recipes` and `pipelines`.

The packages form one chain, `mmssl` <- `pipelines` <- `recipes`: the library (tokens, models, methods, losses,
evaluation maths) imports neither of the others, so it works with only torch and timm installed, and the data
pipelines and recipes build on it. The `mmssl` command is the exception by nature: it sits on top of all three.
Its subcommands therefore name what they run ("recipes.pretrain:main") and this module imports it when the
command runs, as a console-script entry point does, instead of importing it where the command is defined.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["resolve", "call"]


def resolve(target: str) -> Callable[..., Any]:
    """The function named by "package.module:function"."""
    module, _, name = target.partition(":")
    if not name:
        raise ValueError(f"target must be 'module:function', got {target!r}")
    return getattr(importlib.import_module(module), name)


def call(target: str, *args: Any, **kwargs: Any) -> Any:
    """Imports the function named by "package.module:function" and calls it."""
    return resolve(target)(*args, **kwargs)
