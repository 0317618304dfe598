"""Schedules as functions of training progress in [0, 1]: a stream has no fixed epoch length, progress does.

`warmup_cosine` is the learning-rate (and weight-decay) schedule of MAE, VideoMAE, DINO and most methods here:
linear warmup, then a half cosine to a final value. `cosine_increase` is the EMA-momentum schedule of BYOL, DINO
and MoCo v3 (from a base value up to 1).
"""

from __future__ import annotations

import math

__all__ = ["warmup_cosine", "cosine_increase", "linear"]


def _check(progress: float) -> float:
    if not 0.0 <= progress <= 1.0 + 1e-9:
        raise ValueError(f"progress must be in [0, 1], got {progress}")
    return min(progress, 1.0)


def warmup_cosine(progress: float, *, base: float, final: float = 0.0, warmup: float = 0.0,
                  start: float = 0.0) -> float:
    """Linear from `start` to `base` over the first `warmup` of training, then a half cosine down to `final`."""
    p = _check(progress)
    if warmup > 0 and p < warmup:
        return start + (base - start) * p / warmup
    rest = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * rest))


def cosine_increase(progress: float, *, base: float, final: float = 1.0) -> float:
    """From `base` at the start to `final` at the end along a half cosine (BYOL's target momentum)."""
    p = _check(progress)
    return final - (final - base) * 0.5 * (1.0 + math.cos(math.pi * p))


def linear(progress: float, *, start: float, end: float) -> float:
    """Straight line from `start` to `end`."""
    return start + (end - start) * _check(progress)
