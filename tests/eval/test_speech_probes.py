"""Speech probes: MFCC frames line up with CPC latents, label encoding, the CLI's speaker and phone probes on
shards made here."""

import sys
from pathlib import Path

import pytest
import torch

from mmssl.eval.speech import cpc_frames, encode_labels, mfcc_frames
from mmssl.models.cpc_audio import CPCAudioEncoder

sys.path.append(str(Path(__file__).resolve().parent))  # speech_data; appended, not to shadow other helpers
from speech_data import speech_shards  # noqa: E402


def test_mfcc_frames_line_up_with_latents() -> None:
    wave = torch.randn(2, 160 * 9)
    assert mfcc_frames(n_mfcc=13)(wave).shape == (2, 9, 13)
    assert cpc_frames(CPCAudioEncoder(dim=8, context_dim=6))(wave).shape == (2, 9, 6)


def test_encode_labels_drops_unseen_val_classes() -> None:
    train_y, val_y, keep, classes = encode_labels(["b", "a", "b"], ["a", "c", "b"])
    assert classes == ["a", "b"] and train_y.tolist() == [1, 0, 1]
    assert keep.tolist() == [True, False, True] and val_y.tolist() == [0, 1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return speech_shards(tmp_path_factory.mktemp("speech"), num_speakers=3, per_speaker=4, seconds=0.2)


@pytest.mark.parametrize("extra", [["--mfcc"], ["encoder.dim=8", "encoder.context_dim=8"]])
def test_speaker_cli(shards: Path, extra: list[str], tmp_path: Path, capsys) -> None:
    from mmssl.cli import main

    # --epochs/--lr: CPC_audio's fixed Adam schedule, kept beside the default L-BFGS probe
    assert main(["audio", "eval", "speaker", "--train", str(shards), "--val", str(shards), "--samples", "3200",
                 "--epochs", "50", "--lr", "1e-2", "--out", str(tmp_path), *extra]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    task = next(line for line in lines if line.startswith("speaker probe:"))
    assert "12 train / 12 val clips, 3 speakers" in task, task
    first = lines[lines.index(task) + 2]  # the row after the header: MFCC, or the random init
    # the training set itself: above chance (3 classes); measured 100.0 with MFCC statistics, 66.7 at random init
    assert float(first.split("  ", 1)[1].split()[0]) > 100 / 3, first


def test_phone_cli_reads_alignments(shards: Path, tmp_path: Path, capsys) -> None:
    from mmssl.cli import main

    lines = [f"s{i}-u{j} " + " ".join(["aa"] * 10 + ["iy"] * 10) for i in range(3) for j in range(2)]
    (tmp_path / "align.txt").write_text("\n".join(lines) + "\n")
    assert main(["audio", "eval", "phone", "--mfcc", "--train", str(shards), "--val", str(shards), "--samples",
                 "3200", "--alignments", str(tmp_path / "align.txt"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "120 train / 120 val frames, 2 phones" in out, out  # 6 aligned clips x 20 frames
