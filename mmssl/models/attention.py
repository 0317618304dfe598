"""Pre-norm transformer blocks for decoders: self-attention, cross-attention, and the cross-self mix.

All attention goes through `torch.nn.functional.scaled_dot_product_attention`, which picks flash or
memory-efficient kernels on the GPU and a plain kernel on the CPU.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Mlp", "Attention", "Block", "CrossBlock"]


class Mlp(nn.Module):
    """Two linear layers with GELU, hidden width `ratio * dim`."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention of queries `x` over `context` (itself when None), with an optional additive mask."""

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        m, h = context.shape[1], self.heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        k, v = self.kv(context).reshape(b, m, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, h, M, d/h)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, h, N, d/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)). LayerNorm eps 1e-6 as MAE's decoder."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), bias=bias)
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Queries attend to a context, optionally then to each other ("cross-self", SiamMAE), then an MLP.

    x + CrossAttn(LN(x), LN(ctx)) [+ SelfAttn(LN(x))] + MLP(LN(x)), each a residual step.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, *, self_attention: bool = False) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_ctx = nn.LayerNorm(dim, eps=1e-6)
        self.cross = Attention(dim, heads)
        self.norm_self = nn.LayerNorm(dim, eps=1e-6) if self_attention else None
        self.attn = Attention(dim, heads) if self_attention else None
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.cross(self.norm_q(x), self.norm_ctx(context))
        if self.attn is not None:
            x = x + self.attn(self.norm_self(x))
        return x + self.mlp(self.norm2(x))
