"""CPC for images: van den Oord et al. 2018 ("Representation Learning with Contrastive Predictive Coding") and
Hénaff et al. 2019 (CPC v2). No official code; REFERENCE.md §1.13:
- the image is cut into a grid of overlapping patches: 7 x 7 patches of 64 px with 32 px overlap at 256 px;
- each patch is encoded on its own and mean-pooled into z[i, j] (a timm CNN, or the ViT on the patch's tokens);
- a PixelCNN-style masked context network gives c[i, j] from rows <= i (`mmssl.models.pixelcnn`);
- for k = 1..K (up to 5 rows below) a linear W_k predicts z[i + k, j] from c[i, j]; InfoNCE scores the prediction
  against every patch embedding of the batch (the positive and, as negatives, the other patches of this and other
  images): `-log exp(z_pos . p) / sum_n exp(z_n . p)`;
- CPC v2 adds patch-level augmentation (spatial jitter, flips, colour dropping) and predictions in other
  directions: each direction rotates the grid so that it becomes "down" and has its own context net and W_k.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.output import Output
from mmssl.models.cnn import CNNEncoder
from mmssl.models.pixelcnn import MaskedContext

__all__ = ["CPCImage", "cut_patches", "cpc_info_nce"]

# quarter turns that make each direction point down the grid's rows
ROTATIONS = {"down": 0, "right": 1, "up": 2, "left": 3}


def cut_patches(images: Tensor, *, size: int, stride: int) -> tuple[Tensor, tuple[int, int]]:
    """Images (B, C, H, W) -> overlapping patches (B, gh, gw, C, size, size) and the grid (gh, gw)."""
    p = images.unfold(2, size, stride).unfold(3, size, stride)  # (B, C, gh, gw, size, size)
    return p.permute(0, 2, 3, 1, 4, 5), (p.shape[2], p.shape[3])  # -> (B, gh, gw, C, size, size)


def cpc_info_nce(preds: Tensor, keys: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """InfoNCE of predictions against a bank of embeddings; returns (loss, accuracy).

    Args:
        preds: predictions (M, D).
        keys: every candidate embedding (N, D).
        positives: index (M,) of each prediction's true embedding in `keys`; all other keys are negatives.
    """
    logits = (preds @ keys.T).float()  # (M, N)
    return F.cross_entropy(logits, positives), (logits.argmax(1) == positives).float().mean()


class CPCImage(nn.Module):
    """Contrastive predictive coding over a grid of image patches.

    Args:
        encoder: patch encoder, a `CNNEncoder` or a `TokenEncoder` whose modality size is the (cropped) patch.
        patch: patch side in pixels (64).
        stride: grid step in pixels (32: half-overlapping patches).
        steps: rows ahead predicted, K (5).
        directions: any of "down" (the paper), "up", "left", "right" (CPC v2).
        context_hidden: bottleneck width of the context network.
        context_blocks: residual blocks of the context network.
        crop: patch side after spatial jitter (random crop in training, centre crop otherwise); None keeps `patch`.
        flip: per-patch horizontal flip probability in training.
        color_drop: per-patch probability of keeping one random colour channel (others zeroed) in training;
            CPC v2 drops two of the three channels in every patch (1.0), which keeps a patch's colour, shared
            by every patch of its image, from telling the positive apart without its content.
    """

    modalities = ("image",)

    def __init__(self, encoder: nn.Module, *, patch: int = 64, stride: int = 32, steps: int = 5,
                 directions: Sequence[str] = ("down",), context_hidden: int = 256, context_blocks: int = 5,
                 crop: int | None = None, flip: float = 0.0, color_drop: float = 0.0) -> None:
        super().__init__()
        unknown = set(directions) - set(ROTATIONS)
        if unknown or not directions:
            raise ValueError(f"directions must be among {sorted(ROTATIONS)}, got {list(directions)}")
        self.encoder = encoder
        self.modality = encoder.modality
        self.patch, self.stride, self.steps, self.directions = patch, stride, steps, tuple(directions)
        self.crop, self.flip, self.color_drop = crop or patch, flip, color_drop
        dim = encoder.dim
        self.context = nn.ModuleDict({d: MaskedContext(dim, hidden=context_hidden, blocks=context_blocks)
                                      for d in self.directions})
        self.predictors = nn.ModuleDict({d: nn.ModuleList(nn.Linear(dim, dim) for _ in range(steps))
                                         for d in self.directions})

    def augment(self, patches: Tensor) -> Tensor:
        """Patch-level augmentation of (P, C, s, s) patches -> (P, C, crop, crop)."""
        n, c, s = patches.shape[0], patches.shape[1], patches.shape[-1]
        if not self.training:
            o = (s - self.crop) // 2
            return patches[..., o:o + self.crop, o:o + self.crop]
        off = torch.randint(0, s - self.crop + 1, (n, 2), device=patches.device)  # spatial jitter per patch
        r = torch.arange(self.crop, device=patches.device)
        rows, cols = off[:, :1] + r, off[:, 1:] + r  # (P, crop) each
        out = patches[torch.arange(n, device=patches.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        out = out.permute(0, 3, 1, 2)  # (P, crop, crop, C) -> (P, C, crop, crop)
        flip = torch.rand(n, device=out.device) < self.flip
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
        drop = torch.rand(n, device=out.device) < self.color_drop
        kept = torch.randint(c, (n,), device=out.device)  # (P,) the channel kept (a comparison, not one_hot: no host read)
        keep = kept[:, None] == torch.arange(c, device=out.device)[None, :]  # (P, C)
        keep = keep | ~drop[:, None]
        return out * keep[:, :, None, None]  # zero = the channel mean in normalised space

    def embed(self, images: Tensor) -> Tensor:
        """Normalised images (B, C, H, W) -> patch embeddings (B, D, gh, gw)."""
        patches, (gh, gw) = cut_patches(images, size=self.patch, stride=self.stride)
        b = images.shape[0]
        x = self.augment(patches.flatten(0, 2))  # (B, gh, gw, C, s, s) -> (B*gh*gw, C, crop, crop)
        if isinstance(self.encoder, CNNEncoder):
            z = self.encoder(x).tokens.mean(1)  # (B*gh*gw, D): the patch's feature map, mean-pooled
        else:
            z = self.encoder(self.modality.tokenize(x)).tokens.mean(1)  # the ViT's patch tokens, mean-pooled
        return z.unflatten(0, (b, gh, gw)).permute(0, 3, 1, 2)  # (B, gh, gw, D) -> (B, D, gh, gw)

    def predictions(self, z: Tensor, direction: str) -> list[tuple[Tensor, Tensor]]:
        """Per step k: predictions (B, D, gh - k, gw) of rows k.. and their targets, on the rotated grid."""
        z = torch.rot90(z, ROTATIONS[direction], dims=(2, 3))  # (B, D, gh', gw'): the direction points down
        c = self.context[direction](z)
        out = []
        for k, w in enumerate(self.predictors[direction], start=1):
            if k >= z.shape[2]:
                break
            pred = w(c[:, :, :-k].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, D, gh'-k, gw') via channels-last
            out.append((pred, z[:, :, k:]))
        return out

    def forward(self, batch: dict) -> Output:
        z = self.embed(batch["image"].image())  # (B, D, gh, gw)
        losses, logs = [], {}
        for direction in self.directions:
            rotated = torch.rot90(z, ROTATIONS[direction], dims=(2, 3))
            b, d, h, w = rotated.shape
            keys = rotated.permute(0, 2, 3, 1).reshape(-1, d)  # (B*h*w, D): every patch of the batch
            ids = torch.arange(b * h * w, device=z.device).view(b, h, w)
            for k, (pred, _) in enumerate(self.predictions(z, direction), start=1):
                preds = pred.permute(0, 2, 3, 1).reshape(-1, d)  # (B, D, h-k, w) -> (B*(h-k)*w, D)
                loss, acc = cpc_info_nce(preds, keys, ids[:, k:].reshape(-1))
                losses.append(loss)
                logs[f"acc_{direction}_{k}"] = acc.detach()
        loss = torch.stack(losses).mean()
        logs["loss"] = loss.detach()
        return Output(loss=loss, logs=logs)
