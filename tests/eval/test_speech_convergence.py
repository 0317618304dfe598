"""The speech probes converge with their defaults, print one seeded three-row table, and take every audio
checkpoint (CPC speech, Audio-MAE) while refusing image ones in one line (issue 17)."""

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from mmssl.cli import main
from mmssl.config import instantiate, load_config
from mmssl.eval.speech import pool_frames, token_frames
from mmssl.eval.logistic import fit_probe, probe_accuracy
from mmssl.models.encoder import TokenEncoder
from pipelines.fbank import Fbank

sys.path.append(str(Path(__file__).resolve().parent))  # speech_data; appended, not to shadow other helpers
from speech_data import speech_shards  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> tuple[Path, Path]:
    """4 synthetic speakers (pitch, vocal tract, tilt and breathiness spread apart), 16 train and 8 held-out
    utterances each, 0.5 s."""
    root = tmp_path_factory.mktemp("voices")
    return (speech_shards(root / "train", num_speakers=4, per_speaker=16, seconds=0.5),
            speech_shards(root / "val", num_speakers=4, per_speaker=8, seconds=0.5, first=16))


def _table(out: str) -> dict[str, float]:
    """Row name -> top-1 of the table printed by a speech probe."""
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("encoder "))
    rows = {}
    for line in lines[head + 1:]:
        if line.startswith("wrote "):
            break
        name, rest = line.split("  ", 1)
        rows[name.strip()] = float(rest.split()[0])
    return rows


def _save(path: Path, config_name: str, overrides: list[str]) -> Path:
    """A checkpoint as recipes/pretrain.py writes one: the resolved config and the method's state dict."""
    cfg = load_config(CONFIGS / config_name, overrides)
    torch.manual_seed(1)  # not the random-init row's seed 0, so the two encoders differ
    method = instantiate(cfg["method"], where="method")
    torch.save({"config": cfg, "model": method.state_dict()}, path)
    return path


def test_lbfgs_probe_reaches_the_optimum_without_a_schedule() -> None:
    # class c shifts feature c by 6 standard deviations: class means 8.5 apart, a row is misread with p ~ 1e-4
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat(40)
    feats = torch.randn(200, 16, generator=gen) + 6 * torch.nn.functional.one_hot(labels, 16)
    fit = fit_probe(feats, labels, num_classes=5)
    again = fit_probe(feats, labels, num_classes=5)
    assert fit.converged and fit.l2 == again.l2
    torch.testing.assert_close(fit.probe.linear.weight, again.probe.linear.weight, rtol=0, atol=0)  # no randomness
    assert probe_accuracy(fit.probe, feats, labels) == 100.0
    # at the optimum the penalised loss has zero gradient: W's gradient is l2 * W plus the cross-entropy's
    w = fit.probe.linear.weight.detach().clone().requires_grad_(True)
    x = (feats.double() - fit.probe.mean) / fit.probe.std
    loss = torch.nn.functional.cross_entropy(x @ w.t() + fit.probe.linear.bias, labels) + fit.l2 / 2 * w.pow(2).sum()
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.abs().max() < 1e-5  # the solver's tolerance is 1e-7 on the largest entry; float64 throughout


def test_pool_frames_reads_only_real_audio() -> None:
    feats = torch.arange(12.0).reshape(2, 3, 2)  # (B, T, D)
    valid = torch.tensor([3, 1])
    assert pool_frames(feats, valid, "last").tolist() == [[4.0, 5.0], [6.0, 7.0]]
    assert pool_frames(feats, valid, "mean").tolist() == [[2.0, 3.0], [6.0, 7.0]]
    stats = pool_frames(feats, valid, "mean+std")
    assert stats.shape == (2, 4) and stats[1, 2:].tolist() == [0.0, 0.0]  # one frame: no spread


def test_token_frames_map_patch_rows_to_10ms_frames() -> None:
    enc = TokenEncoder("vit_tiny_patch16_224", modality="audio", depth=1, dim=32, heads=2).eval()
    frames = token_frames(enc, Fbank(target_length=32))
    wave = torch.randn(2, 160 * 30)
    out = frames(wave)
    assert out.shape == (2, 30, 32)  # 30 frames of 10 ms; 32 fbank frames make 2 patch rows of 16
    torch.testing.assert_close(out[:, 0], out[:, 15])  # one patch row = 16 frames, the same feature
    assert not torch.allclose(out[:, 15], out[:, 16])


def test_default_speaker_probe_converges_and_repeats(voices, tmp_path, capsys) -> None:
    """Acceptance: >= 95 % with no --epochs/--lr; two runs print the same table; CSV and JSON written."""
    train, val = voices
    args = ["audio", "eval", "speaker", "--mfcc", "--train", str(train), "--val", str(val), "--samples", "8000"]
    start = time.perf_counter()
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    secs = time.perf_counter() - start
    first = capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    second = capsys.readouterr().out
    table = first[first.index("speaker probe:"):first.index("wrote ")]
    assert table == second[second.index("speaker probe:"):second.index("wrote ")]
    # measured 100.0 (32 of 32 held-out clips); 2 errors would leave 93.8
    assert _table(first)["MFCC"] >= 95, first
    assert secs < 30, secs  # measured ~5 s on a busy 2-core machine
    saved = json.loads((tmp_path / "a" / "speaker.json").read_text())
    assert [r["encoder"] for r in saved["rows"]] == ["MFCC"] and saved["settings"]["window_samples"] == 8000
    assert (tmp_path / "a" / "speaker.csv").read_text().splitlines()[0] == "encoder,what,top-1"


@pytest.mark.parametrize("config, overrides, window", [
    ("audio/cpc_tiny.yaml", ["method.encoder.dim=16", "method.encoder.context_dim=16",
                             "data.train.stages.0.samples=4800"], "4800-sample windows"),
    ("audio/audiomae_tiny.yaml", ["method.encoder.depth=1", "method.encoder.dim=32", "method.encoder.heads=2",
                                  "method.decoder_dim=16", "method.decoder_depth=1", "method.decoder_heads=2",
                                  "data.train.stages.0.seconds=0.32", "data.device.fbank.target_length=32"],
     "5120-sample windows"),
])
def test_speaker_probe_takes_audio_checkpoints(voices, tmp_path, capsys, config, overrides, window) -> None:
    train, val = voices
    ckpt = _save(tmp_path / "ckpt.pt", config, overrides)
    args = ["audio", "eval", "speaker", "--checkpoint", str(ckpt), "--train", str(train), "--val", str(val)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    again = capsys.readouterr().out
    assert out[:out.index("wrote ")] == again[:again.index("wrote ")]  # seeded twin, deterministic probe
    assert f"input: {window}" in out and "(the checkpoint's decode_audio window" in out, out
    rows = _table(out)
    assert list(rows) == ["checkpoint", "random init", "MFCC"], out
    # the untrained "checkpoint" and its seeded twin are both random encoders, so no margin between them is
    # promised; MFCC statistics of 0.3 s windows measured 87.5 (CPC) and 90.6 (Audio-MAE's 0.32 s)
    assert all(0 <= v <= 100 for v in rows.values()) and rows["MFCC"] >= 75, out
    assert (tmp_path / "eval" / "speaker.json").is_file()  # beside the checkpoint by default


def test_phone_probe_takes_audiomae(voices, tmp_path, capsys) -> None:
    train, val = voices
    ckpt = _save(tmp_path / "ckpt.pt", "audio/audiomae_tiny.yaml",
                 ["method.encoder.depth=1", "method.encoder.dim=32", "method.encoder.heads=2", "method.decoder_dim=16",
                  "method.decoder_depth=1", "method.decoder_heads=2", "data.train.stages.0.seconds=0.32",
                  "data.device.fbank.target_length=32"])
    lines = [f"s{i}-u{j} " + " ".join(["aa"] * 16 + ["iy"] * 16) for i in range(4) for j in range(24)]
    (tmp_path / "align.txt").write_text("\n".join(lines) + "\n")
    assert main(["audio", "eval", "phone", "--checkpoint", str(ckpt), "--train", str(train), "--val", str(val),
                 "--alignments", str(tmp_path / "align.txt"), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "on 2048 train / 1024 val frames, 2 phones" in out, out  # 64 / 32 clips x 32 frames of 0.32 s
    assert list(_table(out)) == ["checkpoint", "random init", "MFCC"]


def test_image_checkpoint_is_one_line_exit_2(voices, tmp_path, capsys) -> None:
    train, val = voices
    ckpt = _save(tmp_path / "image.pt", "image/mae_tiny.yaml", ["method.encoder.depth=1"])
    assert main(["audio", "eval", "speaker", "--checkpoint", str(ckpt), "--train", str(train), "--val", str(val)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mmssl: error: ") and "holds an image encoder" in err, err
