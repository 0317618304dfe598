"""The sample order of an epoch as a pure function of (seed, epoch, position), and who reads which positions.

An epoch's stream is the shards in a seeded permutation, each shard's samples in tar order. Positions are then
shuffled within consecutive windows of `window` stream indices (a shuffle buffer whose content is fixed by the
seed, not by read timing). Global batch b holds positions [b*G, (b+1)*G); rank r of R takes slice r of every
global batch and worker w of W takes the rank's batches b with (b - start) % W == w. So the samples of a global
batch do not depend on how many ranks or workers read them, and a position is enough to resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mmssl.rng import sample_seed

__all__ = ["EpochOrder", "batch_slices", "num_batches"]


def _perm(n: int, seed: int, epoch: int, what: str) -> np.ndarray:
    rng = np.random.Generator(np.random.Philox(sample_seed(seed, epoch, what)))
    return rng.permutation(n)


def num_batches(total: int, global_batch: int, *, drop_last: bool) -> int:
    """Global batches in an epoch of `total` samples: whole batches only when training, all samples otherwise."""
    return total // global_batch if drop_last else -(-total // global_batch)


def batch_slices(total: int, global_batch: int, rank: int, world: int, *, drop_last: bool,
                 start: int = 0, worker: int = 0, workers: int = 1) -> list[tuple[int, int, int]]:
    """(batch, first position, end position) of the slices this rank/worker reads, in batch order.

    Every rank gets one slice per global batch (an empty one when a short last batch has fewer samples than
    ranks), so all ranks see the same number of batches.
    """
    out = []
    for b in range(start + worker, num_batches(total, global_batch, drop_last=drop_last), workers):
        lo, hi = b * global_batch, min((b + 1) * global_batch, total)
        n = hi - lo
        # balanced split: slice r is [lo + r*n//R, lo + (r+1)*n//R)
        out.append((b, lo + rank * n // world, lo + (rank + 1) * n // world))
    return out


@dataclass(frozen=True)
class EpochOrder:
    """Maps positions of one epoch to (shard, index in shard).

    Args:
        counts: samples per shard, in index order.
        seed: the run's data seed.
        epoch: the epoch number.
        window: shuffle window in samples (0 or 1: no shuffle within the stream).
        shuffle_shards: permute the shard order every epoch.
    """

    counts: tuple[int, ...]
    seed: int = 0
    epoch: int = 0
    window: int = 1000
    shuffle_shards: bool = True
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    @cached_property
    def shard_order(self) -> np.ndarray:
        """Shard ids in stream order."""
        n = len(self.counts)
        return _perm(n, self.seed, self.epoch, "shards") if self.shuffle_shards else np.arange(n)

    @cached_property
    def starts(self) -> np.ndarray:
        """Stream index of the first sample of each shard in stream order (plus the total at the end)."""
        ordered = np.asarray(self.counts, dtype=np.int64)[self.shard_order]
        return np.concatenate([[0], np.cumsum(ordered)])

    def _window_perm(self, w: int) -> np.ndarray:
        if w not in self._cache:
            lo = w * self.window
            size = min(self.window, self.total - lo)
            self._cache[w] = lo + _perm(size, self.seed, self.epoch, f"window{w}")
        return self._cache[w]

    def stream_index(self, positions: np.ndarray) -> np.ndarray:
        """Stream indices of the samples at `positions` (a permutation within each window)."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.window <= 1:
            return positions.copy()
        out = np.empty_like(positions)
        for w in np.unique(positions // self.window):
            sel = positions // self.window == w
            out[sel] = self._window_perm(int(w))[positions[sel] - w * self.window]
        return out

    def locate(self, stream: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard id, index within the shard) of stream indices."""
        stream = np.asarray(stream, dtype=np.int64)
        slot = np.searchsorted(self.starts, stream, side="right") - 1  # position in the shard order
        return self.shard_order[slot], stream - self.starts[slot]
