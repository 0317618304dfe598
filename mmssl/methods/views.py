"""Reading and encoding the augmented views of a multi-view batch (SimCLR, MoCo, BYOL, MoCo v3, DINO, iBOT).

The device stage puts the views in `batch["views"]`. `encode_views` is the one place they are encoded: views
that can share a batch (same grid, same mask layout) run as one encoder pass, as DINO's `MultiCropWrapper` runs
each crop resolution; for an encoder without BatchNorm (a ViT) that is exactly equal to encoding them one by one
and faster. An encoder with BatchNorm keeps one pass per view, so its batch statistics are those of one view, as
in the official MoCo v3 and BYOL code.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from mmssl.tokens import Tokens

__all__ = ["two_views", "has_batchnorm", "concat_views", "encode_views"]


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


def concat_views(views: Sequence[Tokens]) -> Tokens:
    """Stacks views on one grid along the batch axis.

    Raises:
        ValueError: when some views carry a mask and others do not (their token counts would differ).
    """
    first = views[0]
    masked = [v.visible is not None for v in views]
    if any(masked) and not all(masked):
        raise ValueError("views of one resolution must all carry a mask or none")
    visible = torch.cat([v.visible for v in views]) if all(masked) else None  # (V*B, K)
    return Tokens(patches=torch.cat([v.patches for v in views]), grid=first.grid, patch=first.patch,
                  modality=first.modality, visible=visible)  # patches (V*B, N, P)


def _layout(view: Tokens) -> tuple:
    # views batch together only when the encoder sees the same token count for each: same grid and mask size
    return view.grid, None if view.visible is None else view.num_visible


def _passes(views: Sequence[Tokens], *, per_view: bool) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive views that go through the encoder as one batch."""
    if per_view:
        return [(i, i + 1) for i in range(len(views))]
    ranges, start = [], 0
    for i in range(1, len(views) + 1):
        if i == len(views) or _layout(views[i]) != _layout(views[start]):
            ranges.append((start, i))
            start = i
    return ranges


def encode_views(encoder: nn.Module, views: Sequence[Tokens]) -> list[Tensor]:
    """Pooled features (B, D) of each view, in order.

    Consecutive views of one layout run as one pass; every view runs alone when `encoder` has BatchNorm.
    DINO-style callers that want all views as one (V*B, D) tensor concatenate the list.
    """
    feats = []
    for a, b in _passes(views, per_view=has_batchnorm(encoder)):
        pooled = encoder(concat_views(views[a:b])).pooled  # ((b-a)*B, D)
        feats.extend(pooled.chunk(b - a))  # (b-a) x (B, D)
    return feats
