"""A folder of videos as varied as real collections, encoded by the ffmpeg command (as cameras and tools do).

Each file has its own size, aspect ratio, container and codec: H.264 with B-frames, HEVC, VP9 in WebM, MJPEG and
XVID with packed B-frames in AVI, MPEG-4 and 10-bit HEVC in Matroska, a phone-style clip with rotation metadata, and one at a
variable frame rate, and a clip cut without re-encoding (an edit list hides its lead-in). Frame i draws its index into the top-left blocks (`tests.media.video_frame`), so a decoded
frame can be traced back to its source frame as well as compared with ffmpeg's own decode (`ffmpeg_frames`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from media import video_frame

__all__ = ["REAL_VIDEOS", "CUT_VIDEOS", "ALL_VIDEOS", "make_real_videos", "ffmpeg_frames", "needs_ffmpeg"]

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command (apt ffmpeg)")

# name -> (width, height, frames, ffmpeg output options); sizes span 176x144 to 1280x720
REAL_VIDEOS: dict[str, tuple[int, int, int, list[str]]] = {
    "h264_bframes.mp4": (176, 144, 60, ["-c:v", "libx264", "-bf", "3", "-g", "24", "-pix_fmt", "yuv420p"]),
    "hevc.mp4": (320, 240, 48, ["-c:v", "libx265", "-x265-params", "log-level=error:bframes=4:keyint=20",
                                "-pix_fmt", "yuv420p", "-tag:v", "hvc1"]),
    "hevc_10bit.mkv": (272, 160, 30, ["-c:v", "libx265", "-x265-params", "log-level=error:keyint=15",
                                      "-pix_fmt", "yuv420p10le"]),
    "vp9.webm": (256, 144, 48, ["-c:v", "libvpx-vp9", "-g", "16", "-deadline", "realtime", "-cpu-used", "8",
                                "-b:v", "800k"]),
    "mjpeg.avi": (240, 180, 40, ["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"]),
    "xvid_packed.avi": (320, 180, 60, ["-c:v", "libxvid", "-bf", "2", "-g", "30", "-q:v", "3"]),
    "mpeg4.mkv": (208, 160, 48, ["-c:v", "mpeg4", "-bf", "2", "-g", "20", "-q:v", "3"]),
    "hd_h264.mp4": (1280, 720, 24, ["-c:v", "libx264", "-bf", "2", "-g", "12", "-preset", "ultrafast",
                                    "-pix_fmt", "yuv420p"]),
    "rotated.mp4": (320, 240, 40, ["-c:v", "libx264", "-bf", "2", "-g", "20", "-pix_fmt", "yuv420p",
                                   "-movflags", "+faststart"]),
    "vfr.mkv": (192, 144, 60, ["-c:v", "libx264", "-bf", "2", "-g", "20", "-pix_fmt", "yuv420p"]),
}


# name -> (source, input options, output options): files cut from another without re-encoding, as editors do;
# the cut keeps the GOP's lead-in and hides it with an edit list
CUT_VIDEOS: dict[str, tuple[str, list[str], list[str]]] = {
    "cut_editlist.mp4": ("h264_bframes.mp4", ["-ss", "0.5"], ["-c", "copy"]),
}
ALL_VIDEOS = [*REAL_VIDEOS, *CUT_VIDEOS]


def _frames(width: int, height: int, count: int) -> bytes:
    return b"".join(video_frame(i, width, height).tobytes() for i in range(count))


def make_real_videos(root: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Writes the videos of `ALL_VIDEOS` (or the named ones) into root; name -> path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    names = names or ALL_VIDEOS
    for name in [n for n in names if n in CUT_VIDEOS]:  # their sources first
        if CUT_VIDEOS[name][0] not in names:
            names = [CUT_VIDEOS[name][0], *names]
    for name in [n for n in names if n in REAL_VIDEOS]:
        width, height, count, options = REAL_VIDEOS[name]
        source = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", "25", "-i", "-"]
        if name.startswith("vfr"):
            # frame times jump between 1/50 s and 1/10 s, as a phone's do when light or motion changes
            source += ["-vf", "setpts='(N+floor(N/7)*3)/(25*TB)'", "-fps_mode", "passthrough"]
        path = root / name
        subprocess.run(["ffmpeg", "-v", "error", "-y", *source, *options, str(path)],
                       input=_frames(width, height, count), check=True)
        if name.startswith("rotated"):
            _rotate_90(path)
        out[name] = path
    for name in [n for n in names if n in CUT_VIDEOS]:
        source, before, after = CUT_VIDEOS[name]
        subprocess.run(["ffmpeg", "-v", "error", "-y", *before, "-i", str(out[source]), *after, str(root / name)],
                       check=True)
        out[name] = root / name
    return out


def _rotate_90(path: Path) -> None:
    """Sets the track matrix of an MP4 to a 90-degree turn, as a phone held upright writes it (the ffmpeg here
    has no option that writes one)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4  # the box body: version and flags, times, ids, then the matrix at +40
    version = data[at]
    matrix = at + (52 if version == 1 else 40)
    # (a, b, u, c, d, v, x, y, w) in 16.16 and 2.30 fixed point: x' = -y, y' = x, i.e. turned clockwise
    values = [0, 1 << 16, 0, -(1 << 16) & 0xFFFFFFFF, 0, 0, 0, 0, 1 << 30]
    data[matrix:matrix + 36] = b"".join(v.to_bytes(4, "big") for v in values)
    path.write_bytes(bytes(data))


def ffmpeg_frames(path: Path) -> np.ndarray:
    """Every frame as ffmpeg decodes it, in its output order, rotation applied, none dropped or repeated:
    (N, H, W, 3) uint8."""
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams",
                                       "-of", "json", str(path)], capture_output=True, check=True).stdout)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    stream = probe["streams"][0]
    width, height = int(stream["width"]), int(stream["height"])
    rotation = int(stream.get("tags", {}).get("rotate", 0))
    for side in stream.get("side_data_list", []):
        rotation = int(side.get("rotation", rotation))
    if rotation % 180:
        width, height = height, width
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)  # (N, H, W, 3)
