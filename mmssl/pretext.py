"""Batched input transforms of the pretext-task methods: rotations, jigsaw tiles, patch pairs, colour shortcuts.

These run on whole images (B, C, H, W) on the device, inside the method, after the device stage has cropped,
normalised and tokenised them (`Tokens.image()` gives the dense batch back). They live in the library, beside the
methods that call them, so `mmssl` imports nothing from the data pipelines (`pipelines` builds on `mmssl`, not the
other way round). Every transform takes its random draws as arguments, so tests can pin them; the
draws themselves come from `mmssl.rng.sample_rng(seed, epoch, key, what)`, one counter-based generator per
sample (`batch_ids` reads the (seed, epoch, key) the device stage leaves in `batch["ids"]`), so a sample's tiles,
permutation or patch pair are the same whichever batch, device or rank it lands in, and a resumed run repeats
them. References (see REFERENCE.md §1.7–1.9):
- RotNet (Gidaris et al., ICLR 2018; gidariss/FeatureLearningRotNet `dataloader.py`): every rotated copy of an
  image sits next to the others in the batch, labels 0..R-1; the ablation's 8 rotations are multiples of 45°.
- Jigsaw (Noroozi & Favaro, ECCV 2016; bbrattoli/JigsawPuzzlePytorch `JigsawImageLoader.py`,
  `select_permutations.py`): a 3x3 grid of cells (75 px at 225 px), a random 64 px crop inside each cell (the
  gap hides edge continuity, the random place is the jitter) resized back to the cell size, each tile
  standardised on its own; the permutation set is grown greedily to maximise the Hamming distance. Against
  chromatic aberration the paper trains on grey images 30% of the time and spatially jitters each colour channel
  of each tile of a colour image by 0, ±1 or ±2 px (the PyTorch port adds a per-channel intensity offset instead,
  which the per-tile standardisation removes again).
- Relative position (Doersch et al., ICCV 2015): a centre patch and one of its 8 neighbours on a 3x3 layout with a
  gap between patches and a per-patch jitter; colour projection (remove the green-magenta axis) or colour dropping
  (keep one channel, noise in the others) against chromatic-aberration shortcuts.
"""

from __future__ import annotations

import math
import os
from itertools import permutations
from pathlib import Path

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.rng import sample_rng

__all__ = ["batch_ids", "sample_rngs", "rotate", "all_rotations", "hamming_permutations", "min_hamming",
           "jigsaw_draws", "to_grey", "jigsaw_tiles", "normalize_tiles", "NEIGHBOURS", "patch_pair_boxes",
           "cut_patches", "project_colour", "drop_colour"]

Ids = list[tuple[int, int, str]]
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, those of PIL's convert("L") that the jigsaw reference uses

# (dy, dx) of the 8 neighbours of the centre slot, in row-major order: the relative-position class ids
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# -- per-sample randomness ------------------------------------------------------------------------------------

def batch_ids(batch: Mapping[str, Any], n: int) -> Ids:
    """(seed, epoch, key) of each of the `n` rows of a method batch.

    The device stage leaves them in `batch["ids"]`. A batch made by hand has none: then one number drawn from
    torch's global RNG names the batch and the rows are keyed by their index, so `torch.manual_seed` still makes
    the draws repeat.
    """
    ids = batch.get("ids")
    if ids is None:
        base = int(torch.randint(0, 2**62, (1,)))
        return [(base, 0, str(i)) for i in range(n)]
    if len(ids) != n:
        raise ValueError(f"batch['ids'] has {len(ids)} rows, the images {n}")
    return [(int(s), int(e), str(k)) for s, e, k in ids]


def sample_rngs(ids: Sequence[tuple[int, int, str]], what: str) -> list[np.random.Generator]:
    """One counter-based generator per row, for the draws named `what` (so two methods' draws never coincide)."""
    return [sample_rng(s, e, k, what) for s, e, k in ids]


# -- rotation ---------------------------------------------------------------------------------------------------

def rotate(x: Tensor, k: int, *, rotations: int = 4) -> Tensor:
    """Rotates a batch (B, C, H, W) counter-clockwise by k * 360 / rotations degrees.

    Multiples of 90° are exact pixel moves (`rot90`); the other 45° steps resample bilinearly and fill the corners
    with zeros (the mean colour of a normalised image), as the RotNet ablation's 8-way variant must.
    """
    if 360 % rotations or (360 // rotations) % 45:
        raise ValueError(f"rotations must be 2, 4 or 8 (steps of a multiple of 45 degrees), got {rotations}")
    degrees = k * 360 // rotations
    if degrees % 90 == 0:
        return torch.rot90(x, degrees // 90, dims=(-2, -1))
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps output coordinates to input ones: the inverse rotation, in (x, y) order with y down
    mat = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(mat.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def all_rotations(x: Tensor, *, rotations: int = 4) -> tuple[Tensor, Tensor]:
    """Every rotation of every image: images (B*R, C, H, W) with image i's copies at rows i*R..i*R+R-1, labels
    (B*R,) = [0, 1, ..., R-1] per image, as RotNet's loader stacks them."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    b = x.shape[0]
    rotated = torch.stack([rotate(x, k, rotations=rotations) for k in range(rotations)], dim=1)  # (B, R, C, H, W)
    labels = torch.arange(rotations, device=x.device).repeat(b)  # (B*R,)
    return rotated.flatten(0, 1), labels  # (B, R, C, H, W) -> (B*R, C, H, W)


# -- jigsaw -----------------------------------------------------------------------------------------------------

def min_hamming(perms: np.ndarray) -> int:
    """The smallest Hamming distance between two rows of a permutation set (n, T)."""
    dist = (perms[:, None, :] != perms[None, :, :]).sum(-1)  # (n, n)
    np.fill_diagonal(dist, perms.shape[1] + 1)
    return int(dist.min())


def _select(n: int, tiles: int) -> np.ndarray:
    """Greedy farthest-point selection over all tiles! permutations, deterministic.

    Starts from the identity; each step adds the permutation whose smallest distance to the chosen set is largest,
    ties broken by the largest summed distance (the average-distance criterion of `select_permutations.py`), then
    by lexicographic order. The max-min criterion is what makes the minimal distance a guarantee.
    """
    every = np.array(list(permutations(range(tiles))), dtype=np.int8)  # (tiles!, tiles), lexicographic
    if n > len(every):
        raise ValueError(f"only {len(every)} permutations of {tiles} tiles exist, asked for {n}")
    columns = np.ascontiguousarray(every.T)  # (tiles, tiles!): one contiguous row per position, fast to compare

    def distance(j: int) -> np.ndarray:  # (tiles!,) Hamming distance of every permutation to permutation j
        return sum((columns[t] != every[j, t]).astype(np.int32) for t in range(tiles))

    chosen = [0]
    nearest = distance(0)  # (tiles!,) distance to the nearest chosen permutation
    total = nearest.astype(np.int64)
    for _ in range(n - 1):
        score = nearest.astype(np.int64) * (tiles * n + 1) + total  # lexicographic (min distance, summed distance)
        j = int(score.argmax())
        chosen.append(j)
        dist = distance(j)
        np.minimum(nearest, dist, out=nearest)
        total += dist
    return every[chosen].astype(np.int64)


def hamming_permutations(n: int = 100, *, tiles: int = 9, cache_dir: str | Path | None = None) -> np.ndarray:
    """The jigsaw permutation set (n, tiles): row j lists which tile goes to each position for class j.

    Computed once and cached as `.npy` under `cache_dir` (default `$MMSSL_CACHE` or ~/.cache/mmssl) because the
    1000-permutation set takes a few seconds; the result is a pure function of (n, tiles).
    """
    root = Path(cache_dir or os.environ.get("MMSSL_CACHE") or Path.home() / ".cache" / "mmssl") / "jigsaw"
    path = root / f"hamming_{tiles}tiles_{n}.npy"
    if path.exists():
        perms = np.load(path)
        if perms.shape == (n, tiles):
            return perms
    perms = _select(n, tiles)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, perms)
        os.replace(tmp, path)  # atomic: concurrent ranks never read half a file
    except OSError:
        pass  # a read-only home still trains; the set is recomputed next time
    return perms


def jigsaw_draws(rngs: Sequence[np.random.Generator], *, tiles: int, channels: int, slack: int,
                 num_permutations: int, grey: float = 0.3, channel_jitter: int = 2) -> dict[str, Tensor]:
    """One puzzle's random draws per generator, in a fixed order (so a sample's puzzle is a function of its rng).

    Args:
        rngs: one generator per image (`sample_rngs`).
        tiles: tiles per puzzle (9).
        channels: image channels.
        slack: cell side minus crop side: each tile's offset in its cell is uniform in [0, slack].
        num_permutations: size of the permutation set; the label is uniform over it.
        grey: chance of turning the whole image grey (0.3 in the paper).
        channel_jitter: largest shift (px, per axis) of each colour channel of each tile of a colour image (2).

    Returns:
        `offsets` (B, T, 2), `labels` (B,), `grey` (B,) bool and `shifts` (B, T, C, 2), zero for grey images
        (shifting identical channels would paint colour fringes on them).
    """
    offsets, labels, greys, shifts = [], [], [], []
    for rng in rngs:
        offsets.append(rng.integers(0, slack + 1, (tiles, 2)))
        labels.append(rng.integers(0, num_permutations))
        greys.append(rng.random() < grey)
        shift = rng.integers(-channel_jitter, channel_jitter + 1, (tiles, channels, 2))
        shifts.append(shift * (not greys[-1]))
    return {"offsets": torch.from_numpy(np.stack(offsets)), "labels": torch.from_numpy(np.array(labels)),
            "grey": torch.from_numpy(np.array(greys, dtype=bool)), "shifts": torch.from_numpy(np.stack(shifts))}


def to_grey(x: Tensor, which: Tensor) -> Tensor:
    """RGB images (B, 3, H, W) in [0, 1] with the rows where `which` (B,) is True replaced by their luma."""
    luma = torch.einsum("bchw,c->bhw", x, torch.tensor(LUMA, dtype=x.dtype, device=x.device))  # (B, H, W)
    return torch.where(which.to(x.device).reshape(-1, 1, 1, 1), luma[:, None].expand_as(x), x)


def jigsaw_tiles(x: Tensor, offsets: Tensor, *, grid: int = 3, crop: int, size: int | None = None,
                 shifts: Tensor | None = None) -> Tensor:
    """Cuts a `grid` x `grid` puzzle from each image: tiles (B, grid*grid, C, size, size) in row-major order.

    Args:
        x: images (B, C, S, S), S a multiple of `grid` (225 -> cells of 75).
        offsets: (B, grid*grid, 2) top-left (y, x) of each tile's crop inside its cell, in [0, cell - crop].
        crop: the crop side inside a cell (64 for 75 px cells); cell - crop is the gap and the jitter range.
        size: side the crops are resized to (the cell side by default, as the reference does); `crop` keeps them.
        shifts: (B, grid*grid, C, 2) extra (y, x) shift of each channel's crop (the chromatic-aberration jitter);
            pixels it would take from outside the image repeat the edge.
    """
    b, c, h, w = x.shape
    cell = h // grid
    if h != w or h % grid:
        raise ValueError(f"jigsaw needs square images whose side is a multiple of {grid}, got {(h, w)}")
    if crop > cell:
        raise ValueError(f"tile crop {crop} is larger than the cell {cell}")
    t = grid * grid
    offsets = offsets.to(x.device)
    if shifts is None:
        shifts = torch.zeros(b, t, c, 2, dtype=torch.long, device=x.device)
    cells = torch.arange(t, device=x.device)
    corner = torch.stack([cells // grid * cell, cells % grid * cell], -1)[None] + offsets  # (B, T, 2)
    corner = corner[:, :, None] + shifts.to(x.device)  # (B, T, C, 2): each channel's own crop
    span = torch.arange(crop, device=x.device)
    rows = (corner[..., 0, None] + span).clamp(0, h - 1)[..., :, None]  # (B, T, C, crop, 1)
    cols = (corner[..., 1, None] + span).clamp(0, w - 1)[..., None, :]  # (B, T, C, 1, crop)
    batch = torch.arange(b, device=x.device).reshape(b, 1, 1, 1, 1)
    chan = torch.arange(c, device=x.device).reshape(1, 1, c, 1, 1)
    tiles = x[batch, chan, rows, cols].flatten(0, 1)  # gathered (B, T, C, crop, crop) -> (B*T, C, crop, crop)
    size = size or cell
    if size != crop:
        tiles = F.interpolate(tiles.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return tiles.reshape(b, t, c, size, size)  # (B*T, C, s, s) -> (B, T, C, s, s)


def normalize_tiles(tiles: Tensor, eps: float = 1e-5) -> Tensor:
    """Standardises each tile's channels on their own (B, T, C, s, s), so no tile's brightness or contrast tells
    its neighbours apart (the reference normalises each tile with its own mean and std)."""
    mean = tiles.mean((-2, -1), keepdim=True)
    std = tiles.std((-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


# -- relative position ------------------------------------------------------------------------------------------

def patch_pair_boxes(rngs: Sequence[np.random.Generator], *, image: int, patch: int, gap: int, jitter: int,
                     device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Draws a centre/neighbour pair per generator (one per image) on Doersch's 3x3 layout.

    The layout (slots `patch` apart plus `gap`) is placed uniformly where it fits with its jitter, the neighbour
    slot is one of `NEIGHBOURS`, and each patch moves by its own uniform jitter in [-jitter, jitter] per axis.

    Returns the top-left (y, x) corners of the centre patches (B, 2) and neighbour patches (B, 2), and the labels
    (B,) (index into `NEIGHBOURS`).
    """
    stride = patch + gap
    extent = 3 * patch + 2 * gap + 2 * jitter
    if extent > image:
        raise ValueError(f"a 3x3 layout of {patch} px patches with gap {gap} and jitter {jitter} needs {extent} px, "
                         f"the image has {image}")
    draws = np.array([np.concatenate([rng.integers(0, image - extent + 1, 2), rng.integers(0, len(NEIGHBOURS), 1),
                                      rng.integers(-jitter, jitter + 1, 4)]) for rng in rngs])  # (B, 7)
    draws = torch.from_numpy(draws).to(device)
    origin = draws[:, :2] + jitter  # (B, 2): top-left of the un-jittered top-left slot
    labels = draws[:, 2]
    steps = torch.tensor(NEIGHBOURS, device=device)[labels]  # (B, 2)
    centre = origin + stride + draws[:, 3:5]
    neighbour = origin + (1 + steps) * stride + draws[:, 5:7]
    return centre, neighbour, labels


def cut_patches(x: Tensor, corners: Tensor, size: int) -> Tensor:
    """The square patches (B, C, size, size) of x (B, C, H, W) whose top-left (y, x) corners are `corners` (B, 2)."""
    span = torch.arange(size, device=x.device)
    rows = (corners[:, 0, None] + span)[:, :, None]  # (B, size, 1)
    cols = (corners[:, 1, None] + span)[:, None, :]  # (B, 1, size)
    batch = torch.arange(x.shape[0], device=x.device).reshape(-1, 1, 1)
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, s, s, C) -> (B, C, s, s)


def project_colour(x: Tensor) -> Tensor:
    """Removes the green-magenta component of RGB patches (B, 3, h, w): Doersch's projection, which takes away the
    colour fringe chromatic aberration leaves towards the image border."""
    axis = torch.tensor([-1.0, 2.0, -1.0], dtype=x.dtype, device=x.device) / math.sqrt(6.0)
    along = torch.einsum("bchw,c->bhw", x, axis)  # (B, h, w) projection on the green-magenta axis
    return x - along[:, None] * axis.reshape(1, 3, 1, 1)


def drop_colour(x: Tensor, keep: Tensor, noise: Tensor, *, scale: float = 0.01) -> Tensor:
    """Doersch's colour dropping: keeps channel `keep` (B,) of each patch (B, C, h, w) and replaces the others by
    the unit Gaussian draws `noise` (B, C, h, w) times `scale` times the kept channel's standard deviation."""
    b, c = x.shape[:2]
    keep = keep.to(x.device)
    kept = x[torch.arange(b, device=x.device), keep]  # (B, h, w)
    std = kept.flatten(1).std(1).reshape(b, 1, 1, 1)
    fill = noise.to(x) * scale * std
    on = F.one_hot(keep, c).to(torch.bool).reshape(b, c, 1, 1)
    return torch.where(on, x, fill)
