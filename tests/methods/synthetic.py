"""Structured synthetic data for the masked-modeling learning tests: shapes, moving shapes, tones, RGB-D scenes.

Everything is drawn with torch from a seeded generator, so tests are deterministic. Each sample has a class
label (the shape, or the tone pattern) that a k-NN probe can recover only from structure: colours, positions,
sizes and onsets are random nuisances.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NUM_SHAPES", "shape_masks", "shapes", "textures", "moving_shapes", "moving_textures", "tone_spectrograms", "scenes"]

NUM_SHAPES = 4  # square, disk, ring, cross


def shape_masks(labels: Tensor, centres: Tensor, radii: Tensor, size: int) -> Tensor:
    """Soft-edged masks (n, size, size) in [0, 1] of the shapes `labels` (n,) at `centres` (n, 2), `radii` (n,)."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y = coords.reshape(1, -1, 1) - centres[:, 0].reshape(-1, 1, 1)  # (n, S, 1)
    x = coords.reshape(1, 1, -1) - centres[:, 1].reshape(-1, 1, 1)  # (n, 1, S)
    r = radii.reshape(-1, 1, 1)
    # signed distance-like values: > 0 inside the shape
    square = r - torch.maximum(y.abs(), x.abs())
    disk = r - (y ** 2 + x ** 2).sqrt()
    ring = 0.3 * r - (disk - 0.5 * r).abs()
    cross = torch.maximum(0.35 * r - y.abs(), 0.35 * r - x.abs()).minimum(square)
    inside = torch.stack([square, disk, ring, cross], dim=1)  # (n, 4, S, S)
    chosen = inside.gather(1, labels.reshape(-1, 1, 1, 1).expand(-1, 1, size, size))[:, 0]  # (n, S, S)
    return chosen.clamp(-0.5, 0.5) + 0.5


def _colours(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Foreground and background colours (n, 3, 1, 1) that differ enough for the shape to show."""
    fg = torch.rand(n, 3, generator=generator) * 0.5 + 0.5
    bg = torch.rand(n, 3, generator=generator) * 0.4
    flip = torch.rand(n, 1, generator=generator) < 0.5  # dark shapes on light ground half of the time
    fg, bg = torch.where(flip, bg, fg), torch.where(flip, fg, bg)
    return fg.reshape(n, 3, 1, 1), bg.reshape(n, 3, 1, 1)


def _colour_fields(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Foreground and background colours (n, 3, size, size) that drift smoothly across the image.

    Each channel is a sinusoid along one random direction with a period of 1-1.5 image widths and its own phase,
    so the hue turns through most of the colour wheel across an image: two crops of one image get different
    colours, as two views of a natural scene can. The background takes the complementary colour.
    """
    coords = torch.arange(size, dtype=torch.float32)
    y, x = coords.reshape(1, -1, 1), coords.reshape(1, 1, -1)
    angle = 2 * torch.pi * torch.rand(n, 1, 1, generator=generator)
    period = size * (1.0 + 0.5 * torch.rand(n, 1, 1, generator=generator))
    along = (angle.cos() * y + angle.sin() * x) / period  # (n, S, S) position along the drift, in periods
    phase = 2 * torch.pi * torch.rand(n, 3, 1, 1, generator=generator)
    field = 0.5 + 0.5 * torch.sin(2 * torch.pi * along.unsqueeze(1) + phase)  # (n, 3, S, S) in [0, 1]
    fg, bg = 0.5 + 0.5 * field, 0.4 * (1 - field)
    flip = torch.rand(n, 1, 1, 1, generator=generator) < 0.5  # dark patterns on light ground half of the time
    return torch.where(flip, bg, fg), torch.where(flip, fg, bg)


def shapes(n: int, *, size: int = 32, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Images (n, 3, size, size) in [0, 1] of one shape of random class, place, size and colours; labels (n,)."""
    labels = torch.randint(0, NUM_SHAPES, (n,), generator=generator)
    radii = size * (0.2 + 0.12 * torch.rand(n, generator=generator))
    centres = radii.reshape(-1, 1) + torch.rand(n, 2, generator=generator) * (size - 2 * radii.reshape(-1, 1))
    mask = shape_masks(labels, centres, radii, size).unsqueeze(1)  # (n, 1, S, S)
    fg, bg = _colours(n, generator)
    noise = 0.03 * torch.randn(n, 3, size, size, generator=generator)
    return (bg + (fg - bg) * mask + noise).clamp(0, 1), labels


def textures(n: int, *, size: int = 32, colour_field: bool = False,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two-colour textures (n, 3, size, size) in [0, 1]; labels (n,) = pattern.

    Class 0: horizontal stripes; 1: vertical stripes; 2: diagonal stripes; 3: a checkerboard. Period, phase and
    colours are random, so only the pattern's structure tells the classes apart. By default each image has one
    foreground and one background colour; with `colour_field` the colours drift across the image (see
    `_colour_fields`), so the colour is not a factor that two crops of an image share.
    """
    labels = torch.randint(0, 4, (n,), generator=generator)
    coords = torch.arange(size, dtype=torch.float32)
    y, x = coords.reshape(1, -1, 1), coords.reshape(1, 1, -1)
    period = (6 + 6 * torch.rand(n, 1, 1, generator=generator))
    phase = torch.rand(n, 2, 1, 1, generator=generator) * period.unsqueeze(1)
    wave_y = torch.sin(2 * torch.pi * (y + phase[:, 0]) / period)  # (n, S, 1)
    wave_x = torch.sin(2 * torch.pi * (x + phase[:, 1]) / period)  # (n, 1, S)
    wave_d = torch.sin(2 * torch.pi * (x + y + phase[:, 0]) / (1.4 * period))  # (n, S, S)
    patterns = torch.stack([wave_y.expand(-1, size, size), wave_x.expand(-1, size, size), wave_d,
                            wave_y * wave_x * 2], dim=1)  # (n, 4, S, S)
    chosen = patterns.gather(1, labels.reshape(-1, 1, 1, 1).expand(-1, 1, size, size))  # (n, 1, S, S)
    mix = (chosen * 3).clamp(-1, 1) * 0.5 + 0.5  # soft two-level pattern
    fg, bg = _colour_fields(n, size, generator) if colour_field else _colours(n, generator)
    noise = 0.03 * torch.randn(n, 3, size, size, generator=generator)
    return (bg + (fg - bg) * mix + noise).clamp(0, 1), labels


def moving_shapes(n: int, *, frames: int = 8, size: int = 32, speed: float = 2.0,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Clips (n, 3, T, size, size) of one shape moving in a straight line at `speed` px/frame; labels = shape.

    The direction is random, and the path is placed so the shape stays inside the frame.
    """
    labels = torch.randint(0, NUM_SHAPES, (n,), generator=generator)
    radii = size * (0.18 + 0.08 * torch.rand(n, generator=generator))
    angle = 2 * torch.pi * torch.rand(n, generator=generator)
    velocity = speed * torch.stack([angle.sin(), angle.cos()], dim=1)  # (n, 2) px per frame
    travel = velocity * (frames - 1)
    low = radii.reshape(-1, 1) - travel.clamp(max=0)
    high = size - radii.reshape(-1, 1) - travel.clamp(min=0)
    start = low + torch.rand(n, 2, generator=generator) * (high - low).clamp(min=0)
    fg, bg = _colours(n, generator)
    clip = []
    for t in range(frames):
        mask = shape_masks(labels, start + t * velocity, radii, size).unsqueeze(1)  # (n, 1, S, S)
        clip.append(bg + (fg - bg) * mask)
    video = torch.stack(clip, dim=2)  # (n, 3, T, S, S)
    video = video + 0.02 * torch.randn(video.shape, generator=generator)
    return video.clamp(0, 1), labels


def moving_textures(n: int, *, frames: int = 4, size: int = 32, speed: int = 2,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Clips (n, 3, T, size, size) of a texture (see `textures`) sliding past the camera; labels = pattern.

    Each clip moves by `speed` pixels per frame in one of 8 random directions, so frames differ by motion only.
    """
    margin = speed * (frames - 1)
    big, labels = textures(n, size=size + 2 * margin, generator=generator)  # (n, 3, S+2m, S+2m)
    step = torch.randint(-1, 2, (n, 2), generator=generator)  # direction per axis in {-1, 0, 1}
    still = (step == 0).all(1)
    step[still, 1] = 1  # every clip moves
    clip = []
    for t in range(frames):
        top = margin + step[:, 0] * speed * t
        left = margin + step[:, 1] * speed * t
        clip.append(torch.stack([big[i, :, top[i]:top[i] + size, left[i]:left[i] + size] for i in range(n)]))
    return torch.stack(clip, dim=2), labels  # (n, 3, T, S, S)


def tone_spectrograms(n: int, *, time: int = 64, freq: int = 32,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Log-mel-like spectrograms (n, 1, time, freq) of harmonic tones; labels (n,) = pattern class.

    Class 0: a steady harmonic stack; 1: a rising chirp; 2: a falling chirp; 3: short repeated beeps. Pitch,
    onset, loudness and the noise floor are random.
    """
    labels = torch.randint(0, 4, (n,), generator=generator)
    t = torch.arange(time, dtype=torch.float32).reshape(1, -1, 1)  # (1, T, 1)
    f = torch.arange(freq, dtype=torch.float32).reshape(1, 1, -1)  # (1, 1, F)
    onset = torch.rand(n, 1, 1, generator=generator) * time * 0.25
    low = 2 + 4 * torch.rand(n, 1, 1, generator=generator)  # starting pitch in mel bins
    rate = torch.tensor([0.0, 1.0, -1.0, 0.0])[labels].reshape(-1, 1, 1) * 0.3 * freq / time  # bins per frame
    start = torch.where((labels == 2).reshape(-1, 1, 1), low + 0.3 * freq, low)  # falling chirps start high
    pitch = (start + rate * (t - onset).clamp(min=0)).clamp(1, freq)  # (n, T, 1)
    gate = (t >= onset).float()
    beeps = ((t - onset) % 12 < 5).float()
    gate = torch.where((labels == 3).reshape(-1, 1, 1), gate * beeps, gate)  # (n, T, 1)
    energy = torch.zeros(n, time, freq)
    for harmonic in (1.0, 2.0, 3.0):
        energy = energy + (-((f - harmonic * pitch) ** 2) / 1.5).exp() / harmonic
    loud = 0.7 + 0.6 * torch.rand(n, 1, 1, generator=generator)
    spec = loud * gate * energy + 0.05 * torch.rand(n, time, freq, generator=generator)
    return (spec + 1e-2).log().unsqueeze(1), labels  # (n, 1, T, F), log energy like an fbank


def scenes(n: int, *, size: int = 32, stride: int = 4,
           generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RGB-D scenes with a semantic map: a textured disk (see `textures`) in front of a tilted background plane.

    Returns rgb (n, 3, S, S) in [0, 1], depth (n, 1, S, S) (the disk is nearer the bigger it is), semantic ids
    (n, S/stride, S/stride) (0 background, 1 + texture class), and labels (n,) the texture class.
    """
    tex, labels = textures(n, size=size, generator=generator)
    radii = size * (0.3 + 0.15 * torch.rand(n, generator=generator))
    centres = radii.reshape(-1, 1) + torch.rand(n, 2, generator=generator) * (size - 2 * radii.reshape(-1, 1))
    mask = shape_masks(torch.ones_like(labels), centres, radii, size)  # (n, S, S) disks
    bg = torch.rand(n, 3, 1, 1, generator=generator) * 0.5 + 0.25
    rgb = bg + (tex - bg) * mask.unsqueeze(1)
    ramp = torch.linspace(0, 1, size).reshape(1, -1, 1)  # background recedes towards the top
    tilt = 0.5 + torch.rand(n, 1, 1, generator=generator)
    far = 4.0 + tilt * (1 - ramp)  # (n, S, 1), broadcast over columns
    near = (3.0 - radii / size * 4).reshape(-1, 1, 1)
    depth = (far + (near - far) * mask).unsqueeze(1)  # (n, 1, S, S)
    coarse = mask[:, stride // 2::stride, stride // 2::stride] > 0.5  # (n, S/stride, S/stride) sampled at centres
    semseg = torch.where(coarse, labels.reshape(-1, 1, 1) + 1, torch.zeros_like(coarse, dtype=torch.long))
    return rgb.clamp(0, 1), depth, semseg, labels
