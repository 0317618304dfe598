"""What `mmssl ls` lists, found by looking at the installed code and files, never from a hand-kept list."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from mmssl.modalities import Modality, all_modalities

__all__ = ["modalities", "methods", "encoders", "configs", "find_config", "config_root"]


def config_root() -> Path:
    """Where the shipped recipe configs live: recipes/configs/<modality>/<name>.yaml, found as package data of
    `recipes` (installed or in a checkout), not by a path relative to this file."""
    return Path(str(resources.files("recipes").joinpath("configs")))

_PLAIN_VIT = re.compile(r"^vit_[a-z]+_patch\d+_\d+$")


def modalities() -> dict[str, Modality]:
    """Modality specs by name."""
    return all_modalities()


def methods() -> dict:
    """Method classes by lower-case class name."""
    from mmssl.methods import all_methods

    return all_methods()


def encoders(all_names: bool = False) -> list[str]:
    """timm Vision Transformer names a `TokenEncoder` can be built from.

    By default only the plain sizes (e.g. vit_base_patch16_224); `all_names` lists every model timm defines in
    its vision_transformer module (CLIP, SigLIP and other variants share the trunk).
    """
    import timm  # imported here: timm's registry import is slow and most commands do not need it

    names = timm.list_models(module="vision_transformer")
    return sorted(names if all_names else [n for n in names if _PLAIN_VIT.match(n)])


def configs(root: Path | None = None) -> dict[str, list[str]]:
    """Shipped configs per modality folder: {modality: [config names]}."""
    root = config_root() if root is None else root
    if not root.is_dir():
        return {}
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*.yaml"))}


def find_config(name: str, modality: str | None = None, root: Path | None = None) -> Path:
    """A config by path, or by name under recipes/configs/<modality>/ (".yaml" optional)."""
    root = config_root() if root is None else root
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if modality is None and len(path.parts) == 2:  # "image/mae_vit_base"
        modality, path = path.parts[0], Path(path.parts[1])
    stem = path.name.removesuffix(".yaml")
    folders = [root / modality] if modality else sorted(d for d in root.iterdir() if d.is_dir())
    for folder in folders:
        if (folder / f"{stem}.yaml").is_file():
            return folder / f"{stem}.yaml"
    known = ", ".join(configs(root).get(modality, [])) if modality else ""
    where = f"recipes/configs/{modality}/" if modality else "recipes/configs/"
    raise FileNotFoundError(f"config {name!r} not found as a file or in {where}" + (f"; known: {known}" if known else ""))
