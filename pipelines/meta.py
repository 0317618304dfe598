"""The first stage of every pipeline: parse `json` metadata into a dict and `cls` into an int label."""

from __future__ import annotations

import json
from typing import Iterable, Iterator

from pipelines.sample import Sample, guarded

__all__ = ["parse_meta", "keep"]


def _parse(sample: Sample) -> Sample:
    out = dict(sample)
    if isinstance(out.get("json"), (bytes, str)):
        out["json"] = json.loads(out["json"])
    if isinstance(out.get("cls"), (bytes, str)):
        out["cls"] = int(out["cls"])
    return out


def parse_meta(samples: Iterable[Sample]) -> Iterator[Sample]:
    """Stage: json bytes -> dict, cls bytes -> int; a sample whose metadata does not parse is skipped."""
    return guarded(_parse, (ValueError, UnicodeDecodeError), what="parse_meta")(samples)


class keep:  # noqa: N801 - used like a function in YAML: `_component_: pipelines.meta.keep`
    """Stage factory: keep only the named files of each sample (plus loader fields), dropping the rest early.

    Args:
        exts: extensions to keep, e.g. ["mp4", "json", "cls"].
    """

    def __init__(self, exts: list[str]) -> None:
        self.exts = set(exts)
        self.__name__ = "keep"

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        for sample in samples:
            yield {k: v for k, v in sample.items() if k.startswith("__") or k in self.exts}
