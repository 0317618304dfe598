"""The feed: method-ready batches for the training step, epoch after epoch, made so that the step never waits.

One object joins the loader (worker processes reading, decoding and drawing each sample's randomness) and the
device stage (batched tensor work), the same for the recipe and every benchmark:
- the device stage's `planner()` runs as the loaders' last worker stage, so crop boxes, flips, colour draws and
  masks arrive as collated tensors;
- on a CUDA device the device stage runs `prefetch` batches ahead in a thread on its own stream
  (`pipelines.prefetch`), so the step's launches never queue behind H2D copies, nvjpeg or NVDEC;
- on a CPU the loader runs the device stage in its workers on each worker's batch (`batch_stage`): there is no
  device to hand the work to, and the training process keeps its cores for the step.
Batches whose samples were all skipped are passed over (the loader's stats count their samples against the skip
budget; an epoch with no usable batch at all is a DataError). `state_dict()` is the loader position just after the
last batch handed out (not the one the workers or the prefetch thread have reached), so a checkpoint resumes
exactly. `waited_s` is the time the consumer spent waiting for batches: the step's data wait.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Iterator

import torch

from pipelines.prefetch import DevicePrefetcher
from pipelines.stats import DataError

__all__ = ["Feed"]


class Feed:
    """Endless method-ready batches from `loader` through `stage` on `device`.

    Args:
        loader: a StreamLoader (iterating one epoch per `iter`, with `state_dict()`).
        stage: the device stage (a DeviceStage, or any `stage(batch, device)`); None hands out loader batches.
        device: where the batches go.
        prefetch: batches the device stage runs ahead in a thread; None: 2 on CUDA, 0 (none) elsewhere.
        in_workers: run the device stage in the loader's workers; None: on a CPU device.
    """

    def __init__(self, loader: Any, stage: Any, device: torch.device | str, *, prefetch: int | None = None,
                 in_workers: bool | None = None) -> None:
        self.loader, self.stage, self.device = loader, stage, torch.device(device)
        self.prefetch = (2 if self.device.type == "cuda" else 0) if prefetch is None else prefetch
        self.in_workers = (self.device.type == "cpu") if in_workers is None else in_workers
        if self.in_workers and self.device.type != "cpu":
            raise ValueError("the device stage can only run in the loader's workers for a CPU device")
        if stage is not None and hasattr(stage, "planner") and hasattr(loader, "stages"):
            # in the workers the planner also cuts the crops per sample: only they are collated
            loader.stages = [*loader.stages, stage.planner(cut=self.in_workers)]
        if stage is not None and self.in_workers:
            loader.batch_stage = partial(stage, device=self.device)
        if self.device.type == "cuda" and hasattr(loader, "pin_memory"):
            loader.pin_memory = True  # page-locked batches: the device stage's copies do not wait for the host
        self.position = loader.state_dict()
        self.waited_s = 0.0
        self._it: Iterator | None = None

    def _raw(self) -> Iterator[tuple[dict, dict]]:
        """(batch, loader position after it) of every non-empty batch, epoch after epoch."""
        while True:
            made = 0
            for batch in self.loader:
                position = self.loader.state_dict()
                if batch.get("__size__", 1) == 0:  # every sample of this batch was skipped
                    continue
                made += 1
                yield batch, position
            if made == 0:
                raise DataError(f"the loader made no usable batch in a whole epoch: "
                                f"{self.loader.stats.summary(timing=False)}")

    def _make(self, item: tuple[dict, dict], device: torch.device) -> tuple[dict, dict]:
        batch, position = item
        if self.stage is not None and not self.in_workers:
            batch = self.stage(batch, device)
        return batch, position

    def _start(self) -> Iterator:
        if self.prefetch > 0:
            return DevicePrefetcher(self._raw(), self._make, self.device, depth=self.prefetch)
        return (self._make(item, self.device) for item in self._raw())

    def __iter__(self) -> "Feed":
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = self._start()
        start = time.perf_counter()
        batch, self.position = next(self._it)
        self.waited_s += time.perf_counter() - start
        return batch

    def state_dict(self) -> dict:
        """The loader position after the last batch handed out."""
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        """Continues from a saved position (before the first batch is taken)."""
        if self._it is not None:
            raise RuntimeError("load the feed's state before taking batches from it")
        self.loader.load_state_dict(state)
        self.position = self.loader.state_dict()

    @property
    def stats(self) -> Any:
        return self.loader.stats

    def close(self) -> None:
        """Stops the prefetch thread and the loader's workers."""
        it, self._it = self._it, None
        if it is not None:  # the prefetcher's thread, or the generator over the loader's workers
            it.close()
