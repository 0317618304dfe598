"""Fixed sine-cosine position embeddings for token grids of any dimension, and their interpolation.

`sincos_pos_embed` gives every grid axis its own block of channels (1-D sin-cos of the cell coordinate along that
axis); for a 2-D grid it equals MAE's `get_2d_sincos_pos_embed` (first half of the channels encodes the column,
second half the row). `sinusoid_table` is the Transformer table over a flat token index that VideoMAE uses for all
T*H*W tokens (sin on even channels, cos on odd ones).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sincos_1d", "sincos_pos_embed", "sinusoid_table", "interpolate_pos_embed", "position_table"]


def sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """MAE's 1-D embedding: positions (M,) -> (M, dim) as [sin(p * w_i), cos(p * w_i)], w_i = 10000^(-i/(dim/2))."""
    if dim % 2:
        raise ValueError(f"a sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega.reshape(1, -1)  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def _axis_dims(dim: int, num_axes: int) -> list[int]:
    """Channels per axis: equal even blocks, any remainder to the first block (exact MAE split when divisible)."""
    if dim % 2:
        raise ValueError(f"a sin-cos embedding needs an even dimension, got {dim}")
    base = (dim // (2 * num_axes)) * 2
    if base == 0:
        raise ValueError(f"dimension {dim} is too small for a {num_axes}-D sin-cos embedding")
    return [dim - base * (num_axes - 1)] + [base] * (num_axes - 1)


def sincos_pos_embed(grid: Sequence[int], dim: int, *, cls_token: bool = False) -> Tensor:
    """Fixed sin-cos embedding of an N-d grid: (prod(grid) [+1], dim), cells in row-major order.

    Channel blocks run from the last axis to the first, so for a 2-D (rows, cols) grid the first half encodes the
    column and the second half the row, as in MAE. With `cls_token`, a zero row is prepended for the [CLS] slot.
    """
    grid = tuple(int(g) for g in grid)
    coords = torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij")  # each (g1, ..., gn)
    blocks = [sincos_1d(coords[axis].reshape(-1), d)
              for axis, d in zip(reversed(range(len(grid))), _axis_dims(dim, len(grid)))]
    emb = torch.cat(blocks, dim=1)  # (N, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """VideoMAE's `get_sinusoid_encoding_table`: (num_positions, dim), sin on even channels, cos on odd ones."""
    pos = torch.arange(num_positions, dtype=torch.float64).reshape(-1, 1)
    channel = torch.arange(dim)
    angles = pos / 10000 ** (2 * torch.div(channel, 2, rounding_mode="floor").double() / dim)  # (M, dim)
    return torch.where(channel % 2 == 0, angles.sin(), angles.cos()).float()


def interpolate_pos_embed(pos: Tensor, old_grid: Sequence[int], new_grid: Sequence[int], *,
                          num_prefix: int = 0) -> Tensor:
    """Resizes a (possibly learned) position table (N_prefix + prod(old_grid), D) to a new grid.

    Prefix rows ([CLS], register tokens) are kept as they are; the grid part is resampled with linear, bicubic or
    trilinear interpolation for 1-, 2- and 3-D grids.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if pos.shape[0] != num_prefix + math.prod(old_grid):
        raise ValueError(f"position table of {pos.shape[0]} rows does not match grid {old_grid} + {num_prefix}")
    if old_grid == new_grid:
        return pos
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}.get(len(old_grid))
    if mode is None:
        raise ValueError(f"cannot interpolate a {len(old_grid)}-D grid")
    prefix, cells = pos[:num_prefix], pos[num_prefix:]
    d = pos.shape[1]
    cells = cells.reshape(1, *old_grid, d).movedim(-1, 1)  # (1, D, *old_grid)
    cells = F.interpolate(cells.float(), size=new_grid, mode=mode, align_corners=False)
    cells = cells.movedim(1, -1).reshape(math.prod(new_grid), d).to(pos.dtype)  # (N', D)
    return torch.cat([prefix, cells], dim=0)


def _flat_sinusoid(grid: Sequence[int], dim: int) -> Tensor:
    return sinusoid_table(math.prod(grid), dim)


POSITION_TABLES = {"sincos": sincos_pos_embed, "sinusoid": _flat_sinusoid}
"""Fixed position tables by name: per-axis sin-cos (MAE, Audio-MAE, MultiMAE) or a flat sinusoid (VideoMAE)."""


def position_table(kind: str, grid: Sequence[int], dim: int) -> Tensor:
    """The (prod(grid), dim) fixed table of the named kind ("sincos" or "sinusoid")."""
    if kind not in POSITION_TABLES:
        raise ValueError(f"unknown position table {kind!r}; choose one of {sorted(POSITION_TABLES)}")
    return POSITION_TABLES[kind](tuple(grid), dim)
