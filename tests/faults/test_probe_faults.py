"""Files that are not videos or are cut short, and frame counts their length belies: `probe_video` must reject
each with one line that names the cause (and the sharding tool record it), and must let good files through."""

from __future__ import annotations

import json
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import realmedia
from media import make_image, make_video, video_frame

from pipelines.sharding.probe import ProbeError, probe_audio, probe_video
from pipelines.sharding.samples import Transcode
from pipelines.sharding.tool import ShardOptions, run_sharding


def encode(path: Path, options: list[str], *, frames: int = 132, width: int = 160, height: int = 120) -> Path:
    """Encodes `frames` test frames at 25 fps with the ffmpeg command and the given output options."""
    raw = b"".join(video_frame(i, width, height).tobytes() for i in range(frames))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                    "-r", "25", "-i", "-", *options, str(path)], input=raw, check=True)
    return path


def half(path: Path, out: Path) -> Path:
    """The first half of a file, as an interrupted download leaves it."""
    data = path.read_bytes()
    out.write_bytes(data[:len(data) // 2])
    return out


def patch_avi(path: Path, out: Path, **fields: int) -> Path:
    """Rewrites fields of the video stream header (strh) of an AVI: scale, rate (fps = rate / scale), length."""
    offsets = {"scale": 20, "rate": 24, "length": 32}  # from the start of the strh body
    data = bytearray(path.read_bytes())
    body = data.index(b"strh") + 8  # the first stream header: ffmpeg writes the video stream first
    assert data[body:body + 4] == b"vids"
    for name, value in fields.items():
        data[body + offsets[name]:body + offsets[name] + 4] = struct.pack("<I", value)
    out.write_bytes(bytes(data))
    return out


def reason(source) -> str:
    with pytest.raises(ProbeError) as caught:
        probe_video(source)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder of files made without the ffmpeg command: one good video and the faults PyAV can make."""
    root = tmp_path_factory.mktemp("probe-faults")
    make_video(root / "good.mp4", frames=132, width=96, height=64)  # moov at the end, as PyAV writes it
    make_image(root / "photo.jpg")
    make_image(root / "drawing.png")
    (root / "photo.mp4").write_bytes((root / "photo.jpg").read_bytes())
    (root / "drawing.mp4").write_bytes((root / "drawing.png").read_bytes())
    (root / "empty.mp4").write_bytes(b"")
    (root / "noise.mp4").write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    half(root / "good.mp4", root / "cut.mp4")
    return root


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    """Files the ffmpeg command makes: a faststart MP4 cut in half, AVIs with wrong headers, a VFR Matroska."""
    root = tmp_path_factory.mktemp("probe-faults-ffmpeg")
    encode(root / "faststart.mp4", ["-c:v", "libx264", "-g", "12", "-pix_fmt", "yuv420p", "-movflags", "+faststart"])
    half(root / "faststart.mp4", root / "cut_faststart.mp4")
    encode(root / "clip.avi", ["-c:v", "mpeg4", "-q:v", "3"], frames=100)
    patch_avi(root / "clip.avi", root / "wrong_rate.avi", rate=150)  # 100 frames of 25 fps video said to be 150 fps
    patch_avi(root / "clip.avi", root / "wrong_length.avi", length=700)  # a header that lists 700 frames
    realmedia.make_real_videos(root, [name for name in realmedia.REAL_VIDEOS if name != "hd_h264.mp4"])
    return root


def test_empty_file_says_empty(media: Path, tmp_path: Path) -> None:
    assert reason(media / "empty.mp4").startswith("empty file (0 bytes)")
    assert reason(b"").startswith("empty file (0 bytes)")
    (tmp_path / "empty.flac").write_bytes(b"")
    with pytest.raises(ProbeError, match=r"^empty file \(0 bytes\)"):
        probe_audio(tmp_path / "empty.flac")


def test_jpeg_named_mp4_is_not_a_video(media: Path) -> None:
    assert reason(media / "photo.mp4").startswith("not a video (it is a JPEG image)")
    assert reason((media / "photo.mp4").read_bytes()).startswith("not a video (it is a JPEG image)")


def test_png_named_mp4_is_not_a_video(media: Path) -> None:
    assert reason(media / "drawing.mp4").startswith("not a video (it is a PNG image)")


def test_random_bytes_are_not_a_video(media: Path) -> None:
    message = reason(media / "noise.mp4")
    assert message.startswith("cannot open: not a video") and "re-download or remove it" in message


@realmedia.needs_ffmpeg
def test_half_cut_faststart_mp4_is_truncated(encoded: Path) -> None:
    # the index at the front still lists all 132 frames: only the file's own size gives the cut away
    assert probe_video(encoded / "faststart.mp4")["frames"] == 132
    message = reason(encoded / "cut_faststart.mp4")
    assert message.startswith("truncated: the file ends at byte ") and "mdat box" in message, message
    assert " of 132 frames are present" in message and "re-download" in message


def test_half_cut_normal_mp4_is_truncated(media: Path) -> None:
    assert probe_video(media / "good.mp4")["frames"] == 132
    message = reason(media / "cut.mp4")
    assert message.startswith("cannot open (moov atom missing; the file is probably truncated"), message


@realmedia.needs_ffmpeg
@pytest.mark.parametrize("name", ["clip.avi", "mpeg4.mkv", "vp9.webm", "xvid_packed.avi"])
def test_cut_avi_and_matroska_are_truncated(encoded: Path, tmp_path: Path, name: str) -> None:
    message = reason(half(encoded / name, tmp_path / name))
    assert message.startswith("truncated: the file ends at byte ") and "re-download" in message, message


@realmedia.needs_ffmpeg
def test_avi_with_a_wrong_frame_rate_is_rejected(encoded: Path) -> None:
    info = probe_video(encoded / "clip.avi")
    assert (info["frames"], info["fps"], info["duration"]) == (100, 25.0, 4.0)
    message = reason(encoded / "wrong_rate.avi")
    assert message.startswith("frame count 100 does not match duration 4.00 s at 150 fps ("), message
    assert "its mpeg4 video says 25 fps" in message and "ffmpeg -r 25" in message


@realmedia.needs_ffmpeg
def test_avi_whose_header_lists_more_frames_is_rejected(encoded: Path) -> None:
    message = reason(encoded / "wrong_length.avi")
    assert message.startswith("frame count 100 does not match duration 28.00 s at 25 fps ("), message
    assert "broken index?" in message


@realmedia.needs_ffmpeg
def test_vfr_video_passes_with_its_real_duration(encoded: Path) -> None:
    info = probe_video(encoded / "vfr.mkv")
    shown = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "json",
                                       str(encoded / "vfr.mkv")], capture_output=True, check=True).stdout)
    duration = float(shown["format"]["duration"])  # 3.36 s: frame times step by 1/25 s and, every 7th, by 4/25 s
    assert info["frames"] == 60 and info["duration"] == pytest.approx(duration, abs=1e-3)
    assert info["fps"] == pytest.approx(60 / duration, rel=1e-3)  # the average rate, not the declared 25


@realmedia.needs_ffmpeg
@pytest.mark.parametrize("name", [n for n in realmedia.REAL_VIDEOS if n not in ("hd_h264.mp4", "vfr.mkv")])
def test_good_real_videos_pass_unchanged(encoded: Path, name: str) -> None:
    info = probe_video(encoded / name)
    assert info["fps"] == 25.0 and info["duration"] == pytest.approx(info["frames"] / 25.0)
    assert abs(info["frames"] - realmedia.REAL_VIDEOS[name][2]) <= 2  # packed B-frames leave 2 empty packets out


@realmedia.needs_ffmpeg
def test_sharding_records_each_cause(media: Path, encoded: Path, tmp_path: Path) -> None:
    src = tmp_path / "videos"
    src.mkdir()
    names = {"good.mp4": media, "empty.mp4": media, "photo.mp4": media, "drawing.mp4": media, "noise.mp4": media,
             "cut.mp4": media, "cut_faststart.mp4": encoded, "wrong_rate.avi": encoded,
             "wrong_length.avi": encoded, "vfr.mkv": encoded, "h264_bframes.mp4": encoded}
    for name, root in names.items():
        (src / name).write_bytes((root / name).read_bytes())
    summary = run_sharding(src, tmp_path / "out", ShardOptions(modality="video", samples_per_shard=2),
                           progress=False)
    assert summary["complete"] and summary["samples"] == 3 and summary["errors"] == 8
    errors = {Path(e["path"]).name: e["reason"]
              for e in map(json.loads, (tmp_path / "out" / "errors.jsonl").read_text().splitlines())}
    expected = {"empty.mp4": "ProbeError: empty file (0 bytes)",
                "photo.mp4": "ProbeError: not a video (it is a JPEG image)",
                "drawing.mp4": "ProbeError: not a video (it is a PNG image)",
                "noise.mp4": "ProbeError: cannot open: not a video",
                "cut.mp4": "ProbeError: cannot open (moov atom missing; the file is probably truncated",
                "cut_faststart.mp4": "ProbeError: truncated: ",
                "wrong_rate.avi": "ProbeError: frame count 100 does not match duration 4.00 s at 150 fps",
                "wrong_length.avi": "ProbeError: frame count 100 does not match duration 28.00 s at 25 fps"}
    assert errors.keys() == expected.keys()
    for name, start in expected.items():
        assert errors[name].startswith(start), (name, errors[name])
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    metas = {}
    for shard in index["shards"]:
        with tarfile.open(tmp_path / "out" / shard["name"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    metas[meta["source"]] = meta
    assert sorted(metas) == ["good.mp4", "h264_bframes.mp4", "vfr.mkv"]
    assert metas["vfr.mkv"]["duration"] == pytest.approx(3.36, abs=1e-3) and metas["good.mp4"]["frames"] == 132


@realmedia.needs_ffmpeg
def test_transcoding_checks_the_source_first(media: Path, encoded: Path, tmp_path: Path) -> None:
    """--transcode re-encodes what it can decode; a photo named .mp4 or a cut file must not become a video."""
    src = tmp_path / "videos"
    src.mkdir()
    for name, root in {"good.mp4": media, "photo.mp4": media, "cut_faststart.mp4": encoded,
                       "wrong_length.avi": encoded}.items():
        (src / name).write_bytes((root / name).read_bytes())
    summary = run_sharding(src, tmp_path / "out", ShardOptions(modality="video", transcode=Transcode(enabled=True)),
                           progress=False)
    errors = {Path(e["path"]).name: e["reason"]
              for e in map(json.loads, (tmp_path / "out" / "errors.jsonl").read_text().splitlines())}
    assert summary["samples"] == 1 and sorted(errors) == ["cut_faststart.mp4", "photo.mp4", "wrong_length.avi"]
    assert errors["photo.mp4"].startswith("ProbeError: not a video")
