"""Containing a crash inside a C decoder: a worker killed by a signal costs its sample, not the run.

A corrupt member can still crash a decoder's C code (a segfault inside libavcodec or libpng kills the process; no
Python `except` sees it). The loader's workers run every decoder, so:
- each worker writes (its pid, the stream position of the sample in its stages) into a small shared array before
  the sample enters them (`InFlight`);
- the DataLoader's own SIGCHLD handler is taken off for those workers (`detach_sigchld`): it would raise in the
  training process's main thread wherever that thread is (inside the step), where no one can resume; without it
  the death surfaces where the batch is awaited, as "DataLoader worker (pid(s) ...) exited unexpectedly" (or as
  a broken result pipe, which `dead_workers` turns into the same);
- the loader reads which pid died (`dead_pids`), marks the sample that worker held as poisoned, and starts new
  workers at the batch it was waiting for; a poisoned sample becomes a counted skip naming its shard and key.
The batches handed out are the ones an uninterrupted epoch would give, less the poisoned samples, so exact resume
holds. With `num_workers=0` the decoders run in the training process and a crash there ends the run.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from typing import Iterable

__all__ = ["InFlight", "dead_pids", "dead_workers", "detach_sigchld", "CRASH_REASON", "MAX_RESTARTS"]

CRASH_REASON = ("worker killed: a decoder crashed on this sample (the loader worker died by a signal while its "
                "stages ran it); it is skipped, the run goes on with new workers")
MAX_RESTARTS = 32  # per epoch: past this many crashes the data is broken beyond what a skip should hide

_PIDS = re.compile(r"DataLoader worker \(pids?(?:\(s\))? ([\d, ]+)\)")


class InFlight:
    """Per worker slot, the pid and the stream position of the sample it is running through its stages."""

    def __init__(self, workers: int) -> None:
        # a raw shared array made before the workers start: fork shares it, spawn pickles it at process start
        self.slots = multiprocessing.RawArray("q", 2 * max(workers, 1))
        for i in range(len(self.slots)):
            self.slots[i] = -1

    def mark(self, worker: int, position: int) -> None:
        """Called by a worker before a sample enters its stages."""
        self.slots[2 * worker], self.slots[2 * worker + 1] = os.getpid(), position

    def held_by(self, pids: Iterable[int]) -> list[int]:
        """Positions that the workers with these pids held when they died (all held ones if none match)."""
        pairs = [(self.slots[2 * w], self.slots[2 * w + 1]) for w in range(len(self.slots) // 2)]
        wanted = set(pids)
        held = [pos for pid, pos in pairs if pid in wanted and pos >= 0]
        return held or [pos for _, pos in pairs if pos >= 0]


def dead_pids(err: BaseException) -> list[int] | None:
    """The worker pids a DataLoader error says died, or None if the error is not a worker's death."""
    text = str(err)
    if "DataLoader worker" not in text or not ("exited unexpectedly" in text or "killed by signal" in text):
        return None
    found = _PIDS.search(text)
    return [int(p) for p in found.group(1).replace(" ", "").split(",") if p] if found else []


def dead_workers(it: object, wait: float = 2.0) -> list[int]:
    """Pids of a DataLoader iterator's workers that have exited, waiting up to `wait` s for a dying one to be
    reaped (its result pipe can break a moment before `is_alive` turns false)."""
    workers = list(getattr(it, "_workers", []))
    deadline = time.monotonic() + wait
    while True:
        dead = [w.pid for w in workers if not w.is_alive()]
        if dead or time.monotonic() > deadline:
            return dead
        time.sleep(0.05)


def detach_sigchld(it: object) -> None:
    """Takes a DataLoader iterator's workers off torch's SIGCHLD handler, so a worker's death is raised where the
    next batch is awaited (and can be contained) rather than in whatever the main thread is doing.

    Uses the iterator's private fields; if they are not there (another torch), the default handling stays.
    """
    try:
        from torch.utils.data._utils import signal_handling

        if getattr(it, "_worker_pids_set", False):
            signal_handling._remove_worker_pids(id(it))
            it._worker_pids_set = False  # type: ignore[attr-defined]  # so shutdown does not remove them twice
    except (ImportError, AttributeError, RuntimeError):
        pass
