"""`mmssl shard --verify OUT`: re-read every shard against index.json and list what does not match."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tqdm import tqdm

from pipelines.sharding.writer import file_digest

__all__ = ["verify_shards", "count_samples"]


def count_samples(path: Path) -> int:
    """Number of samples in a tar (runs of members sharing a key). Raises on a truncated or corrupt tar."""
    count, last = 0, None
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
            tar.extractfile(member).read()  # read the data: a cut-off member fails here
            if key != last:
                count, last = count + 1, key
    return count


def verify_shards(out: Path, *, progress: bool = True) -> list[str]:
    """Problems found (an empty list means every shard matches its index entry)."""
    out = Path(out)
    index_path = out / "index.json"
    if not index_path.is_file():
        return [f"{index_path}: missing"]
    index = json.loads(index_path.read_text())
    problems = []
    for entry in tqdm(index["shards"], desc="verifying", unit="shard", disable=not progress):
        path = out / entry["name"]
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems.append(f"{path}: {size} bytes, index says {entry['bytes']}")
        elif file_digest(path) != entry["sha256"]:
            problems.append(f"{path}: checksum differs from the index")
        try:
            n = count_samples(path)
            if n != entry["samples"]:
                problems.append(f"{path}: {n} samples, index says {entry['samples']}")
        except (tarfile.TarError, OSError, EOFError) as err:
            problems.append(f"{path}: unreadable tar: {err}")
    total = sum(e["samples"] for e in index["shards"])
    if total != index.get("samples"):
        problems.append(f"{index_path}: shard counts add up to {total}, total says {index.get('samples')}")
    return problems
