"""Runs a shipped config for a couple of steps through `recipes.pretrain.pretrain` on tiny shards made here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

import torch  # noqa: E402
from media import make_image, make_video  # noqa: E402

from mmssl.config import load_config  # noqa: E402
from pipelines.sharding.tool import ShardOptions, run_sharding  # noqa: E402
from recipes.pretrain import pretrain  # noqa: E402

__all__ = ["CONFIGS", "image_shards", "video_shards", "two_steps"]

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


def image_shards(root: Path, *, count: int = 12) -> Path:
    """`count` 72 x 64 JPEGs in 3 shards."""
    src = root / "images"
    src.mkdir(parents=True)
    for i in range(count):
        make_image(src / f"{i:02d}.jpg", width=72, height=64, seed=i)
    run_sharding(src, root / "image_shards", ShardOptions(samples_per_shard=4), progress=False)
    return root / "image_shards"


def video_shards(root: Path, *, count: int = 4) -> Path:
    """`count` short 64 x 48 H.264 clips in 2 shards."""
    src = root / "videos"
    src.mkdir(parents=True)
    for i in range(count):
        make_video(src / f"v{i}.mp4", frames=24, width=64, height=48)
    run_sharding(src, root / "video_shards", ShardOptions(modality="video", samples_per_shard=2), progress=False)
    return root / "video_shards"


def two_steps(name: str, shards: Path, out_dir: Path, *, batch_size: int = 4, steps: int = 2) -> dict:
    """Loads `recipes/configs/<name>.yaml`, points it at `shards` and trains `steps` steps on the CPU."""
    cfg = load_config(CONFIGS / f"{name}.yaml", [
        f"data.train.source={shards}", f"data.train.batch_size={batch_size}", "data.train.num_workers=0",
        "data.train.shuffle_window=4"])
    cfg["train"] = {"steps": steps, "log_every": 1, "ckpt_every": 0, "figure_every": -1, "out_dir": str(out_dir),
                    "progress": False, "tensorboard": False, "device": "cpu", "name": name.replace("/", "_")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds contention on a shared machine
    try:
        return pretrain(cfg)
    finally:
        torch.set_num_threads(threads)
