"""Runs a shipped config for a couple of steps through `recipes.pretrain.pretrain` on tiny shards made here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

import torch  # noqa: E402
from media import encode_png16, make_audio, make_image, make_video  # noqa: E402

from mmssl.config import load_config  # noqa: E402
from pipelines.sharding.tool import ShardOptions, run_sharding  # noqa: E402
from recipes.pretrain import pretrain  # noqa: E402

__all__ = ["CONFIGS", "image_shards", "video_shards", "av_shards", "audio_shards", "multimodal_shards", "two_steps"]

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


def av_shards(root: Path, *, count: int = 4) -> Path:
    """`count` short 64 x 48 H.264 clips with a mono 16 kHz AAC track, in 2 shards."""
    src = root / "av"
    src.mkdir(parents=True)
    for i in range(count):
        make_video(src / f"v{i}.mp4", frames=24, width=64, height=48, audio=True)
    run_sharding(src, root / "av_shards", ShardOptions(modality="video", samples_per_shard=2), progress=False)
    return root / "av_shards"


def audio_shards(root: Path, *, count: int = 6, seconds: float = 3.0) -> Path:
    """`count` FLAC tones of `seconds` (different pitches) in 2 shards."""
    src = root / "audio"
    src.mkdir(parents=True)
    for i in range(count):
        make_audio(src / f"t{i}.flac", seconds=seconds, freq=200 + 80 * i)
    run_sharding(src, root / "audio_shards", ShardOptions(modality="audio", samples_per_shard=count // 2),
                 progress=False)
    return root / "audio_shards"


def multimodal_shards(root: Path, *, count: int = 4, width: int = 72, height: int = 64) -> Path:
    """`count` samples of an RGB JPEG, a 16-bit depth PNG and an 8-bit semantic map (7 classes)."""
    import json

    import numpy as np
    from PIL import Image

    src = root / "multimodal"
    src.mkdir(parents=True)
    rows = []
    for i in range(count):
        make_image(src / f"rgb{i}.jpg", width=width, height=height, seed=i)
        (src / f"d{i}.png").write_bytes(encode_png16(np.full((height, width), 1000 * (i + 1), np.uint16)))
        classes = (np.arange(height * width).reshape(height, width) % 7).astype(np.uint8)  # (H*W,) -> (H, W)
        Image.fromarray(classes).save(src / f"s{i}.png")
        rows.append({"path": f"rgb{i}.jpg", "depth": f"d{i}.png", "semseg": f"s{i}.png"})
    (src / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    run_sharding(src / "m.jsonl", root / "multimodal_shards", ShardOptions(modality="multimodal"), progress=False)
    return root / "multimodal_shards"


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
