"""The recipe's training step never makes the host wait for the device: zero host-sync ops (counted at the
dispatcher, so a CPU run sees what would stall a GPU) for the tiny configs of the masked-modelling and joint-
embedding families, with their masks drawn by the pipeline's workers as the recipe arranges it."""

from __future__ import annotations

import pytest
import torch

from config_runs import CONFIGS, audio_shards, image_shards, video_shards
from mmssl.config import load_config
from mmssl.train.step import TrainStep
from mmssl.train.syncs import count_host_syncs
from recipes.pretrain import build_run

CASES = {"image/mae_tiny": "image", "video/videomae_tiny": "video", "video/siammae_tiny": "video",
         "audio/audiomae_tiny": "audio", "image/dino_tiny": "image", "image/simclr_tiny": "image"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("sync-shards")
    return {"image": image_shards(root / "i"), "video": video_shards(root / "v"), "audio": audio_shards(root / "a")}


def tiny_run(name: str, source, tmp_path, **train):
    cfg = load_config(CONFIGS / f"{name}.yaml", [f"data.train.source={source}", "data.train.batch_size=2",
                                                  "data.train.num_workers=0", "data.train.shuffle_window=4"])
    cfg["train"] = {"device": "cpu", "out_dir": str(tmp_path), "progress": False, "tensorboard": False, **train}
    return build_run(cfg)


@pytest.mark.parametrize("name", list(CASES))
def test_recipe_step_has_no_host_syncs(name, shards, tmp_path):
    threads = torch.get_num_threads()
    run = tiny_run(name, shards[CASES[name]], tmp_path)
    try:
        assert isinstance(run.step, TrainStep) and run.step.skips_on_device
        run.step([next(run.feed)], 0.0)  # the first step makes the optimiser state
        batch = next(run.feed)
        masked = [t for t in batch.values() if hasattr(t, "visible") and t.visible is not None]
        if name in ("image/mae_tiny", "video/videomae_tiny", "audio/audiomae_tiny"):
            assert masked, "the masks come with the batch (drawn in the workers)"
        if name == "video/siammae_tiny":
            assert batch["frames"][-1].visible is not None
        found = count_host_syncs(lambda: run.step([batch], 0.5))
        assert found == [], found
        assert run.step.drain()["skipped"] == 0
    finally:
        run.feed.close()
        torch.set_num_threads(threads)
