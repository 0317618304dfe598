"""Every checkpoint type of a modality through every probe command: image ViT, image CNN (CPC's ResNet, colour
tracking's grayscale CNN), Audio-MAE, CPC speech and VideoMAE on k-NN and linear; propagation takes the image
encoders and refuses the others in one line."""

import json

import pytest

from mmssl.cli import main

from .probe_media import colour_shards, save_method, tone_shards, video_shards
from .synthetic import write_davis

CHECKPOINTS = {  # config -> (data, the input line the run prints)
    "image/mae_tiny": ("image", "input 64x64 from the checkpoint's training crops"),
    "image/cpc_tiny": ("image", "input 64x64 from the checkpoint's training crops"),
    "video/colortrack_tiny": ("image", "input 64x64 from the checkpoint's training crops"),
    "audio/audiomae_tiny": ("audio", "input 2.56 s windows (256x128 fbank)"),
    "audio/cpc_tiny": ("audio", "input 6400-sample windows (0.4 s)"),
    "video/videomae_tiny": ("video", "input 4x64x64 clips at stride 2"),
}
SHRINK = {"image/mae_tiny": ["method.encoder.depth=1"], "audio/audiomae_tiny": ["method.encoder.depth=1"],
          "video/videomae_tiny": ["method.encoder.depth=1"]}
RAW = {"image": "raw pixels", "audio": "mean MFCC", "video": "raw pixels"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("matrix")
    return base, {"image": (colour_shards(base / "it", 4, seed=0), colour_shards(base / "iv", 2, seed=1)),
                  "audio": (tone_shards(base / "at", 3), tone_shards(base / "av", 2, first=10)),
                  "video": (video_shards(base / "vt", 2), video_shards(base / "vv", 1))}


@pytest.fixture(scope="module")
def checkpoints(data):
    base = data[0]
    return {name: save_method(name, base / name.replace("/", "_") / "last.pt", SHRINK.get(name, ()), seed=1)
            for name in CHECKPOINTS}


@pytest.mark.parametrize("command", ["knn", "linear"])
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_probe_accepts_checkpoint(name, command, data, checkpoints, capsys) -> None:
    base, splits = data
    kind, line = CHECKPOINTS[name]
    train, val = splits[kind]
    out_dir = base / "out" / name.replace("/", "_") / command
    assert main(["eval", command, "--checkpoint", str(checkpoints[name]), "--train", str(train), "--val", str(val),
                 "--workers", "0", "--batch-size", "8", "--out", str(out_dir)]) == 0
    assert line in capsys.readouterr().out
    rows = json.loads((out_dir / f"{command}.json").read_text())["rows"]
    assert [r["encoder"] for r in rows] == ["checkpoint", "random init", RAW[kind]]
    assert all(0 <= r["top-1"] <= 100 for r in rows)


@pytest.mark.parametrize("name", ["image/cpc_tiny", "video/colortrack_tiny", "audio/cpc_tiny",
                                  "audio/audiomae_tiny"])
def test_propagation_takes_frame_encoders_and_refuses_others(name, data, checkpoints, tmp_path, capsys) -> None:
    root = write_davis(tmp_path / "davis", ("s1",), frames=3)
    code = main(["eval", "propagation", "--checkpoint", str(checkpoints[name]), "--data", str(root), "--task",
                 "davis", "--out", str(tmp_path / "o"), "--no-baselines"])
    captured = capsys.readouterr()
    if name.startswith("audio"):
        assert code == 2 and "propagation reads RGB frames" in captured.err and "Traceback" not in captured.err
        assert len(captured.err.strip().splitlines()) == 1
    else:
        assert code == 0 and "\ncheckpoint" in captured.out
