"""Batch plans: which samples make each global batch of an epoch, as a pure function of (seed, epoch).

A `StreamLoader` reads whatever its plan says, with one reader, one set of stages, one collate and one skip
budget; the plan only decides membership and order. Every plan keeps the loader's contract: global batch b is
the same samples in the same order for any number of ranks or workers (rank r of R takes slice r of every batch,
worker w of W the batches b with (b - start) % W == w), every rank sees the same number of batches, and a
position (epoch, batches consumed) is enough to resume.

A plan returns, for one rank and worker, a `Reading`: per batch its positions (the sample's place in the epoch,
`__index__`), the stream indices to read (`EpochOrder.locate` maps them to shard and member) and a read group
per sample: the reader fetches each group's stream indices in ascending order (a shard is read forwards once),
and the samples are handed out in position order.
- `ShuffledStream` (the default): shards in a seeded order, samples shuffled within windows of stream indices;
  a window is a read group.
- `pipelines.speakers.SameSpeaker`: every batch one speaker's samples (CPC's same-speaker negatives); a batch is
  a read group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipelines.order import EpochOrder, batch_slices, num_batches
from pipelines.shards import ShardList

__all__ = ["Reading", "BatchPlan", "ShuffledStream"]


@dataclass(frozen=True)
class Reading:
    """What one rank's worker reads in an epoch, batch by batch.

    Attributes:
        order: maps stream indices to (shard, member).
        batches: (global batch id, number of samples of this slice) in the order they are made.
        positions: (P,) every sample's position in the epoch, batch after batch.
        stream: (P,) the stream index to read for each position.
        groups: (P,) read group of each position; groups are contiguous and ascend with position.
    """

    order: EpochOrder
    batches: list[tuple[int, int]]
    positions: np.ndarray
    stream: np.ndarray
    groups: np.ndarray


class BatchPlan(Protocol):
    """Decides the samples of each global batch; see the module docstring."""

    def prepare(self, shards: ShardList, batch_size: int) -> None:
        """Reads what the plan needs from the shards once, when the loader is built (may raise ValueError)."""

    def num_batches(self, seed: int, epoch: int) -> int:
        """Global batches in the epoch (the same on every rank)."""

    def reading(self, seed: int, epoch: int, *, rank: int, world: int, start: int, worker: int,
                workers: int) -> Reading:
        """This rank's and worker's share of the epoch from global batch `start` on."""


class ShuffledStream:
    """Shards in a seeded order, samples shuffled within windows of `window` stream indices (`pipelines.order`).

    Args:
        window: samples per shuffle window (a buffer of encoded samples); 0 keeps the shard order.
        shuffle_shards: permute the shards every epoch.
        drop_last: drop the last partial global batch (training); False reads every sample once (evaluation).
    """

    def __init__(self, window: int = 1000, shuffle_shards: bool = True, drop_last: bool = True) -> None:
        self.window, self.shuffle_shards, self.drop_last = window, shuffle_shards, drop_last
        self.counts: tuple[int, ...] = ()
        self.batch_size = 1

    def prepare(self, shards: ShardList, batch_size: int) -> None:
        self.counts, self.batch_size = tuple(shards.counts), batch_size
        if self.num_batches(0, 0) == 0:
            raise ValueError(f"{shards.total} samples make no full global batch of {batch_size}")

    def num_batches(self, seed: int, epoch: int) -> int:
        return num_batches(int(sum(self.counts)), self.batch_size, drop_last=self.drop_last)

    def reading(self, seed: int, epoch: int, *, rank: int, world: int, start: int, worker: int,
                workers: int) -> Reading:
        order = EpochOrder(self.counts, seed=seed, epoch=epoch, window=self.window,
                           shuffle_shards=self.shuffle_shards)
        slices = batch_slices(order.total, self.batch_size, rank, world, drop_last=self.drop_last, start=start,
                              worker=worker, workers=workers)
        positions = np.concatenate([np.arange(lo, hi) for _, lo, hi in slices] or [np.zeros(0, np.int64)])
        return Reading(order, [(b, hi - lo) for b, lo, hi in slices], positions, order.stream_index(positions),
                       positions // max(self.window, 1))
