"""The frozen spec that says what differs between modalities, so methods need no `if modality == ...` branches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mmssl.tokens import Tokens, patchify

__all__ = ["Modality"]


def _filled(values: tuple[float, ...], like: Tensor, dtype: torch.dtype) -> Tensor:
    """The constants `values` as a (C,) tensor made by fills on `like`'s device: `torch.tensor(values, device=...)`
    copies them from the host, which makes the host wait for the GPU, in the middle of a training step."""
    return torch.stack([like.new_full((), v, dtype=dtype) for v in values])


@dataclass(frozen=True)
class Modality:
    """What a modality's dense tensors look like and how they become tokens.

    Attributes:
        name: short name, also the `Tokens.modality` tag ("image", "video", ...).
        patch: patch extent per patched axis, e.g. (16, 16) or (2, 16, 16).
        size: default input extent per patched axis, e.g. (224, 224); the grid is size // patch.
        channels: channels per cell (3 for RGB, 1 for depth, spectrograms and class maps).
        key: the sample key that holds this modality in a shard (webdataset extension), e.g. "jpg".
        mean: per-channel mean used to normalise; None means per-sample standardisation.
        std: per-channel std used to normalise (ignored when mean is None).
        num_classes: number of classes for categorical maps (class ids, no normalisation); None otherwise.
    """

    name: str
    patch: tuple[int, ...]
    size: tuple[int, ...]
    channels: int
    key: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if len(self.patch) != len(self.size):
            raise ValueError(f"modality {self.name!r}: patch {self.patch} and size {self.size} differ in length")
        if any(s % p for s, p in zip(self.size, self.patch)):
            raise ValueError(f"modality {self.name!r}: size {self.size} is not divisible by patch {self.patch}")
        if self.mean is not None and (self.std is None or len(self.mean) != len(self.std)):
            raise ValueError(f"modality {self.name!r}: mean and std must both be given, of equal length")

    @property
    def categorical(self) -> bool:
        return self.num_classes is not None

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(self.size, self.patch))

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def patch_dim(self) -> int:
        """Length of one raw patch vector (values per token)."""
        return math.prod(self.patch) * self.channels

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast over (B, C, *axes)
        return _filled(self.mean, x, x.dtype).reshape(shape), _filled(self.std, x, x.dtype).reshape(shape)

    def normalize(self, x: Tensor) -> Tensor:
        """Normalises a dense batch (B, C, *axes): dataset statistics, per-sample standardisation, or none."""
        if self.categorical:
            return x
        if self.mean is None:
            dims = tuple(range(1, x.dim()))
            return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-6)
        mean, std = self._stats(x)
        return (x - mean) / std

    def normalize_patches(self, patches: Tensor, *, out: Tensor | None = None) -> Tensor:
        """Float patches from 0..255 ones (B, N, prod(patch) * C), as `normalize` of x / 255 would give.

        Patches are channel-last, so the per-channel scale and shift are tiled over one patch vector and the whole
        conversion is one cast and one in-place multiply-add per value. `patches` are uint8 (or float 0..255);
        `out`: a float32 tensor of their shape to write into (e.g. shared memory a loader worker hands over), or
        `patches` themselves (float), normalised in place.
        """
        if self.categorical or self.mean is None:
            raise ValueError(f"modality {self.name!r} has no dataset statistics to normalise uint8 patches with")
        std, mean = _filled(self.std, patches, torch.float32), _filled(self.mean, patches, torch.float32)
        reps = patches.shape[-1] // self.channels
        scale, shift = (1 / (255 * std)).repeat(reps), (-mean / std).repeat(reps)  # (P,): channel fastest
        if out is patches:
            values = patches
        else:
            values = patches.float() if out is None else out.copy_(patches)
        return torch.addcmul(shift, values, scale, out=values)  # x * scale + shift, one pass

    def denormalize(self, x: Tensor) -> Tensor:
        """Undoes dataset-statistics normalisation (for figures); other modalities are returned unchanged."""
        if self.categorical or self.mean is None:
            return x
        mean, std = self._stats(x)
        return x * std + mean

    def tokenize(self, x: Tensor, *, out: Tensor | None = None) -> Tokens:
        """Patchifies a dense batch (B, C, *axes) (or (B, *axes) class ids) into `Tokens` of this modality
        (written into `out` (B, N, P) when given)."""
        if self.categorical and x.dim() == len(self.patch) + 1:
            x = x.unsqueeze(1)  # (B, 1, *axes): class ids as one channel
        if x.shape[1] != self.channels:
            raise ValueError(f"modality {self.name!r} expects {self.channels} channels, got shape {tuple(x.shape)}")
        patches, grid = patchify(x, self.patch, out=out)
        return Tokens(patches=patches, grid=grid, patch=self.patch, modality=self.name)
