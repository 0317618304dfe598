"""Reading the samples a worker needs from tar shards, in stream order, without reading the others' data.

Members are grouped into samples by key (the file name up to its first dot). A shard that cannot be opened or
ends early (truncated) yields skip markers for every needed sample it could not deliver, with the reason, so
nothing is lost silently and no reader waits or sleeps. With `verify`, a shard is hashed whole before any of its
samples is handed out (`pipelines.shards.open_verified`), and a shard whose sha256 differs from its index entry
yields skip markers for all the samples needed from it, with the reason naming the shard and both digests.
"""

from __future__ import annotations

import tarfile
import time
from typing import Container, Iterable, Iterator

from pipelines.order import EpochOrder
from pipelines.sample import Sample, skip
from pipelines.shards import ShardDigestError, ShardList, is_local, open_shard, open_verified

__all__ = ["read_stream", "ReadTimer"]


class ReadTimer:
    """Accumulates seconds spent reading shards (for the loader's per-stage timing)."""

    def __init__(self) -> None:
        self.seconds = 0.0


def _ext(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.split(".", 1)[1] if "." in base else ""


def _samples(url: str, want: Container[int], expected: str | None = None) -> Iterator[tuple[int, Sample]]:
    """(index in shard, sample) for the wanted samples of a shard, in tar order.

    Member data is read as the member passes (a stream cannot go back); members of unwanted samples are
    skipped: by seeking on local files, by reading through on streams. With an `expected` sha256 the shard is
    checked first (raising ShardDigestError) and then read from the checked, seekable copy.
    """
    f = open_shard(url) if expected is None else open_verified(url, expected)
    tar = tarfile.open(fileobj=f, mode="r:" if is_local(url) or expected is not None else "r|")
    try:
        index, key, sample = -1, None, None
        for member in tar:
            if not member.isfile():
                continue
            k = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
            if k != key:  # a new sample starts
                if sample is not None:
                    yield index, sample
                index, key = index + 1, k
                sample = {"__key__": k} if index in want else None
            if sample is not None:
                sample[_ext(member.name)] = tar.extractfile(member).read()
        if sample is not None:
            yield index, sample
    finally:
        tar.close()
        f.close()


def read_stream(shards: ShardList, order: EpochOrder, needed: Iterable[int], timer: ReadTimer | None = None, *,
                verify: bool = False) -> Iterator[tuple[int, Sample]]:
    """Yields (stream index, sample or skip marker) for the ascending stream indices in `needed`.

    Args:
        shards: the shards, with their index digests.
        order: the epoch's stream order.
        needed: ascending stream indices.
        timer: collects the seconds spent reading.
        verify: check each shard's sha256 against its index before using it (shards without one are read as
            they are; the loader warns about them once).
    """
    timer = timer or ReadTimer()
    needed = iter(needed)
    nxt = next(needed, None)
    while nxt is not None:
        slot = int(order.starts.searchsorted(nxt, side="right")) - 1  # place of the shard in stream order
        shard_id, first = int(order.shard_order[slot]), int(order.starts[slot])
        end = first + shards.counts[shard_id]
        url = shards.urls[shard_id]
        expected = shards.digest(shard_id) if verify else None
        want = {}  # local index -> stream index, for every needed sample of this shard
        while nxt is not None and nxt < end:
            want[nxt - first] = nxt
            nxt = next(needed, None)
        got = set()
        t0 = time.perf_counter()
        try:
            for i, sample in _samples(url, want, expected):
                sample["__shard__"] = url
                got.add(i)
                timer.seconds += time.perf_counter() - t0
                yield want[i], sample
                t0 = time.perf_counter()
                if len(got) == len(want):
                    break
            reason = f"shard {url} has fewer samples than its index says"
        except ShardDigestError as err:
            reason = str(err)
        except (tarfile.TarError, OSError, EOFError, ValueError) as err:
            reason = f"shard {url} unreadable after {len(got)} sample(s): {type(err).__name__}: {err}"
        timer.seconds += time.perf_counter() - t0
        for i in sorted(set(want) - got):
            yield want[i], skip({"__key__": f"{url.rsplit('/', 1)[-1]}#{i}", "__shard__": url}, reason)
