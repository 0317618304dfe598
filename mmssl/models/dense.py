"""A dense prediction head on an encoder's token grid, for pixel-level pretext tasks (colorization, split-brain,
context encoder). It works the same on a ViT's patch grid and on a CNN's feature map, since both come as `Encoded`
tokens on a grid: a linear map per token to `channels * r * r` values, laid out as an r x r block of outputs
(sub-pixel, as a pixel shuffle), then bilinear resizing to the exact output size when that is finer still.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.models.encoder import Encoded

__all__ = ["DenseHead"]


class DenseHead(nn.Module):
    """Per-token linear map to an r x r block of `channels` outputs.

    Args:
        dim: encoder width.
        channels: outputs per output position (bins, or pixel channels).
        subpixel: r, output positions per token along each axis.
    """

    def __init__(self, dim: int, channels: int, *, subpixel: int = 1) -> None:
        super().__init__()
        self.channels, self.subpixel = channels, subpixel
        self.proj = nn.Linear(dim, channels * subpixel * subpixel)

    def forward(self, encoded: Encoded, size: tuple[int, int]) -> Tensor:
        """(B, channels, *size) predictions from the features of every token on the grid."""
        if encoded.visible is not None:
            raise ValueError("DenseHead needs every token encoded (visible=None)")
        b, n, _ = encoded.tokens.shape
        h, w = encoded.grid
        r, c = self.subpixel, self.channels
        x = self.proj(encoded.tokens).reshape(b, h, w, c, r, r)  # (B, N, C*r*r) -> (B, h, w, C, r, r)
        x = x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * r, w * r)  # (B, C, h, r, w, r) -> (B, C, h*r, w*r)
        if (h * r, w * r) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x
