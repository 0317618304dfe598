"""Per-sample randomness keyed by (seed, epoch, sample key, view), independent of worker and rank.

Every random choice about a sample (crop, flip, clip position, frame gap, mask) draws from a generator seeded by
a hash of these four values, so a sample is treated identically whichever worker or rank reads it, and a resumed
run repeats it exactly. The generator is counter-based in spirit: nothing carries state from sample to sample.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["sample_seed", "sample_rng", "sample_generator"]


def sample_seed(seed: int, epoch: int, key: str, view: int | str = 0) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, key, view)."""
    digest = hashlib.blake2b(f"{seed}\x1f{epoch}\x1f{key}\x1f{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_rng(seed: int, epoch: int, key: str, view: int | str = 0) -> np.random.Generator:
    """A numpy generator (Philox, counter-based) for one sample and view."""
    return np.random.Generator(np.random.Philox(sample_seed(seed, epoch, key, view)))


def sample_generator(seed: int, epoch: int, key: str, view: int | str = 0,
                     device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator for one sample and view."""
    return torch.Generator(device=device).manual_seed(sample_seed(seed, epoch, key, view))
