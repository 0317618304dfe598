"""Where shards come from: index.json files, folders, brace patterns, URL lists; and opening one for reading.

Local paths are opened directly (seekable: tar members that are not needed are skipped without reading them);
`pipe:` commands and http(s)/gs URLs go through webdataset's `gopen`; other URL schemes (s3://, az://, ...) through
fsspec when it is installed. Exact per-shard sample counts come from index.json; without one they are counted
by reading the shards once (with a warning). index.json also holds each shard's sha256, which `open_verified`
checks before a shard's samples are used (the loader's `verify` option).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

__all__ = ["ShardList", "resolve_shards", "open_shard", "open_verified", "ShardDigestError", "is_local",
           "check_shards"]

log = logging.getLogger(__name__)
_GOPEN_SCHEMES = ("pipe:", "http://", "https://", "gs://", "ais://", "sftp://", "scp://", "hf://")
_BLOCK = 1 << 20
_SPOOL_BYTES = 64 << 20  # a streamed shard is held in memory up to this size, then spilled to a temporary file


@dataclass(frozen=True)
class ShardList:
    """Shard URLs with exact sample counts, the index metadata (classes, modality) and the shards' sha256 digests
    when there is an index (`digests` is empty, or holds None for a shard, where the index gives none)."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    meta: dict
    digests: tuple[str | None, ...] = ()

    @property
    def total(self) -> int:
        return sum(self.counts)

    def digest(self, i: int) -> str | None:
        """The sha256 (hex) index.json gives shard `i`, or None."""
        return self.digests[i] if i < len(self.digests) else None


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def open_shard(url: str) -> IO[bytes]:
    """A binary stream of a shard (or index) at a local path or URL."""
    if is_local(url):
        return open(url.removeprefix("file:"), "rb")
    if url.startswith(_GOPEN_SCHEMES):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    try:
        import fsspec
    except ImportError:
        raise ValueError(f"cannot open {url}: install fsspec for this URL scheme, or use a pipe: command") from None
    return fsspec.open(url, "rb").open()


class ShardDigestError(ValueError):
    """A shard's bytes do not hash to the sha256 its index gives: the shard is corrupt."""

    def __init__(self, url: str, expected: str, got: str) -> None:
        super().__init__(f"sha256 mismatch: shard {url} (expected {expected}, got {got}): the shard is corrupt; "
                         f"delete it and rebuild it with mmssl shard --resume, or re-download it")
        self.url, self.expected, self.got = url, expected, got


def open_verified(url: str, expected: str) -> IO[bytes]:
    """A seekable binary stream of the shard at `url`, once all its bytes were hashed and matched `expected`.

    The whole shard is hashed before any of it is handed out, because a sample used before the digest is known
    cannot be taken back. The cost is one read of the shard: a local file is hashed through and then rewound
    (the members read after it come from the page cache the hash just filled); a stream (pipe:, http, s3...)
    cannot be rewound, so its bytes are copied while they are hashed into a spool (memory up to 64 MiB, a
    temporary file beyond) and read from there.

    Raises:
        ShardDigestError: the digest differs (the stream is closed).
    """
    digest = hashlib.sha256()
    local = is_local(url)
    out: IO[bytes] = open(url.removeprefix("file:"), "rb") if local else tempfile.SpooledTemporaryFile(_SPOOL_BYTES)
    try:
        source = out if local else open_shard(url)
        try:
            for block in iter(lambda: source.read(_BLOCK), b""):
                digest.update(block)
                if not local:
                    out.write(block)
        finally:
            if not local:
                source.close()
    except BaseException:
        out.close()
        raise
    got = digest.hexdigest()
    if got != expected:
        out.close()
        raise ShardDigestError(url, expected, got)
    out.seek(0)
    return out


def check_shards(shards: ShardList) -> None:
    """Before the first step: every local shard is there and is a tar file (not, say, an HTML error page saved
    under its name). Raises FileNotFoundError or ValueError naming the shards."""
    local = [u.removeprefix("file:") for u in shards.urls if is_local(u)]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"{len(missing)} of the {len(shards.urls)} shards in the index are missing: "
                                f"{', '.join(missing[:3])}{more}")
    for url in local:
        with open(url, "rb") as f:
            head = f.read(512)
        if len(head) == 512 and head[257:262] != b"ustar" and any(head):
            start = head[:40].decode("ascii", "replace").strip()
            raise ValueError(f"shard {url} is not a tar file (it starts with {start!r}); rebuild or re-download it")


def _join(base: str, name: str) -> str:
    if "://" in name or name.startswith(("/", "pipe:")):
        return name
    if base.startswith("pipe:"):
        raise ValueError(f"shard {name!r} is relative, but its index came through a pipe; use absolute URLs")
    return f"{base.rstrip('/')}/{name}" if base else name


def _from_index(url: str) -> ShardList:
    try:
        with open_shard(url) as f:
            index = json.loads(f.read())
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot read shard index {url}: {err}") from None
    base = url.rsplit("/", 1)[0] if "/" in url else ""
    shards = index.get("shards", [])
    meta = {k: v for k, v in index.items() if k != "shards"}
    return ShardList(tuple(_join(base, s["name"]) for s in shards), tuple(int(s["samples"]) for s in shards), meta,
                     tuple(s.get("sha256") or None for s in shards))


def _count(url: str) -> int:
    count, last = 0, None
    with open_shard(url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            key = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
            if member.isfile() and key != last:
                count, last = count + 1, key
    return count


def resolve_shards(source: str | Path | Sequence[str]) -> ShardList:
    """Resolves a shard source: index.json (path or URL), a folder with index.json, a brace pattern or a list."""
    if isinstance(source, (list, tuple)):
        urls = [str(u) for u in source]
    else:
        source = str(source)
        if source.endswith(".json"):
            return _from_index(source)
        if is_local(source) and Path(source).is_dir():
            if not (Path(source) / "index.json").is_file():
                raise FileNotFoundError(f"{source} has no index.json; run `mmssl shard` or pass shard paths")
            return _from_index(str(Path(source) / "index.json"))
        from braceexpand import braceexpand

        urls = list(braceexpand(source))
    if not urls:
        raise FileNotFoundError(f"no shards in {source!r}")
    base = urls[0].rsplit("/", 1)[0] if "/" in urls[0] else "."
    if not urls[0].startswith("pipe:"):  # a pipe command has no folder to look for an index in
        try:
            beside = _from_index(_join(base, "index.json"))
            known = dict(zip(beside.urls, range(len(beside.urls))))
            if all(u in known for u in urls):
                return ShardList(tuple(urls), tuple(beside.counts[known[u]] for u in urls), beside.meta,
                                 tuple(beside.digest(known[u]) for u in urls))
        except FileNotFoundError:
            pass
    for u in urls:
        if is_local(u) and not Path(u).is_file():
            raise FileNotFoundError(f"shard not found: {u}")
    log.warning("no index.json beside %s: counting samples by reading %d shard(s) once", urls[0], len(urls))
    return ShardList(tuple(urls), tuple(_count(u) for u in urls), {})
