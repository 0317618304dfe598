"""Same-speaker batches for CPC (CPC_audio `cpc/dataset.py` `SameSpeakerSampler`, `samplingType=samespeaker`).

CPC can draw its negatives from the same speaker, which CPC_audio does by building every batch from one
speaker's sequences. Here that is a planner over the index (chosen over a worker-side grouping stage, which
could not change which samples a StreamLoader batch holds):
1. `read_speakers` reads the `speaker` field of every sample's json once (only the json members are read);
2. `speaker_plan` makes an epoch's batches as a pure function of (seed, epoch): each speaker's samples in a
   seeded permutation, cut into whole batches (a speaker's remainder is left out of that epoch, as the
   reference sampler does), and all batches in a seeded permutation;
3. `SameSpeaker` is that plan for a `StreamLoader` (`StreamLoader(..., plan=SameSpeaker())`), which reads it with
   its one reader, stages, collate and skip budget, and keeps its contract: global batch b is the same samples in
   the same order for any number of ranks or workers (rank r takes slice r, worker w the batches b with
   (b - start) % W == w), and `state_dict()` = {seed, epoch, samples_consumed} resumes exactly.
"""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from typing import Sequence

import numpy as np

from mmssl.rng import sample_seed
from pipelines.order import EpochOrder
from pipelines.plans import Reading
from pipelines.shards import ShardList, is_local, open_shard

__all__ = ["read_speakers", "speaker_plan", "SameSpeaker"]


def _shard_speakers(url: str, count: int, key: str) -> list[str | None]:
    out: list[str | None] = [None] * count
    with open_shard(url) as f, tarfile.open(fileobj=f, mode="r:" if is_local(url) else "r|") as tar:
        index, current = -1, None
        for member in tar:
            if not member.isfile():
                continue
            k = member.name.rsplit("/", 1)[-1].split(".", 1)[0]
            if k != current:  # members of one sample are adjacent: a new key is the next sample
                index, current = index + 1, k
            if member.name.endswith(".json") and index < count:
                value = json.loads(tar.extractfile(member).read()).get(key)
                out[index] = None if value in (None, "") else str(value)
    return out


def read_speakers(shards: ShardList, *, key: str = "speaker") -> list[str | None]:
    """The speaker id of every sample in index order (shard by shard, tar order); None where there is none."""
    return [s for url, count in zip(shards.urls, shards.counts) for s in _shard_speakers(url, count, key)]


def _perm(n: int, seed: int, epoch: int, what: str) -> np.ndarray:
    return np.random.Generator(np.random.Philox(sample_seed(seed, epoch, what))).permutation(n)


def speaker_plan(speakers: Sequence[str | None], *, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Sample ids (index order) of an epoch's batches, (num_batches, batch_size), one speaker per row."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(speakers):
        if s is not None:
            groups[s].append(i)
    rows = []
    for name in sorted(groups):  # sorted: the plan must not depend on dict or file order
        ids = np.asarray(groups[name], dtype=np.int64)[_perm(len(groups[name]), seed, epoch, f"speaker:{name}")]
        whole = len(ids) // batch_size * batch_size
        rows.extend(ids[:whole].reshape(-1, batch_size))  # (n,) -> (n / batch_size, batch_size)
    if not rows:
        return np.zeros((0, batch_size), dtype=np.int64)
    plan = np.stack(rows)
    return plan[_perm(len(plan), seed, epoch, "speaker-batches")]


class SameSpeaker:
    """A batch plan (`pipelines.plans`) whose every global batch holds samples of one speaker.

    Args:
        key: the json field holding the speaker id.
    """

    def __init__(self, key: str = "speaker") -> None:
        self.key = key
        self.speakers: list[str | None] = []
        self.counts: tuple[int, ...] = ()
        self.batch_size = 1
        self._plans: dict[tuple[int, int], np.ndarray] = {}

    def prepare(self, shards: ShardList, batch_size: int) -> None:
        self.speakers, self.counts, self.batch_size = read_speakers(shards, key=self.key), tuple(shards.counts), \
            batch_size
        if all(s is None for s in self.speakers):
            raise ValueError(f"no sample has a {self.key!r} in its json; shard with a speaker column")
        if self.num_batches(0, 0) == 0:
            raise ValueError(f"no speaker has {batch_size} samples: no same-speaker batch can be made")

    def _plan(self, seed: int, epoch: int) -> np.ndarray:
        if (seed, epoch) not in self._plans:  # len() asks for it every batch: make each epoch's plan once
            self._plans = {(seed, epoch): speaker_plan(self.speakers, batch_size=self.batch_size, seed=seed,
                                                       epoch=epoch)}
        return self._plans[(seed, epoch)]

    def num_batches(self, seed: int, epoch: int) -> int:
        return len(self._plan(seed, epoch))

    def reading(self, seed: int, epoch: int, *, rank: int, world: int, start: int, worker: int,
                workers: int) -> Reading:
        plan, g = self._plan(seed, epoch), self.batch_size
        lo, hi = rank * g // world, (rank + 1) * g // world  # this rank's slice of every batch
        # the index order (no shard shuffle, no window): stream index == sample id
        order = EpochOrder(self.counts, seed=seed, epoch=epoch, window=0, shuffle_shards=False)
        rows = list(range(start + worker, len(plan), workers))
        ids = plan[rows, lo:hi] if rows else np.zeros((0, hi - lo), np.int64)  # (batches, slice)
        positions = (np.asarray(rows, np.int64)[:, None] * g + lo + np.arange(hi - lo)[None]).reshape(-1)
        groups = np.repeat(np.asarray(rows, np.int64), hi - lo)  # one read per batch, in the plan's order
        return Reading(order, [(b, hi - lo) for b in rows], positions, ids.reshape(-1), groups)
