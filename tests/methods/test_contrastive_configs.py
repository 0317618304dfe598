"""The contrastive family's tiny configs run 2 steps through `recipes.pretrain` on shards made here, unchanged
but for the shard path, a batch of 4 and no workers; every one of them has a paper-scale sibling."""

import math
import sys
from pathlib import Path

import pytest
import torch

from mmssl.config import load_config
from pipelines.sharding.tool import ShardOptions, run_sharding
from recipes.pretrain import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/media.py
from media import make_image, make_video  # noqa: E402
from config_runs import check_first_loss  # noqa: E402  (tests/methods/config_runs.py, on the path by conftest)

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
TINY = ["image/simclr_tiny", "image/mocov2_tiny", "image/mocov3_tiny", "image/byol_tiny", "video/simclr_tiny",
        "video/avclip_tiny"]
PAPER = ["image/simclr_vit_base", "image/mocov2_vit_base", "image/mocov3_vit_base", "image/byol_vit_base",
         "video/avclip_vit_base"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contrastive")
    (root / "img").mkdir()
    for i in range(8):
        make_image(root / "img" / f"{i}.jpg", width=48, height=40, seed=i)
    (root / "vid").mkdir()
    for i in range(4):
        make_video(root / "vid" / f"{i}.mp4", frames=24, width=48, height=40, audio=True)
    out = {"image": root / "image-shards", "video": root / "video-shards"}
    run_sharding(root / "img", out["image"], ShardOptions(samples_per_shard=4), progress=False)
    run_sharding(root / "vid", out["video"], ShardOptions(modality="video", samples_per_shard=2), progress=False)
    return out


def test_every_tiny_config_has_a_paper_scale_sibling() -> None:
    for name in TINY + PAPER:
        assert (CONFIGS / f"{name}.yaml").exists(), name
    methods = {load_config(CONFIGS / f"{n}.yaml")["method"]["_component_"] for n in PAPER}
    assert methods == {load_config(CONFIGS / f"{n}.yaml")["method"]["_component_"] for n in TINY}


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_tiny_config_runs_two_steps(name: str, shards: dict[str, Path], tmp_path: Path) -> None:
    kind = name.split("/")[0]
    cfg = load_config(CONFIGS / f"{name}.yaml", [f"data.train.source={shards[kind]}", "data.train.batch_size=4",
                                                  "data.train.num_workers=0", "data.train.shuffle_window=4"])
    cfg["train"] = {"steps": 2, "log_every": 1, "out_dir": str(tmp_path), "progress": False, "tensorboard": False,
                    "figure_every": -1, "name": name.replace("/", "-"), "device": "cpu",
                    "threads": 1}  # one thread: a first loss that does not depend on the machine's cores
    threads = torch.get_num_threads()
    try:
        summary = pretrain(cfg)
    finally:
        torch.set_num_threads(threads)  # the recipe set its own
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    check_first_loss(name, summary)
    assert Path(summary["checkpoint"]).exists()
