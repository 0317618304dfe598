"""Clip planning and video decode: requested frames come back (read from the index drawn into each frame)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from media import frame_index_of, make_corrupt, make_video
from pipelines.clips import PlanError, clip_indices, gapped_indices
from mmssl.rng import sample_rng
from pipelines.sample import is_skipped
from pipelines.video import decode_clips, decode_frame_sets

FRAMES = 100


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("video") / "v.mp4"
    return make_video(path, frames=FRAMES, width=64, height=48, gop=12, audio=True).read_bytes()


def run(stage, sample):
    return next(iter(stage(iter([sample]))))


def sample_of(data: bytes, key: str = "k1", **extra) -> dict:
    return {"__key__": key, "__shard__": "s0", "__seed__": 7, "__epoch__": 0, "mp4": data, **extra}


def indices_drawn(video) -> list[list[int]]:
    return [[frame_index_of(f) for f in clip] for clip in video.gather().numpy()]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_clips_returns_the_planned_frames(video, backend):
    out = run(decode_clips(size=None, num_frames=8, stride=4, clips=3, backend=backend), sample_of(video))
    assert out["decoder"] == backend
    assert out["video"].shape == (3, 8, 48, 64, 3)
    index = out["frame_index"].tolist()
    assert indices_drawn(out["video"]) == index
    expected = clip_indices(FRAMES, num_frames=8, stride=4, clips=3, rng=sample_rng(7, 0, "k1", "clip"))
    assert index == expected.tolist()
    assert all(np.diff(row).tolist() == [4] * 7 for row in index)
    assert len({row[0] for row in index}) == 3  # repeated sampling: k distinct clips from one decode
    assert "mp4" not in out


def test_decode_clips_is_keyed_by_sample_and_epoch(video):
    stage = decode_clips(size=None, num_frames=4, stride=2, clips=2, backend="pyav")
    a, b = run(stage, sample_of(video)), run(stage, sample_of(video))
    assert a["frame_index"].tolist() == b["frame_index"].tolist()
    others = [run(stage, sample_of(video, key=f"k{i}"))["frame_index"].tolist() for i in range(2, 6)]
    assert any(o != a["frame_index"].tolist() for o in others)


def test_uniform_clips_and_short_videos_repeat_the_last_frame():
    assert clip_indices(40, num_frames=4, stride=2, clips=1, position="uniform").tolist() == [[16, 18, 20, 22]]
    spread = clip_indices(100, num_frames=2, stride=1, clips=3, position="uniform")
    assert spread[:, 0].tolist() == [16, 49, 82]
    short = clip_indices(10, num_frames=4, stride=4, clips=1, rng=np.random.default_rng(0))
    assert short.tolist() == [[0, 4, 8, 9]]


def test_frame_pairs_respect_the_gap_range(video):
    gaps = []
    for i in range(200):
        pairs = gapped_indices(FRAMES, size=2, gap=(4, 48), sets=2, rng=sample_rng(0, 0, f"s{i}", "pair"))
        assert pairs.min() >= 0 and pairs.max() < FRAMES
        gaps.extend((pairs[:, 1] - pairs[:, 0]).tolist())
    assert min(gaps) >= 4 and max(gaps) <= 48
    assert min(gaps) <= 8 and max(gaps) >= 44  # the whole range is used
    assert max(gapped_indices(20, size=2, gap=(4, 48), sets=50, rng=np.random.default_rng(1))[:, 1]) <= 19
    with pytest.raises(PlanError):
        gapped_indices(4, size=2, gap=(4, 48), rng=np.random.default_rng(0))
    out = run(decode_frame_sets(size=None, frames=2, gap=(4, 48), sets=2, backend="pyav"), sample_of(video))
    assert out["video"].shape[:2] == (2, 2)
    assert indices_drawn(out["video"]) == out["frame_index"].tolist()


def test_reference_and_target_groups(video):
    out = run(decode_frame_sets(size=None, frames=4, gap=(2, 5), backend="decord"), sample_of(video))
    (group,) = out["frame_index"].tolist()
    assert len(set(np.diff(group).tolist())) == 1 and 2 <= group[1] - group[0] <= 5
    assert indices_drawn(out["video"]) == [group]


def test_decord_and_pyav_give_the_same_frames(video):
    a = run(decode_clips(size=None, num_frames=6, stride=5, clips=2, backend="decord"), sample_of(video))
    b = run(decode_clips(size=None, num_frames=6, stride=5, clips=2, backend="pyav"), sample_of(video))
    diff = (a["video"].gather().float() - b["video"].gather().float()).abs()
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_reduced_resolution_decode(video):
    for backend in ("decord", "pyav"):
        out = run(decode_clips(num_frames=4, stride=3, size=(32, 40), backend=backend), sample_of(video))
        assert out["video"].shape == (1, 4, 32, 40, 3)


def test_json_probe_data_is_used_without_probing(video):
    meta = {"frames": 30, "fps": 24.0, "width": 64, "height": 48, "keyframes": [0, 12, 24], "order": "pts"}
    out = run(decode_clips(size=None, num_frames=4, stride=8, clips=1, backend="pyav"), sample_of(video, json=meta))
    assert out["frame_index"].max() < 30  # the plan saw the json's frame count, not the file's 100
    assert out["json"] is meta


def test_json_from_an_older_probe_is_probed_again(video):
    meta = {"frames": 30, "fps": 24.0, "width": 64, "height": 48, "keyframes": [0, 12, 24]}  # no frame order
    out = run(decode_clips(size=None, num_frames=4, stride=30, clips=1, backend="pyav"), sample_of(video, json=meta))
    assert out["frame_index"].max() > 30  # planned from the file's own 100 frames


def test_clip_audio_is_aligned_and_sized(video):
    out = run(decode_clips(size=None, num_frames=8, stride=3, clips=2, backend="pyav", audio=True), sample_of(video))
    length = round(22 / 24 * 16000)  # frames first..last+1 at 24 fps
    assert out["audio"].shape == (2, length)
    assert out["audio_len"].tolist() == [length, length]
    assert float(out["audio"].abs().max()) > 0.1


def test_nvdec_backend_only_plans(video):
    out = run(decode_clips(size=None, num_frames=4, stride=2, backend="nvdec"), sample_of(video))
    assert out["mp4"] == video and out["decoder"] == "nvdec" and "video" not in out
    assert out["keyframes"][:3] == [0, 12, 24]


def test_corrupt_videos_become_skip_markers(video, tmp_path):
    garbage = make_corrupt(tmp_path / "g.mp4").read_bytes()
    samples = [sample_of(video[:1500], key="cut"), sample_of(garbage, key="junk"), sample_of(video, key="ok"),
               {"__key__": "nompeg", "json": {}}]
    for backend in ("decord", "pyav"):
        outs = list(decode_clips(size=None, num_frames=4, stride=2, backend=backend)(iter(samples)))
        assert [is_skipped(o) for o in outs] == [True, True, False, True]
        assert all("__skip__" in o and o["__key__"] == s["__key__"] for o, s in zip(outs, samples) if is_skipped(o))


def test_clip_frames_gather_only_what_is_used(video):
    """The decoder keeps each needed frame once; a clip (or its crop box) is gathered on demand, and the loader's
    collate writes all clips straight into the batch."""
    from pipelines.collate import collate
    from pipelines.frames import ClipFrames, clip_of

    out = run(decode_clips(size=None, num_frames=6, stride=2, clips=3, backend="pyav"), sample_of(video))
    frames = out["video"]
    assert isinstance(frames, ClipFrames) and frames.shape == (3, 6, 48, 64, 3)
    assert frames.frames.shape[0] == len(set(out["frame_index"].flatten().tolist()))  # overlapping clips: once each
    clips = frames.gather()
    assert indices_drawn(frames) == out["frame_index"].tolist()
    box = (5, 7, 20, 30)
    for j in range(3):
        assert torch.equal(frames.clip(j), clips[j])
        assert torch.equal(clip_of(frames, j, box), clips[j, :, 5:25, 7:37])
        assert torch.equal(clip_of(clips, j, box), clips[j, :, 5:25, 7:37])
    batch = collate([out, run(decode_clips(size=None, num_frames=6, stride=2, clips=3, backend="pyav"),
                              sample_of(video, key="other"))])
    assert batch["video"].shape == (2, 3, 6, 48, 64, 3) and torch.equal(batch["video"][0], clips)
