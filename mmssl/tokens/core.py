"""The patch-token abstraction every modality is turned into.

An image (B, C, H, W), a video clip (B, C, T, H, W), a spectrogram (B, 1, T, F), a depth map or a semantic map
becomes one `Tokens` batch: raw flattened patches (B, N, P) on a grid of N cells, plus optional indices of the
tokens an encoder may see. The patch layout equals MAE's `patchify` (He et al., 2022) for images and VideoMAE's
tubelet rearrange (Tong et al., 2022) for video: cells in row-major grid order, each patch flattened as
(patch axes..., channel), channel last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["Tokens", "patchify", "unpatchify", "gather_tokens", "scatter_tokens", "visible_from_mask"]


def _as_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * ndim
    out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name} has {len(out)} axes but the input has {ndim} patched axes")
    return out


@dataclass(frozen=True)
class Tokens:
    """A batch of patch tokens on a grid.

    Attributes:
        patches: raw flattened patches (B, N, P) with N = prod(grid) and P = prod(patch) * channels.
        grid: number of cells per patched axis, e.g. (14, 14), (8, 14, 14) or (64, 8).
        patch: extent of one patch per axis, e.g. (16, 16) or (2, 16, 16).
        modality: name of the modality spec the patches come from ("image", "video", ...).
        visible: optional sorted indices (B, K) of the tokens the encoder sees; None means all.
    """

    patches: Tensor
    grid: tuple[int, ...]
    patch: tuple[int, ...]
    modality: str
    visible: Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        if self.patches.dim() != 3:
            raise ValueError(f"Tokens.patches must be (B, N, P), got shape {tuple(self.patches.shape)}")
        if len(self.grid) != len(self.patch) or not self.grid:
            raise ValueError(f"Tokens grid {self.grid} and patch {self.patch} must have the same, non-zero length")
        b, n, p = self.patches.shape
        if n != math.prod(self.grid):
            raise ValueError(f"Tokens has {n} patches but grid {self.grid} has {math.prod(self.grid)} cells")
        if p % math.prod(self.patch):
            raise ValueError(f"patch vector length {p} is not a multiple of the patch volume {math.prod(self.patch)}")
        if self.visible is not None:
            v = self.visible
            if v.dim() != 2 or v.shape[0] != b or v.shape[1] > n:
                raise ValueError(f"Tokens.visible must be (B={b}, K<={n}), got shape {tuple(v.shape)}")
            if v.dtype != torch.long:
                raise ValueError(f"Tokens.visible must hold int64 indices, got {v.dtype}")

    @property
    def batch_size(self) -> int:
        return self.patches.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.patches.shape[1]

    @property
    def channels(self) -> int:
        return self.patches.shape[2] // math.prod(self.patch)

    @property
    def num_visible(self) -> int:
        return self.num_tokens if self.visible is None else self.visible.shape[1]

    @property
    def mask(self) -> Tensor:
        """Boolean (B, N), True where a token is hidden from the encoder (MAE's convention: 1 = removed)."""
        hidden = torch.ones(self.patches.shape[:2], dtype=torch.bool, device=self.patches.device)
        if self.visible is None:
            return ~hidden
        return hidden.scatter(1, self.visible, False)

    def with_mask(self, mask: Tensor, count: int | None = None) -> "Tokens":
        """Returns a copy whose visible tokens are those where `mask` (B, N) is False; `count`, the number of
        visible tokens per row when the sampler knows it, spares a host read of the mask."""
        return replace(self, visible=visible_from_mask(mask, count))

    def visible_patches(self) -> Tensor:
        """The patches of visible tokens, (B, K, P)."""
        return self.patches if self.visible is None else gather_tokens(self.patches, self.visible)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
           non_blocking: bool = False) -> "Tokens":
        """Moves the batch; `dtype` casts floating patches only (class ids and indices stay integers)."""
        patches = self.patches.to(device=device, non_blocking=non_blocking)
        if dtype is not None and patches.is_floating_point():
            patches = patches.to(dtype)
        vis = None if self.visible is None else self.visible.to(device=device, non_blocking=non_blocking)
        return replace(self, patches=patches, visible=vis)

    def image(self) -> Tensor:
        """Inverse of `patchify`: the dense tensor these patches were cut from."""
        return unpatchify(self.patches, self.grid, self.patch)


def visible_from_mask(mask: Tensor, count: int | None = None) -> Tensor:
    """Sorted indices (B, K) of the False entries of a boolean mask (B, N) with the same count in every row.

    Give `count` (K) when it is known, as the samplers know it (`RandomMask.visible_count`): then nothing is
    read back from the mask, which on a GPU would make the host wait; without it the counts are checked.
    """
    if count is not None:
        k = int(count)
    else:
        counts = (~mask).sum(1)
        k = int(counts[0]) if mask.shape[0] else 0
        if mask.shape[0] and not bool((counts == k).all()):
            raise ValueError(f"every sample must keep the same number of visible tokens, got counts "
                             f"{counts.tolist()}")
    # a stable sort of 0 (visible) before 1 (hidden) keeps visible tokens in grid order; contiguous, so that the
    # gathers reading these indices run over dense rows and a compiled step sees one stride pattern
    return torch.argsort(mask.to(torch.uint8), dim=1, stable=True)[:, :k].contiguous()


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Picks tokens: x (B, N, D), index (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens(x: Tensor, index: Tensor, num_tokens: int, fill: Tensor | float = 0.0) -> Tensor:
    """Puts tokens back on the full grid: x (B, K, D) at `index` (B, K) -> (B, N, D), `fill` elsewhere.

    `fill` may be a scalar or a (D,) / (1, 1, D) tensor such as a learned mask token.
    """
    b, _, d = x.shape
    if isinstance(fill, Tensor):
        out = fill.reshape(1, 1, d).to(x.dtype).expand(b, num_tokens, d).clone()  # (B, N, D)
    else:
        out = x.new_full((b, num_tokens, d), fill)
    return out.scatter(1, index.unsqueeze(-1).expand(-1, -1, d), x)


def patchify(x: Tensor, patch: int | Sequence[int], *, out: Tensor | None = None) -> tuple[Tensor, tuple[int, ...]]:
    """Cuts a dense tensor into flattened patches.

    Args:
        x: (B, C, *S) with one or more patched axes S, e.g. (B, 3, 224, 224) or (B, 3, 16, 224, 224).
            A (B, *S) tensor of class ids (a semantic map) is treated as one channel.
        patch: extent per patched axis, or one int for all.
        out: where to write the patches (B, N, P) (e.g. shared memory a loader worker hands over); of x's dtype.

    Returns:
        patches (B, N, prod(patch) * C) in row-major grid order, channel last; and the grid.
    """
    if x.dim() < 3:
        raise ValueError(f"patchify needs (B, C, *axes), got shape {tuple(x.shape)}")
    b, c, *sizes = x.shape
    patch = _as_tuple(patch, len(sizes), "patch")
    for axis, (s, p) in enumerate(zip(sizes, patch)):
        if p <= 0 or s % p:
            raise ValueError(f"axis {axis + 2} of shape {tuple(x.shape)} is not divisible by patch {patch}")
    grid = tuple(s // p for s, p in zip(sizes, patch))
    n = len(grid)
    # (B, C, g1, p1, g2, p2, ...): split every patched axis into (cells, extent)
    split = x.reshape(b, c, *[d for gp in zip(grid, patch) for d in gp])
    # -> (B, g1, g2, ..., p1, p2, ..., C): grid axes first, channel last, as MAE's einsum 'nchpwq->nhwpqc'
    order = [0] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)] + [1]
    moved = split.permute(*order)  # (B, g1, g2, ..., p1, p2, ..., C), a view
    if out is not None:
        out.view(moved.shape).copy_(moved)  # the one copy, into the caller's memory
        return out, grid
    return moved.reshape(b, math.prod(grid), math.prod(patch) * c), grid  # (B, N, P)


def unpatchify(patches: Tensor, grid: Sequence[int], patch: Sequence[int]) -> Tensor:
    """Inverse of `patchify`: (B, N, prod(patch) * C) -> (B, C, *(grid * patch))."""
    grid, patch = tuple(grid), tuple(patch)
    b, num, p = patches.shape
    if num != math.prod(grid) or p % math.prod(patch):
        raise ValueError(f"patches {tuple(patches.shape)} do not fit grid {grid} with patch {patch}")
    c, n = p // math.prod(patch), len(grid)
    x = patches.reshape(b, *grid, *patch, c)  # (B, g1, ..., p1, ..., C)
    # interleave back to (B, C, g1, p1, g2, p2, ...)
    order = [0, 2 * n + 1] + [d for i in range(n) for d in (1 + i, 1 + n + i)]
    return x.permute(*order).reshape(b, c, *[g * q for g, q in zip(grid, patch)])  # (B, C, *S)
