"""Synthetic upright objects for the pretext-task learning tests (rotation, jigsaw, relative position).

The synthetic shapes of `synthetic.py` are symmetric under 90° turns and sit on flat ground, so neither a rotation
nor a tile's place could be told from them. Here each image holds one large object of a class with a canonical
"up" (a T, an upward triangle, an L, a dome), roughly centred, in random colours on a background lit from above
(lighter at the top, as in photos) with a vignette. The class is what a probe must recover; colours, size and
position are nuisances. Drawn with torch from a seeded generator, so the data is deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NUM_CLASSES", "upright_objects"]

NUM_CLASSES = 4  # T, triangle, L, dome


def upright_objects(n: int, *, size: int = 48, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images (n, 3, size, size) in [0, 1] and labels (n,)."""
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    radius = size * (0.3 + 0.08 * torch.rand(n, 1, 1, generator=generator))
    centre = size / 2 + size * 0.08 * (2 * torch.rand(n, 2, 1, 1, generator=generator) - 1)
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    v = (coords.reshape(1, -1, 1) - centre[:, 0]) / radius  # (n, S, 1): down is positive
    u = (coords.reshape(1, 1, -1) - centre[:, 1]) / radius  # (n, 1, S)
    inside = torch.stack([
        ((u.abs() < 1) & (v > -1) & (v < -0.5)) | ((u.abs() < 0.25) & (v.abs() < 1)),  # T
        (v < 1) & (u.abs() < (v + 1) / 2),  # triangle pointing up
        ((u > -1) & (u < -0.45) & (v.abs() < 1)) | ((u.abs() < 1) & (v > 0.45) & (v < 1)),  # L
        (u ** 2 + v ** 2 < 1) & (v < 0.35),  # dome, flat side down
    ], dim=1).float()  # (n, 4, S, S)
    mask = inside.gather(1, labels.reshape(-1, 1, 1, 1).expand(-1, 1, size, size))  # (n, 1, S, S)
    fg = 0.15 + 0.7 * torch.rand(n, 3, 1, 1, generator=generator)
    bg = 0.15 + 0.7 * torch.rand(n, 3, 1, 1, generator=generator)
    ramp = torch.linspace(0.25, -0.25, size).reshape(1, 1, -1, 1)  # light from above
    r2 = ((coords - size / 2) ** 2).reshape(1, 1, -1, 1) + ((coords - size / 2) ** 2).reshape(1, 1, 1, -1)
    vignette = -0.25 * r2 / (size / 2) ** 2  # darker towards the corners
    background = bg + ramp + vignette
    noise = 0.03 * torch.randn(n, 3, size, size, generator=generator)
    return (background + (fg - background) * mask + noise).clamp(0, 1), labels
