"""Configs: YAML whose keys are constructor arguments, `key=value` overrides, and checked instantiation.

A mapping with a `_component_` key names a class or function by import path; its other keys are the keyword
arguments (torchtune's convention). Keys are checked against the signature before anything is built, so a typo
fails at once with the config key it sits at, a guess at what was meant, and the valid names.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

__all__ = ["ConfigError", "load_config", "apply_overrides", "parse_value", "locate", "validate", "instantiate",
           "section"]

COMPONENT = "_component_"


class ConfigError(ValueError):
    """A config problem; the message names the config key (dotted path) at fault."""


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Reads a YAML mapping from `path` and applies `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(cfg).__name__}")
    return apply_overrides(cfg, overrides)


def parse_value(text: str) -> Any:
    """Parses an override value as YAML, with numbers such as `1e-4` read as floats (YAML 1.1 reads a string)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(cfg: Mapping, overrides: Sequence[str]) -> dict:
    """Returns a copy of `cfg` with each `a.b.c=value` set (list items by index: `a.0.b=value`)."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(parts[:depth + 1])
            if isinstance(node, list):
                node = _list_item(node, part, here)
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: config key {here!r} is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            _list_item(node, last, key)
            node[int(last)] = parse_value(text)
        elif isinstance(node, dict):
            node[last] = parse_value(text)
        else:
            raise ConfigError(f"override {item!r}: config key {'.'.join(parts[:-1])!r} is a value, not a section")
    return out


def _list_item(node: list, part: str, where: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"config key {where!r}: {part!r} is not an index of a list of {len(node)}")
    return node[int(part)]


def locate(path: str, where: str = "") -> Callable:
    """Imports `package.module.Name` (attributes of attributes allowed) and returns the object."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            break
        return obj
    raise ConfigError(f"config key {where or COMPONENT!r}: cannot import {path!r}")


def _signature(target: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def _check_keys(target: Callable, keys: Sequence[str], num_args: int, where: str) -> None:
    """Raises when `keys` do not fit the signature of `target` (after `num_args` positional arguments)."""
    sig = _signature(target)
    if sig is None:
        return
    params = list(sig.parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    valid = [p.name for p in named]
    name = getattr(target, "__qualname__", str(target))
    prefix = f"{where}." if where else ""
    for key in keys:
        if not isinstance(key, str):  # YAML 1.1 reads on/off/yes/no/true as booleans, also as keys
            raise ConfigError(f"config key {key!r} under {where or '<root>'!r} is not a name: quote it "
                              f"(YAML reads on, off, yes, no as booleans), e.g. \"on\": device")
        if key not in valid:
            guess = difflib.get_close_matches(key, valid, n=1)
            hint = f" Did you mean {guess[0]!r}?" if guess else ""
            raise ConfigError(f"config key {prefix + key!r} is not an argument of {name}.{hint} "
                              f"Valid keys: {', '.join(valid)}")
    positional = [p.name for p in named if p.kind is p.POSITIONAL_OR_KEYWORD][:num_args]
    for p in named:
        if p.default is p.empty and p.name not in keys and p.name not in positional:
            raise ConfigError(f"config key {prefix + p.name!r} is required by {name} but missing")


def validate(node: Any, where: str = "", num_args: int = 0) -> None:
    """Checks every `_component_` in a config tree against its signature without building anything."""
    if isinstance(node, Mapping):
        if COMPONENT in node:
            target = locate(str(node[COMPONENT]), f"{where}.{COMPONENT}" if where else COMPONENT)
            _check_keys(target, [k for k in node if k != COMPONENT], num_args, where)
        for key, value in node.items():
            if key != COMPONENT:
                validate(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            validate(value, f"{where}.{i}")


def instantiate(node: Any, *args: Any, where: str = "", **kwargs: Any) -> Any:
    """Builds a config node: `_component_` mappings are called with their keys (nested ones built first).

    Extra positional and keyword arguments go to the top-level component (values known only at run time, such as
    an encoder's width). Plain mappings and lists are returned with their components built.
    """
    if isinstance(node, Mapping) and COMPONENT in node:
        target = locate(str(node[COMPONENT]), where)
        keys = [k for k in node if k != COMPONENT]
        # check this node and everything below it before building anything
        _check_keys(target, keys + [k for k in kwargs if k not in keys], len(args), where)
        for k in keys:
            validate(node[k], f"{where}.{k}" if where else k)
        built = {k: instantiate(node[k], where=f"{where}.{k}" if where else k) for k in keys}
        built.update(kwargs)
        try:
            return target(*args, **built)
        except ConfigError:
            raise
        except (TypeError, ValueError, KeyError) as err:
            raise ConfigError(f"config key {where or '<root>'!r} ({node[COMPONENT]}): {err}") from err
    if isinstance(node, Mapping):
        return {k: instantiate(v, where=f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [instantiate(v, where=f"{where}.{i}") for i, v in enumerate(node)]
    return node


def _fits(value: Any, annotation: str) -> bool:
    """Whether a YAML value fits a dataclass field's annotation (as written in a module with postponed
    annotations): int, float (an int is fine), bool, str, Sequence[...] and `X | None` unions of them."""
    kinds = [a.strip() for a in annotation.split("|")]
    for kind in kinds:
        base = kind.split("[", 1)[0]
        if (kind == "None" and value is None) or base == "Any":
            return True
        if base == "bool" and isinstance(value, bool):
            return True
        if base == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if base == "str" and isinstance(value, str):
            return True
        if base in ("Sequence", "list", "tuple") and isinstance(value, (list, tuple)):
            inner = kind[len(base) + 1:-1] if "[" in kind else "Any"
            return all(_fits(v, inner.split(",")[0]) for v in value)
    return False


def section(cls: type, values: Mapping | None, where: str) -> Any:
    """Builds the dataclass `cls` from a plain config section, naming any unknown key with the valid ones, and any
    value of the wrong type with the type its field wants (`train.steps=abc` is an error, not a traceback later)."""
    import dataclasses

    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            guess = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" Did you mean {guess[0]!r}?" if guess else ""
            raise ConfigError(f"config key '{where}.{key}' is unknown.{hint} Valid keys: {', '.join(fields)}")
        annotation = fields[key].type if isinstance(fields[key].type, str) else getattr(fields[key].type, "__name__", "Any")
        if not _fits(value, annotation):
            raise ConfigError(f"config key '{where}.{key}' must be {annotation}, got {value!r}")
    return cls(**values)


def parse_overrides_anywhere(parser: Any, argv: Sequence[str] | None = None) -> Any:
    """`parser.parse_args`, with `key=value` overrides accepted anywhere on the line (after an option too, e.g.
    `--resume auto optim.lr=1e-4`), added to `args.overrides`; anything else unknown is argparse's usual error."""
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    return args
