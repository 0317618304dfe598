"""Writing one shard: an uncompressed tar with fixed metadata, visible under its final name only when complete.

The tar is written to a temporary name and renamed when closed, so an interrupted run never leaves a partial
shard that looks finished (webdataset's ShardWriter can leave a truncated last shard behind).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

__all__ = ["ShardWriter", "file_digest", "TMP_MARK"]

TMP_MARK = ".tmp-"


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes samples `{key}.{ext}` into `path`, atomically.

    Args:
        path: the final shard path (e.g. OUT/shard-000003.tar).
        mtime: the modification time stored for every member (fixed, so equal inputs give equal bytes).
    """

    def __init__(self, path: Path, *, mtime: int = 0) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f"{self.path.name}{TMP_MARK}{os.getpid()}")
        self.mtime = mtime
        self.samples = 0
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)

    def add(self, key: str, files: dict[str, bytes]) -> None:
        """Adds one sample; `files` maps extension (e.g. "mp4", "depth.png") to bytes."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain dots or slashes")
        for ext in sorted(files, key=lambda e: (e != "json", e)):  # json first: readers see metadata early
            data = files[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), self.mtime, 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def close(self) -> dict:
        """Finishes the tar, renames it into place and returns its index entry."""
        self._tar.close()
        os.replace(self.tmp, self.path)
        return {"name": self.path.name, "samples": self.samples, "bytes": self.path.stat().st_size,
                "sha256": file_digest(self.path)}

    def abort(self) -> None:
        """Drops the partial shard."""
        self._tar.close()
        self.tmp.unlink(missing_ok=True)
