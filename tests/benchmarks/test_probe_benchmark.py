"""benchmarks/probe.py on a tiny budget: one config, 2 steps, a tenth of the data; the printed table, the Markdown
table and the JSON / CSV carry the three top-1 figures per row. And the synthetic data: labelled, balanced,
seeded; the audio classes' pitch contours visit the same pitches (so the mean-MFCC baseline cannot read them)."""

from __future__ import annotations

import csv
import json

import numpy as np

from benchmarks.probe import main, modality_of
from benchmarks.probe_data import CLASSES, _contour, _rng, audio_sample, image_sample, video_sample


def test_main_prints_and_writes_trained_random_and_raw_per_row(tmp_path, capsys) -> None:
    out = tmp_path / "probe.json"
    assert main(["--configs", "image/mae_tiny", "--steps", "2", "--batch-size", "8", "--scale", "0.1",
                 "--data", str(tmp_path / "data"), "--out", str(out), "--markdown"]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("image/mae_tiny "))
    cells = row.split()
    assert cells[:4] == ["image/mae_tiny", "image", "2", "8"]
    trained, random, raw, over_random, over_raw = map(float, cells[4:])
    assert all(0 <= x <= 100 for x in (trained, random, raw))
    # each printed figure is rounded to 0.1, so a printed margin is within 0.1 of the printed figures' difference
    assert abs(over_random - (trained - random)) <= 0.11 and abs(over_raw - (trained - raw)) <= 0.11
    assert "| image/mae_tiny | image | 2 | 8 |" in printed
    saved = json.loads(out.read_text())
    (rec,) = saved["rows"]
    assert rec["config"] == "image/mae_tiny" and rec["raw_name"] == "raw pixels" and rec["steps"] == 2
    assert {"trained", "random", "raw"} <= set(rec) and abs(rec["trained - raw"] - (rec["trained"] - rec["raw"])) < 1e-9
    with open(out.with_suffix(".csv")) as f:
        assert [r["config"] for r in csv.DictReader(f)] == ["image/mae_tiny"]
    # the labelled splits were sharded from class folders: 4 classes, balanced
    index = json.loads((tmp_path / "data" / "image" / "train" / "index.json").read_text())
    assert index["classes"] == sorted(CLASSES["image"]) and sum(s["samples"] for s in index["shards"]) == 24


def test_samples_are_seeded_and_sized() -> None:
    for make, shape in ((image_sample, (64, 64, 3)), (video_sample, (16, 72, 72, 3))):
        a, b = make(1, _rng("image", "train", 3, 0)), make(1, _rng("image", "train", 3, 0))
        assert a.shape == shape and a.dtype == np.uint8 and np.array_equal(a, b)
        assert not np.array_equal(a, make(1, _rng("image", "train", 4, 0)))
    wave = audio_sample(2, _rng("audio", "val", 0, 0))
    assert wave.shape == (40960,) and np.abs(wave).max() <= 0.8 + 1e-6


def test_audio_contours_visit_the_same_pitches() -> None:
    """Each contour spends equal time at every pitch of its span: histograms over a note agree to 1 %."""
    x = (np.arange(100_000) + 0.5) / 100_000
    hists = [np.histogram(_contour(label, x), bins=10, range=(0, 1))[0] / len(x) for label in range(4)]
    assert all(np.abs(h - 0.1).max() < 0.01 for h in hists)
    assert not np.allclose(_contour(0, x), _contour(1, x))  # but in another order


def test_modality_comes_from_the_config_folder() -> None:
    assert [modality_of(c) for c in ("image/mae_tiny", "video/videomae_tiny", "audio/cpc_tiny")] == \
        ["image", "video", "audio"]
