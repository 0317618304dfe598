"""Projection and prediction MLPs of the joint-embedding methods (SimCLR, MoCo v2/v3, BYOL).

They differ only in depth, widths, where BatchNorm sits and whether the last layer is batch-normalised, so one
module covers them all:
- SimCLR (`google-research/simclr` `proj_head_mode=nonlinear`): Linear-BN-ReLU, then a Linear whose output is
  batch-normalised with a scale but no shift (`center=False`); 2 layers in v1, 3 in v2; 2048 wide, 128 out.
- MoCo v2 (`facebookresearch/moco` `--mlp`): Linear-ReLU-Linear, no BatchNorm (2048 wide, 128 out).
- MoCo v3 (`facebookresearch/moco-v3` `_build_mlp`): bias-free Linear-BN-ReLU layers, the last Linear followed
  by an affine-free BN in the projector (3 layers for ViT) but not in the predictor (2 layers); 4096 wide, 256 out.
- BYOL (`deepmind-research/byol` `networks.MLP`): Linear-BN-ReLU-Linear for projector and predictor (4096, 256).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MLPHead"]


class MLPHead(nn.Module):
    """An MLP of `layers` linear maps with BatchNorm and ReLU between them.

    Args:
        in_dim: input width.
        out_dim: output width.
        hidden_dim: width of the hidden layers.
        layers: number of linear maps (>= 1).
        bn: BatchNorm1d after every hidden linear map.
        last_bn: BatchNorm1d after the last map, without learned shift (MoCo v3's projector, SimCLR).
        last_bn_scale: give that last BN a learned scale (SimCLR) instead of none (MoCo v3).
        bias: biases on the linear maps that no BN follows (a BN right after a map cancels its bias, so those
            maps never have one; MoCo v3 has none at all).
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, layers: int = 2, bn: bool = True,
                 last_bn: bool = False, last_bn_scale: bool = False, bias: bool = True) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"an MLP head needs at least one layer, got {layers}")
        self.in_dim, self.out_dim = in_dim, out_dim
        parts: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            parts.append(nn.Linear(width, hidden_dim, bias=bias and not bn))
            if bn:
                parts.append(nn.BatchNorm1d(hidden_dim))
            parts.append(nn.ReLU(inplace=True))
            width = hidden_dim
        parts.append(nn.Linear(width, out_dim, bias=bias and not last_bn))
        if last_bn:
            norm = nn.BatchNorm1d(out_dim, affine=last_bn_scale)
            if last_bn_scale:  # SimCLR's `center=False`: a scale, no shift
                norm.bias.requires_grad_(False)
            parts.append(norm)
        self.mlp = nn.Sequential(*parts)

    def forward(self, x: Tensor) -> Tensor:
        """Maps (B, in_dim) features to (B, out_dim)."""
        return self.mlp(x)
