from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmssl.cli import main
from mmssl.eval.encoders import load_encoder
from recipes.eval_data import shard_features
from pipelines.sharding.tool import ShardOptions, run_sharding

TINY = ["encoder.depth=1", "encoder.dim=32", "encoder.heads=2",
        "encoder.modality={name: image, patch: [8, 8], size: [32, 32]}"]


def _labelled_shards(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label, colour in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / label).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(colour) + rng.normal(0, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / label / f"{i}.jpg")
    run_sharding(root, root / "shards", ShardOptions(samples_per_shard=5), progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    base = tmp_path_factory.mktemp("probe")
    return _labelled_shards(base / "train", 8, 0), _labelled_shards(base / "val", 4, 1)


def test_features_read_every_sample_once(splits) -> None:
    enc = load_encoder(None, {"_component_": "mmssl.models.TokenEncoder", "name": "vit_tiny_patch16_224",
                              "modality": "image"}, overrides=[t[len("encoder."):] for t in TINY])
    feats, labels = shard_features(enc, str(splits[0]), batch_size=6, workers=0)
    assert feats.shape == (16, 32) and sorted(labels.tolist()) == [0] * 8 + [1] * 8


@pytest.mark.parametrize("command", ["knn", "linear"])
def test_probe_commands_separate_colour_classes(splits, capsys, command: str) -> None:
    train, val = splits
    extra = [] if command == "linear" else ["--k", "5"]
    assert main(["eval", command, "--train", str(train), "--val", str(val), "--workers", "0", "--out",
                 str(train.parent.parent / command), *extra, *TINY]) == 0
    out = capsys.readouterr().out
    top1 = float(out.split("\nrandom init")[1].split()[0])  # the random-init row's top-1
    assert top1 >= 87.5, out  # two colour classes: even a random encoder separates them


def test_unlabelled_shards_are_a_clear_error(tmp_path, capsys) -> None:
    for i in range(3):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / f"{i}.jpg")
    run_sharding(tmp_path, tmp_path / "s", ShardOptions(), progress=False)
    with pytest.raises(ValueError, match="no label"):
        enc = load_encoder(None, {"_component_": "mmssl.models.TokenEncoder", "name": "vit_tiny_patch16_224",
                                  "modality": "image"}, overrides=[t[len("encoder."):] for t in TINY])
        shard_features(enc, str(tmp_path / "s"), workers=0)
