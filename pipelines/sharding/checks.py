"""Probe-time checks of a video: what is not a video, what is cut short, and frame counts that its length belies.

`probe_video` counts the packets of a file by demuxing it; these checks then reject, with one line that names the
cause, the files that would otherwise go into a shard with wrong metadata:

- Not a video: a JPEG or PNG renamed `.mp4` opens in ffmpeg as a one-frame "video" (image2 or *_pipe demuxers).
  A one-frame file whose first bytes are an image's, or that one of those demuxers read, is rejected; the kind
  comes from the magic bytes, else from the demuxer's name. Only one-frame files: a motion-JPEG stream or an
  animated GIF starts like an image too, but its frames make it a video.
- Truncated: MP4, AVI and Matroska declare the byte size of their top-level boxes/chunks, so a cut file has one
  that runs past its end; reading those headers is a few small reads. A faststart MP4 cut in half still opens
  and lists every frame in its index, so this is the only cheap sign of it besides the missing data itself. For
  any container the tail is also checked: seeking to the last keyframe of the index (demuxing it all where
  there is no index, as in MPEG-TS) and decoding from there to the end must give frames without an error (at
  most `DECODE_LIMIT` packets are decoded, so long GOPs stay cheap; the whole file is never decoded).
- Frame count against duration, with a tolerance of 10 % and 2 frames for rounding and for the empty "N-VOP"
  packets of packed B-frames:
  * Containers with presentation times (MP4, Matroska, ...): the span of the packet timestamps is the video's
    real length. When the frame count over the average rate disagrees with it, the file has a variable (or a
    mis-declared) frame rate: playback follows the timestamps, so `fps` becomes frames / span and `duration`
    the span. That is corrected, not rejected, because such files are common (phones) and play correctly. The
    span is trusted only if it gives a plausible rate and agrees with the length the container declares for
    the video (the lead-in that an MP4 edit list hides is left out of that comparison: the declared length
    omits it, the probe's count includes it); otherwise the timestamps themselves are broken and the file is
    rejected.
  * Decode-order containers (AVI): packets carry no times (their pts are positions), so nothing can correct a
    wrong rate. The file is rejected when the header's frame count disagrees with the packets in the index (a
    broken index, or a header never finalised), or when the rate in the container disagrees with the rate the
    codec's bitstream declares (e.g. an AVI saying 150 fps around MPEG-4 video at 25 fps plays for a sixth of
    its real length). Decoders resolve such conflicts differently (decord and the transcoder read the header,
    the probe counts packets), so a guess would sample clips or align audio wrongly; re-encoding fixes the file.
  Audio tracks are not used as a length reference: they often run longer or shorter than the video.
"""

from __future__ import annotations

import io
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, NoReturn

__all__ = ["check_video", "describe_open_failure", "describe_failure", "image_kind", "read_layout", "source_size",
           "Layout", "DECODE_LIMIT"]

DECODE_LIMIT = 240  # packets decoded from the last keyframe on: a bound on the check's cost for long GOPs
TOLERANCE = 0.1  # relative disagreement between two lengths that is still accepted
MIN_FRAMES = 2  # ... and the absolute one, in frames
PLAUSIBLE_FPS = (0.5, 1000.0)  # average rates outside this mean broken timestamps (wraps, jumps), not VFR
_FIX = "re-download or re-copy it"

# magic bytes of the image formats that ffmpeg opens as a one-frame video
_IMAGE_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
                (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))

# top-level ISO BMFF boxes; an unknown type means trailing junk, which is no evidence of a cut
_MP4_BOXES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pnot", b"pdin", b"moof",
              b"mfra", b"meta", b"sidx", b"ssix", b"prft", b"emsg", b"junk"}


def _fail(message: str) -> NoReturn:
    from pipelines.sharding.probe import ProbeError  # probe.py imports this module: import when raising

    raise ProbeError(message)


@contextmanager
def _reader(source: Path | bytes) -> Iterator[BinaryIO]:
    if isinstance(source, bytes):
        yield io.BytesIO(source)
    else:
        with open(source, "rb") as f:
            yield f


def source_size(source: Path | bytes) -> int:
    """Bytes in the source (0 for a missing file, which opening then reports)."""
    if isinstance(source, bytes):
        return len(source)
    return Path(source).stat().st_size if Path(source).is_file() else 0


def image_kind(head: bytes, demuxer: str, codec: str, frames: int) -> str | None:
    """The image format ("JPEG", "PNG", ...) of a probed one-frame file, or None if it is a video.

    Args:
        head: the file's first bytes (16 are enough).
        demuxer: ffmpeg's format name; its image2 and "*_pipe" demuxers are the ones that read still images.
        codec: the video codec's name, to name an image the magic bytes do not.
        frames: the frame count: a motion-JPEG stream or an animated GIF starts like an image but is a video.
    """
    if frames > 1:
        return None
    magic = next((kind for prefix, kind in _IMAGE_MAGIC if head.startswith(prefix)), None)
    if magic is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        magic = "WebP"
    if magic is None and (demuxer == "image2" or demuxer.endswith("_pipe")):
        name = demuxer[:-5] if demuxer.endswith("_pipe") else codec
        magic = {"mjpeg": "JPEG", "jpeg": "JPEG"}.get(name, name.upper())
    return magic


@dataclass(frozen=True)
class Layout:
    """What the top-level structure of an MP4, AVI or Matroska file says about its size.

    Attributes:
        kind: "MP4", "AVI", "WAV" or "Matroska"; "" for other formats (nothing is known then).
        cut: (element, end byte) of the first top-level element that runs past the end of the file, or None.
        boxes: the top-level box types of an MP4 (to tell a missing moov).
    """

    kind: str = ""
    cut: tuple[str, int] | None = None
    boxes: frozenset[str] = field(default_factory=frozenset)


def read_layout(source: Path | bytes) -> Layout:
    """Reads the top-level boxes (MP4), RIFF chunks (AVI) or the Segment size (Matroska) of a file."""
    size = source_size(source)
    if size == 0:  # empty or missing: nothing to read
        return Layout()
    with _reader(source) as f:
        head = f.read(12)
        if len(head) < 12:
            return Layout()
        if head[4:8] in _MP4_BOXES:
            return _mp4_layout(f, size)
        if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"WAVE"):
            return _riff_layout(f, size, "AVI" if head[8:12] == b"AVI " else "WAV")
        if head[:4] == b"\x1a\x45\xdf\xa3":
            return _ebml_layout(f, size)
    return Layout()


def _mp4_layout(f: BinaryIO, size: int) -> Layout:
    boxes, at = [], 0
    while at + 8 <= size and len(boxes) < 100_000:  # fragmented MP4s have a moof/mdat pair per fragment
        f.seek(at)
        head = f.read(16)
        length, kind = int.from_bytes(head[:4], "big"), head[4:8]
        if kind not in _MP4_BOXES:
            break
        boxes.append(kind.decode())
        if length == 1:  # 64-bit size follows the type
            length = int.from_bytes(head[8:16], "big")
        elif length == 0:  # "to the end of the file": a recorder that never finished writes this
            break
        if length < 8:
            break
        if at + length > size:
            return Layout("MP4", (f"{kind.decode()} box", at + length), frozenset(boxes))
        at += length
    return Layout("MP4", None, frozenset(boxes))


def _riff_layout(f: BinaryIO, size: int, kind: str) -> Layout:
    at = 0
    while at + 12 <= size:  # RIFF 'AVI ' and then, in OpenDML files over 1 GB, RIFF 'AVIX' chunks
        f.seek(at)
        head = f.read(12)
        length = int.from_bytes(head[4:8], "little")
        if head[:4] != b"RIFF" or length < 4:  # some writers leave the size 0: no verdict then
            break
        end = at + 8 + length + (length & 1)
        if end > size:
            return Layout(kind, (f"RIFF {head[8:12].decode(errors='replace').strip()} chunk", end))
        at = end
    return Layout(kind)


def _ebml_number(f: BinaryIO, keep_marker: bool) -> tuple[int, bool] | None:
    first = f.read(1)
    if not first or first[0] == 0:
        return None
    length = 9 - first[0].bit_length()  # the count of leading zero bits says how many bytes follow
    rest = f.read(length - 1)
    value = first[0] if keep_marker else first[0] & (0xFF >> length)
    value = int.from_bytes(bytes([value]) + rest, "big")
    return value, not keep_marker and value == (1 << (7 * length)) - 1  # all ones: "unknown size"


def _ebml_layout(f: BinaryIO, size: int) -> Layout:
    f.seek(4)
    header = _ebml_number(f, keep_marker=False)
    if header is None:
        return Layout("Matroska")
    f.seek(f.tell() + header[0])
    element, length = _ebml_number(f, keep_marker=True), _ebml_number(f, keep_marker=False)
    if element is None or length is None or element[0] != 0x18538067 or length[1]:  # not a Segment, or live
        return Layout("Matroska")
    end = f.tell() + length[0]
    return Layout("Matroska", ("Segment", end) if end > size else None)


def describe_open_failure(source: Path | bytes, err: Exception) -> str:
    """The one-line reason why ffmpeg could not open a media file, from its error and the file's own bytes."""
    reason = _reason(err)
    layout = read_layout(source)
    if layout.kind == "MP4" and "moov" not in layout.boxes:
        where = (f": it ends at byte {source_size(source)} inside its {layout.cut[0]}, which runs to byte "
                 f"{layout.cut[1]}" if layout.cut else "")
        return f"cannot open (moov atom missing; the file is probably truncated{where}); {_FIX}"
    if layout.cut:
        return (f"cannot open: truncated {layout.kind} (it ends at byte {source_size(source)} but its "
                f"{layout.cut[0]} runs to byte {layout.cut[1]}); {_FIX}")
    if isinstance(err, EOFError):  # the headers themselves are cut off
        return f"cannot open: truncated (the file ends inside its headers, at byte {source_size(source)}); {_FIX}"
    if "Invalid data" in reason:  # AVERROR_INVALIDDATA: no demuxer recognised the bytes
        return (f"cannot open: not a video or audio file (ffmpeg recognises no format in its bytes: {reason}); "
                f"re-download or remove it")
    return f"cannot open: {reason}"


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)  # ffmpeg's text without its errno and the file path


def describe_failure(source: Path | bytes, reason: str | Exception) -> str:
    """A decode failure as one line: "truncated: ..." when the file is cut short, else the reason itself."""
    text = reason if isinstance(reason, str) else f"cannot decode: {_reason(reason)}"
    layout = read_layout(source)
    if layout.cut:
        return (f"truncated: the file ends at byte {source_size(source)} but its {layout.cut[0]} runs to byte "
                f"{layout.cut[1]} ({text}); {_FIX}")
    return text


@dataclass
class _Tail:
    """The video packets from the last keyframe to the end, and what decoding them gave."""

    start_pts: int | None = None  # the smallest pts at the start of the file
    last_pts: int | None = None  # the largest pts seen at the end
    end_pts: int | None = None  # the largest pts + duration seen at the end
    gop: list = field(default_factory=list)  # the last GOP's first packets (up to DECODE_LIMIT), keyframe first
    decoded: int = 0
    error: str | None = None


def _demux_tail(container, stream, *, from_end: bool) -> _Tail:
    import av

    tail = _Tail()
    if from_end:
        try:
            container.seek(2**62, stream=stream, backward=True, any_frame=False)  # the index's last keyframe
        except av.FFmpegError:
            return tail
    else:
        container.seek(0)
    for packet in container.demux(stream):
        if not packet.size:
            continue
        if packet.pts is not None:
            tail.last_pts = packet.pts if tail.last_pts is None else max(tail.last_pts, packet.pts)
            end = packet.pts + max(int(packet.duration or 0), 0)
            tail.end_pts = end if tail.end_pts is None else max(tail.end_pts, end)
        if packet.is_keyframe:
            tail.gop = []
        if (packet.is_keyframe or tail.gop) and len(tail.gop) < DECODE_LIMIT:  # a long GOP is decoded in part
            tail.gop.append(packet)
    return tail


def _scan_tail(container, stream) -> _Tail:
    """Demuxes the head and the last GOP of the video and decodes that GOP (bounded by DECODE_LIMIT)."""
    import av

    head = []
    for packet in container.demux(stream):  # the first packets hold the smallest pts, B-frames reordered or not
        if packet.size and packet.pts is not None:
            head.append(packet.pts)
        if len(head) >= 32:
            break
    tail = _demux_tail(container, stream, from_end=True)
    if not tail.gop:  # no index to seek with (MPEG-TS, raw streams): demux it all, keeping only the last GOP
        tail = _demux_tail(container, stream, from_end=False)
    tail.start_pts = min(head) if head else None
    try:
        for packet in tail.gop + [None]:  # None flushes the frames the decoder holds back
            tail.decoded += len(stream.codec_context.decode(packet))
    except (av.FFmpegError, ValueError) as err:
        tail.error = _reason(err)
    return tail


def _disagree(measured: float, expected: float, frame: float) -> bool:
    return abs(measured - expected) > max(TOLERANCE * expected, MIN_FRAMES * frame)


def _mismatch(frames: int, duration: float, fps: float, why: str, fix: str = "re-encode or re-download it") -> str:
    return f"frame count {frames} does not match duration {duration:.2f} s at {fps:.4g} fps ({why}); {fix}"


def _declared_length(container, stream) -> float | None:
    """The video's length as the container declares it (not from counting), in seconds; None if unknown."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", str(stream.metadata.get("DURATION", "")).strip())
    if tag:  # Matroska keeps per-track durations in a tag
        hours, minutes, seconds = tag.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if container.duration and len(container.streams) == 1:  # the container's length is the video's only then
        return container.duration / 1e6
    return None


def _check_times(container, stream, info: dict[str, Any], tail: _Tail) -> dict[str, Any]:
    """Frame count against the span of presentation times; corrects fps/duration for variable frame rates."""
    frames, fps = int(info["frames"]), float(info["fps"])
    if frames < 2 or tail.start_pts is None or tail.end_pts is None or not stream.time_base:
        return info
    end = tail.end_pts
    if end == tail.last_pts:  # packets without durations leave the last frame out: add a mean interval
        end += (end - tail.start_pts) / (frames - 1)
    # an MP4 edit list hides a lead-in before the stream's start time: the probe's count and the declared
    # length both leave it out, so both are compared with the span of the frames shown
    shown_start = max(tail.start_pts, stream.start_time if stream.start_time is not None else tail.start_pts)
    shown = float((end - shown_start) * stream.time_base)
    span = shown if info.get("hidden") else float((end - tail.start_pts) * stream.time_base)
    if span <= 0:
        _fail(f"broken timestamps: the frames' presentation times span {span:.3f} s; re-encode it")
    declared = _declared_length(container, stream)
    if fps > 0 and not _disagree(frames / fps, span, 1 / fps):
        if declared is not None and _disagree(declared, shown, 1 / fps):
            _fail(_mismatch(frames, declared, fps, f"its frames span {shown:.2f} s; truncated or broken index?"))
        return info
    rate = frames / span
    if not PLAUSIBLE_FPS[0] <= rate <= PLAUSIBLE_FPS[1] or (declared is not None and _disagree(declared, shown,
                                                                                              1 / rate)):
        _fail(_mismatch(frames, declared or span, fps, f"its frames span {span:.2f} s; broken timestamps?"))
    return {**info, "fps": rate, "duration": span}  # variable frame rate: the timestamps are the truth


def _check_decode_order(stream, info: dict[str, Any]) -> None:
    """Frame count against the header's and the codec's frame rate in a container without presentation times."""
    frames, fps = int(info["frames"]), float(info["fps"])
    if fps <= 0:
        _fail("no frame rate: the container declares none and its frames carry no times; "
              "re-encode it with the rate given (ffmpeg -r FPS -i ...)")
    codec_rate = stream.codec_context.framerate
    codec_fps = float(codec_rate) if codec_rate and codec_rate.denominator else 0.0
    if codec_fps > 0 and _disagree(frames / fps, frames / codec_fps, 1 / fps):
        _fail(_mismatch(frames, frames / codec_fps, fps,
                        f"the container says {fps:.4g} fps but its {stream.codec_context.name} video says "
                        f"{codec_fps:.4g} fps; broken header?",
                        f"re-encode it at its real rate (ffmpeg -r {codec_fps:.4g} -i FILE OUT.mp4)"))


def check_video(source: Path | bytes, info: dict[str, Any]) -> dict[str, Any]:
    """Checks a probed video against its own file; raises `ProbeError` with the cause if it is unusable.

    Args:
        source: the file (or its bytes) that `probe_video` read.
        info: `probe_video`'s result (fps, frames, duration, keyframes, order, container, codec, ...).

    Returns:
        The info, with `fps` and `duration` taken from the timestamps for a variable frame rate video.
    """
    import av

    with _reader(source) as f:
        head = f.read(16)
    kind = image_kind(head, str(info.get("container", "")), str(info.get("codec", "")), int(info["frames"]))
    if kind:
        _fail(f"not a video (it is a {kind} image); store it as an image or remove it")
    frames = int(info["frames"])
    with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
        stream = container.streams.video[0]
        declared = int(stream.frames or 0)
        present = f"{frames} of {declared} frames are present" if declared > frames else f"{frames} frames read"
        layout = read_layout(source)
        if layout.cut:
            _fail(f"truncated: the file ends at byte {source_size(source)} but its {layout.cut[0]} runs to byte "
                  f"{layout.cut[1]} ({present}); {_FIX}")
        tail = _scan_tail(container, stream)
        if tail.error or tail.decoded == 0:
            _fail(f"truncated or damaged at the end: the last frames do not decode "
                  f"({tail.error or 'no frame came out'}); {_FIX}")
        stored = frames + int(info.get("hidden", 0))  # the header counts frames an edit list hides too
        if declared and _disagree(stored, declared, 1):
            fps = float(info["fps"]) or 1.0
            _fail(_mismatch(frames, declared / fps, fps, f"the header lists {declared} frames; broken index?"))
        if info.get("order") == "pts":
            info = _check_times(container, stream, info, tail)
        else:
            _check_decode_order(stream, info)
    return info
