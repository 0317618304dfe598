"""Quantised ab colour space of Zhang et al., "Colorful Image Colorization", ECCV 2016 (REFERENCE.md §1.10).

- Q = 313 in-gamut ab bins on a grid of 10: the bin centres of the authors' released `pts_in_hull`, written here as
  the inclusive b range of each a column (a table of facts, checked by the tests to hold 313 centres on the grid
  and to cover every bin that an sRGB colour quantises to);
- soft encoding: each ab value spreads over its 5 nearest bin centres with Gaussian weights (sigma = 5),
  normalised to sum to 1;
- class rebalancing: w proportional to ((1 - lambda) * p~ + lambda / Q)^-1 with lambda = .5, where p~ is the
  empirical bin distribution smoothed by a Gaussian (sigma = 5) over the bin centres, scaled so E_p~[w] = 1;
- annealed mean: H(z) = sum_q f_T(z)_q * ab_q with f_T(z) = exp(log z / T) / sum exp(log z / T), T = .38.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NUM_BINS", "ab_bins", "soft_encode", "nearest_bin", "smooth_prior", "rebalance_weights",
           "annealed_mean"]

# a -> (lowest b, highest b), both inclusive, step 10
_B_RANGE = {-90: (50, 90), -80: (20, 90), -70: (0, 90), -60: (-20, 90), -50: (-30, 100), -40: (-40, 100),
            -30: (-50, 100), -20: (-50, 100), -10: (-60, 100), 0: (-70, 100), 10: (-80, 90), 20: (-80, 90),
            30: (-90, 90), 40: (-100, 90), 50: (-100, 80), 60: (-110, 80), 70: (-110, 80), 80: (-110, 70),
            90: (-110, 70), 100: (-90, 0)}
NUM_BINS = 313


def ab_bins() -> Tensor:
    """The (313, 2) ab bin centres, ordered by a then b."""
    centres = [(a, b) for a, (lo, hi) in _B_RANGE.items() for b in range(lo, hi + 1, 10)]
    return torch.tensor(centres, dtype=torch.float32)


def _flat_ab(ab: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """(B, 2, *S) -> (B * prod(S), 2) and the shape to restore."""
    b, _, *spatial = ab.shape
    return ab.movedim(1, -1).reshape(-1, 2), (b, *spatial)  # (B, *S, 2) -> (M, 2)


def soft_encode(ab: Tensor, *, neighbours: int = 5, sigma: float = 5.0, bins: Tensor | None = None) -> Tensor:
    """Soft targets (B, Q, *S) for ab values (B, 2, *S): Gaussian weights on the `neighbours` nearest bins.

    Each target vector sums to 1.
    """
    bins = (ab_bins() if bins is None else bins).to(ab.device, torch.float32)
    flat, shape = _flat_ab(ab.float())
    dist, index = torch.cdist(flat, bins).topk(neighbours, dim=1, largest=False)  # (M, k)
    weight = torch.exp(-dist.pow(2) / (2 * sigma ** 2))
    weight = weight / weight.sum(1, keepdim=True)
    target = torch.zeros(flat.shape[0], bins.shape[0], device=ab.device).scatter_(1, index, weight)  # (M, Q)
    return target.reshape(*shape, -1).movedim(-1, 1)  # (B, *S, Q) -> (B, Q, *S)


def nearest_bin(ab: Tensor, *, bins: Tensor | None = None) -> Tensor:
    """Index (B, *S) of the nearest bin centre to each ab value (B, 2, *S)."""
    bins = (ab_bins() if bins is None else bins).to(ab.device, torch.float32)
    flat, shape = _flat_ab(ab.float())
    return torch.cdist(flat, bins).argmin(1).reshape(shape)  # (M,) -> (B, *S)


def smooth_prior(counts: Tensor, *, sigma: float = 5.0, bins: Tensor | None = None) -> Tensor:
    """The empirical bin distribution (Q,) from counts, smoothed by a Gaussian over the bin centres."""
    bins = (ab_bins() if bins is None else bins).to(counts.device, torch.float32)
    p = counts.float() / counts.float().sum().clamp_min(1e-12)
    kernel = torch.exp(-torch.cdist(bins, bins).pow(2) / (2 * sigma ** 2))  # (Q, Q)
    smoothed = kernel @ p
    return smoothed / smoothed.sum()


def rebalance_weights(prior: Tensor, *, lam: float = 0.5) -> Tensor:
    """Per-bin weights w ~ ((1 - lam) p + lam / Q)^-1, normalised so that sum_q p_q w_q = 1."""
    q = prior.numel()
    w = 1.0 / ((1 - lam) * prior + lam / q)
    return w / (prior * w).sum()


def annealed_mean(probs: Tensor, *, temperature: float = 0.38, bins: Tensor | None = None) -> Tensor:
    """ab (B, 2, *S) from bin probabilities (B, Q, *S): the mean of the distribution re-tempered by T."""
    bins = (ab_bins() if bins is None else bins).to(probs.device, probs.dtype)
    logits = torch.log(probs.clamp_min(1e-12)) / temperature
    tempered = torch.softmax(logits, dim=1)
    return torch.einsum("bq...,qc->bc...", tempered, bins)
