"""Modality specs, discovered from the modules of this package (add a file, no list to edit)."""

from __future__ import annotations

import importlib
import pkgutil

from mmssl.modalities.spec import Modality

__all__ = ["Modality", "all_modalities", "get_modality"]


def all_modalities() -> dict[str, Modality]:
    """Every `Modality` defined at module level in `mmssl.modalities`, by name."""
    found: dict[str, Modality] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Modality):
                found.setdefault(value.name, value)
    return dict(sorted(found.items()))


def get_modality(name: str | Modality) -> Modality:
    """Looks a modality up by name; an unknown name raises with the known ones listed."""
    if isinstance(name, Modality):
        return name
    known = all_modalities()
    if name not in known:
        raise KeyError(f"unknown modality {name!r}; known: {', '.join(known)}")
    return known[name]
