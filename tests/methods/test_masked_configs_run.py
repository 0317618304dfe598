"""The masked-modeling tiny configs train 2 steps through the recipe on shards made here (data sections included)."""

import math
from pathlib import Path

import pytest

from config_runs import check_first_loss, image_shards, two_steps, video_shards  # noqa: E402  (tests/methods/)
from media import make_audio  # noqa: E402
from pipelines.sharding.tool import ShardOptions, run_sharding


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("masked")
    (root / "audio").mkdir()
    for i in range(6):
        make_audio(root / "audio" / f"t{i}.flac", seconds=3.0, freq=200 + 80 * i)
    run_sharding(root / "audio", root / "audio_shards", ShardOptions(modality="audio", samples_per_shard=3),
                 progress=False)
    return {"image": image_shards(root), "video": video_shards(root, count=4), "audio": root / "audio_shards"}


@pytest.mark.slow
@pytest.mark.parametrize("name,kind", [("image/mae_tiny", "image"), ("image/dae_tiny", "image"),
                                       ("video/videomae_tiny", "video"), ("video/siammae_tiny", "video"),
                                       ("audio/audiomae_tiny", "audio")])
def test_tiny_config_runs_two_steps(shards, tmp_path, name: str, kind: str) -> None:
    summary = two_steps(name, shards[kind], tmp_path, batch_size=2)
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    check_first_loss(name, summary)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["image/colorization_tiny", "image/splitbrain_tiny", "image/context_encoder_tiny"])
def test_colour_and_inpainting_configs_run_two_steps(shards, tmp_path, name: str) -> None:
    summary = two_steps(name, shards["image"], tmp_path, batch_size=2)
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    check_first_loss(name, summary)


@pytest.mark.slow
def test_multimae_tiny_runs_two_steps_on_rgb_depth_semseg_shards(tmp_path) -> None:
    import json

    import numpy as np
    from PIL import Image

    from media import encode_png16, make_image

    rows = []
    for i in range(4):
        make_image(tmp_path / f"rgb{i}.jpg", width=240, height=232, seed=i)
        (tmp_path / f"d{i}.png").write_bytes(encode_png16(np.full((232, 240), 1000 * (i + 1), np.uint16)))
        Image.fromarray((np.arange(232 * 240).reshape(232, 240) % 7).astype(np.uint8)).save(tmp_path / f"s{i}.png")
        rows.append({"path": f"rgb{i}.jpg", "depth": f"d{i}.png", "semseg": f"s{i}.png"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    run_sharding(tmp_path / "m.jsonl", tmp_path / "shards", ShardOptions(modality="multimodal"), progress=False)
    summary = two_steps("multimodal/multimae_tiny", tmp_path / "shards", tmp_path / "runs", batch_size=2)
    assert summary["steps"] == 2 and math.isfinite(summary["last_loss"])
    check_first_loss("multimodal/multimae_tiny", summary)
