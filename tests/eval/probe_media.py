"""Small labelled media and checkpoints for the probe tests: colour-class images, pitch-class tones, class-folder
videos, and a shipped config's method built (not trained) and saved as a pretraining checkpoint would be."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

from media import make_audio, make_video  # noqa: E402

from mmssl.config import instantiate, load_config  # noqa: E402
from pipelines.sharding.tool import ShardOptions, run_sharding  # noqa: E402

__all__ = ["CONFIGS", "COLOURS", "colour_shards", "tone_shards", "video_shards", "save_method"]

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 40, 200)}


def colour_shards(root: Path, per_class: int, *, seed: int, noise: float = 30.0) -> Path:
    """JPEGs (40 x 48) whose class is their colour, under noise: any encoder, and raw pixels, separate them."""
    rng = np.random.default_rng(seed)
    for label, colour in COLOURS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(np.array(colour) + rng.normal(0, noise, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"{i}.jpg")
    run_sharding(root, root / "shards", ShardOptions(samples_per_shard=8), progress=False)
    return root / "shards"


def tone_shards(root: Path, per_class: int, *, seconds: float = 0.5, first: int = 0) -> Path:
    """FLAC tones whose class is their pitch band (low ~250 Hz, high ~1500 Hz), detuned per file."""
    for label, base in (("low", 250.0), ("high", 1500.0)):
        (root / label).mkdir(parents=True)
        for i in range(first, first + per_class):
            make_audio(root / label / f"{i}.flac", seconds=seconds, freq=base * (1 + 0.03 * i))
    run_sharding(root, root / "shards", ShardOptions(modality="audio", samples_per_shard=4), progress=False)
    return root / "shards"


def video_shards(root: Path, per_class: int) -> Path:
    """Short 64 x 48 H.264 clips in two class folders (the clips alike: for running the probes, not scoring)."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            make_video(root / label / f"{i}.mp4", frames=16, width=64, height=48)
    run_sharding(root, root / "shards", ShardOptions(modality="video", samples_per_shard=2), progress=False)
    return root / "shards"


def save_method(name: str, path: Path, overrides: list[str] | tuple[str, ...] = (), *, seed: int = 0) -> Path:
    """Builds the method of `recipes/configs/<name>.yaml` (seeded, untrained) and saves it as `recipes.pretrain`
    saves a checkpoint: the resolved config and the method's state dict."""
    cfg = load_config(CONFIGS / f"{name}.yaml", list(overrides))
    torch.manual_seed(seed)
    method = instantiate(cfg["method"], where="method")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg, "model": method.state_dict()}, path)
    return path
