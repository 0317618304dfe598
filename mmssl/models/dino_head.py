"""The DINO projection head: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021.

Follows facebookresearch/dino `vision_transformer.py` `DINOHead` (also iBOT's head and DINOv2's `DINOHead`):
- an MLP of `layers` linear layers (in -> hidden -> ... -> bottleneck) with GELU between them and optional
  BatchNorm, weights initialised trunc-normal(std .02) and biases at zero;
- the bottleneck output is L2-normalised;
- a weight-normalised linear layer without bias maps it to `out_dim` logits (65536 for DINO). Its per-row norm
  `g` starts at 1; with `norm_last_layer` it stays fixed at 1, so the logits are cosine similarities to learned
  prototypes (DINO: True for ViT-B, False for ViT-S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DINOHead", "WeightNormLinear"]


class WeightNormLinear(nn.Module):
    """`y = x @ (g * v / ||v||).T` with one norm `g` per output row (torch's `weight_norm` with dim=0).

    Args:
        in_dim: input width.
        out_dim: output width.
        fixed_norm: keep `g` at 1 (not trained): DINO's `norm_last_layer`.
    """

    def __init__(self, in_dim: int, out_dim: int, *, fixed_norm: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight_v, std=0.02)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fixed_norm)

    def weight(self, grad_scale: Tensor | float = 1.0) -> Tensor:
        """The effective (out, in) weight: each row of `v` rescaled to norm `g`.

        `grad_scale` multiplies the gradient that reaches `v` and `g` without changing the value: 0 freezes the
        layer for one step (DINO's `freeze_last_layer`) while it stays in the graph, as DDP requires.
        """
        v, g = self.weight_v, self.weight_g
        if not (isinstance(grad_scale, float) and grad_scale == 1.0):
            v = v * grad_scale + v.detach() * (1 - grad_scale)
            g = g * grad_scale + g.detach() * (1 - grad_scale)
        return g * v / v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor, *, grad_scale: Tensor | float = 1.0) -> Tensor:
        return F.linear(x, self.weight(grad_scale))


class DINOHead(nn.Module):
    """MLP, L2-normalised bottleneck, weight-normalised prototype layer.

    Args:
        in_dim: backbone feature width.
        out_dim: number of prototypes (logits).
        hidden_dim: MLP width (DINO: 2048).
        bottleneck_dim: width of the normalised bottleneck (DINO: 256).
        layers: linear layers in the MLP (DINO: 3).
        batch_norm: BatchNorm after each hidden linear layer (DINO's `use_bn_in_head`, off for ViTs).
        norm_last_layer: fix the prototype norms at 1.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"DINOHead needs at least one layer, got layers={layers}")
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        mlp: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            mlp.append(nn.Linear(a, b))
            if i < layers - 1:  # no activation after the bottleneck projection
                mlp += [nn.BatchNorm1d(b)] if batch_norm else []
                mlp.append(nn.GELU())
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fixed_norm=norm_last_layer)

    def bottleneck(self, x: Tensor) -> Tensor:
        """The L2-normalised bottleneck features (..., bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: Tensor, *, last_layer_grad: Tensor | float = 1.0) -> Tensor:
        """Logits (..., out_dim) for features (..., in_dim); extra leading axes (patch tokens) are flattened.

        `last_layer_grad` scales the gradient reaching the prototype layer (0 while it is frozen).
        """
        lead = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])  # (M, in_dim): BatchNorm needs 2-D input
        out = self.last_layer(self.bottleneck(flat), grad_scale=last_layer_grad)  # (M, out_dim)
        return out.reshape(*lead, out.shape[-1])  # (..., out_dim)
