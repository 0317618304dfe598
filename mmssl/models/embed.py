"""Patch embeddings: a linear map of raw patch vectors, or a class embedding for categorical maps.

A linear layer over MAE-layout patch vectors is the same function as ViT's strided conv patch embedding, and
it works for any number of patched axes (2-D images, 3-D tubelets, spectrograms) with one code path.
"""

from __future__ import annotations


from torch import Tensor, nn

from mmssl.modalities import Modality

__all__ = ["LinearPatchEmbed", "ClassPatchEmbed", "patch_embed_for"]


class LinearPatchEmbed(nn.Module):
    """(B, K, P) raw patches -> (B, K, dim)."""

    def __init__(self, patch_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(patch_dim, dim)

    def forward(self, patches: Tensor) -> Tensor:
        return self.proj(patches.to(self.proj.weight.dtype))


class ClassPatchEmbed(nn.Module):
    """(B, K, V) class ids per patch cell -> (B, K, dim): embed each id, then project the patch's embeddings.

    MultiMAE's semantic-map adapter (a 64-d class embedding followed by a patch projection) in token form.
    """

    def __init__(self, num_classes: int, patch_volume: int, dim: int, *, class_dim: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classes = nn.Embedding(num_classes, class_dim)
        nn.init.normal_(self.classes.weight, std=0.02)
        self.proj = nn.Linear(patch_volume * class_dim, dim)

    def forward(self, patches: Tensor) -> Tensor:
        if patches.is_floating_point():
            raise TypeError("a categorical modality needs integer class ids, got floating patches")
        b, k, v = patches.shape
        emb = self.classes(patches.long())  # (B, K, V, class_dim)
        return self.proj(emb.reshape(b, k, v * emb.shape[-1]))  # (B, K, dim)


def patch_embed_for(modality: Modality, dim: int) -> nn.Module:
    """The embedding that fits a modality: class embedding for categorical maps, linear otherwise."""
    if modality.categorical:
        return ClassPatchEmbed(modality.num_classes, modality.patch_dim // modality.channels, dim)
    return LinearPatchEmbed(modality.patch_dim, dim)


