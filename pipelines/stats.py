"""Counting what the loader read and skipped over a whole run (across epochs and ranks), enforcing one skip budget
for the run, and per-stage timing.

The budget is one number for the run, `max_skip_fraction` of the samples read. Counts are never reset between
epochs, and in a multi-process run they are summed over the ranks, so every rank decides on the same totals and
all of them stop together with the same `DataError`. When to decide is a statistical question, answered in
`over_budget`.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DataError", "LoaderStats", "over_budget", "EVIDENCE"]

log = logging.getLogger("pipelines.loader")

EVIDENCE = math.log(1e4)
"""Nats of evidence needed to stop before an epoch is complete: a false stop has a chance under 1e-4 per check."""


class DataError(RuntimeError):
    """The data is broken beyond the configured skip budget."""


def _kl(q: float, p: float) -> float:
    """KL divergence of Bernoulli(q) from Bernoulli(p), in nats (0 log 0 = 0)."""
    out = 0.0
    for a, b in ((q, p), (1.0 - q, 1.0 - p)):
        if a > 0:
            out += math.inf if b <= 0 else a * math.log(a / b)
    return out


def over_budget(read: int, skipped: int, fraction: float, *, exact: bool = False) -> bool:
    """Whether `skipped` of `read` samples show that more than `fraction` of the data is broken.

    After a whole epoch (`exact`) the skipped share is the data's own, not an estimate: over the fraction is
    over the budget. Before that the samples read are a sample of the data, and an early bad file must not stop
    a run: with the broken share at or under `fraction`, the chance of `skipped` or more skips among `read`
    (a binomial tail) is at most exp(-read * KL(skipped/read || fraction)) (Chernoff), so the run stops when
    that bound falls under 1e-4 (`EVIDENCE` nats). With a 10% budget this stops when the first 4 samples all
    failed, 8 of 12, 30% of 60 or 15% of 900, and never for one bad file among the first few. There is no floor
    of samples read, which let small, mostly broken sets train on empty batches. Skips of one bad shard come in
    a burst; the test treats samples as independent, so a broken shard read first can stop a run early, and
    the error names it.

    Args:
        read: samples read (used + skipped).
        skipped: samples skipped.
        fraction: the budget, a share of the samples read.
        exact: the counts cover whole epochs.
    """
    if skipped <= fraction * read:
        return False
    return exact or read * _kl(skipped / read, fraction) >= EVIDENCE - 1e-9  # 4 of 4 at 10%: exactly 1e-4


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class LoaderStats:
    """Counts of samples read and skipped (by shard and reason) and seconds per stage, over the whole run.

    In one process `add` checks the budget after every batch and `end_epoch` checks it exactly. When the loader
    spans ranks of an initialised process group, neither does (a rank stopping alone would leave the others
    waiting in a collective): the training loop calls `check` at the same steps on every rank, which sums the
    counts over the ranks first.

    Args:
        max_skip_fraction: the run's skip budget, a share of the samples read (see `over_budget`).
        log_first: how many skipped keys to log individually.
        world_size: ranks the loader spans (None: torch.distributed's world size when it is initialised, else 1).
    """

    def __init__(self, *, max_skip_fraction: float = 0.1, log_first: int = 5, world_size: int | None = None) -> None:
        self.max_skip_fraction, self.log_first, self.world_size = max_skip_fraction, log_first, world_size
        self.ranks = 1  # ranks summed into these counts (`merged`)
        self.reset()

    def reset(self) -> None:
        """Clears every count (a new run)."""
        self.read = 0
        self.total_skipped = 0  # kept apart from the Counter: the training thread reads it while a prefetch
        self.skipped: Counter = Counter()  # thread adds (reason kind -> count)
        self.by_shard: dict[str, Counter] = defaultdict(Counter)
        self.first: list[tuple[str, str, str]] = []
        self.seconds: Counter = Counter()  # stage -> seconds (worker time) plus "wait" (main process)
        self._epoch_start = (0, 0)
        self._whole = False  # until an epoch is read from its start (a resumed run begins mid-epoch)

    def start_epoch(self) -> None:
        """Marks where an epoch starts from its first sample, for its log line (the budget keeps counting the
        run) and so that its end may check exactly."""
        self._epoch_start = (self.read, self.total_skipped)
        self._whole = True

    def spans_ranks(self) -> bool:
        """Whether the counts must be summed over the ranks of a process group to decide."""
        if not (dist.is_available() and dist.is_initialized()):
            return False
        return (self.world_size or dist.get_world_size()) > 1

    def add(self, batch: dict[str, Any]) -> None:
        """Records a collated batch's bookkeeping (a batch whose samples were all skipped counts too); in one
        process raises DataError past the budget."""
        skipped = batch.get("__skipped__", [])
        for shard, key, reason in skipped:
            kind = _one_line(reason.split(": ", 1)[0])  # ": ", not ":": shard URLs hold colons
            self.skipped[kind] += 1
            self.by_shard[shard][kind] += 1
            if len(self.first) < self.log_first:
                self.first.append((shard, key, _one_line(reason)))
                log.warning("skipped sample %s in %s: %s", key, shard, reason)
        self.read += batch.get("__size__", 0) + len(skipped)
        self.total_skipped += len(skipped)
        self.seconds.update(batch.get("__timing__", {}))
        if not self.spans_ranks():
            self.check()

    def end_epoch(self, epoch: int) -> None:
        """Logs the epoch's counts; in one process checks the budget, exactly once a whole epoch was read."""
        read, skipped = self.read - self._epoch_start[0], self.total_skipped - self._epoch_start[1]
        log.info("epoch %d: read %d samples, skipped %d; run: %s", epoch, read, skipped, self.summary())
        if not self.spans_ranks():
            self.check(exact=self._whole)

    def check(self, *, exact: bool = False) -> None:
        """Raises DataError when the run's counts (summed over the ranks) are over the budget.

        With a process group every rank must call it at the same points (it takes part in collectives), and
        every rank then raises the same error. `exact`: the counts cover whole epochs.
        """
        counts = [self.read, self.total_skipped]
        if self.spans_ranks():
            counts = _sum_over_ranks(counts)
        read, skipped = counts
        if over_budget(read, skipped, self.max_skip_fraction, exact=exact):
            merged = self.merged()  # every rank decided the same, so every rank joins this gather
            raise DataError(f"{skipped} of the {read} samples read were skipped (budget "
                            f"{self.max_skip_fraction:.0%}, max_skip_fraction): the data looks broken; "
                            f"{merged.summary(timing=False)}")

    def merged(self) -> "LoaderStats":
        """The counts summed over the ranks (collective with a process group; seconds are per rank, averaged);
        in one process, these stats."""
        if not self.spans_ranks():
            return self
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self._state())
        out = LoaderStats(max_skip_fraction=self.max_skip_fraction, log_first=self.log_first, world_size=1)
        out.ranks = len(parts)
        for part in parts:
            out.read += part["read"]
            out.total_skipped += sum(part["skipped"].values())
            out.skipped.update(part["skipped"])
            for shard, kinds in part["by_shard"].items():
                out.by_shard[shard].update(kinds)
            out.first.extend(part["first"][:max(self.log_first - len(out.first), 0)])
            out.seconds.update({k: v / len(parts) for k, v in part["seconds"].items()})
        return out

    def _state(self) -> dict[str, Any]:
        # dict() copies in one step under the GIL: a prefetch thread may be adding meanwhile
        return {"read": self.read, "skipped": dict(self.skipped), "first": list(self.first),
                "by_shard": {s: dict(c) for s, c in list(self.by_shard.items())}, "seconds": dict(self.seconds)}

    def summary(self, *, timing: bool = True) -> str:
        """One line: read, skipped by reason, the worst shards, the first keys, and (`timing`) time per stage."""
        state = self._state()
        skipped, by_shard = Counter(state["skipped"]), state["by_shard"]
        total = sum(skipped.values())
        on = f" on {self.ranks} ranks" if self.ranks > 1 else ""
        parts = [f"read {state['read']} samples{on}, used {state['read'] - total}, skipped {total}"]
        if total:
            parts.append("by reason: " + ", ".join(f"{k} {v}" for k, v in skipped.most_common()))
            worst = sorted(by_shard.items(), key=lambda kv: -sum(kv[1].values()))[:3]
            parts.append("shards: " + ", ".join(f"{s} {sum(c.values())}" for s, c in worst))
            keys: dict[str, list[str]] = {}  # reason -> keys: a broken shard's samples share one long reason
            for _, key, reason in state["first"]:
                keys.setdefault(reason, []).append(key)
            parts.append("first: " + "; ".join(f"{', '.join(k)} ({r})" for r, k in keys.items()))
        if timing and state["seconds"]:
            parts.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in state["seconds"].items()))
        return "; ".join(parts)


def _sum_over_ranks(values: list[int]) -> list[int]:
    """`values` summed over the ranks, on the process group's device (NCCL reduces only CUDA tensors)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    counts = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return [int(v) for v in counts.tolist()]
