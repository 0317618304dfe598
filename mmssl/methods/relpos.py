"""Relative patch position: Doersch, Gupta & Efros, "Unsupervised Visual Representation Learning by Context
Prediction", ICCV 2015.

Show a centre patch and one of its 8 neighbours and classify where the neighbour sits. Follows REFERENCE.md §1.9,
the paper and `mmselfsup:configs/selfsup/relative-loc` (cdoersch/deepcontext is Caffe):
- 96 px patches on a 3x3 layout with a gap of about half a patch (48 px) and each patch jittered by up to 7 px, so
  low-level cues (edge continuation, texture across the border) cannot solve the task
  (`mmssl.pretext.patch_pair_boxes`);
- against chromatic aberration, which tells a patch's place in the lens frame, colours are either projected
  (green-magenta axis removed) or dropped (two of three channels replaced by faint noise, per patch);
- both patches go through one shared encoder; their pooled features (fc6) are concatenated and an MLP (fc7 4096,
  fc8 8-way) classifies the position, as the paper's late-fusion network does.
The pairs are cut from the whole-image batch the device stage left in `batch["image"]`. Every draw (layout place,
neighbour slot, jitters, dropped channels and their noise) comes from the sample's own counter-based generator
(`mmssl.pretext.sample_rngs`, keyed by the (seed, epoch, key) in `batch["ids"]`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.output import Output
from mmssl.pretext import (NEIGHBOURS, batch_ids, cut_patches, drop_colour, patch_pair_boxes, project_colour,
                               sample_rngs)

__all__ = ["RelativePosition"]

COLOUR = ("none", "project", "drop")


class RelativePosition(nn.Module):
    """8-way classification of a neighbour patch's position relative to the centre patch.

    Args:
        encoder: a `TokenEncoder` or `CNNEncoder` (a ViT's patch must divide `patch`).
        patch: side of the two patches (96 in the paper).
        gap: pixels between neighbouring slots (48).
        jitter: largest shift of each patch per axis (7).
        colour: "project", "drop" or "none": the chromatic-aberration guard.
        hidden_dim: width of the MLP (fc7) over the concatenated pair.
    """

    modalities = ("image",)

    def __init__(self, encoder: nn.Module, *, patch: int = 96, gap: int = 48, jitter: int = 7,
                 colour: str = "project", hidden_dim: int = 4096) -> None:
        super().__init__()
        if colour not in COLOUR:
            raise ValueError(f"colour must be one of {COLOUR}, got {colour!r}")
        self.encoder = encoder
        self.modality = encoder.modality
        self.patch, self.gap, self.jitter, self.colour = patch, gap, jitter, colour
        self.classifier = nn.Sequential(nn.Linear(2 * encoder.dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, len(NEIGHBOURS)))

    def pairs(self, images: Tensor, ids: list[tuple[int, int, str]] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Centre patches, neighbour patches (B, C, p, p) and labels (B,) (indices into `NEIGHBOURS`).

        `ids` name each image's draws ((seed, epoch, key), see `mmssl.pretext.batch_ids`); None draws a fresh
        batch name.
        """
        b, c, h, w = images.shape
        rngs = sample_rngs(ids or batch_ids({}, b), "relpos")
        centre_at, neighbour_at, labels = patch_pair_boxes(rngs, image=min(h, w), patch=self.patch, gap=self.gap,
                                                           jitter=self.jitter, device=images.device)
        centre, neighbour = cut_patches(images, centre_at, self.patch), cut_patches(images, neighbour_at, self.patch)
        if self.colour == "project":
            centre, neighbour = project_colour(centre), project_colour(neighbour)
        elif self.colour == "drop":  # each patch keeps its own random channel; the others become faint noise
            keep = torch.from_numpy(np.stack([rng.integers(0, c, 2) for rng in rngs]))  # (B, 2)
            noise = torch.from_numpy(np.stack([rng.standard_normal((2, c, self.patch, self.patch), np.float32)
                                               for rng in rngs]))  # (B, 2, C, p, p)
            centre = drop_colour(centre, keep[:, 0], noise[:, 0])
            neighbour = drop_colour(neighbour, keep[:, 1], noise[:, 1])
        return centre, neighbour, labels

    def logits(self, centre: Tensor, neighbour: Tensor) -> Tensor:
        """Position logits (B, 8) of patch pairs (B, C, p, p) each."""
        b = centre.shape[0]
        feats = self.encoder(self.modality.tokenize(torch.cat([centre, neighbour]))).pooled  # (2B, D), one pass
        return self.classifier(torch.cat([feats[:b], feats[b:]], dim=1))  # (B, 2D) -> (B, 8)

    def forward(self, batch: dict) -> Output:
        images = batch[self.modality.name].image().float()
        centre, neighbour, labels = self.pairs(images, batch_ids(batch, images.shape[0]))
        logits = self.logits(centre, neighbour)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return Output(loss=loss, logs={"loss": loss.detach(), "position_acc": acc})
