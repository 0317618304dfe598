"""Numbered test shards: sample n holds `num` = n (or b"bad" for the keys asked to be broken) and a json."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.sample import guarded
from pipelines.sharding.writer import ShardWriter

__all__ = ["COUNTS", "write_shards", "to_int", "decode"]

COUNTS = (7, 5, 9, 3, 6)  # 30 samples in 5 shards: fewer shards than ranks x workers in some tests


def write_shards(root: Path, counts=COUNTS, bad: set[str] = frozenset()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    entries, n = [], 0
    for j, count in enumerate(counts):
        w = ShardWriter(root / f"s-{j:03d}.tar")
        for _ in range(count):
            key = f"k{n:04d}"
            w.add(key, {"num": b"bad" if key in bad else str(n).encode(), "json": json.dumps({"n": n}).encode()})
            n += 1
        entries.append(w.close())
    (root / "index.json").write_text(json.dumps({"shards": entries, "samples": n}))
    return root


def to_int(sample):
    return {**sample, "num": int(sample["num"])}


decode = guarded(to_int, (ValueError,), what="decode")
