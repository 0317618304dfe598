"""Faults of the data a run reads: shards whose bytes changed after they were indexed (`verify`), and data sets
broken past the run's one skip budget (across epochs, with no floor that lets a small broken set train)."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from media import make_image, make_image_shards
from mmssl.cli import main
from pipelines.feed import Feed
from pipelines.images import decode_images
from pipelines.loader import StreamLoader
from pipelines.sharding.writer import ShardWriter
from pipelines.stats import DataError, LoaderStats, over_budget
from numbered import decode, write_shards  # tests/ is on the path (tests/faults/conftest.py)

TINY = ["encoder.depth=1", "encoder.dim=32", "encoder.heads=2", "decoder_dim=16", "decoder_depth=1", "decoder_heads=2"]


def pretrain_args(shards: Path, out: Path, *extra: str) -> list[str]:
    """`mmssl image pretrain` of a 1-block mae_tiny on `shards`, batches of 4, one process, logged every step."""
    return ["image", "pretrain", "--config", "mae_tiny", f"data.train.source={shards}", "data.train.batch_size=4",
            "data.train.num_workers=0", f"train.out_dir={out}", "train.progress=false", "train.tensorboard=false",
            "train.log_every=1", "train.device=cpu", *[f"method.{o}" for o in TINY], *extra]


def one_line(err: str, *words: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


# -- verify: a shard's sha256 against its index -------------------------------------------------------------------

@pytest.fixture
def flipped(tmp_path) -> tuple[Path, Path]:
    """Image shards (3 x 8 JPEGs) whose second shard had 256 bytes inside a JPEG's data overwritten after
    indexing: (shard folder, the damaged shard)."""
    (tmp_path / "images").mkdir()
    shards = make_image_shards(tmp_path / "images")
    bad = shards / "shard-000001.tar"
    with tarfile.open(bad) as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
    data = bytearray(bad.read_bytes())
    at = member.offset_data + member.size // 2  # inside the entropy-coded scan, past the JPEG headers
    data[at:at + 256] = np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(data))
    return shards, bad


def read_all(source, **kw) -> tuple[int, list[tuple[str, str, str]]]:
    """(samples used, skipped (shard, key, reason)) of one epoch of the decoded images."""
    loader = StreamLoader(source, batch_size=8, stages=[decode_images()], shuffle_window=0, shuffle_shards=False,
                          drop_last=False, max_skip_fraction=0.5, **kw)
    batches = list(loader)
    return sum(b["__size__"] for b in batches), [s for b in batches for s in b["__skipped__"]]


def test_verify_turns_the_samples_of_a_changed_shard_into_counted_skips_naming_it(flipped):
    shards, bad = flipped
    used, skipped = read_all(str(shards), verify=True)
    assert used == 16 and len(skipped) == 8
    assert all(shard == str(bad) for shard, _, _ in skipped)
    reason = skipped[0][2]
    assert reason.startswith("sha256 mismatch: shard ") and str(bad) in reason
    expected = json.loads((shards / "index.json").read_text())["shards"][1]["sha256"]
    assert f"(expected {expected}, got " in reason and "the shard is corrupt" in reason
    assert "mmssl shard --resume" in reason and "re-download it" in reason


def test_without_verify_the_changed_shard_loads_as_before(flipped):
    shards, _ = flipped
    used, skipped = read_all(str(shards))
    assert used + len(skipped) == 24 and len(skipped) <= 1  # the damaged JPEG decodes, or is one decode skip
    assert not any("sha256" in reason for _, _, reason in skipped)


def test_verify_checks_streamed_shards_too(flipped, tmp_path):
    """pipe: shards cannot seek back: their bytes are spooled while they are hashed."""
    shards, bad = flipped
    index = json.loads((shards / "index.json").read_text())
    for entry in index["shards"]:
        entry["name"] = f"pipe:cat {shards / entry['name']}"
    piped = tmp_path / "piped"
    piped.mkdir()
    (piped / "index.json").write_text(json.dumps(index))
    used, skipped = read_all(str(piped), verify=True)
    assert used == 16 and len(skipped) == 8
    assert all(f"pipe:cat {bad}" in reason and "sha256 mismatch" in reason for _, _, reason in skipped)


def test_verify_without_digests_in_the_index_warns_once_and_reads(flipped, caplog):
    shards, _ = flipped
    index = json.loads((shards / "index.json").read_text())
    for entry in index["shards"]:
        del entry["sha256"]
    (shards / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="pipelines.loader"):
        used, skipped = read_all(str(shards), verify=True)
    warned = [r.getMessage() for r in caplog.records if "sha256" in r.getMessage()]
    assert len(warned) == 1 and "3 of the 3 shards" in warned[0] and "unchecked" in warned[0]
    assert used + len(skipped) == 24 and not any("sha256" in reason for _, _, reason in skipped)


def test_verify_is_set_from_the_command_line_and_a_corrupt_shard_ends_the_run_in_one_line(capsys, flipped,
                                                                                       tmp_path):
    shards, bad = flipped
    code = main(pretrain_args(shards, tmp_path / "runs", "data.train.verify=true", "train.steps=12"))
    assert code == 1
    line = one_line(capsys.readouterr().err, "recipes.pretrain: error:", "budget 10%", "sha256 mismatch", bad.name,
                    "the shard is corrupt")
    assert "8 of the 24 samples read were skipped" in line  # the first epoch's end: its exact share, 33%


# -- the skip budget: one for the whole run, no floor ---------------------------------------------------------------

def test_the_budget_rule():
    assert not over_budget(1, 1, 0.1) and not over_budget(3, 3, 0.1)  # an early bad file or three
    assert over_budget(4, 4, 0.1) and over_budget(12, 8, 0.1) and over_budget(60, 18, 0.1)
    assert not over_budget(40, 1, 0.1) and not over_budget(40, 1, 0.1, exact=True)
    assert not over_budget(20, 3, 0.1) and over_budget(20, 3, 0.1, exact=True)  # a whole epoch: its own share
    assert over_budget(5, 1, 0.0) and not over_budget(100, 100, 1.0)


def broken_images(root: Path, *, bad: int, good: int) -> Path:
    """A shard folder of `bad` files that are no image (as broken AVIs or HTML error pages) and `good` JPEGs."""
    root.mkdir(parents=True)
    make_image(root / "good.jpg", width=72, height=64, seed=0)
    jpeg = (root / "good.jpg").read_bytes()
    writer = ShardWriter(root / "s-000.tar")
    spread = set(np.linspace(0, bad + good - 1, good).astype(int).tolist())
    for i in range(bad + good):
        writer.add(f"k{i:03d}", {"jpg": jpeg if i in spread else b"RIFF\x00\x00\x00\x00AVI LIST" * 40})
    entry = writer.close()
    (root / "index.json").write_text(json.dumps({"shards": [entry], "samples": bad + good}))
    return root


def test_a_small_mostly_broken_set_stops_the_run_in_one_line_before_training(capsys, tmp_path):
    """55 broken files and a few good ones used to train on empty batches: 48 samples read were under the old
    floor of 50, and the budget was counted afresh every epoch."""
    source = broken_images(tmp_path / "broken", bad=55, good=3)
    code = main(pretrain_args(source, tmp_path / "runs", "train.steps=30"))
    assert code == 1
    line = one_line(capsys.readouterr().err, "budget 10%", "the data looks broken", "decode_images", "s-000.tar")
    read = int(line.split(" of the ")[1].split()[0])
    assert read <= 12  # stopped within the first batches, not after an epoch of empty ones
    assert not list((tmp_path / "runs").glob("*/checkpoints/last.pt"))


def test_a_batch_whose_samples_were_all_skipped_counts_and_the_feed_stops(tmp_path):
    source = write_shards(tmp_path / "s", counts=(58,), bad={f"k{n:04d}" for n in range(58) if n not in (50, 54, 57)})
    feed = Feed(StreamLoader(str(source), batch_size=8, stages=[decode], shuffle_window=0), None, "cpu")
    with pytest.raises(DataError, match=r"budget 10%.*by reason: decode") as err:
        next(feed)
    assert "8 of the 8 samples read" in str(err.value)  # the first batch, all skipped, was enough
    feed.close()


def test_one_bad_file_among_the_first_samples_trains_and_counts_add_up_over_epochs(tmp_path):
    source = write_shards(tmp_path / "s", counts=(20, 20), bad={"k0000"})
    loader = StreamLoader(str(source), batch_size=4, stages=[decode], shuffle_window=0, shuffle_shards=False)
    epochs = [sum(b["__size__"] for b in loader) for _ in range(3)]  # the bad sample comes first every epoch
    assert epochs == [39, 39, 39]
    assert loader.stats.read == 120 and loader.stats.total_skipped == 3 and loader.stats.skipped == {"decode": 3}
    assert loader.stats.summary().startswith("read 120 samples, used 117, skipped 3")


def test_the_budget_counts_the_run_not_the_epoch():
    """Under the budget in each epoch's counts alone, over it in the run's."""
    stats = LoaderStats(max_skip_fraction=0.1)
    batch = {"__size__": 6, "__skipped__": [("s.tar", f"k{i}", "decode: bad") for i in range(4)]}
    for _ in range(2):
        stats.start_epoch()
        stats.add(batch)  # 4 of 10 in an epoch: not yet evidence of more than 10%
    assert stats.read == 20 and stats.total_skipped == 8
    stats.start_epoch()
    with pytest.raises(DataError, match="12 of the 30 samples read"):
        stats.add(batch)
    assert not over_budget(10, 4, 0.1)


def test_an_epoch_end_after_a_resume_mid_epoch_is_no_exact_check():
    stats = LoaderStats(max_skip_fraction=0.1)
    stats.add({"__size__": 3, "__skipped__": [("s.tar", "k0", "decode: bad")]})  # the last batch of an epoch
    stats.end_epoch(0)  # 1 of 4 read since the resume: a sample, not the epoch's share
    stats.start_epoch()
    stats.add({"__size__": 3, "__skipped__": [("s.tar", "k1", "decode: bad")]})
    with pytest.raises(DataError, match="2 of the 8 samples"):
        stats.end_epoch(1)


def test_skip_reasons_stay_on_one_line_and_urls_keep_their_colons():
    stats = LoaderStats(max_skip_fraction=1.0)
    stats.add({"__size__": 1, "__skipped__": [("s3://b/s.tar", "k0", "shard s3://b/s.tar unreadable: x\ny")]})
    assert stats.skipped == {"shard s3://b/s.tar unreadable": 1}
    assert "\n" not in stats.summary() and "(shard s3://b/s.tar unreadable: x y)" in stats.summary()


def test_verify_passes_intact_shards(shards):
    used, skipped = read_all(str(shards), verify=True)
    assert used == 24 and not skipped
