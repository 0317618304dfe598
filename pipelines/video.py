"""Video decode for workers: plan the frames a sample needs, decode only those, stack k clips from one decode.

Frame i is the i-th frame in presentation order, counted as ffmpeg counts it, and every frame comes out turned
upright by the file's display matrix, whichever backend decodes it. Backends (the one that decoded is written to
`decoder`), chosen per file by "auto", the default:
- "decord" (one thread per worker) for H.264, VP8/9 and MJPEG in containers with presentation times (MP4, MOV,
  Matroska, WebM, ...): `get_batch` seeks to the keyframe before each needed frame and scales inside FFmpeg;
- "pyav" for the rest (HEVC, MPEG-4 Part 2, anything in AVI: decord's seeks return wrong frames there, DivX/XviD
  packed B-frames included) and where decord is not installed: demuxes once (packets only), then decodes from the keyframe before
  each needed frame and stops at the last one, skipping GOPs no clip touches; also decord's fallback;
- "nvdec": the worker only plans; the encoded bytes and the plan go to the device stage (`pipelines.nvdec`).
The video is the sample's first entry with a video extension, so a folder of .mp4, .avi, .webm and .mkv files
needs no option. Frame planning is `pipelines.clips`, drawn from the sample's generator, so it is the same for
every backend.

The output `video` is a `ClipFrames` (`pipelines.frames`): the distinct decoded frames and which of them make each
of the k clips, gathered into uint8 clips (k, T, H, W, 3) only where they are used (a crop in the worker, or the
loader's collate, which writes them straight into the batch); the device stage folds k into the batch. Frames are
scaled (by the decoder) to cover `size` (H, W) and centre-cropped, 256 x 256 unless the config says otherwise, so
videos of every size and aspect ratio batch together; `size: null` keeps each video's own size.
"""

from __future__ import annotations

import functools
import io
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from pipelines.clips import clip_indices, gapped_indices
from pipelines.frames import ClipFrames
from mmssl.rng import sample_rng
from pipelines.sample import Sample, guarded
from pipelines.sharding.probe import display_indices, display_rotation, has_presentation_times, probe_video

__all__ = ["decode_clips", "decode_frame_sets", "decode_frames", "cover_size", "display_size", "video_member",
           "BACKENDS", "VIDEO_EXTS", "DEFAULT_SIZE"]

BACKENDS = ("auto", "decord", "pyav", "nvdec")
Planner = Callable[[int, np.random.Generator], np.ndarray]


def cover_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """The smallest (width, height) with the source's aspect ratio that covers `size` = (H, W)."""
    scale = max(size[0] / height, size[1] / width)
    return max(size[1], round(width * scale)), max(size[0], round(height * scale))


VIDEO_EXTS = ("mp4", "m4v", "mov", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "m2ts", "mts", "flv", "ogv", "3gp",
              "wmv", "asf", "dv", "vob", "y4m", "nut")
DECORD_CODECS = ("h264", "vp8", "vp9", "mjpeg")  # where decord's seeks give ffmpeg's frames (`_backend_for`)
DEFAULT_SIZE = (256, 256)  # VideoMAE-style: frames of any size come out as one shape a crop can be cut from


def _centre_crop(frames: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Centre crop of (N, H, W, 3) frames to size (H, W)."""
    if size is None:
        return frames
    h, w = frames.shape[1:3]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return frames[:, top:top + size[0], left:left + size[1]]


def display_size(meta: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of a probed video as shown: the stored size, turned by its rotation."""
    width, height = int(meta["width"]), int(meta["height"])
    return (height, width) if int(meta.get("rotation", 0)) % 180 else (width, height)


def video_member(sample: Sample, key: str | None = None) -> str:
    """The entry of a sample that holds its encoded video: `key` when given, else the first video extension."""
    if key is not None:
        if key not in sample:
            raise KeyError(f"sample has no {key!r} entry (it has {sorted(k for k in sample if not k.startswith('__'))})")
        return key
    for name in sample:
        if name.rsplit(".", 1)[-1].lower() in VIDEO_EXTS:
            return name
    raise KeyError(f"sample has no video entry (it has {sorted(k for k in sample if not k.startswith('__'))}); "
                   f"known video extensions: {', '.join(VIDEO_EXTS)}")


def _decord_frames(data: bytes, wanted: np.ndarray, scaled: tuple[int, int] | None) -> torch.Tensor:
    """Frames `wanted` (sorted unique indices) as (N, H, W, 3) uint8, upright, scaled to the displayed
    (width, height) by FFmpeg.

    decord turns frames by the display matrix before it scales, so the size asked for is the displayed one. The
    frames come over DLPack, without a copy (`asnumpy` copies them, a few ms per clip).
    """
    import decord
    from torch.utils.dlpack import from_dlpack

    width, height = scaled if scaled else (-1, -1)
    reader = decord.VideoReader(io.BytesIO(data), num_threads=1, width=width, height=height)
    if int(wanted[-1]) >= len(reader):
        raise ValueError(f"frame {int(wanted[-1])} requested but decord sees {len(reader)} frames")
    return from_dlpack(reader.get_batch(wanted.tolist()).to_dlpack())


def _upright(frame, scaled: tuple[int, int] | None) -> np.ndarray:
    """A PyAV frame as (H, W, 3) uint8 RGB, scaled to the displayed (width, height) and turned upright.

    PyAV leaves the display matrix to the caller: scale in the stored orientation, then turn clockwise by the
    frame's rotation, as ffmpeg's autorotate and decord do.
    """
    turns = display_rotation(frame) // 90
    kwargs: dict[str, Any] = {"format": "rgb24"}
    if scaled:
        width, height = scaled if turns % 2 == 0 else scaled[::-1]
        kwargs.update(width=width, height=height)
    pixels = frame.to_ndarray(**kwargs)
    return np.ascontiguousarray(np.rot90(pixels, k=-turns)) if turns else pixels  # k < 0: clockwise


def _pyav_frames(data: bytes, wanted: np.ndarray, scaled: tuple[int, int] | None) -> np.ndarray:
    """Frames `wanted` (sorted unique display indices) as (N, H, W, 3) uint8, decoding only the GOPs they need.

    Frame i is the i-th frame in presentation order, as ffmpeg counts. Where packets carry presentation times
    (`has_presentation_times`) a frame's index is the rank of its pts; in AVI, where they do not (and DivX/XviD
    packed B-frames make the guessed ones wrong), the decoder's output order is the presentation order, so a
    frame's index is its keyframe's decode position plus the frames output since the decoder started there.
    """
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one worker, one thread: workers are the parallelism
        stamped = has_presentation_times(container)
        packets = [p for p in container.demux(stream) if p.size]  # decode order
        shown, count = display_indices(packets, stamped)  # display index of each packet's frame
        timed = stamped and all(p.pts is not None for p in packets)
        rank = {p.pts: i for p, i in zip(packets, shown)} if timed else {}  # an output frame's pts -> its index
        if int(wanted[-1]) >= count:
            raise ValueError(f"frame {int(wanted[-1])} requested but the stream has {count} frames")
        keys = [(shown[pos], pos) for pos, p in enumerate(packets) if p.is_keyframe]
        if not keys:
            raise ValueError("no keyframe in the stream")
        want = set(wanted.tolist())
        got: dict[int, np.ndarray] = {}
        ctx, pos, next_index = stream.codec_context, None, 0
        for target in wanted.tolist():
            if target in got:
                continue
            # the keyframe at or before the target in display order; decoding starts at its packet
            first, start = max((k for k in keys if k[0] <= target), default=keys[0])
            if pos is None or start > pos:  # the decoder is behind a later keyframe: jump there
                ctx.flush_buffers()
                pos, next_index = start, first
            while target not in got:
                if pos < len(packets):
                    frames, pos = ctx.decode(packets[pos]), pos + 1
                else:
                    frames = ctx.decode(None)  # drain the reorder buffer at the end of the stream
                    if not frames:
                        raise ValueError(f"frame {target} never came out of the decoder")
                for frame in frames:
                    index = rank.get(frame.pts, next_index) if rank else next_index
                    next_index = index + 1
                    if index in want and index not in got:
                        got[index] = _upright(frame, scaled)
    return np.stack([got[i] for i in wanted.tolist()])


def _probe(sample: Sample, data: bytes) -> dict[str, Any]:
    """The json probe data when the shard has it (from a probe that knows rotation and frame order), else a
    PyAV probe of the bytes."""
    meta = sample.get("json")
    if isinstance(meta, dict) and meta.get("frames") and meta.get("width") and "order" in meta:
        return meta
    return probe_video(data)


@functools.lru_cache(maxsize=1)
def _has_decord() -> bool:
    """Whether decord imports here (it is an extra: no wheel for aarch64)."""
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _backend_for(backend: str, meta: dict[str, Any]) -> str:
    """The CPU decoder for one file: decord where its seeks are right, PyAV where they are not or where decord is
    not installed.

    decord's seeks were checked against ffmpeg's decode on files made by ffmpeg: exact for H.264 (B-frames, VFR,
    rotated), VP9 and MJPEG in containers with presentation times; frames off after a seek for HEVC with open GOPs,
    MPEG-4 Part 2 with B-frames, anything in AVI (packed B-frames included), and files with frames an edit list
    hides (decord shows them).
    """
    if backend == "pyav":
        return "pyav"
    if meta.get("order", "pts") != "pts" or meta.get("codec", "h264") not in DECORD_CODECS or meta.get("hidden"):
        return "pyav"
    if backend == "auto" and not _has_decord():
        return "pyav"
    return "decord"


def decode_frames(plan: Planner, *, size: tuple[int, int] | None = DEFAULT_SIZE, backend: str = "auto",
                  fallback: bool = True, key: str | None = None, view: str = "clip", audio: bool = False,
                  audio_rate: int = 16000) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """A stage that decodes the frames `plan(total, rng)` asks for and stacks them as `video` (k, T, H, W, 3).

    Args:
        plan: frame count and generator -> (k, T) indices (see `decode_clips`, `decode_frame_sets`).
        size: output (H, W): frames are turned upright, scaled to cover it and centre-cropped, so videos of any
            size and aspect batch together; None keeps each video's own displayed size.
        backend: "auto" (decord per file where it decodes right, else PyAV), "decord" (the same, decord
            required), "pyav", or "nvdec" (plan only; the device stage decodes).
        fallback: retry with PyAV when decord fails on a file.
        key: the sample entry holding the encoded video; None takes the first entry with a video extension
            (mp4, avi, webm, mkv, ...), so folders of mixed containers need no option.
        view: the generator's view name for the plan.
        audio: also decode the audio track aligned with each clip as `audio` (k, N) and `audio_len` (k,).
        audio_rate: sample rate of that track.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    size = None if size is None else (int(size[0]), int(size[1]))

    def decode(sample: Sample) -> Sample:
        member = video_member(sample, key)
        data = sample[member]
        meta = _probe(sample, data)
        rng = sample_rng(sample.get("__seed__", 0), sample.get("__epoch__", 0), sample["__key__"], view)
        index = plan(int(meta["frames"]), rng)  # (k, T)
        out = {k: v for k, v in sample.items() if k != member}
        out["frame_index"] = torch.from_numpy(index)
        if audio:
            out.update(_clip_audio(data, index, float(meta["fps"]), audio_rate))
        if backend == "nvdec":  # the encoded bytes go to the device stage as `mp4`, whatever the container
            out["mp4"], out["decoder"] = data, "nvdec"
            out["keyframes"] = list(meta.get("keyframes") or [])
            width, height = display_size(meta)
            out["video_size"] = torch.tensor(size or (height, width))  # what NVDEC's frames will be; crops fit it
            out["rotation"] = int(meta.get("rotation", 0))
            if size is not None:
                out["resize"] = torch.tensor(size)
            return out
        wanted, where = np.unique(index, return_inverse=True)  # decode each needed frame once
        scaled = cover_size(*display_size(meta), size) if size else None
        used = _backend_for(backend, meta)
        try:
            frames = (_decord_frames if used == "decord" else _pyav_frames)(data, wanted, scaled)
        except Exception:  # noqa: BLE001 - decord raises bare DECORDError; PyAV gets the second chance
            if used != "decord" or not fallback:
                raise
            frames, used = _pyav_frames(data, wanted, scaled), "pyav"
        frames = torch.as_tensor(frames)  # (U, H, W, 3): each needed frame once
        frames = _centre_crop(frames, size)
        # the clips are gathered from the unique frames only where they are used (a crop, or the batch)
        where_t = torch.from_numpy(where.reshape(index.shape).astype(np.int64))  # (k, T)
        out["video"], out["decoder"] = ClipFrames(frames, where_t), used
        return out

    return guarded(decode, what=f"decode_video[{backend}]")


def _clip_audio(data: bytes, index: np.ndarray, fps: float, rate: int) -> dict[str, Any]:
    """The audio under each clip, from its first frame's start to its last frame's end, (k, N) zero-padded."""
    from pipelines.audio import decode_waveform, segment

    length = int(round((index[0, -1] - index[0, 0] + 1) / fps * rate))
    try:
        wave, start = decode_waveform(data, rate=rate)
    except ValueError:  # no audio track: silence of length 0, so fbank pads it like an empty clip
        return {"audio": torch.zeros(len(index), length), "audio_len": torch.zeros(len(index), dtype=torch.long)}
    pieces, valid = [], []
    for row in index:
        first = max(int(round((row[0] / fps - start) * rate)), 0)  # video time 0 is the container's origin
        piece, n = segment(wave[first:], length, position="start")
        pieces.append(piece)
        valid.append(n)
    return {"audio": torch.from_numpy(np.stack(pieces)), "audio_len": torch.tensor(valid)}


def decode_clips(*, num_frames: int = 16, stride: int = 4, clips: int = 1, position: str = "random",
                 **options: Any) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """VideoMAE-style clips: k clips of `num_frames` at `stride` from one decode (repeated sampling).

    Other keyword options go to `decode_frames` (size, backend, fallback, key, view, audio, audio_rate).
    """
    def plan(total: int, rng: np.random.Generator) -> np.ndarray:
        return clip_indices(total, num_frames=num_frames, stride=stride, clips=clips, position=position, rng=rng)

    return decode_frames(plan, **options)


def decode_frame_sets(*, frames: int = 2, gap: tuple[int, int] = (4, 48), sets: int = 1,
                      **options: Any) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """Frame pairs (SiamMAE: frames=2, gap in [4, 48]) or reference+target groups (tracking: frames=4).

    Other keyword options go to `decode_frames`.
    """
    def plan(total: int, rng: np.random.Generator) -> np.ndarray:
        return gapped_indices(total, size=frames, gap=tuple(gap), sets=sets, rng=rng)

    return decode_frames(plan, **options)
