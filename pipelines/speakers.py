"""Same-speaker batches for CPC (CPC_audio `cpc/dataset.py` `SameSpeakerSampler`, `samplingType=samespeaker`).

CPC can draw its negatives from the same speaker, which CPC_audio does by building every batch from one
speaker's sequences. Here that is a planner over the index (chosen over a worker-side grouping stage, which
could not change which samples a StreamLoader batch holds):
1. `read_speakers` reads the `speaker` field of every sample's json once (only the json members are read);
2. `speaker_plan` makes an epoch's batches as a pure function of (seed, epoch): each speaker's samples in a
   seeded permutation, cut into whole batches (a speaker's remainder is left out of that epoch, as the
   reference sampler does), and all batches in a seeded permutation;
3. `SpeakerBatchLoader` reads those batches with the StreamLoader's parts (the shard reader, `parse_meta`, the
   stages, `collate`, the skip accounting) and the StreamLoader's contract: global batch b is the same samples in
   the same order for any number of ranks or workers (rank r takes slice r, worker w the batches b with
   (b - start) % W == w), and `state_dict()` = {seed, epoch, samples_consumed} resumes exactly.
"""

from __future__ import annotations

import json
import tarfile
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipelines.collate import collate
from pipelines.loader import finish_batch, restore_position, run_epoch, stream_position
from pipelines.meta import parse_meta
from pipelines.order import EpochOrder
from pipelines.reader import ReadTimer, read_stream
from mmssl.rng import sample_seed
from pipelines.sample import Sample
from pipelines.shards import ShardList, is_local, open_shard, resolve_shards
from pipelines.stats import LoaderStats

__all__ = ["read_speakers", "speaker_plan", "SpeakerBatchLoader"]

Stage = Callable[[Iterable[Sample]], Iterator[Sample]]


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


class _SpeakerEpoch(IterableDataset):
    """One rank's same-speaker batches of one epoch; in a DataLoader worker, that worker's share."""

    def __init__(self, shards: ShardList, plan: np.ndarray, stages: Sequence[Stage], *, rank: int, world: int,
                 start: int, seed: int, epoch: int, batch_stage: Callable[[dict], dict] | None = None) -> None:
        self.shards, self.plan, self.stages, self.batch_stage = shards, plan, list(stages), batch_stage
        self.rank, self.world, self.start, self.seed, self.epoch = rank, world, start, seed, epoch
        # the index order (no shard shuffle, no window): stream index == sample id
        self.order = EpochOrder(shards.counts, seed=seed, epoch=epoch, window=0, shuffle_shards=False)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        g = self.plan.shape[1]
        lo, hi = self.rank * g // self.world, (self.rank + 1) * g // self.world  # this rank's slice of a batch
        for b in range(self.start + worker, len(self.plan), workers):
            ids = self.plan[b, lo:hi]
            timer, t0 = ReadTimer(), time.perf_counter()
            # one read per batch: the reader wants ascending ids, the batch keeps the plan's order
            got = dict(read_stream(self.shards, self.order, sorted(int(i) for i in ids), timer))
            samples = []
            for j, i in enumerate(ids):
                sample = got[int(i)]
                sample.update(__index__=b * g + lo + j, __seed__=self.seed, __epoch__=self.epoch)
                samples.append(sample)
            stream: Iterable[Sample] = samples
            for stage in [parse_meta, *self.stages]:
                stream = stage(stream)
            batch = collate(list(stream))
            batch["__timing__"] = {"read": timer.seconds, "stages": time.perf_counter() - t0 - timer.seconds}
            yield finish_batch(batch, self.batch_stage)


class SpeakerBatchLoader:
    """A StreamLoader whose every global batch holds samples of one speaker (from the shards' json metadata).

    Args:
        source: index.json, a folder holding one, a brace pattern, or a list of shard URLs.
        batch_size: the GLOBAL batch size (samples of one speaker per batch).
        stages: worker stages after metadata parsing (e.g. `decode_audio`).
        seed: data seed.
        rank: this rank (default: torch.distributed's, else 0).
        world_size: number of ranks (default: torch.distributed's, else 1).
        num_workers: DataLoader worker processes.
        key: the json field holding the speaker id.
        max_skip_fraction: stop with a DataError when more samples than this are skipped.
        pin_memory: pin batches for host-to-device copies.
        prefetch_factor: batches each worker prepares ahead.
        start_method: worker start method (default fork: stages are closures; workers never touch CUDA).
    """

    def __init__(self, source: str | Sequence[str], *, batch_size: int, stages: Sequence[Stage] = (), seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                 key: str = "speaker", max_skip_fraction: float = 0.1, pin_memory: bool = False,
                 prefetch_factor: int = 2, start_method: str | None = None) -> None:
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if dist else 1)
        if batch_size < self.world_size:
            raise ValueError(f"global batch_size {batch_size} is smaller than world_size {self.world_size}")
        self.shards = source if isinstance(source, ShardList) else resolve_shards(source)
        self.speakers = read_speakers(self.shards, key=key)
        if all(s is None for s in self.speakers):
            raise ValueError(f"no sample of {source!r} has a {key!r} in its json; shard with a speaker column")
        self.batch_size, self.stages, self.seed = batch_size, list(stages), seed
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.start_method = start_method
        self.batch_stage: Callable[[dict], dict] | None = None  # as StreamLoader's
        self.stats = LoaderStats(max_skip_fraction=max_skip_fraction)
        self.epoch, self.samples_consumed = 0, 0
        if len(self._plan()) == 0:
            raise ValueError(f"no speaker has {batch_size} samples: no same-speaker batch can be made")

    def _plan(self, epoch: int | None = None) -> np.ndarray:
        epoch = self.epoch if epoch is None else epoch
        return speaker_plan(self.speakers, batch_size=self.batch_size, seed=self.seed, epoch=epoch)

    def __len__(self) -> int:
        """Batches left in the current epoch (the same on every rank)."""
        return len(self._plan()) - self.samples_consumed // self.batch_size

    def state_dict(self) -> dict[str, int]:
        """The stream position: restoring it continues exactly (any world size or worker count)."""
        return stream_position(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        restore_position(self, state)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches for the rest of the current epoch; the next call starts the next epoch."""
        if len(self) <= 0:
            self.epoch, self.samples_consumed = self.epoch + 1, 0
        data = _SpeakerEpoch(self.shards, self._plan(), self.stages, rank=self.rank, world=self.world_size,
                             start=self.samples_consumed // self.batch_size, seed=self.seed, epoch=self.epoch,
                             batch_stage=self.batch_stage)
        yield from run_epoch(self, data)
