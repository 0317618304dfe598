import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import webdataset as wds

from mmssl.cli import main
from pipelines.sharding.samples import Transcode
from pipelines.sharding.tool import PARTS_DIR, ShardOptions, run_sharding
from pipelines.sharding.verify import verify_shards


def keys_in(out: Path) -> list[str]:
    index = json.loads((out / "index.json").read_text())
    keys = []
    for shard in index["shards"]:
        for sample in wds.WebDataset(str(out / shard["name"]), shardshuffle=False, empty_check=False):
            keys.append(sample["__key__"])
    return keys


@pytest.mark.parametrize("modality,good,bad", [("image", 6, {"garbage.jpg", "cut.jpg"}),
                                               ("video", 4, {"broken.mp4"}), ("audio", 3, {"noise.flac"})])
def test_counts_errors_and_verify(media_root: Path, tmp_path: Path, modality, good, bad) -> None:
    out = tmp_path / "out"
    summary = run_sharding(media_root / modality, out, ShardOptions(modality=modality, samples_per_shard=2),
                           progress=False)
    index = json.loads((out / "index.json").read_text())
    assert summary["complete"] and index["samples"] == good == sum(s["samples"] for s in index["shards"])
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {Path(e["path"]).name for e in errors} == bad and all(e["reason"] for e in errors)
    keys = keys_in(out)
    assert len(keys) == good == len(set(keys)) and all("." not in k for k in keys)
    assert verify_shards(out, progress=False) == []


def test_samples_carry_probe_json_and_labels(media_root: Path, tmp_path: Path) -> None:
    run_sharding(media_root / "video", tmp_path, ShardOptions(modality="video"), progress=False)
    samples = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False))
    metas = [json.loads(s["json"]) for s in samples]
    assert sorted(m["frames"] for m in metas) == [24, 32, 40, 48]
    assert all(m["keyframes"][0] == 0 and m["fps"] == 24 and m["source"].startswith("x/") for m in metas)
    assert sum(m["audio"] is not None for m in metas) == 1
    assert all(s["cls"] == b"0" for s in samples)


def test_verify_fails_after_truncation(media_root: Path, tmp_path: Path, capsys) -> None:
    run_sharding(media_root / "image", tmp_path, ShardOptions(samples_per_shard=3), progress=False)
    shard = tmp_path / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    problems = verify_shards(tmp_path, progress=False)
    assert problems and all("shard-000001.tar" in p for p in problems)
    assert main(["shard", "--verify", str(tmp_path), "--quiet"]) == 1
    assert "problem" in capsys.readouterr().out


def test_parts_are_disjoint_and_index_appears_when_all_done(media_root: Path, tmp_path: Path) -> None:
    for part in range(3):
        opts = ShardOptions(samples_per_shard=1, part=(part, 3), resume=part > 0)
        summary = run_sharding(media_root / "image", tmp_path, opts, progress=False)
        assert summary["complete"] == (part == 2)
        assert summary["built"] == [3, 3, 2][part]  # 8 files, one per shard
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["shards"]) == 6 and all(s["samples"] == 1 for s in index["shards"])  # 2 corrupt: no shard
    assert sorted(keys_in(tmp_path)) == sorted(set(keys_in(tmp_path))) and len(keys_in(tmp_path)) == 6
    assert verify_shards(tmp_path, progress=False) == []


def test_existing_output_needs_resume(media_root: Path, tmp_path: Path) -> None:
    run_sharding(media_root / "audio", tmp_path, ShardOptions(modality="audio"), progress=False)
    with pytest.raises(ValueError, match="--resume"):
        run_sharding(media_root / "audio", tmp_path, ShardOptions(modality="audio"), progress=False)
    again = run_sharding(media_root / "audio", tmp_path, ShardOptions(modality="audio", resume=True),
                         progress=False)
    assert again["built"] == 0 and again["kept"] == 1
    with pytest.raises(ValueError, match="different plan"):
        run_sharding(media_root / "audio", tmp_path, ShardOptions(modality="audio", resume=True,
                                                                    samples_per_shard=2), progress=False)


def test_interrupted_run_resumes_to_the_same_samples(media_root: Path, tmp_path: Path) -> None:
    args = [str(media_root / "video"), "--modality", "video", "--samples-per-shard", "1", "--transcode",
            "--short-side", "32", "--gop", "4", "--quiet"]
    whole = tmp_path / "whole"
    assert main(["shard", args[0], str(whole), *args[1:]]) == 0
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "mmssl", "shard", args[0], str(cut), *args[1:]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((cut / PARTS_DIR).glob("*.tar.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "index.json").exists(), "the run finished before it could be interrupted"
    assert main(["shard", args[0], str(cut), *args[1:], "--resume"]) == 0
    assert sorted(keys_in(cut)) == sorted(keys_in(whole))
    assert len(keys_in(cut)) == len(set(keys_in(cut))) == 4
    assert not list(cut.rglob("*.tmp-*"))


def test_transcode_chunks_and_audio(media_root: Path, tmp_path: Path) -> None:
    opts = ShardOptions(modality="video", transcode=Transcode(enabled=True, short_side=32, gop=4,
                                                              chunk_seconds=1.0, keep_audio=True))
    run_sharding(media_root / "video", tmp_path, opts, progress=False)
    samples = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False))
    metas = [json.loads(s["json"]) for s in samples]
    # 24, 32, 40, 48 frames at 24 fps in 1 s chunks: 1 + 2 + 2 + 2 chunks
    assert len(samples) == 7 and {m["height"] for m in metas} == {32}
    assert all(m["keyframes"] == list(range(0, m["frames"], 4)) for m in metas)
    assert sum("flac" in s for s in samples) == 1  # only the video with an audio track, whose first second


def test_manifest_with_extras_and_speakers(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from media import encode_png16, make_image

    import numpy as np

    for i in range(3):
        make_image(tmp_path / f"rgb{i}.jpg", seed=i)
        (tmp_path / f"d{i}.png").write_bytes(encode_png16(np.full((8, 8), 1000 * i, np.uint16)))
        make_image(tmp_path / f"s{i}.png", seed=i)
    rows = [{"path": f"rgb{i}.jpg", "label": ["cat", "dog"][i % 2], "depth": f"d{i}.png",
             "semseg": f"s{i}.png", "speaker": f"spk{i}"} for i in range(3)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    run_sharding(manifest, tmp_path / "out", ShardOptions(modality="multimodal"), progress=False)
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    assert all({"jpg", "depth.png", "semseg.png", "json", "cls"} <= set(s) for s in samples)
    assert sorted(json.loads(s["json"])["speaker"] for s in samples) == ["spk0", "spk1", "spk2"]
    assert json.loads((tmp_path / "out" / "index.json").read_text())["classes"] == ["cat", "dog"]


def test_davis_folder_becomes_one_sample_per_sequence(tmp_path: Path) -> None:
    from media import make_image

    for seq in ("bear", "car"):
        (tmp_path / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (tmp_path / "Annotations" / "480p" / seq).mkdir(parents=True)
        for i in range(3):
            make_image(tmp_path / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg", seed=i)
        make_image(tmp_path / "Annotations" / "480p" / seq / "00000.png")
    run_sharding(tmp_path, tmp_path / "out", ShardOptions(modality="video"), progress=False)
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 2
    meta = json.loads(samples[0]["json"])
    assert meta["frames"] == 3 and meta["masks"] == ["mask00000.png"]
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())
