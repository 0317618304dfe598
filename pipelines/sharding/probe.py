"""Probing media with PyAV (and PIL for images): what the loader needs to sample clips without decoding twice.

A file that cannot be opened, or whose first frame cannot be decoded, raises `ProbeError` with the reason; the
sharding tool records it in errors.jsonl and goes on.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from pipelines.sharding.checks import check_video, describe_failure, describe_open_failure, source_size

__all__ = ["ProbeError", "display_indices", "display_rotation", "has_presentation_times", "probe_video", "probe_audio", "probe_image", "probe"]


class ProbeError(Exception):
    """A media file that cannot be used; the message says why."""


def _open(source: Path | bytes):
    import av

    # an empty file would only get ffmpeg's "Invalid data found": say what it is (a failed copy or download)
    if source_size(source) == 0 and (isinstance(source, bytes) or Path(source).is_file()):
        raise ProbeError("empty file (0 bytes); re-download or re-create it")
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise ProbeError(describe_open_failure(source, err)) from None


# containers whose packets carry presentation times; others (AVI) store frames in decode order with no real pts,
# and DivX/XviD "packed" B-frames make the pts that demuxing guesses for them wrong
_STAMPED = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "mpegts", "flv", "ogg", "nut")


def has_presentation_times(container) -> bool:
    """Whether a container's packets carry presentation times (MP4, Matroska, ...) rather than decode order."""
    return any(name in _STAMPED for name in container.format.name.split(","))


def display_indices(packets: list, stamped: bool) -> tuple[list[int], int]:
    """The display index of each demuxed packet's frame (decode order in, `packets` without empty ones), and how
    many frames are shown.

    With presentation times, frame i is the i-th shown pts. Packets an edit list hides (a clip cut with
    `ffmpeg -ss ... -c copy` keeps the GOP's lead-in, flagged discard) are decoded as references but never shown:
    they get indices below 0 (or past the end). Without times (AVI) the index is the decode position.
    """
    if not stamped or any(p.pts is None for p in packets):
        return list(range(len(packets))), len(packets)
    hidden = [bool(getattr(p, "is_discard", False)) for p in packets]
    shown = sorted(p.pts for p, h in zip(packets, hidden) if not h)
    if not shown:
        return list(range(len(packets))), len(packets)
    lead = sum(1 for p, h in zip(packets, hidden) if h and p.pts < shown[0])  # hidden frames before the first shown
    rank = {pts: i - lead for i, pts in enumerate(sorted(p.pts for p in packets))}
    return [rank[p.pts] for p in packets], len(shown)


def display_rotation(frame) -> int:
    """Clockwise degrees (0, 90, 180, 270) a decoded frame must be turned to be shown upright.

    PyAV gives the display matrix's counterclockwise angle; ffmpeg turns frames by its negative when it
    autorotates, and so does every decoder here.
    """
    angle = float(getattr(frame, "rotation", 0) or 0)
    return int(round(-angle / 90.0)) % 4 * 90


def probe_video(source: Path | bytes) -> dict[str, Any]:
    """fps, frame count, duration, keyframe indices, size, rotation, codec and audio stream of a video.

    Frame i is the i-th frame in presentation order, which is how ffmpeg counts: by presentation time in
    containers that store it ("order": "pts"), by decode position in those that do not (AVI; "order": "decode",
    where every packet is one frame and a GOP starts at its keyframe). `width` and `height` are the stored size;
    `rotation` (clockwise degrees) says how the decoders turn frames for display.
    """
    import av

    with _open(source) as container:
        if not container.streams.video:
            raise ProbeError("no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        stamped = has_presentation_times(container)
        try:
            # demuxing reads packets without decoding: cheap, and it gives the exact count and the keyframes
            packets = [p for p in container.demux(stream) if p.size]
            container.seek(0)
            first = next(container.decode(stream), None)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise ProbeError(describe_failure(source, err)) from None
        # packets come in decode order; B-frames make it differ from display order, so index keyframes by display
        # index; a keyframe an edit list hides is where decoding of the first shown frames starts: frame 0
        shown, count = display_indices(packets, stamped)
        keyframes = sorted({min(max(shown[i], 0), count - 1) for i, p in enumerate(packets) if p.is_keyframe})
        hidden = len(packets) - count
        if first is None or count == 0:
            raise ProbeError(describe_failure(source, "no decodable video frame"))
        audio = None
        if container.streams.audio:
            a = container.streams.audio[0]
            audio = {"rate": int(a.sample_rate or 0), "channels": int(a.channels or 0), "codec": a.codec_context.name}
        duration = count / fps if fps else float(container.duration or 0) / 1e6
        info = {"fps": fps, "frames": count, "duration": duration, "keyframes": keyframes,
                "width": int(stream.codec_context.width), "height": int(stream.codec_context.height),
                "rotation": display_rotation(first), "order": "pts" if stamped else "decode",
                "container": container.format.name, "codec": stream.codec_context.name, "audio": audio,
                "hidden": hidden}
    return check_video(source, info)


def probe_audio(source: Path | bytes) -> dict[str, Any]:
    """Sample rate, channels, sample count and duration of an audio file (decoded once to count exactly)."""
    import av

    with _open(source) as container:
        if not container.streams.audio:
            raise ProbeError("no audio stream")
        stream = container.streams.audio[0]
        samples = 0
        try:
            for frame in container.decode(stream):
                samples += frame.samples
        except (av.FFmpegError, OSError, ValueError) as err:
            raise ProbeError(describe_failure(source, err)) from None
        if samples == 0:
            raise ProbeError(describe_failure(source, "no decodable audio"))
        rate = int(stream.sample_rate)
        return {"rate": rate, "channels": int(stream.channels), "samples": samples, "duration": samples / rate,
                "codec": stream.codec_context.name}


def probe_image(source: Path | bytes) -> dict[str, Any]:
    """Size and format of an image, after a full decode (truncated files fail here, not in training)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            return {"width": img.width, "height": img.height, "format": (img.format or "").lower(),
                    "mode": img.mode}
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ProbeError(f"cannot decode image: {err}") from None


def probe(path: Path, modality: str) -> dict[str, Any]:
    """Probes a file as the given modality ("image"/"multimodal" use the image prober)."""
    if modality == "video":
        return probe_video(path)
    if modality == "audio":
        return probe_audio(path)
    return probe_image(path)
