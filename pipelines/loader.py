"""StreamLoader: deterministic, resumable streaming of tar shards into batches, split across ranks and workers.

What it guarantees (see `pipelines.order`): global batch b is the same set of samples in the same order for any
number of ranks and workers; every rank yields the same number of batches per epoch; `state_dict()` is
{seed, epoch, samples_consumed} and restoring it continues the identical stream, also with another world size or
worker count; bad samples are skipped and counted, never silently dropped, never slept on, against one skip
budget for the whole run (`pipelines.stats`); with `verify`, shards are checked against their index's sha256.

Workers run the stages (CPU only), one torch thread each: the workers are the parallelism, and a worker using
every core's threads oversubscribes the machine (14 workers x 16 threads on a 16-core host) and slows every one.
The device stage runs on the batches in the main process; on a CPU it can instead run in the workers on each
worker's batch (`batch_stage`, which `pipelines.feed.Feed` sets), so the training process only receives them.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipelines.collate import collate
from pipelines.crashes import CRASH_REASON, MAX_RESTARTS, InFlight, dead_pids, dead_workers, detach_sigchld
from pipelines.meta import parse_meta
from pipelines.plans import BatchPlan, Reading, ShuffledStream
from pipelines.reader import ReadTimer, read_stream
from pipelines.sample import Sample, skip
from pipelines.shards import ShardList, check_shards, resolve_shards
from pipelines.stats import LoaderStats

__all__ = ["StreamLoader", "worker_batches", "run_epoch", "stream_position", "restore_position", "finish_batch",
           "single_threaded"]

log = logging.getLogger("pipelines.loader")

Stage = Callable[[Iterable[Sample]], Iterator[Sample]]


class _Timed:
    """Wraps an iterator and adds the seconds spent in it to `totals[name]` (inclusive of upstream stages)."""

    def __init__(self, it: Iterator, name: str, totals: dict) -> None:
        self.it, self.name, self.totals = it, name, totals

    def __iter__(self) -> "_Timed":
        return self

    def __next__(self) -> Any:
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.totals[self.name] += time.perf_counter() - t0


BatchStage = Callable[[dict], dict]


def finish_batch(batch: dict, batch_stage: BatchStage | None) -> dict:
    """Runs `batch_stage` (the device stage on a CPU) on a collated batch where it was made, timed as "device";
    a batch whose samples were all skipped passes through (the consumer skips it)."""
    if batch_stage is None or not batch.get("__size__"):
        return batch
    t0 = time.perf_counter()
    out = batch_stage(batch)
    out["__timing__"] = {**batch.get("__timing__", {}), "device": time.perf_counter() - t0}
    for key in ("__size__", "__skipped__"):
        out.setdefault(key, batch[key])
    return out


def single_threaded(worker_id: int) -> None:
    """DataLoader worker start: one torch thread (decord and PyAV are asked for one thread where they decode)."""
    torch.set_num_threads(1)


class _Epoch(IterableDataset):
    """One rank's batches of one epoch, as its batch plan says; in a DataLoader worker, that worker's share."""

    def __init__(self, shards: ShardList, plan: BatchPlan, stages: Sequence[Stage], *, epoch: int, rank: int,
                 world: int, start: int, seed: int, batch_stage: BatchStage | None = None, verify: bool = False,
                 workers: int = 0, poisoned: frozenset[int] = frozenset()) -> None:
        self.shards, self.plan, self.stages, self.epoch = shards, plan, list(stages), epoch
        self.rank, self.world, self.start, self.seed = rank, world, start, seed
        self.batch_stage, self.verify, self.workers = batch_stage, verify, workers
        self.poisoned = poisoned  # positions whose sample crashed a worker: skipped (`pipelines.crashes`)
        self.inflight = InFlight(workers) if workers else None

    def resumed(self, start: int, poisoned: frozenset[int]) -> "_Epoch":
        """The same epoch from global batch `start` on, with `poisoned` positions skipped (after a worker died)."""
        return _Epoch(self.shards, self.plan, self.stages, epoch=self.epoch, rank=self.rank, world=self.world,
                      start=start, seed=self.seed, batch_stage=self.batch_stage, verify=self.verify,
                      workers=self.workers, poisoned=self.poisoned | poisoned)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        reading = self.plan.reading(self.seed, self.epoch, rank=self.rank, world=self.world, start=self.start,
                                    worker=worker, workers=workers)
        timer, totals = ReadTimer(), defaultdict(float)
        stream = self._samples(reading, timer, worker)
        names = ["parse_meta"] + [getattr(s, "__name__", type(s).__name__) for s in self.stages]
        for name, stage in zip(names, [parse_meta, *self.stages]):
            stream = _Timed(iter(stage(stream)), name, totals)
        for b, count in reading.batches:
            try:
                samples = [next(stream) for _ in range(count)]
            except StopIteration:
                raise RuntimeError(f"the pipeline ended before batch {b} was complete: every stage must yield "
                                   f"exactly one sample (or skip marker) per input sample") from None
            batch = collate(samples)
            # inclusive stage times -> time of each stage alone (each stage's clock includes the ones before it)
            timing, before = {"read": timer.seconds}, timer.seconds
            for name in names:
                timing[name] = totals[name] - before
                before = totals[name]
            batch["__timing__"] = timing
            timer.seconds = 0.0
            totals.clear()
            yield finish_batch(batch, self.batch_stage)

    def _samples(self, reading: Reading, timer: ReadTimer, worker: int) -> Iterator[Sample]:
        """Samples at the reading's positions, read group by group (ascending stream indices: each shard is
        read forwards) and emitted in position order."""
        positions, stream_idx = reading.positions, reading.stream
        bounds = np.flatnonzero(np.diff(reading.groups)) + 1  # where a new read group starts
        groups = np.split(np.arange(len(positions)), bounds)
        held: dict[int, Sample] = {}
        for run in _ascending_runs(groups, stream_idx):
            # one reader per run of groups whose stream indices ascend: shards are read forwards, and a stream
            # (not seekable) is opened again only where the plan goes back (same-speaker batches do)
            needed = (int(s) for g in run for s in np.sort(stream_idx[g]))
            reader = read_stream(self.shards, reading.order, needed, timer, verify=self.verify)
            yield from self._emit(run, reader, held, positions, stream_idx, worker)

    def _emit(self, run: list[np.ndarray], reader: Iterator[tuple[int, Sample]], held: dict[int, Sample],
              positions: np.ndarray, stream_idx: np.ndarray, worker: int) -> Iterator[Sample]:
        """The samples of `run`'s groups from `reader`, in position order, marked for crash containment."""
        for g in run:
            # the group's samples arrive in stream order; hold them until all are there, then emit by position
            want = set(int(s) for s in stream_idx[g])
            while not want.issubset(held):
                s, sample = next(reader)
                held[s] = sample
            for i in g:
                sample = held.pop(int(stream_idx[i]))
                position = int(positions[i])
                sample.update(__index__=position, __seed__=self.seed, __epoch__=self.epoch)
                if position in self.poisoned:
                    sample = skip(sample, CRASH_REASON)
                elif self.inflight is not None:
                    self.inflight.mark(worker, position)  # the stages run it next: if this worker dies, it did
                yield sample


def _ascending_runs(groups: list[np.ndarray], stream_idx: np.ndarray) -> Iterator[list[np.ndarray]]:
    """Consecutive groups, cut where a group's first stream index is not past the previous group's last."""
    run: list[np.ndarray] = []
    last = -1
    for g in groups:
        if not len(g):
            continue
        if run and int(stream_idx[g].min()) <= last:
            yield run
            run = []
        run.append(g)
        last = int(stream_idx[g].max())
    if run:
        yield run


def worker_batches(data: IterableDataset, *, num_workers: int, start_method: str | None, prefetch_factor: int,
                   pin_memory: bool, seed: int) -> Iterator[tuple[dict, float]]:
    """Batches of `data` through a DataLoader (worker processes when asked), each with the seconds waited for it.

    Workers start with fork unless `start_method` says otherwise, also once CUDA is initialised: workers never
    touch CUDA (what is unsafe after a fork), and the stages the factories build are closures, which fork hands
    over as they are while forkserver and spawn would have to pickle them (and fail).
    """
    kwargs: dict[str, Any] = {}
    if num_workers:
        context = start_method or "fork"
        kwargs = dict(multiprocessing_context=multiprocessing.get_context(context), prefetch_factor=prefetch_factor,
                      worker_init_fn=single_threaded)
    # a private generator: creating the iterator must not draw from the global torch RNG, or a resumed run
    # (which restores that RNG) would diverge from an uninterrupted one
    loader = DataLoader(data, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                        generator=torch.Generator().manual_seed(seed), **kwargs)
    it = iter(loader)
    if num_workers:
        detach_sigchld(it)  # a worker's death is raised below, where `run_epoch` can contain it
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        except (ConnectionError, EOFError) as err:  # a worker's pipe broke as it died (`pipelines.crashes`)
            dead = dead_workers(it) if num_workers else []
            if not dead:
                raise
            raise RuntimeError(f"DataLoader worker (pid(s) {', '.join(map(str, dead))}) exited unexpectedly") from err
        yield batch, time.perf_counter() - t0


def stream_position(loader: Any) -> dict[str, int]:
    """{seed, epoch, samples_consumed, batch_size} of a loader: all an exact resume needs."""
    return {"seed": loader.seed, "epoch": loader.epoch, "samples_consumed": loader.samples_consumed,
            "batch_size": loader.batch_size}


def restore_position(loader: Any, state: dict[str, int]) -> None:
    """Sets a loader back to a saved `stream_position`; the global batch size must be the one saved with."""
    saved = state.get("batch_size")
    if saved is not None and saved != loader.batch_size:
        raise ValueError(f"the run was saved with data.train.batch_size={saved}, this one has {loader.batch_size}: "
                         f"global batches would hold other samples, so resume with the same batch size")
    if state["samples_consumed"] % loader.batch_size:
        raise ValueError(f"samples_consumed {state['samples_consumed']} is not a multiple of the global "
                         f"batch size {loader.batch_size}; resume with the batch size the run was saved with")
    loader.seed, loader.epoch, loader.samples_consumed = state["seed"], state["epoch"], state["samples_consumed"]


def run_epoch(loader: Any, data: IterableDataset) -> Iterator[dict]:
    """One epoch of `data` with a StreamLoader's bookkeeping: stats, stream position, epoch counter.

    `loader` is a StreamLoader or a loader with the same fields (stats, samples_consumed, batch_size, epoch, and
    the worker settings).
    """
    if loader.samples_consumed == 0:
        loader.stats.start_epoch()  # the budget keeps the run's counts; this only marks the epoch's log line
    restarts = 0
    while True:
        try:
            for batch, waited in worker_batches(data, num_workers=loader.num_workers,
                                                start_method=loader.start_method,
                                                prefetch_factor=loader.prefetch_factor, pin_memory=loader.pin_memory,
                                                seed=loader.seed):
                loader.stats.seconds["wait"] += waited
                loader.stats.add(batch)
                loader.samples_consumed += loader.batch_size
                yield batch
            break
        except RuntimeError as err:
            pids = dead_pids(err)
            inflight = getattr(data, "inflight", None)
            if pids is None or inflight is None or restarts >= MAX_RESTARTS:
                raise
            # a decoder crashed a worker: skip the sample it held, start new workers at the awaited batch
            crashed = frozenset(inflight.held_by(pids))
            restarts += 1
            log.warning("a loader worker died (%s); skipping the sample(s) at position(s) %s and restarting the "
                        "workers at batch %d", str(err).split(".")[0], sorted(crashed),
                        loader.samples_consumed // loader.batch_size)
            data = data.resumed(loader.samples_consumed // loader.batch_size, crashed)
    if len(loader) <= 0:
        loader.stats.end_epoch(loader.epoch)
        loader.epoch, loader.samples_consumed = loader.epoch + 1, 0


class StreamLoader:
    """Iterates batches of one rank, epoch after epoch, from tar shards.

    Args:
        source: index.json, a folder holding one, a brace pattern, or a list of shard URLs.
        batch_size: the GLOBAL batch size; each rank yields its slice (batch_size / world_size samples).
        stages: pipeline stages run in workers after metadata parsing (decode, clip, crop...).
        seed: data seed (shard order, shuffle windows, per-sample randomness).
        rank: this rank (default: torch.distributed's, else 0).
        world_size: number of ranks (default: torch.distributed's, else 1).
        num_workers: DataLoader worker processes (0: in this process).
        shuffle_window: samples per shuffle window (a buffer of encoded samples); 0 keeps the shard order.
        shuffle_shards: permute shards every epoch.
        drop_last: training drops the last partial global batch; evaluation (False) reads every sample once.
        max_skip_fraction: the run's skip budget: stop with a DataError once more than this share of the samples
            read in the whole run (all epochs, all ranks) was skipped; see `pipelines.stats.over_budget`.
        pin_memory: pin batches for fast host-to-device copies.
        prefetch_factor: batches each worker prepares ahead.
        start_method: worker start method; default fork (stages are closures; workers never touch CUDA).
        plan: which samples make each global batch (`pipelines.plans`); default `ShuffledStream(shuffle_window,
            shuffle_shards, drop_last)`, e.g. `pipelines.speakers.SameSpeaker()` for same-speaker batches.
        verify: check each shard's sha256 against index.json before using its samples; the samples of a shard
            that does not match are counted skips naming it. Costs one full read of every shard a worker reads
            from (see `pipelines.shards.open_verified`); shards without a sha256 are read unchecked.

    Attributes:
        batch_stage: a function run on each collated batch where it is made (in the worker), e.g. the device
            stage on a CPU; None (default) hands out the collated batches.
    """

    def __init__(self, source: str | Sequence[str], *, batch_size: int, stages: Sequence[Stage] = (), seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                 shuffle_window: int = 1000, shuffle_shards: bool = True, drop_last: bool = True,
                 max_skip_fraction: float = 0.1, pin_memory: bool = False, prefetch_factor: int = 2,
                 start_method: str | None = None, verify: bool = False, plan: BatchPlan | None = None) -> None:
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if dist else 1)
        if batch_size < self.world_size:
            raise ValueError(f"global batch_size {batch_size} is smaller than world_size {self.world_size}")
        self.shards = source if isinstance(source, ShardList) else resolve_shards(source)
        check_shards(self.shards)
        if self.shards.total == 0:
            raise ValueError(f"the shards of {source!r} hold no samples")
        self.batch_size, self.stages, self.seed = batch_size, list(stages), seed
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        self.start_method, self.verify = start_method, verify
        if verify:
            _warn_unverifiable(self.shards)
        self.batch_stage: BatchStage | None = None
        self.stats = LoaderStats(max_skip_fraction=max_skip_fraction, world_size=self.world_size)
        self.epoch, self.samples_consumed = 0, 0
        self.plan = plan if plan is not None else ShuffledStream(shuffle_window, shuffle_shards, drop_last)
        self.plan.prepare(self.shards, batch_size)

    def __len__(self) -> int:
        """Batches left in the current epoch (the same on every rank)."""
        return self.plan.num_batches(self.seed, self.epoch) - self.samples_consumed // self.batch_size

    def state_dict(self) -> dict[str, int]:
        """The stream position: restoring it continues exactly (any world size or worker count)."""
        return stream_position(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        restore_position(self, state)

    def __iter__(self) -> Iterator[dict]:
        """Batches for the rest of the current epoch; the next call starts the next epoch."""
        if len(self) <= 0:
            self.epoch, self.samples_consumed = self.epoch + 1, 0
        data = _Epoch(self.shards, self.plan, self.stages, epoch=self.epoch, rank=self.rank, world=self.world_size,
                      start=self.samples_consumed // self.batch_size, seed=self.seed, batch_stage=self.batch_stage,
                      verify=self.verify, workers=self.num_workers)
        yield from run_epoch(self, data)


def _warn_unverifiable(shards: ShardList) -> None:
    """One warning for the shards `verify` cannot check: their index gives no sha256 (or there is no index)."""
    missing = [u for i, u in enumerate(shards.urls) if shards.digest(i) is None]
    if missing:
        log.warning("verify: %d of the %d shards have no sha256 in an index.json (%s%s); they are read unchecked",
                    len(missing), len(shards.urls), missing[0], " and more" if len(missing) > 1 else "")
