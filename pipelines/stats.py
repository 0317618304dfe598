"""Counting what the loader read and skipped, enforcing the skip budget, and per-stage timing."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import Any

__all__ = ["DataError", "LoaderStats"]

log = logging.getLogger("pipelines.loader")


class DataError(RuntimeError):
    """The data is broken beyond the configured skip budget."""


class LoaderStats:
    """Per-epoch counts of samples read and skipped (by shard and reason) and seconds per stage.

    Args:
        max_skip_fraction: stop with `DataError` once more than this fraction of samples was skipped...
        min_samples: ...after at least this many samples (so one early bad file does not stop a run).
        log_first: how many skipped keys to log individually.
    """

    def __init__(self, *, max_skip_fraction: float = 0.1, min_samples: int = 50, log_first: int = 5) -> None:
        self.max_skip_fraction, self.min_samples, self.log_first = max_skip_fraction, min_samples, log_first
        self.reset()

    def reset(self) -> None:
        self.read = 0
        self.skipped: Counter = Counter()  # reason kind -> count
        self.by_shard: dict[str, Counter] = defaultdict(Counter)
        self.first: list[tuple[str, str, str]] = []
        self.seconds: Counter = Counter()  # stage -> seconds (worker time) plus "wait" (main process)

    def add(self, batch: dict[str, Any]) -> None:
        """Records a collated batch's bookkeeping; raises DataError past the budget."""
        skipped = batch.get("__skipped__", [])
        self.read += batch.get("__size__", 0) + len(skipped)
        for shard, key, reason in skipped:
            kind = reason.split(":", 1)[0]
            self.skipped[kind] += 1
            self.by_shard[shard][kind] += 1
            if len(self.first) < self.log_first:
                self.first.append((shard, key, reason))
                log.warning("skipped sample %s in %s: %s", key, shard, reason)
        self.seconds.update(batch.get("__timing__", {}))
        total = sum(self.skipped.values())
        if self.read >= self.min_samples and total > self.max_skip_fraction * self.read:
            raise DataError(f"{total} of {self.read} samples were skipped (budget {self.max_skip_fraction:.0%}): "
                            f"the data looks broken. {self.summary()}")

    def summary(self) -> str:
        """One paragraph: read, skipped by reason, the worst shards, the first keys, time per stage."""
        total = sum(self.skipped.values())
        parts = [f"read {self.read} samples, used {self.read - total}, skipped {total}"]
        if total:
            parts.append("by reason: " + ", ".join(f"{k} {v}" for k, v in self.skipped.most_common()))
            worst = sorted(self.by_shard.items(), key=lambda kv: -sum(kv[1].values()))[:3]
            parts.append("shards: " + ", ".join(f"{s} {sum(c.values())}" for s, c in worst))
            parts.append("first: " + "; ".join(f"{k} ({r})" for _, k, r in self.first))
        if self.seconds:
            parts.append("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in self.seconds.items()))
        return "; ".join(parts)
