"""Forming a batch from samples: skip markers are taken out and reported, the rest stacked.

In a DataLoader worker the stacked tensors are made in shared memory (`transfer_empty`): the worker hands a
tensor to the training process by moving its storage to shared memory, which for an ordinary tensor is one more
copy of the whole batch (and on a VM page faults dominate such copies).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import get_worker_info

from pipelines.frames import ClipFrames
from pipelines.sample import SKIP, Sample

__all__ = ["collate", "transfer_empty"]


def transfer_empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor that a DataLoader worker can hand over without a copy: in shared memory when
    called in a worker, ordinary memory elsewhere."""
    if get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(tuple(shape))


def _stack(key: str, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, np.ndarray):
        values = [torch.from_numpy(np.ascontiguousarray(v)) for v in values]
        first = values[0]
    if isinstance(first, (torch.Tensor, ClipFrames)):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch {key!r}: samples have shapes {sorted(shapes)}; add a crop/resize stage")
        out = transfer_empty((len(values), *first.shape), first.dtype)
        if isinstance(first, torch.Tensor):
            return torch.stack(values, out=out)
        for row, v in zip(out, values):  # decoded video: the clips are gathered straight into the batch
            v.gather(out=row)
        return out
    if isinstance(first, bool):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(first, int):
        return torch.tensor(values, dtype=torch.long)
    if isinstance(first, float):
        return torch.tensor(values, dtype=torch.float)
    return list(values)


def collate(samples: Sequence[Sample]) -> dict[str, Any]:
    """Stacks tensors/arrays/numbers per key and lists the rest; `__skipped__` lists (shard, key, reason).

    A key that only some samples have becomes a list with None for the others.

    `__size__` is the number of samples kept; a batch whose samples were all skipped (or an empty slice of a
    short last batch) has size 0 and only the bookkeeping keys.
    """
    kept = [s for s in samples if SKIP not in s]
    batch: dict[str, Any] = {
        "__skipped__": [(s.get("__shard__", "?"), s.get("__key__", "?"), s[SKIP]) for s in samples if SKIP in s],
        "__size__": len(kept),
    }
    if not kept:
        return batch
    common = set.intersection(*(set(s) for s in kept))
    for key in sorted(set().union(*kept)):
        if key in common:
            batch[key] = _stack(key, [s[key] for s in kept])
        else:  # present in some samples only (e.g. .jpg and .png before decoding): a list with None gaps
            batch[key] = [s.get(key) for s in kept]
    return batch
