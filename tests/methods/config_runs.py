"""Runs a shipped config for a couple of steps through `recipes.pretrain.pretrain` on tiny shards made here."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

import torch  # noqa: E402
from media import encode_png16, make_audio, make_image, make_video  # noqa: E402

from mmssl.config import load_config  # noqa: E402
from pipelines.sharding.tool import ShardOptions, run_sharding  # noqa: E402
from recipes.pretrain import pretrain  # noqa: E402

__all__ = ["CONFIGS", "FIRST_LOSS", "image_shards", "video_shards", "av_shards", "audio_shards", "multimodal_shards",
           "two_steps", "check_first_loss"]

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
                    "progress": False, "tensorboard": False, "device": "cpu", "name": name.replace("/", "_"),
                    "threads": 1}  # the recipe sets its own thread count: one, for losses that do not depend on cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds contention on a shared machine
    try:
        return pretrain(cfg)
    finally:
        torch.set_num_threads(threads)


# The first-step loss of every recipe smoke run (the key names the config; " --tiny" marks a paper config run with
# its tiny override), the seeded model init on the shards of its test, before any update. Measured on the CPU with
# one torch thread, twice in separate processes, the two runs equal bit for bit. 1e-5 relative is room for another
# CPU's kernels (a float32 forward's rounding, ~1e-7), not for a change of method: a change to a method's init, its
# loss, its config or the data its test makes moves these values, and must update them here deliberately.
FIRST_LOSS: dict[str, float] = {
    "audio/audiomae_global_vit_base --tiny": 1.229851484298706,
    "audio/audiomae_tiny": 1.4996814727783203,
    "audio/audiomae_vit_base --tiny": 1.198478102684021,
    "audio/cpc_speech_paper --tiny": 34.95063781738281,
    "audio/cpc_speech_paper": 68.31218719482422,
    "audio/cpc_tiny": 37.51019287109375,
    "image/byol_tiny": 3.949601650238037,
    "image/byol_vit_base --tiny": 4.326952934265137,
    "image/colorization_paper --tiny": 5.251575946807861,
    "image/colorization_tiny": 5.077305316925049,
    "image/context_encoder_paper --tiny": 4.206624984741211,
    "image/context_encoder_tiny": 8.46588134765625,
    "image/cpc_paper --tiny": 7.768531322479248,
    "image/cpc_tiny": 8.112139701843262,
    "image/dae_tiny": 0.9781036972999573,
    "image/dae_vit_base --tiny": 0.6782981753349304,
    "image/dino_tiny": 6.453881740570068,
    "image/dino_vit_base --tiny": 4.417755126953125,
    "image/ibot_tiny": 7.9155755043029785,
    "image/ibot_vit_base --tiny": 6.784320831298828,
    "image/infomax_tiny": 35.55632781982422,
    "image/infomax_vit_small --tiny": 3.268033504486084,
    "image/jigsaw_paper --tiny": 4.715478897094727,
    "image/jigsaw_tiny": 4.638261318206787,
    "image/mae_tiny": 1.2788441181182861,
    "image/mae_vit_base --tiny": 1.1341066360473633,
    "image/mocov2_tiny": 4.697040557861328,
    "image/mocov2_vit_base --tiny": 0.7070842981338501,
    "image/mocov3_tiny": 1.2681901454925537,
    "image/mocov3_vit_base --tiny": 1.2843849658966064,
    "image/relpos_paper --tiny": 2.3486173152923584,
    "image/relpos_tiny": 2.207608699798584,
    "image/rotation_paper --tiny": 1.3944330215454102,
    "image/rotation_tiny": 1.4858763217926025,
    "image/simclr_tiny": 1.3978850841522217,
    "image/simclr_vit_base --tiny": 5.237143516540527,
    "image/splitbrain_paper --tiny": 10.599283218383789,
    "image/splitbrain_tiny": 10.61711311340332,
    "multimodal/multimae_tiny": 6.571944713592529,
    "multimodal/multimae_vit_base --tiny": 6.3286027908325195,
    "video/avclip_tiny": 1.4098820686340332,
    "video/avclip_vit_base --tiny": 0.7816547751426697,
    "video/colortrack_paper --tiny": 2.6371607780456543,
    "video/colortrack_tiny": 6.150871276855469,
    "video/dino_tiny": 6.133440971374512,
    "video/siammae_tiny": 1.294819951057434,
    "video/siammae_vit_small --tiny": 1.1604598760604858,
    "video/simclr_tiny": 2.2318716049194336,
    "video/videomae_tiny": 1.125484824180603,
    "video/videomae_vit_base --tiny": 1.0695720911026,
}


def check_first_loss(key: str, summary: dict, *, rel: float = 1e-5) -> None:
    """Asserts the run's first-step loss equals the pinned `FIRST_LOSS[key]` to `rel`; a key with no pin fails
    with the measured value to pin."""
    measured = summary["first_loss"]
    assert math.isfinite(measured), f"{key}: first loss {measured}"
    assert key in FIRST_LOSS, f"no pinned first loss for {key!r}: measured {measured!r}"
    assert math.isclose(measured, FIRST_LOSS[key], rel_tol=rel), \
        f"{key}: first loss {measured!r}, pinned {FIRST_LOSS[key]!r} (relative {measured / FIRST_LOSS[key] - 1:.2e})"
