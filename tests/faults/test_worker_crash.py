"""A decoder that crashes in C (a real segfault in a worker) costs its sample, not the run."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from pipelines.images import decode_images
from pipelines.loader import StreamLoader
from pipelines.sample import guarded


class _CrashOn:
    """A stage that dereferences a null pointer, as a broken C decoder does, when it meets one of `keys`."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.__name__ = "crash_on"

    def __call__(self, sample: dict) -> dict:
        if sample["__key__"] in self.keys:
            ctypes.string_at(0)  # SIGSEGV: no Python exception, the process dies
        return sample


def _epoch(shards: Path, crash: set[str], *, workers: int = 2) -> tuple[list[list[str]], StreamLoader]:
    loader = StreamLoader(str(shards), batch_size=4, stages=[guarded(_CrashOn(crash)), decode_images()],
                          num_workers=workers, shuffle_window=8, seed=3, max_skip_fraction=0.5)
    keys = [[str(k) for k in batch["__key__"]] for batch in loader]
    return keys, loader


def test_a_worker_killed_by_a_decoder_skips_its_sample_and_the_epoch_goes_on(shards) -> None:
    clean, _ = _epoch(shards, set())
    victims = {clean[1][2], clean[4][0]}  # two samples, in different batches
    got, loader = _epoch(shards, victims)
    expected = [[k for k in batch if k not in victims] for batch in clean]
    assert got == expected  # the same batches in the same order, less the crashed samples
    summary = loader.stats.summary()
    assert "skipped 2" in summary and "worker killed" in summary, summary
    assert all(key in summary for key in victims), summary  # named, with their shard
    assert ".tar" in summary


def test_only_a_workers_death_is_taken_for_a_crash() -> None:
    from pipelines.crashes import dead_pids

    assert dead_pids(RuntimeError("DataLoader worker (pid(s) 12, 34) exited unexpectedly")) == [12, 34]
    assert dead_pids(RuntimeError("DataLoader worker (pid 56) is killed by signal: Segmentation fault.")) == [56]
    assert dead_pids(RuntimeError("CUDA error: out of memory")) is None


@pytest.mark.slow  # each crash waits out the DataLoader's 5 s status check
@pytest.mark.parametrize("workers", [1])
def test_one_worker_crashing_is_replaced_too(shards, workers: int) -> None:
    clean, _ = _epoch(shards, set(), workers=workers)
    victim = clean[0][0]
    got, loader = _epoch(shards, {victim}, workers=workers)
    assert sum(len(b) for b in got) == sum(len(b) for b in clean) - 1
    assert victim not in {k for b in got for k in b}
