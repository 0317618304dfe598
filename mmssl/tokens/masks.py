"""Mask samplers that hide an exact number of tokens per sample.

Every sampler is a small frozen dataclass; calling it returns a boolean mask (B, N), True where a token is
hidden (MAE's convention). The number of visible tokens is the same in every row, so visible indices stack
into a (B, K) tensor with no padding; the samplers on a fixed grid also say that number (`visible_count`), so
the indices can be taken from a mask without reading it back from a GPU.

References: random masking, MAE (He et al., 2022); tube masking, VideoMAE (Tong et al., 2022); block masking,
BEiT (Bao et al., 2022); time/frequency stripes, Audio-MAE fine-tuning (Huang et al., 2022); the Dirichlet split
of a visible budget over modalities, MultiMAE (Bachmann et al., 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

if TYPE_CHECKING:  # core imports nothing from here, but the annotation is all that is needed
    from mmssl.tokens.core import Tokens

__all__ = [
    "RandomMask", "TubeMask", "BlockMask", "CentreMask", "StripeMask", "DirichletMask", "NoMask", "AllMask",
    "ensure_mask",
]


def ensure_mask(tokens: "Tokens", sampler) -> "Tokens":
    """`tokens` with a mask: the one the pipeline sampled when there is one, else a fresh one from `sampler`,
    whose visible count is known from the grid (no host read of the mask)."""
    if tokens.visible is not None:
        return tokens
    mask = sampler(tokens.batch_size, tokens.grid, device=tokens.patches.device)
    return tokens.with_mask(mask, sampler.visible_count(tokens.grid))


def _check_ratio(ratio: float, name: str) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {ratio}")


def _hide_lowest(scores: Tensor, num_hidden: int) -> Tensor:
    """Hides the `num_hidden` lowest-scoring tokens of each row: scores (B, N) -> mask (B, N)."""
    order = torch.argsort(scores, dim=1)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter(1, order[:, :num_hidden], True)


def _rand(shape: Sequence[int], generator: torch.Generator | None, device) -> Tensor:
    return torch.rand(*shape, generator=generator, device=device)


@dataclass(frozen=True)
class RandomMask:
    """Hides a uniformly random subset per sample, keeping `int(N * (1 - ratio))` tokens as MAE does."""

    ratio: float = 0.75

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "RandomMask.ratio")

    def visible_count(self, grid: Sequence[int]) -> int:
        """Tokens each row keeps visible on `grid`."""
        return int(math.prod(grid) * (1 - self.ratio))

    def __call__(self, batch: int, grid: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        n = math.prod(grid)
        keep = self.visible_count(grid)
        # argsort of uniform noise is a uniform random permutation; the lowest n - keep are hidden
        return _hide_lowest(_rand((batch, n), generator, device), n - keep)


@dataclass(frozen=True)
class TubeMask:
    """One spatial mask of `int(ratio * H * W)` cells tiled over every time slice (VideoMAE's tube masking)."""

    ratio: float = 0.9

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "TubeMask.ratio")

    def visible_count(self, grid: Sequence[int]) -> int:
        """Tokens each row keeps visible on `grid` (T, *spatial)."""
        hw = math.prod(grid[1:])
        return grid[0] * (hw - int(self.ratio * hw))

    def __call__(self, batch: int, grid: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        if len(grid) < 2:
            raise ValueError(f"TubeMask needs a (T, *spatial) grid, got {tuple(grid)}")
        t, hw = grid[0], math.prod(grid[1:])
        spatial = _hide_lowest(_rand((batch, hw), generator, device), int(self.ratio * hw))  # (B, H*W)
        return spatial.unsqueeze(1).expand(batch, t, hw).reshape(batch, t * hw)  # (B, T*H*W), time-major


@dataclass(frozen=True)
class BlockMask:
    """Hides rectangular blocks (BEiT-style) on the last two grid axes, trimmed or topped up to an exact count.

    Blocks of random area in [min_cells, max area] and aspect ratio in [1/max_aspect, max_aspect] are drawn until
    they cover the target; a small noise ranks cells so the final count is exact while the mask stays blocky.
    Leading grid axes (time) share the spatial mask.
    """

    ratio: float = 0.4
    min_cells: int = 16
    max_aspect: float = 3.0

    def __post_init__(self) -> None:
        _check_ratio(self.ratio, "BlockMask.ratio")

    def visible_count(self, grid: Sequence[int]) -> int:
        """Tokens each row keeps visible on `grid`."""
        hw = grid[-2] * grid[-1]
        return math.prod(grid[:-2]) * (hw - int(self.ratio * hw))

    def __call__(self, batch: int, grid: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        if len(grid) < 2:
            raise ValueError(f"BlockMask needs at least a 2-D grid, got {tuple(grid)}")
        h, w = grid[-2], grid[-1]
        lead = math.prod(grid[:-2])
        target = int(self.ratio * h * w)
        cover = torch.zeros(batch, h, w)
        draws = torch.rand(batch, 64, 4, generator=generator)  # area, aspect, top, left per attempt
        log_aspect = math.log(self.max_aspect)
        for i in range(batch):
            for area_u, aspect_u, top_u, left_u in draws[i].tolist():
                covered = int(cover[i].sum())
                if covered >= target:
                    break
                area = self.min_cells + area_u * max(target - covered - self.min_cells, 0)
                aspect = math.exp((2 * aspect_u - 1) * log_aspect)
                bh = min(h, max(1, round(math.sqrt(area * aspect))))
                bw = min(w, max(1, round(math.sqrt(area / aspect))))
                top, left = int(top_u * (h - bh + 1)), int(left_u * (w - bw + 1))
                cover[i, top:top + bh, left:left + bw] = 1.0
        # covered cells rank above uncovered ones; the noise breaks ties, so exactly `target` are hidden
        scores = cover.reshape(batch, h * w) + 0.5 * torch.rand(batch, h * w, generator=generator)  # (B, H*W)
        spatial = _hide_lowest(-scores, target).to(device)
        return spatial.unsqueeze(1).expand(batch, lead, h * w).reshape(batch, lead * h * w)  # (B, N)


@dataclass(frozen=True)
class CentreMask:
    """Hides the central box covering `fraction` of every grid axis (the context encoder's centre region)."""

    fraction: float = 0.5

    def __post_init__(self) -> None:
        _check_ratio(self.fraction, "CentreMask.fraction")

    def visible_count(self, grid: Sequence[int]) -> int:
        """Tokens each row keeps visible on `grid`."""
        return math.prod(grid) - math.prod(round(size * self.fraction) for size in grid)

    def __call__(self, batch: int, grid: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        box = torch.ones(tuple(grid), dtype=torch.bool, device=device)
        for axis, size in enumerate(grid):
            extent = round(size * self.fraction)
            start = (size - extent) // 2
            keep = torch.zeros(size, dtype=torch.bool, device=device)
            keep[start:start + extent] = True
            shape = [1] * len(grid)
            shape[axis] = size
            box = box & keep.reshape(shape)
        return box.reshape(1, -1).expand(batch, -1).clone()  # (B, N)


@dataclass(frozen=True)
class StripeMask:
    """Hides whole time columns and frequency rows of a (T, F) grid (Audio-MAE's `mask_2d`).

    `int(T * time_ratio)` time steps and `int(F * freq_ratio)` frequency bins are drawn per sample, so every row
    keeps exactly (T - t) * (F - f) visible tokens.
    """

    time_ratio: float = 0.2
    freq_ratio: float = 0.2

    def __post_init__(self) -> None:
        _check_ratio(self.time_ratio, "StripeMask.time_ratio")
        _check_ratio(self.freq_ratio, "StripeMask.freq_ratio")

    def visible_count(self, grid: Sequence[int]) -> int:
        """Tokens each row keeps visible on a (T, F) `grid`."""
        t, f = grid
        return (t - int(t * self.time_ratio)) * (f - int(f * self.freq_ratio))

    def __call__(self, batch: int, grid: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        if len(grid) != 2:
            raise ValueError(f"StripeMask needs a (time, frequency) grid, got {tuple(grid)}")
        t, f = grid
        times = _hide_lowest(_rand((batch, t), generator, device), int(t * self.time_ratio))  # (B, T)
        freqs = _hide_lowest(_rand((batch, f), generator, device), int(f * self.freq_ratio))  # (B, F)
        return (times.unsqueeze(2) | freqs.unsqueeze(1)).reshape(batch, t * f)  # (B, T*F), time-major


@dataclass(frozen=True)
class DirichletMask:
    """Splits a fixed budget of visible tokens across modalities with Dirichlet(alpha) shares (MultiMAE).

    Call it with the token count of each modality; it returns one mask over their concatenation with exactly
    `visible` tokens kept per sample. Each modality gets `round(share * visible)` tokens (at most its count);
    tokens chosen within a modality are uniform, and the rounding error is fixed by ranking all tokens together.
    """

    visible: int = 98
    alpha: float | Sequence[float] = 1.0

    def __call__(self, batch: int, sizes: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        sizes = [int(s) for s in sizes]
        if self.visible > sum(sizes):
            raise ValueError(f"DirichletMask.visible={self.visible} exceeds the {sum(sizes)} tokens available")
        shares = self._shares(batch, len(sizes), generator)
        quota = (shares * self.visible).round().long().to(device)  # (B, M)
        parts = []
        for m, size in enumerate(sizes):
            # rank of each token in a uniform random order; the first `quota` of a modality are wanted
            rank = torch.argsort(torch.argsort(_rand((batch, size), generator, device), dim=1), dim=1)
            parts.append((rank >= quota[:, m:m + 1]).float())  # 0 = wanted, 1 = not wanted
        wanted = torch.cat(parts, dim=1)  # (B, sum sizes)
        # wanted tokens rank first; the noise (< 1) picks which tokens absorb the rounding error, so that
        # exactly `visible` stay visible whatever the rounded quotas add up to
        return _keep_lowest(wanted + 0.1 * _rand(wanted.shape, generator, device), self.visible)

    def _shares(self, batch: int, num: int, generator: torch.Generator | None) -> Tensor:
        """Dirichlet(alpha) draws (B, M). Sampled under a seed taken from `generator` so it controls them."""
        alphas = torch.as_tensor(self.alpha, dtype=torch.float).expand(num).contiguous()
        if generator is None:
            return torch.distributions.Dirichlet(alphas).sample((batch,))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.distributions.Dirichlet(alphas).sample((batch,))

    @staticmethod
    def split(mask: Tensor, sizes: Sequence[int]) -> list[Tensor]:
        """Splits a mask over concatenated modalities back into one mask per modality."""
        return list(torch.split(mask, [int(s) for s in sizes], dim=1))


def _keep_lowest(scores: Tensor, num_visible: int) -> Tensor:
    """Keeps the `num_visible` lowest-scoring tokens of each row visible, hides the rest."""
    return _hide_lowest(-scores, scores.shape[1] - num_visible)


@dataclass(frozen=True)
class NoMask:
    """Every token visible (the unmasked past frame of SiamMAE, or plain encoding)."""

    def visible_count(self, grid: Sequence[int]) -> int:
        return math.prod(grid)

    def __call__(self, batch: int, grid: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        return torch.zeros(batch, math.prod(grid), dtype=torch.bool, device=device)


@dataclass(frozen=True)
class AllMask:
    """Every token hidden (a target stream that the encoder never sees)."""

    def visible_count(self, grid: Sequence[int]) -> int:
        return 0

    def __call__(self, batch: int, grid: Sequence[int], *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> Tensor:
        return torch.ones(batch, math.prod(grid), dtype=torch.bool, device=device)
