"""Exponential moving averages of weights (BYOL/DINO/MoCo teachers): target <- m * target + (1 - m) * online."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_update_"]


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Moves `target`'s parameters towards `online`'s in place; buffers (BN statistics) are copied."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError(f"EMA target has {len(t_params)} parameters, online model {len(o_params)}")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)
