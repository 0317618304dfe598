"""AdamW with MAE's parameter groups and the linear learning-rate scaling rule.

No weight decay on biases, norm weights, learned tokens and position tables (every parameter with fewer than
two dimensions, plus names listed in `no_decay`), as timm's `add_weight_decay` does for MAE.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = ["param_groups", "scaled_lr", "build_adamw", "set_hyper"]


def scaled_lr(base_lr: float, batch_size: int, *, reference: int = 256) -> float:
    """The linear scaling rule: lr = base_lr * effective batch / 256."""
    return base_lr * batch_size / reference


def param_groups(model: nn.Module, *, weight_decay: float, no_decay: Iterable[str] = ()) -> list[dict]:
    """Two groups of trainable parameters: with weight decay, and without (1-D parameters, tokens, `no_decay`)."""
    skip = tuple(no_decay)
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(("token", "pos_embed")) or any(s in name for s in skip):
            plain.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "apply_wd": True},
            {"params": plain, "weight_decay": 0.0, "apply_wd": False}]


def build_adamw(model: nn.Module, *, lr: float, weight_decay: float, betas: Sequence[float] = (0.9, 0.95),
                no_decay: Iterable[str] = ()) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused kernel when every parameter is on a CUDA device or the CPU.

    The fused kernel is one launch per device and dtype, and it can skip a step on the device (`found_inf`, which
    `mmssl.train.step.TrainStep` sets for a non-finite loss) where the others need the host to look.
    """
    groups = param_groups(model, weight_decay=weight_decay, no_decay=no_decay)
    params = [p for g in groups for p in g["params"]]
    fusable = bool(params) and all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params) and \
        len({p.device.type for p in params}) == 1
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fusable or None)


def set_hyper(optimizer: torch.optim.Optimizer, *, lr: float, weight_decay: float | None = None) -> None:
    """Sets the learning rate of every group and, when given, the weight decay of the groups that decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_wd", True):
            group["weight_decay"] = weight_decay
