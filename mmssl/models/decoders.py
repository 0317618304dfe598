"""Decoders that turn encoded visible tokens into predictions for every cell of the grid.

All three share one first step (`MaskedQueries`): project encoder features to the decoder width, put a learned
mask token at every hidden cell, add fixed positions. They differ in what the queries attend to:
- `SelfAttentionDecoder`: all tokens attend to each other (MAE 512x8, VideoMAE 384x4, Audio-MAE global).
- `CrossAttentionDecoder`: queries attend to another token set, the context, optionally then to each other
  (SiamMAE's cross / cross-self decoder; MultiMAE's output adapters: one cross layer, then self-attention blocks).
- `WindowDecoder`: shifted local windows on a 2-D grid (Audio-MAE's local decoder).
Each returns (B, N, out_dim), one prediction per grid cell; methods pick the cells their loss needs.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from mmssl.models.attention import Block, CrossBlock
from mmssl.models.init import init_mae_
from mmssl.models.window import WindowBlock
from mmssl.tokens import position_table, scatter_tokens

__all__ = ["MaskedQueries", "SelfAttentionDecoder", "CrossAttentionDecoder", "WindowDecoder"]


class MaskedQueries(nn.Module):
    """Encoder features of visible tokens -> decoder tokens on the full grid, with mask tokens and positions.

    Args:
        in_dim: encoder width.
        dim: decoder width.
        bias: bias of the projection (VideoMAE's `encoder_to_decoder` has none).
        pos_embed: fixed position table kind, "sincos" or "sinusoid".
    """

    def __init__(self, in_dim: int, dim: int, *, bias: bool = True, pos_embed: str = "sincos") -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim, bias=bias)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_kind = pos_embed
        self._positions: dict[tuple, Tensor] = {}

    def positions(self, grid: Sequence[int], like: Tensor) -> Tensor:
        """The fixed (N, dim) table for `grid`, cached per grid, device and dtype."""
        key = (tuple(grid), like.device, like.dtype)
        if key not in self._positions:
            dim = self.mask_token.shape[-1]
            self._positions[key] = position_table(self.pos_kind, grid, dim).to(like.device, like.dtype)
        return self._positions[key]

    def forward(self, x: Tensor, visible: Tensor | None, grid: Sequence[int]) -> Tensor:
        """x (B, K, in_dim) at grid cells `visible` (B, K) (None: all cells, in order) -> (B, N, dim)."""
        x = self.proj(x)  # (B, K, dim)
        n = math.prod(grid)
        if visible is not None:
            x = scatter_tokens(x, visible, n, self.mask_token)  # (B, N, dim), mask token at hidden cells
        elif x.shape[1] != n:
            raise ValueError(f"got {x.shape[1]} tokens without indices for a grid of {n} cells")
        return x + self.positions(grid, x)

    def context(self, x: Tensor, visible: Tensor | None, grid: Sequence[int]) -> Tensor:
        """Projects a context token set (B, M, in_dim) and adds its positions, without mask tokens."""
        x = self.proj(x)  # (B, M, dim)
        pos = self.positions(grid, x)  # (N, dim)
        return x + (pos if visible is None else pos[visible])


class _Head(nn.Module):
    """Final LayerNorm and the linear prediction of a raw patch vector per token."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.norm(x))


def _finish_init(module: nn.Module, queries: MaskedQueries) -> None:
    init_mae_(module)
    nn.init.normal_(queries.mask_token, std=0.02)


class SelfAttentionDecoder(nn.Module):
    """MAE-style decoder: full self-attention over visible features and mask tokens.

    Args:
        in_dim: encoder width.
        out_dim: values predicted per token (e.g. 16*16*3).
        dim: decoder width (MAE 512, VideoMAE ViT-B 384).
        depth: number of blocks (MAE 8, VideoMAE 4).
        heads: attention heads (MAE 16, VideoMAE 6).
        mlp_ratio: MLP width ratio.
        embed_bias: bias of the encoder-to-decoder projection.
        pos_embed: fixed position table kind.
    """

    def __init__(self, in_dim: int, out_dim: int, *, dim: int = 512, depth: int = 8, heads: int = 16,
                 mlp_ratio: float = 4.0, embed_bias: bool = True, pos_embed: str = "sincos") -> None:
        super().__init__()
        self.queries = MaskedQueries(in_dim, dim, bias=embed_bias, pos_embed=pos_embed)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.head = _Head(dim, out_dim)
        _finish_init(self, self.queries)

    def forward(self, x: Tensor, visible: Tensor | None, grid: Sequence[int], *,
                prefix: Tensor | None = None) -> Tensor:
        """x (B, K, in_dim), visible (B, K), optional prefix features (B, p, in_dim) -> (B, N, out_dim).

        Prefix tokens ([CLS]) join the attention with no position, as in MAE, and are dropped from the output.
        """
        h = self.queries(x, visible, grid)  # (B, N, dim)
        p = 0 if prefix is None else prefix.shape[1]
        if p:
            h = torch.cat([self.queries.proj(prefix), h], dim=1)  # (B, p+N, dim)
        for block in self.blocks:
            h = block(h)
        return self.head(h[:, p:])


class CrossAttentionDecoder(nn.Module):
    """Queries of one token set attend to a context token set (SiamMAE, MultiMAE output adapters).

    Args:
        in_dim: encoder width (queries and context share the projection).
        out_dim: values predicted per token.
        dim: decoder width.
        depth: number of cross-attention blocks.
        heads: attention heads.
        mlp_ratio: MLP width ratio.
        self_attention: each cross block also runs self-attention over the queries ("cross-self", SiamMAE's best).
        self_depth: plain self-attention blocks after the cross blocks (MultiMAE: 1 cross block, then 2).
        pos_embed: fixed position table kind.
    """

    def __init__(self, in_dim: int, out_dim: int, *, dim: int = 512, depth: int = 4, heads: int = 16,
                 mlp_ratio: float = 4.0, self_attention: bool = True, self_depth: int = 0,
                 pos_embed: str = "sincos") -> None:
        super().__init__()
        self.queries = MaskedQueries(in_dim, dim, pos_embed=pos_embed)
        self.cross = nn.ModuleList(CrossBlock(dim, heads, mlp_ratio, self_attention=self_attention)
                                   for _ in range(depth))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(self_depth))
        self.head = _Head(dim, out_dim)
        _finish_init(self, self.queries)

    def forward(self, x: Tensor, visible: Tensor | None, grid: Sequence[int], context: Tensor, *,
                context_visible: Tensor | None = None, context_grid: Sequence[int] | None = None,
                context_pos: Tensor | None = None) -> Tensor:
        """Predicts every cell of `grid` from query tokens x (B, K, in_dim) and context (B, M, in_dim).

        The context gets the fixed positions of `context_grid` (default: `grid`) at `context_visible` (None: all
        cells), or, when given, the ready-made `context_pos` (B or 1, M, dim) instead (several modalities).
        """
        h = self.queries(x, visible, grid)  # (B, N, dim)
        if context_pos is not None:
            ctx = self.queries.proj(context) + context_pos
        else:
            ctx = self.queries.context(context, context_visible, context_grid or grid)  # (B, M, dim)
        return self.decode(h, ctx)

    def decode(self, queries: Tensor, context: Tensor) -> Tensor:
        """Runs the blocks and the head on ready-made queries (B, N, dim) and context (B, M, dim) -> (B, N, out_dim).

        For callers that build queries and context themselves at the decoder width (MultiMAE's output adapters,
        whose per-sample token counts differ between modalities).
        """
        for block in self.cross:
            queries = block(queries, context)
        for block in self.blocks:
            queries = block(queries)
        return self.head(queries)


class WindowDecoder(nn.Module):
    """Audio-MAE's local decoder: shifted-window blocks on a 2-D (time, frequency) grid.

    Blocks alternate between unshifted windows and windows rolled by `shift`; with (2, 0) only time shifts.

    Args:
        in_dim: encoder width.
        out_dim: values predicted per token.
        dim: decoder width (Audio-MAE 512).
        depth: number of blocks (Audio-MAE 16).
        heads: attention heads (Audio-MAE 16).
        window: window extent on the grid (Audio-MAE (4, 4)).
        shift: roll applied on odd blocks (Audio-MAE (2, 0)); (0, 0) disables shifting.
        mlp_ratio: MLP width ratio.
        pos_embed: fixed position table kind.
    """

    def __init__(self, in_dim: int, out_dim: int, *, dim: int = 512, depth: int = 16, heads: int = 16,
                 window: Sequence[int] = (4, 4), shift: Sequence[int] = (2, 0), mlp_ratio: float = 4.0,
                 pos_embed: str = "sincos") -> None:
        super().__init__()
        self.queries = MaskedQueries(in_dim, dim, pos_embed=pos_embed)
        window, shift = tuple(window), tuple(shift)
        self.blocks = nn.ModuleList(
            WindowBlock(dim, heads, window=window, shift=shift if i % 2 else (0, 0), mlp_ratio=mlp_ratio)
            for i in range(depth))
        self.head = _Head(dim, out_dim)
        _finish_init(self, self.queries)
        for block in self.blocks:  # the relative-position tables are not linear layers: keep Swin's init
            nn.init.trunc_normal_(block.rel_bias, std=0.02)

    def forward(self, x: Tensor, visible: Tensor | None, grid: Sequence[int], *,
                prefix: Tensor | None = None) -> Tensor:
        """x (B, K, in_dim) -> (B, N, out_dim). A [CLS] prefix is not used: Audio-MAE drops it before this decoder."""
        if len(grid) != 2:
            raise ValueError(f"WindowDecoder needs a 2-D grid, got {tuple(grid)}")
        h = self.queries(x, visible, grid)  # (B, N, dim)
        for block in self.blocks:
            h = block(h, tuple(grid))
        return self.head(h)
