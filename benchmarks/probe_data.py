"""Labelled synthetic media for benchmarks/probe.py: a class that is structure, not colour or loudness.

Each modality has 4 classes whose cue is a structure a self-supervised encoder can learn and the raw-input baseline
reads poorly; everything else is drawn at random per sample, so it carries no label:
- images (64 x 64): the kind of a shape (disc, square, triangle, cross) at a random place, scale, turn and flat
  colour, over a random texture (recipes.synthetic's smooth field + stripes) with pixel noise;
- video (16 frames, 72 x 72, H.264): the direction (right, left, down, up) a textured shape moves in over a textured
  background, from a random start, at a random speed;
- audio (2.56 s, 16 kHz, WAV): the pitch contour of repeated 0.32 s notes (rising, falling, arch, valley) at a random
  base pitch, span, harmonic timbre, phase and noise level. The four contours visit the same pitches for the same
  time, so a clip's mean spectrum (the mean-MFCC baseline) does not tell them apart; only their order does.
An unlabelled pretraining split comes from the same generators with other seeds. `write_splits` shards all three
splits with `pipelines.sharding.tool.run_sharding` (class folders give the `.cls` labels).
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.sharding.tool import ShardOptions, run_sharding
from recipes.synthetic import _texture, _write_mp4

__all__ = ["Splits", "SplitSizes", "CLASSES", "image_sample", "video_sample", "audio_sample", "write_splits"]

CLASSES = {"image": ["disc", "square", "triangle", "cross"], "video": ["right", "left", "down", "up"],
           "audio": ["rising", "falling", "arch", "valley"]}
RATE = 16000
CLIP_SECONDS = 2.56  # Audio-MAE's tiny training window: its probe reads the whole clip, unpadded
NOTE_SECONDS = 0.32
SPLIT_SEEDS = {"pretrain": 1, "train": 2, "val": 3}  # disjoint streams: no val sample is a train sample


@dataclass(frozen=True)
class SplitSizes:
    """Samples per split (the labelled ones are split evenly over the 4 classes)."""

    pretrain: int
    train: int
    val: int


@dataclass(frozen=True)
class Splits:
    """Shard folders of one modality: unlabelled pretraining shards and labelled train / val shards."""

    pretrain: Path
    train: Path
    val: Path


def _rng(modality: str, split: str, index: int, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_SEEDS[split], list(CLASSES).index(modality), index])


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, radius: float,
                angle: float) -> np.ndarray:
    """Boolean mask of a shape of `kind` with circumradius-like `radius`, turned by `angle`."""
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * (xx - centre[1]) + sin * (yy - centre[0])) / radius  # shape coordinates, radius 1
    v = (-sin * (xx - centre[1]) + cos * (yy - centre[0])) / radius
    if kind == "disc":
        return u ** 2 + v ** 2 < 1
    if kind == "square":
        return np.maximum(abs(u), abs(v)) < 0.8  # about the disc's area, so size does not give it away
    if kind == "triangle":  # equilateral, inscribed in the unit circle: three half-planes
        normals = [(np.cos(a), np.sin(a)) for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3)]
        return np.all([nu * u + nv * v < 0.6 for nu, nv in normals], axis=0)
    return ((abs(u) < 0.33) & (abs(v) < 1)) | ((abs(v) < 0.33) & (abs(u) < 1))  # cross


def image_sample(label: int, rng: np.random.Generator, *, size: int = 64) -> np.ndarray:
    """An image (size, size, 3) uint8 of shape `CLASSES["image"][label]` at a random place, scale, turn, colour."""
    img = _texture(rng, size, size)
    radius = rng.uniform(0.15, 0.32) * size
    centre = rng.uniform(radius, size - radius, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = _shape_mask(CLASSES["image"][label], yy, xx, centre, radius, rng.uniform(0, 2 * np.pi))
    img[mask] = rng.random(3) * 0.8 + 0.1 * rng.random((int(mask.sum()), 1))  # a flat colour, slightly shaded
    img = img + rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def video_sample(label: int, rng: np.random.Generator, *, size: int = 72, frames: int = 16) -> np.ndarray:
    """Frames (frames, size, size, 3) uint8 of a textured shape moving in direction `CLASSES["video"][label]`."""
    background, texture = _texture(rng, size, size), _texture(rng, size, size)
    step = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)][label], float) * rng.uniform(1.5, 3.0)  # (dy, dx) per frame
    radius = rng.uniform(0.12, 0.2) * size
    travel = step * (frames - 1)
    low = np.maximum(radius, radius - travel)  # the whole path stays inside the frame
    high = np.minimum(size - radius, size - radius - travel)
    start = rng.uniform(low, np.maximum(high, low + 1e-3))
    kind = CLASSES["image"][int(rng.integers(4))]  # the shape is noise here: only the motion is the class
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.zeros((frames, size, size, 3), np.uint8)
    for t in range(frames):
        centre = start + step * t
        mask = _shape_mask(kind, yy, xx, centre, radius, 0.0)
        img = background.copy()
        ty = np.clip((yy - centre[0] + size // 2).astype(int), 0, size - 1)  # the texture moves with the shape
        tx = np.clip((xx - centre[1] + size // 2).astype(int), 0, size - 1)
        img[mask] = texture[ty[mask], tx[mask]]
        out[t] = (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)
    return out


def _contour(label: int, x: np.ndarray) -> np.ndarray:
    """Pitch in octaves above the note's base, 0..1, at note phase `x` in [0, 1): each visits 0..1 uniformly."""
    return [x, 1 - x, 1 - abs(2 * x - 1), abs(2 * x - 1)][label]


def audio_sample(label: int, rng: np.random.Generator, *, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """A waveform (seconds * 16000,) float32 in [-1, 1]: repeated notes of contour `CLASSES["audio"][label]`."""
    t = np.arange(int(seconds * RATE)) / RATE
    phase = (t / NOTE_SECONDS + rng.uniform(0, 1)) % 1.0
    base = np.exp(rng.uniform(np.log(150), np.log(450)))
    freq = base * 2 ** (rng.uniform(0.4, 0.8) * _contour(label, phase))
    cycles = 2 * np.pi * np.cumsum(freq) / RATE  # the integral of the frequency: no clicks where it changes
    tilt = rng.uniform(0.5, 2.0)  # harmonic k has amplitude k^-tilt: a random timbre
    tone = sum(k ** -tilt * np.sin(k * cycles + rng.uniform(0, 2 * np.pi)) for k in range(1, 7))
    envelope = np.sin(np.pi * phase) ** 0.5  # each note fades in and out
    wave_ = tone * envelope / np.abs(tone).max()
    wave_ = wave_ + rng.normal(0, 10 ** (-rng.uniform(10, 30) / 20), t.shape)  # noise 10-30 dB under the tone
    return (0.8 * wave_ / np.abs(wave_).max()).astype(np.float32)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((samples * 32767).astype("<i2").tobytes())


def _write(modality: str, path: Path, label: int, rng: np.random.Generator) -> None:
    if modality == "image":
        Image.fromarray(image_sample(label, rng)).save(path.with_suffix(".png"))
    elif modality == "video":
        _write_mp4(path.with_suffix(".mp4"), video_sample(label, rng))
    else:
        _write_wav(path.with_suffix(".wav"), audio_sample(label, rng))


def write_splits(root: Path, modality: str, sizes: SplitSizes, *, seed: int = 0) -> Splits:
    """Writes and shards the pretraining (unlabelled), train and val splits of `modality` under `root`.

    Args:
        root: an empty or missing folder; media go to root/media/<split>, shards to root/<split>.
        modality: "image", "video" or "audio".
        sizes: samples per split.
        seed: master seed; the same seed writes the same files.
    """
    root = Path(root)
    for split in ("pretrain", "train", "val"):
        media = root / "media" / split
        for i in range(getattr(sizes, split)):
            rng = _rng(modality, split, i, seed)
            label = i % len(CLASSES[modality])
            # the pretraining split has no class folders: its samples carry no label
            folder = media if split == "pretrain" else media / CLASSES[modality][label]
            folder.mkdir(parents=True, exist_ok=True)
            _write(modality, folder / f"{i:05d}", label if split != "pretrain" else int(rng.integers(4)), rng)
        per_shard = max(1, getattr(sizes, split) // 4)  # 4 shards: both loader workers get some
        run_sharding(media, root / split, ShardOptions(modality=modality, samples_per_shard=per_shard, seed=seed),
                     progress=False)
    return Splits(pretrain=root / "pretrain", train=root / "train", val=root / "val")
