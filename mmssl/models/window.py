"""Shifted-window attention over a 2-D token grid (Swin, Liu et al. 2021), as Audio-MAE's local decoder uses.

Tokens attend only within (wh, ww) windows; odd blocks roll the grid by `shift` first so information crosses
window borders, with a mask that keeps tokens rolled in from the far edge apart. Audio-MAE shifts along time
only: shift (2, 0) with window (4, 4) on its 64x8 (time, frequency) grid. Each window has a learned relative
position bias, as in Swin.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmssl.models.attention import Attention, Mlp

__all__ = ["WindowBlock"]


def _windows(x: Tensor, grid: tuple[int, int], window: tuple[int, int]) -> Tensor:
    """(B, H*W, D) -> (B * nW, wh*ww, D), windows in row-major order."""
    b, _, d = x.shape
    (h, w), (wh, ww) = grid, window
    x = x.reshape(b, h // wh, wh, w // ww, ww, d)  # (B, nH, wh, nW, ww, D)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, wh * ww, d)  # (B*nH*nW, wh*ww, D)


def _merge(x: Tensor, batch: int, grid: tuple[int, int], window: tuple[int, int]) -> Tensor:
    """Inverse of `_windows`: (B * nW, wh*ww, D) -> (B, H*W, D)."""
    (h, w), (wh, ww), d = grid, window, x.shape[-1]
    x = x.reshape(batch, h // wh, w // ww, wh, ww, d)  # (B, nH, nW, wh, ww, D)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, h * w, d)  # (B, H*W, D)


class WindowBlock(nn.Module):
    """A pre-norm transformer block whose attention is restricted to (shifted) local windows of a 2-D grid."""

    def __init__(self, dim: int, heads: int, *, window: tuple[int, int] = (4, 4), shift: tuple[int, int] = (0, 0),
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.window, self.shift, self.heads = tuple(window), tuple(shift), heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)
        wh, ww = self.window
        self.rel_bias = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)  # (2, L)
        rel = coords[:, :, None] - coords[:, None, :]  # (2, L, L) offsets between every pair in a window
        index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)  # (L, L) into the bias table
        self.register_buffer("rel_index", index, persistent=False)

    def _region_mask(self, grid: tuple[int, int], device: torch.device) -> Tensor | None:
        """(nW, L, L) additive mask: -inf between tokens that the cyclic shift brought from different regions.

        Each axis has up to three regions (before the last window, the last window's unshifted part, the part the
        shift wrapped around); a cell's region label is computed from its index with comparisons on the device,
        so no value is copied from the host in the step.
        """
        if not any(self.shift):
            return None
        (h, w), (wh, ww), (sh, sw) = grid, self.window, self.shift

        def regions(size: int, window: int, shift: int) -> Tensor:
            i = torch.arange(size, device=device)
            return (i >= size - window).long() + (i >= size - shift).long() if shift else torch.zeros_like(i)

        labels = regions(h, wh, sh)[:, None] * 3 + regions(w, ww, sw)[None, :]  # (H, W) region of each cell
        win = _windows(labels.float().reshape(1, h * w, 1), grid, self.window).squeeze(-1)  # (nW, L)
        same = win[:, :, None] == win[:, None, :]
        return torch.zeros(same.shape, device=device).masked_fill(~same, float("-inf"))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        b, n, d = x.shape
        (h, w), (wh, ww) = grid, self.window
        if h % wh or w % ww:
            raise ValueError(f"grid {grid} is not divisible by the attention window {self.window}")
        shortcut = x
        x = self.norm1(x).reshape(b, h, w, d)  # (B, H, W, D)
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        win = _windows(x.reshape(b, n, d), grid, self.window)  # (B*nW, L, D)
        bias = self.rel_bias[self.rel_index].permute(2, 0, 1)  # (heads, L, L)
        region = self._region_mask(grid, x.device)
        if region is not None:
            # windows are batch-major in `win`, so the per-window masks repeat once per sample
            bias = (bias.unsqueeze(0) + region.unsqueeze(1)).repeat(b, 1, 1, 1)  # (B*nW, heads, L, L)
        out = _merge(self.attn(win, bias=bias.to(win.dtype)), b, grid, self.window).reshape(b, h, w, d)
        if any(self.shift):
            out = torch.roll(out, shifts=self.shift, dims=(1, 2))
        x = shortcut + out.reshape(b, n, d)
        return x + self.mlp(self.norm2(x))
