"""Synthetic videos for colorization-based tracking: objects of constant colour moving over a coloured backdrop.

Tracking emerges from colourisation only where colour is temporally stable and not guessable from gray: so each
frame is built in Lab, its lightness L from gray textures (what the tracker sees) and its chroma ab from colours
that belong to an object or to a place of the backdrop (what it must copy). An object's colour is drawn
independently of its texture, so the only way to colour a target pixel is to find where it was in a reference
frame. Objects move 2-4 px a frame and bounce off the borders; the backdrop pans slowly, so copying the colour at
the same position is wrong for the objects and slightly wrong for the background. Masks are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmssl.color import lab_to_rgb
from recipes.synthetic import davis_palette

__all__ = ["colour_video", "colour_videos", "write_colour_davis"]


def _stripes(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A high-contrast stripe (or checker) pattern in [0, 1] of random orientation and period over (y, x)."""
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 9)
    u = (x * np.cos(angle) + y * np.sin(angle)) / period
    if rng.random() < 0.5:
        return 0.5 + 0.5 * np.sin(2 * np.pi * u)
    v = (-x * np.sin(angle) + y * np.cos(angle)) / period
    return 0.5 + 0.5 * np.sign(np.sin(np.pi * u) * np.sin(np.pi * v))  # a checkerboard


def _smooth(rng: np.random.Generator, h: int, w: int, *, cells: int = 4) -> np.ndarray:
    """A smooth random field (h, w) in [0, 1]: bicubic upsampling of a cells x cells grid."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)) / 255.0


def colour_video(seed: int, *, frames: int = 16, size: int = 64, objects: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and instance masks (T, H, W) uint8 (0 = background, 1..K objects)."""
    rng = np.random.default_rng(seed)
    margin = frames + 1  # the backdrop is larger than the frame: the camera pans over it at <= 1 px a frame
    big = size + 2 * margin
    back_l = 40 + 25 * _smooth(rng, big, big, cells=6)  # mid-gray blotches, no stripes: unlike any object
    back_ab = np.stack([60 * (_smooth(rng, big, big) - 0.5), 60 * (_smooth(rng, big, big) - 0.5)])  # (2, big, big)
    pan = rng.uniform(-1, 1, 2)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    obs = []
    for _ in range(objects):
        radius = rng.uniform(0.15, 0.22) * size
        hue = rng.uniform(0, 2 * np.pi)  # a saturated colour, drawn independently of the texture below
        obs.append({"pos": rng.uniform(radius, size - radius, 2), "r": radius, "square": rng.random() < 0.5,
                    "vel": rng.choice([-1, 1], 2) * rng.uniform(2, 4, 2),
                    "ab": 70 * np.array([np.cos(hue), np.sin(hue)]), "light": rng.uniform(35, 75),
                    "tex": _stripes(rng, y, x)})
    lab = np.zeros((frames, 3, size, size))
    masks = np.zeros((frames, size, size), np.uint8)
    for t in range(frames):
        oy, ox = np.clip(np.round(margin + pan * t), 0, 2 * margin).astype(int)
        lab[t, 0] = back_l[oy:oy + size, ox:ox + size]
        lab[t, 1:] = back_ab[:, oy:oy + size, ox:ox + size]
        for k, ob in enumerate(obs, start=1):  # later objects are in front: occlusion
            dy, dx = (y - ob["pos"][0]) / ob["r"], (x - ob["pos"][1]) / ob["r"]
            inside = np.maximum(abs(dy), abs(dx)) < 1 if ob["square"] else dy ** 2 + dx ** 2 < 1
            # the texture moves with the object: read it in object coordinates
            ty = np.clip(np.round(y - ob["pos"][0] + size // 2).astype(int), 0, size - 1)
            tx = np.clip(np.round(x - ob["pos"][1] + size // 2).astype(int), 0, size - 1)
            lab[t, 0][inside] = ob["light"] + 25 * (ob["tex"][ty, tx][inside] - 0.5)
            lab[t, 1][inside], lab[t, 2][inside] = ob["ab"]
            masks[t][inside] = k
            ob["pos"] = ob["pos"] + ob["vel"]
            for a in range(2):  # bounce off the borders
                if not ob["r"] <= ob["pos"][a] <= size - ob["r"]:
                    ob["vel"][a] *= -1
    rgb = lab_to_rgb(torch.from_numpy(lab).float()).clamp(0, 1)  # (T, 3, H, W)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8), masks


def colour_videos(count: int, *, seed: int = 0, **kwargs) -> np.ndarray:
    """`count` videos (V, T, H, W, 3) uint8 of seeds seed, seed + 1, ..."""
    return np.stack([colour_video(seed + i, **kwargs)[0] for i in range(count)])


def write_colour_davis(root: Path, count: int, *, seed: int, **kwargs) -> Path:
    """`count` sequences in the DAVIS-2017 layout under `root` (JPEG frames, palette PNG masks, val.txt)."""
    names = []
    for i in range(count):
        frames, masks = colour_video(seed + i, **kwargs)
        name = f"colour{i:03d}"
        names.append(name)
        img_dir, ann_dir = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for t, (f, m) in enumerate(zip(frames, masks)):
            Image.fromarray(f).save(img_dir / f"{t:05d}.jpg", quality=95)
            png = Image.fromarray(m, mode="P")
            png.putpalette(davis_palette())
            png.save(ann_dir / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return root
