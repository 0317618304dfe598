"""benchmarks/pipeline_gpu.py on the CPU: its feeds are the shipped configs with overrides, its boxes are seconds,
the step it times is the recipe's TrainStep fed by the recipe's Feed; gpu_all.sh and gpu_pack.sh: valid bash, the
options they pass, the limits that fit 8 minutes, and (slow) the whole tiny run on the CPU."""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import pipeline_gpu, steps, train_step
from benchmarks.pipeline_gpu import FEEDS, feed_overrides, media_shards, repeated, timed_feed, timed_steps
from benchmarks.steps import run_config
from mmssl.train.step import TrainStep

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]
TINY_BOXES = ["--seconds", "0.3", "--feed-seconds", "0.2", "--warmup", "0.1"]


def test_feeds_are_the_shipped_configs_with_overrides():
    shipped = {m: run_config(m, tiny=True) for m in FEEDS}
    for model, feeds in FEEDS.items():
        for feed in feeds:
            cfg = run_config(model, tiny=True, overrides=feed_overrides(model, feed, source=["a.tar", "b.tar"],
                                                                          videos=3, workers=5, decoders=None))
            train, base = cfg["data"]["train"], shipped[model]["data"]["train"]
            assert train["source"] == ["a.tar", "b.tar"] and train["batch_size"] == 3 and train["num_workers"] == 5
            assert cfg["data"]["device"] == shipped[model]["data"]["device"]
            assert cfg["method"] == shipped[model]["method"]
            if feed in ("cpu-decode", "decord"):
                assert train["stages"] == base["stages"]  # what a user runs, as shipped
    nvjpeg = run_config("mae", overrides=FEEDS["mae"]["nvjpeg"][0])["data"]["train"]["stages"]
    assert nvjpeg == [{"_component_": "pipelines.images.decode_images", "on": "device"}]  # "on", not YAML's True
    nvdec = run_config("videomae", overrides=feed_overrides("videomae", "nvdec", source=["a"], videos=1, workers=1,
                                                            decoders=3))["data"]
    assert nvdec["train"]["stages"][0]["backend"] == "nvdec" and nvdec["device"]["nvdec"]["decoders"] == 3


def test_shards_are_made_once_and_repeated_to_cover_the_box(tmp_path):
    index = media_shards(tmp_path, "mae", tiny=True, distinct=3)
    stamp = index.stat().st_mtime_ns
    assert media_shards(tmp_path, "mae", tiny=True, distinct=3) == index and index.stat().st_mtime_ns == stamp
    assert not (tmp_path / "media" / "mae-tiny").exists()  # only the shards are kept (and carried)
    urls = repeated(index, 10)
    assert len(urls) == 4 and len(set(urls)) == 1  # 3 samples per shard read, 4 reads >= 10 samples

    from pipelines.loader import StreamLoader

    loader = StreamLoader(urls, batch_size=5, shuffle_window=4)
    assert len(loader) == 2 and loader.shards.total == 12


def test_boxes_are_seconds_not_steps():
    steps_taken = []

    def step(batch):
        time.sleep(0.01)
        steps_taken.append(batch)

    batches = iter(lambda: {"image": type("T", (), {"batch_size": 2})()}, None)
    m = timed_steps(step, batches, seconds=0.2, warmup=0.05, device=CPU)
    # steps sleep >= 10 ms, so a 0.2 s box holds at most 20 whole steps and the one that crosses its end (21); 5 and
    # 0.4 s leave a loaded machine 40 ms a step and 0.2 s of overrun; the rate is computed from the two (approx)
    assert 0.2 <= m.seconds < 0.4 and 5 <= m.steps <= 21 and m.rate == pytest.approx(2 * m.steps / m.seconds)
    assert len(steps_taken) > m.steps  # the first step and the warm-up are outside the box
    alone = timed_feed(batches, seconds=0.05, device=CPU)
    assert alone.seconds >= 0.05 and alone.steps > 10  # batches cost nothing here: thousands fit in 0.05 s


def test_loader_workers_start_once_cuda_is_initialised(tmp_path, monkeypatch):
    """On a GPU the step initialises CUDA before the loader starts its workers; they must still start, with the
    closure stages the factories build (forkserver or spawn would have to pickle them)."""
    from pipelines.images import decode_images
    from pipelines.loader import StreamLoader

    index = media_shards(tmp_path, "mae", tiny=True, distinct=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    batch = next(iter(StreamLoader(str(index), batch_size=2, stages=[decode_images()], num_workers=1)))
    assert batch["image"].shape[:2] == (2, 3)


def test_the_fed_and_synthetic_steps_are_one_recipe_train_step_and_the_feed_is_the_recipes(tmp_path, monkeypatch):
    built, calls = [], []
    build_run, call = steps.build_run, TrainStep.__call__

    def recording_build_run(*args, **kwargs):
        built.append(build_run(*args, **kwargs))
        return built[-1]

    def counted(self, batches, *args, **kwargs):
        calls.append((self, batches[0]))
        return call(self, batches, *args, **kwargs)

    monkeypatch.setattr(steps, "build_run", recording_build_run)
    monkeypatch.setattr(TrainStep, "__call__", counted)
    rows = pipeline_gpu.main(["--tiny", "--device", "cpu", "--model", "mae", "--feeds", "cpu-decode",
                              "--workers", "0", "--workdir", str(tmp_path), *TINY_BOXES])
    assert [r["feed"] for r in rows] == ["synthetic", "cpu-decode"]
    base, fed = built
    assert base.feed is None and fed.feed is not None and fed.feed.loader.num_workers == 0
    assert fed.cfg["data"]["train"]["source"][0].startswith(str(tmp_path))  # the made shards
    assert {id(s) for s, _ in calls} == {id(base.step)}
    assert any("label" in b for _, b in calls)  # fed batches came through the step (made shards have classes)
    assert fed.feed.state_dict()["samples_consumed"] > 0


@pytest.mark.slow
def test_main_measures_every_feed_on_tiny_configs(capsys, tmp_path):
    rows = pipeline_gpu.main(["--tiny", "--device", "cpu", "--workers", "1", "--workdir", str(tmp_path),
                              *TINY_BOXES])
    out = capsys.readouterr().out
    assert [(r["model"], r["feed"]) for r in rows] == [
        ("mae", "synthetic"), ("mae", "nvjpeg"), ("mae", "cpu-decode"),
        ("videomae", "synthetic"), ("videomae", "nvdec"), ("videomae", "decord")]
    assert all(math.isfinite(r["rate"]) and r["rate"] > 0 for r in rows)
    assert all(math.isfinite(r["alone"]) and r["alone"] > 0 for r in rows if r["feed"] != "synthetic")
    assert "of synthetic" in out and "skipped 0" in out and "FAILED" not in out and "warning" not in out


def gpu_all_parts(mode: str) -> list[tuple[str, int, list[str]]]:
    """(name, limit, argv) of each part gpu_all.sh would run in `mode` (its dry run)."""
    env = {**os.environ, "GPU_ALL_DRY": "1", "OUT": "/tmp/mmssl-gpu-all-dry", "GPU_CARRY": "/nonexistent"}
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_all.sh"), mode], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    found = re.findall(r"^### DRY (.+?) \(limit (\d+) s\): (.*)$", out, flags=re.M)
    return [(name, int(limit), shlex.split(cmd)) for name, limit, cmd in found]


def _script_args(argv: list[str], script: str) -> list[list[str]]:
    return [argv[argv.index(a) + 1:]] if (a := f"benchmarks/{script}") in argv else []


@pytest.mark.parametrize("mode", ["full", "tiny"])
def test_gpu_all_is_valid_bash_fits_8_minutes_and_calls_the_scripts_with_options_they_take(mode):
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_all.sh")], check=True)
    parts = gpu_all_parts(mode)
    calls = {s: [a for _, _, argv in parts for a in _script_args(argv, s)]
             for s in ("train_step.py", "pipeline_gpu.py", "pipeline.py")}
    assert all(calls.values()), calls
    for args in calls["train_step.py"]:
        train_step.parse_args(args)
    for args in calls["pipeline_gpu.py"]:
        parsed = pipeline_gpu.parse_args(args)
        assert parsed.workdir and parsed.tiny == (mode == "tiny")
    helped = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--help"], check=True,
                            capture_output=True, text=True).stdout
    assert all(a in helped for args in calls["pipeline.py"] for a in args if a.startswith("--"))
    boxed = [limit for name, limit, _ in parts if name != "fast suite"]
    if mode == "full":  # every GPU figure of the issue has its part; the boxes fit 8 minutes
        assert sum(boxed) <= 480
        models = {a for args in calls["train_step.py"] + calls["pipeline_gpu.py"] for a in args}
        assert {"mae", "videomae"} <= models and any("--workers" in args for args in calls["pipeline.py"])
        assert any("-k" in argv and "pytest" in argv for _, _, argv in parts)


def test_gpu_pack_is_valid_bash_and_packs_the_pinned_wheels_for_python_3_12():
    script = ROOT / "benchmarks" / "gpu_pack.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    for pin in ("av==19.0.2", "decord==0.6.0", "pynvvideocodec==2.2.4", "webdataset==1.0.2", "braceexpand==0.1.7",
                "--python-version 3.12", "xz -9", "pipeline_gpu.py --prepare"):
        assert pin in text


@pytest.mark.slow
def test_gpu_all_tiny_runs_every_part_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PY": sys.executable}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_all.sh"), "tiny"], cwd=ROOT, env=env, check=True,
                   capture_output=True, text=True, timeout=600)
    log = (tmp_path / "gpu.txt").read_text()
    statuses = re.findall(r"^### (.+?): exit (\d+)", log, flags=re.M)
    assert len(statuses) == 4 and all(rc == "0" for _, rc in statuses), statuses
    for text in ("loss check", "PASS", "of synthetic", "ratio ours/baseline"):
        assert text in log
    assert re.search(r"^image.* ratio ", log, flags=re.M)  # pipeline.py's image line against ImageFolder
