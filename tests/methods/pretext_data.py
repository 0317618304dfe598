"""Synthetic upright objects for the pretext-task learning tests (rotation, jigsaw, relative position, colour
prediction, inpainting).

The synthetic shapes of `synthetic.py` are symmetric under 90° turns and sit on flat ground, so neither a rotation
nor a tile's place could be told from them. Here each image holds one large object of a class with a canonical
"up" (a T, an upward triangle, an L, a dome), roughly centred, on a background lit from above (lighter at the top,
as in photos) with a vignette. The class is what a probe must recover; colours, size and position are nuisances.
Drawn with torch from a seeded generator, so the data is deterministic.

- `upright_objects`: random object and background colours (nothing but the shape tells the class).
- `coloured_objects`: for the colour-prediction methods, colour must follow from structure without giving the class
  away by itself. The ground is grey, lit from above (so its lightness follows its place, which the ab -> L
  direction of split-brain can learn); an object of class c takes hue c or hue c + 1 (mod 4) with equal chance, so
  its hue names two classes and only the shape tells which; its lightness is random (lighter or darker than the
  ground), so the lightness channel holds the shape and nothing else about the class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmssl.color import lab_to_rgb

__all__ = ["NUM_CLASSES", "HUES_AB", "upright_objects", "coloured_objects"]

NUM_CLASSES = 4  # T, triangle, L, dome
HUES_AB = torch.tensor([[60.0, 45.0], [-50.0, 50.0], [20.0, -60.0], [0.0, 75.0]])  # (a, b): red, green, blue, yellow


def _objects(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Labels (n,) and masks (n, 1, size, size) of one upright object each, roughly centred."""
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
    return labels, inside.gather(1, labels.reshape(-1, 1, 1, 1).expand(-1, 1, size, size))  # (n, 1, S, S)


def _lighting(size: int, strength: float) -> Tensor:
    """(1, 1, S, S): lighter at the top, darker towards the corners, `strength` at most either way."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    ramp = torch.linspace(strength, -strength, size).reshape(1, 1, -1, 1)  # light from above
    r2 = ((coords - size / 2) ** 2).reshape(1, 1, -1, 1) + ((coords - size / 2) ** 2).reshape(1, 1, 1, -1)
    return ramp - strength * r2 / (size / 2) ** 2


def upright_objects(n: int, *, size: int = 48, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images (n, 3, size, size) in [0, 1] in random colours and labels (n,)."""
    labels, mask = _objects(n, size, generator)
    fg = 0.15 + 0.7 * torch.rand(n, 3, 1, 1, generator=generator)
    bg = 0.15 + 0.7 * torch.rand(n, 3, 1, 1, generator=generator)
    background = bg + _lighting(size, 0.25)
    noise = 0.03 * torch.randn(n, 3, size, size, generator=generator)
    return (background + (fg - background) * mask + noise).clamp(0, 1), labels


def coloured_objects(n: int, *, size: int = 32, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images (n, 3, size, size) in [0, 1]: an object of hue c or c + 1 on grey ground; labels (n,) = c."""
    labels, mask = _objects(n, size, generator)
    hue = (labels + (torch.rand(n, generator=generator) < 0.5).long()) % NUM_CLASSES  # c or c + 1
    ground = 45 + 15 * torch.rand(n, 1, 1, 1, generator=generator)
    contrast = (20 + 15 * torch.rand(n, 1, 1, 1, generator=generator)) * torch.where(
        torch.rand(n, 1, 1, 1, generator=generator) < 0.5, -1.0, 1.0)
    light = ground + _lighting(size, 15.0)  # (n, 1, S, S) lightness of the ground
    lightness = torch.where(mask.bool(), (ground + contrast).clamp(15, 95), light)
    ab = mask * HUES_AB[hue].reshape(n, 2, 1, 1)  # (n, 2, S, S): grey ground, one hue on the object
    rgb = lab_to_rgb(torch.cat([lightness, ab], dim=1)).clamp(0, 1)
    return (rgb + 0.02 * torch.randn(n, 3, size, size, generator=generator)).clamp(0, 1), labels
