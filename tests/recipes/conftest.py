"""A tiny image shard set and a tiny MAE config for recipe tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py

from media import make_image_shards  # noqa: E402


@pytest.fixture(scope="session")
def image_shards(tmp_path_factory) -> Path:
    return make_image_shards(tmp_path_factory.mktemp("imgs"), per_shard=5)  # 5 shards


def crop(size: int, view: str = "view0") -> dict:
    return {"_component_": "pipelines.augment.Crop", "size": size, "scale": [0.5, 1.0], "view": view}


def tiny_mae(shards: Path, out_dir: Path, *, workers: int = 0, **train) -> dict:
    """MAE with a 1-block, 32-wide encoder on 32x32 crops (2x2 tokens of 16x16)."""
    return {
        "method": {"_component_": "mmssl.methods.mae.MAE",
                   "encoder": {"_component_": "mmssl.models.TokenEncoder", "name": "vit_tiny_patch16_224",
                               "modality": "image", "depth": 1, "dim": 32, "heads": 2},
                   "mask_ratio": 0.5, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
        "data": {"train": {"_component_": "pipelines.loader.StreamLoader", "source": str(shards), "batch_size": 4,
                           "shuffle_window": 8, "num_workers": workers,
                           "stages": [{"_component_": "pipelines.images.decode_images"},
                                      {"_component_": "pipelines.augment.crop_images", "crops": [crop(32)]}]},
                 "device": {"_component_": "pipelines.device.DeviceStage", "mode": "image",
                            "views": [{"_component_": "pipelines.augment.Augment", "crop": crop(32)}]}},
        "optim": {"blr": 1e-3, "warmup_epochs": 1, "epochs": 4},
        "train": {"steps": 6, "log_every": 1, "out_dir": str(out_dir), "progress": False, "tensorboard": False,
                  "name": "t", **train},
    }


@pytest.fixture
def mae_config():
    """The `tiny_mae` builder (a fixture, since test modules cannot import conftest by name)."""
    return tiny_mae
