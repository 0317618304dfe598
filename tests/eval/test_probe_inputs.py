"""The probes feed an encoder as its training did: sizes read from the checkpoint's config, overrides said aloud."""

import pytest

from mmssl.cli import main
from mmssl.config import ConfigError, load_config
from mmssl.eval.encoders import load_encoder
from mmssl.eval.inputs import eval_inputs

from .probe_media import CONFIGS, colour_shards, save_method


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    ckpt = save_method("image/mae_tiny", base / "run" / "checkpoints" / "last.pt", ["method.encoder.depth=1"], seed=1)
    return ckpt, colour_shards(base / "train", 6, seed=0), colour_shards(base / "val", 3, seed=1)


def _knn(ckpt, train, val, capsys, *extra):
    assert main(["eval", "knn", "--checkpoint", str(ckpt), "--train", str(train), "--val", str(val), "--workers", "0",
                 "--no-baselines", *extra]) == 0
    out = capsys.readouterr().out
    return out, out.split("\ncheckpoint")[1].split()[:2]  # the checkpoint row's top-1 and top-5


def test_knn_uses_the_training_crop_size_and_says_so(run, capsys) -> None:
    ckpt, train, val = run
    out, default = _knn(ckpt, train, val, capsys)
    assert "input 64x64 from the checkpoint's training crops" in out and "trained at" not in out
    assert (ckpt.parent.parent / "eval" / "knn.csv").is_file()  # written beside the run
    _, explicit = _knn(ckpt, train, val, capsys, "encoder.modality={name: image, size: [64, 64]}")
    _, short = _knn(ckpt, train, val, capsys, "modality.size=[64,64]")
    assert default == explicit == short  # the same inputs: the same exact k-NN vote
    out, _ = _knn(ckpt, train, val, capsys, "modality.size=[32,32]")
    assert "trained at 64x64, evaluating at 32x32" in out


def test_sizes_of_every_modality_come_from_the_config() -> None:
    video = load_config(CONFIGS / "video/videomae_tiny.yaml")
    enc = load_encoder(None, {**video["method"]["encoder"], "depth": 1})
    inputs = eval_inputs(enc, video)
    assert inputs.size == (4, 64, 64) and inputs.clip_stride == 2  # decode_clips 4 frames at stride 2, crops 64
    audio = load_config(CONFIGS / "audio/audiomae_tiny.yaml")
    inputs = eval_inputs(load_encoder(None, {**audio["method"]["encoder"], "depth": 1}), audio)
    assert inputs.size == (256, 128) and inputs.samples == 40960 and inputs.fbank["target_length"] == 256
    assert "2.56 s windows (256x128 fbank)" in inputs.describe()
    cpc = load_config(CONFIGS / "audio/cpc_tiny.yaml")
    inputs = eval_inputs(load_encoder(None, cpc["method"]["encoder"]), cpc)
    assert inputs.kind == "waveform" and inputs.size == (6400,) and inputs.samples == 6400
    rot = load_config(CONFIGS / "image/rotation_tiny.yaml")
    enc = load_encoder(None, rot["method"]["encoder"])
    assert eval_inputs(enc, rot).size == (48, 48)
    assert eval_inputs(enc, None).size == (48, 48)  # no checkpoint: the encoder's own modality variant
    with pytest.raises(ConfigError, match="patch"):
        eval_inputs(enc, rot, modality={"patch": [16, 16], "size": [64, 64]})
