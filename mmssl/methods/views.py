"""Reading and encoding the augmented views of a multi-view batch (SimCLR, MoCo, BYOL).

The device stage puts the views in `batch["views"]`. Encoding them in one pass is faster, and for an encoder
without BatchNorm (a ViT) exactly equal to encoding them one by one; an encoder with BatchNorm keeps one pass per
view, so its batch statistics are those of one view, as in the official MoCo v3 and BYOL code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmssl.tokens import Tokens

__all__ = ["two_views", "has_batchnorm", "encode_views"]


def two_views(batch: dict, method: str) -> tuple[Tokens, Tokens]:
    """The first two views of `batch`; a clear error when the pipeline made fewer."""
    views = batch.get("views")
    if not views or len(views) < 2:
        raise KeyError(f"{method} needs two augmented views in batch['views'] (a DeviceStage with two `views`); "
                       f"the batch has keys {sorted(batch)}")
    return views[0], views[1]


def has_batchnorm(module: nn.Module) -> bool:
    """Whether any submodule normalises with batch statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _cat(views: list[Tokens]) -> Tokens:
    first = views[0]
    visible = None if first.visible is None else torch.cat([v.visible for v in views])  # (V*B, K)
    return Tokens(patches=torch.cat([v.patches for v in views]), grid=first.grid, patch=first.patch,
                  modality=first.modality, visible=visible)  # patches (V*B, N, P)


def encode_views(encoder: nn.Module, views: list[Tokens]) -> list[Tensor]:
    """Pooled features (B, D) of each view: one pass when the views share a grid and the encoder has no BN."""
    same = all(v.grid == views[0].grid and (v.visible is None) == (views[0].visible is None)
               and v.num_visible == views[0].num_visible for v in views)
    if len(views) > 1 and same and not has_batchnorm(encoder):
        pooled = encoder(_cat(views)).pooled  # (V*B, D)
        return list(pooled.chunk(len(views)))
    return [encoder(v).pooled for v in views]
