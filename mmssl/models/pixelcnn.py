"""A PixelCNN-style masked context network over a grid of patch embeddings (CPC for images: van den Oord et al.
2018, Hénaff et al. 2019; REFERENCE.md §1.13).

The context c[i, j] may see embeddings z[u, v] of rows u <= i only, so that it can be asked to predict rows below.
Each conv is causal in rows: its kernel covers the current row and the rows above (the input is padded at the top
only), so any stack of them keeps that property. Residual bottleneck blocks as in CPC v2's context network.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RowCausalConv", "MaskedContext"]


class RowCausalConv(nn.Module):
    """A k x k conv whose output row i reads input rows i - k + 1 .. i (all columns within k // 2)."""

    def __init__(self, cin: int, cout: int, *, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv2d(cin, cout, kernel)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel
        return self.conv(F.pad(x, (k // 2, k // 2, k - 1, 0)))  # pad left, right, top (k-1), bottom 0


class MaskedContext(nn.Module):
    """Residual stack of row-causal convs: (B, D, H, W) -> contexts (B, D, H, W) that see rows <= i.

    Args:
        dim: embedding (and context) width.
        hidden: bottleneck width of each block.
        blocks: residual blocks.
        kernel: kernel size of the causal convs.
    """

    def __init__(self, dim: int, *, hidden: int = 256, blocks: int = 5, kernel: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(dim, hidden, 1), nn.ReLU(), RowCausalConv(hidden, hidden, kernel=kernel),
                          nn.ReLU(), nn.Conv2d(hidden, dim, 1))
            for _ in range(blocks))

    def forward(self, z: Tensor) -> Tensor:
        for block in self.blocks:
            z = z + block(z)
        return z
