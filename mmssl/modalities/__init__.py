"""Modality specs, discovered from the modules of this package (add a file, no list to edit)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
from typing import Any, Mapping

from mmssl.modalities.spec import Modality

__all__ = ["Modality", "all_modalities", "get_modality"]


def all_modalities() -> dict[str, Modality]:
    """Every `Modality` defined at module level in `mmssl.modalities`, by name."""
    return dict(_discovered())


@functools.lru_cache(maxsize=1)
def _discovered() -> dict[str, Modality]:
    """The package's modules are listed once per process: `get_modality` runs per batch in the data pipeline."""
    found: dict[str, Modality] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Modality):
                found.setdefault(value.name, value)
    return dict(sorted(found.items()))


def get_modality(name: str | Modality | Mapping[str, Any]) -> Modality:
    """Looks a modality up by name, or builds a variant from a mapping such as {name: image, patch: [8, 8]}.

    A variant keeps its name (so tokens and encoders still match) and changes any spec field, which lets a tiny
    CPU config use 8x8 patches on 64x64 images without a new modality file. Unknown names or fields raise with
    the valid ones listed.
    """
    if isinstance(name, Modality):
        return name
    if isinstance(name, Mapping):
        fields = {f.name for f in dataclasses.fields(Modality)}
        extra = sorted(set(name) - fields)
        if extra or "name" not in name:
            raise KeyError(f"modality variant {dict(name)} needs 'name' and only these fields: {sorted(fields)}")
        changes = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in name.items() if k != "name"}
        return dataclasses.replace(get_modality(name["name"]), **changes)
    known = _discovered()
    if name not in known:
        raise KeyError(f"unknown modality {name!r}; known: {', '.join(known)}")
    return known[name]
