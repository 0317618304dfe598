"""benchmarks/pipeline_gpu.py and its feed (gpu_feed.py) on the CPU: the prefetch thread, the feeds chosen,
repeated shards, the NVDEC subclass's CPU path, the whole script on tiny configs; and gpu_all.sh's commands."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from benchmarks import pipeline_gpu, train_step
from benchmarks.gpu_feed import DevicePrefetcher, StreamedNvdec, tensors_of
from benchmarks.pipeline_gpu import feeds, media_shards, repeated
from benchmarks.steps import SPECS
from mmssl.tokens import Tokens
from pipelines.nvdec import NvdecDecoder

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]


def stage(batch: dict, device: torch.device) -> dict:
    x = batch["x"].to(device) * 2
    return {"tokens": Tokens(x.reshape(1, 4, 3), (2, 2), (1, 1), "image", visible=torch.tensor([[0, 2]])),
            "n": batch["n"]}


def test_prefetcher_yields_the_stage_output_in_order():
    source = [{"x": torch.full((12,), float(i)), "n": i} for i in range(5)]
    made = DevicePrefetcher(source, stage, CPU, depth=2)
    out = list(made)
    assert [o["n"] for o in out] == list(range(5))
    assert all(torch.equal(o["tokens"].patches, stage(s, CPU)["tokens"].patches) for o, s in zip(out, source))
    assert made.produced_s >= 0 and made.waited_s >= 0
    made.close()


def test_tensors_of_finds_the_tensors_inside_tokens():
    out = stage({"x": torch.zeros(12), "n": 0}, CPU)
    found = list(tensors_of({"a": [out["tokens"], (torch.ones(1),)], "b": "text"}))
    assert len(found) == 3 and found[0] is out["tokens"].patches and found[1] is out["tokens"].visible


def test_prefetcher_raises_the_stage_error_in_the_consumer():
    def broken(batch, device):
        raise ValueError(f"bad batch {batch['n']}")

    with pytest.raises(ValueError, match="bad batch 0"):
        next(iter(DevicePrefetcher([{"n": 0}], broken, CPU)))


def test_closing_the_prefetcher_stops_its_thread_and_source():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield {"x": torch.zeros(12), "n": i}
                i += 1
        finally:
            closed.set()

    made = DevicePrefetcher(endless(), stage, CPU, depth=2)
    assert [next(made)["n"] for _ in range(3)] == [0, 1, 2]
    made.close()
    assert not made.thread.is_alive() and closed.is_set()


def test_feeds_follow_the_options():
    names = lambda key, **kw: list(feeds(SPECS[key], key=key, device=CPU, repeats=2, decoders=2, **kw))  # noqa: E731
    assert names("mae-tiny", nvdec=False, jpeg="both") == ["nvjpeg", "cpu-decode"]
    assert names("mae-tiny", nvdec=True, jpeg="worker") == ["cpu-decode"]
    assert names("videomae-tiny", nvdec=True, jpeg="both") == ["nvdec", "decord"]
    assert names("videomae-tiny", nvdec=False, jpeg="both", decord=False) == []
    stages, device_stage, _ = feeds(SPECS["videomae-tiny"], key="videomae-tiny", device=CPU, repeats=2, decoders=3,
                                    nvdec=True, jpeg="both")["nvdec"]
    assert isinstance(device_stage.nvdec, StreamedNvdec) and device_stage.nvdec.decoders == 3
    assert device_stage.mask is not None  # masks come with the batch: the step draws none (no host sync there)


def test_shards_are_made_once_and_repeated_to_cover_the_steps(tmp_path):
    index = media_shards(tmp_path, "mae-tiny", distinct=3)
    stamp = index.stat().st_mtime_ns
    assert media_shards(tmp_path, "mae-tiny", distinct=3) == index and index.stat().st_mtime_ns == stamp
    assert not (tmp_path / "media" / "mae-tiny").exists()  # only the shards are kept (and carried)
    urls = repeated(index, 10)
    assert len(urls) == 4 and len(set(urls)) == 1  # 3 samples per shard read, 4 reads >= 10 samples

    from pipelines.loader import StreamLoader

    loader = StreamLoader(urls, batch_size=5, shuffle_window=4)
    assert len(loader) == 2 and loader.shards.total == 12


def test_loader_workers_start_once_cuda_is_initialised(tmp_path, monkeypatch):
    """On a GPU the step initialises CUDA before the loader starts its workers; they must still start, with the
    closure stages the factories build (forkserver or spawn would have to pickle them)."""
    from pipelines.images import decode_images
    from pipelines.loader import StreamLoader

    index = media_shards(tmp_path, "mae-tiny", distinct=4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    batch = next(iter(StreamLoader(str(index), batch_size=2, stages=[decode_images()], num_workers=1)))
    assert batch["image"].shape[:2] == (2, 3)


def test_streamed_nvdec_decodes_like_nvdec_on_the_cpu(tmp_path):
    from benchmarks.pipeline import make_videos

    data = make_videos(tmp_path, 1, 12)[0].read_bytes()
    plan = torch.tensor([[[0, 3, 6, 9], [1, 2, 3, 4]]])  # (B=1, k=2, T=4)
    ours = StreamedNvdec(size=(32, 40))([data], plan, [[0]], CPU)
    base = NvdecDecoder(size=(32, 40))([data], plan, [[0]], CPU)
    assert ours.shape == (1, 2, 4, 3, 32, 40) and torch.equal(ours, base)


@pytest.mark.slow
def test_main_measures_every_feed_on_tiny_configs(capsys, tmp_path):
    rows = pipeline_gpu.main(["--tiny", "--device", "cpu", "--no-compile", "--steps", "2", "--warmup", "1",
                              "--workers", "1", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert [(r["model"], r["feed"]) for r in rows] == [
        ("mae-tiny", "synthetic"), ("mae-tiny", "nvjpeg"), ("mae-tiny", "cpu-decode"),
        ("videomae-tiny", "synthetic"), ("videomae-tiny", "nvdec"), ("videomae-tiny", "decord")]
    assert all(math.isfinite(r["rate"]) and r["rate"] > 0 for r in rows)
    assert "of synthetic" in out and "skipped 0" in out and "warning" not in out


def gpu_all_commands(script: str) -> list[list[str]]:
    """The arguments after each `benchmarks/<script>` call in gpu_all.sh (continued lines joined), with stand-ins
    for shell variables ("2" after --workers, "x" elsewhere)."""
    text = (ROOT / "benchmarks" / "gpu_all.sh").read_text().replace("\\\n", " ")
    calls = [shlex.split(c) for c in re.findall(rf"benchmarks/{re.escape(script)}((?: [^\n]*)?)", text)]
    return [[("2" if i and c[i - 1] == "--workers" else "x") if a.startswith("$") else a for i, a in enumerate(c)]
            for c in calls]


def test_gpu_all_is_valid_bash_and_calls_the_scripts_with_options_they_take():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_all.sh")], check=True)
    step, feed = gpu_all_commands("train_step.py"), gpu_all_commands("pipeline_gpu.py")
    assert step and feed and any("--workdir" in args for args in feed)
    for args in step:
        train_step.parse_args(args)
    for args in feed:
        pipeline_gpu.parse_args(args)
    cpu = gpu_all_commands("pipeline.py")
    helped = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--help"], check=True,
                            capture_output=True, text=True).stdout
    assert cpu and all(a in helped for args in cpu for a in args if a.startswith("--"))
