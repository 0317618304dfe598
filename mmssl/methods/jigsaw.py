"""Jigsaw puzzles: Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016.

Cut an image into 3x3 tiles, shuffle them by one permutation of a fixed set, and classify which permutation it
was. Follows REFERENCE.md §1.8 and bbrattoli/JigsawPuzzlePytorch (`JigsawImageLoader.py`, `select_permutations.py`,
`JigsawNetwork.py`), the PyTorch port of the Caffe original:
- a 225 px image makes 75 px cells; each tile is a random 64 px crop of its cell (gap and jitter against edge
  continuity shortcuts) resized back to 75 px and standardised on its own (`mmssl.pretext.jigsaw_tiles`);
- against chromatic aberration (a colour shift that grows towards the border and so tells a tile's place), 30% of
  the images are made grey and every colour channel of every tile of the others is shifted by up to ±2 px per
  axis (the paper's "spatially jitter the color channels"), as the paper does;
- the classes are a permutation set grown for maximal Hamming distance, 1000 in the paper, 100 by default here
  (VISSL ships 100/2k/10k), made deterministically and cached on disk (`hamming_permutations`);
- the tiles go through one shared ("siamese") encoder; each tile's pooled feature is mapped by a shared fc
  (fc6, 1024 wide in the paper's AlexNet), the 9 are concatenated in puzzle order, and an MLP (fc7 4096, fc8)
  classifies the permutation.
The puzzles are cut from the whole-image batch the device stage left in `batch["image"]`. Every draw (offsets,
permutation, grey, channel shifts) comes from the sample's own counter-based generator
(`mmssl.pretext.sample_rngs`, keyed by the (seed, epoch, key) in `batch["ids"]`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.output import Output
from mmssl.pretext import (batch_ids, hamming_permutations, jigsaw_draws, jigsaw_tiles, normalize_tiles,
                               sample_rngs, to_grey)

__all__ = ["Jigsaw"]


class Jigsaw(nn.Module):
    """Permutation classification of shuffled, gapped, jittered tiles through a shared tile encoder.

    Args:
        encoder: a `TokenEncoder` or `CNNEncoder`; it sees one tile at a time (a ViT's patch must divide `tile`).
        grid: tiles per side (3).
        num_permutations: size of the maximal-Hamming permutation set (100; 1000 in the paper).
        crop_fraction: tile crop side over cell side (64 / 75 in the paper); the rest is gap plus jitter.
        tile: side the tile crops are resized to; None keeps the cell side (75 at 225 px, as the reference).
        tile_dim: width of the shared per-tile fc (fc6).
        hidden_dim: width of the classifier's hidden layer over the concatenated tiles (fc7).
        grey: chance of making an image grey (0.3 in the paper; needs RGB).
        channel_jitter: largest per-axis shift (px) of each colour channel of a tile (2 in the paper; 0: none).
        cache_dir: where the permutation set is cached (default `$MMSSL_CACHE` or ~/.cache/mmssl).
    """

    modalities = ("image",)

    def __init__(self, encoder: nn.Module, *, grid: int = 3, num_permutations: int = 100,
                 crop_fraction: float = 64 / 75, tile: int | None = None, tile_dim: int = 1024,
                 hidden_dim: int = 4096, grey: float = 0.3, channel_jitter: int = 2,
                 cache_dir: str | Path | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.modality = encoder.modality
        if grey > 0 and self.modality.channels != 3:
            raise ValueError(f"grey={grey} needs RGB images, the modality has {self.modality.channels} channels")
        self.grid, self.crop_fraction, self.tile = grid, crop_fraction, tile
        self.grey, self.channel_jitter = grey, channel_jitter
        perms = torch.from_numpy(hamming_permutations(num_permutations, tiles=grid * grid, cache_dir=cache_dir))
        self.register_buffer("permutations", perms, persistent=False)  # (P, T)
        self.tile_fc = nn.Sequential(nn.Linear(encoder.dim, tile_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(grid * grid * tile_dim, hidden_dim), nn.ReLU(inplace=True),
                                        nn.Linear(hidden_dim, num_permutations))

    @property
    def num_permutations(self) -> int:
        return self.permutations.shape[0]

    def puzzles(self, images: Tensor, ids: list[tuple[int, int, str]] | None = None) -> tuple[Tensor, Tensor]:
        """Shuffled, normalised tiles (B, T, C, s, s) of images (B, C, S, S) and their permutation labels (B,).

        Position t of a puzzle holds tile `permutations[label, t]` (the reference's convention). `ids` name each
        image's draws ((seed, epoch, key), see `mmssl.pretext.batch_ids`); None draws a fresh batch name.
        """
        b, c, size = images.shape[0], images.shape[1], images.shape[-1]
        cell = size // self.grid
        crop = max(1, round(cell * self.crop_fraction))
        t = self.grid * self.grid
        draws = jigsaw_draws(sample_rngs(ids or batch_ids({}, b), "jigsaw"), tiles=t, channels=c, slack=cell - crop,
                             num_permutations=self.num_permutations, grey=self.grey,
                             channel_jitter=self.channel_jitter)
        if bool(draws["grey"].any()):  # luma of the RGB image, not of its normalised channels
            images = self.modality.normalize(to_grey(self.modality.denormalize(images), draws["grey"]))
        tiles = normalize_tiles(jigsaw_tiles(images, draws["offsets"], grid=self.grid, crop=crop,
                                             size=self.tile or cell, shifts=draws["shifts"]))
        labels = draws["labels"].to(images.device)
        order = self.permutations[labels]  # (B, T)
        shuffled = tiles[torch.arange(b, device=images.device)[:, None], order]  # (B, T, C, s, s)
        return shuffled, labels

    def logits(self, tiles: Tensor) -> Tensor:
        """Permutation logits (B, P) of puzzles (B, T, C, s, s)."""
        b, t = tiles.shape[:2]
        feats = self.encoder(self.modality.tokenize(tiles.flatten(0, 1))).pooled  # (B*T, C, s, s) -> (B*T, D)
        per_tile = self.tile_fc(feats).reshape(b, -1)  # (B*T, tile_dim) -> (B, T*tile_dim), in puzzle order
        return self.classifier(per_tile)

    def forward(self, batch: dict) -> Output:
        images = batch[self.modality.name].image().float()
        tiles, labels = self.puzzles(images, batch_ids(batch, images.shape[0]))
        logits = self.logits(tiles)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return Output(loss=loss, logs={"loss": loss.detach(), "jigsaw_acc": acc})
