"""Video decode for workers: plan the frames a sample needs, decode only those, stack k clips from one decode.

Backends (chosen per config, the one that decoded is written to `decoder`):
- "decord" (default on CPU, one thread per worker): `get_batch` seeks to the keyframe before each needed frame and
  scales inside FFmpeg when a size is asked for;
- "pyav": demuxes once (packets only), then decodes from the keyframe before each needed frame and stops at the
  last one, skipping GOPs no clip touches; used as the fallback for files decord cannot read;
- "nvdec": the worker only plans; the encoded bytes and the plan go to the device stage (`pipelines.nvdec`).
Frame planning is `pipelines.clips`, drawn from the sample's generator, so it is the same for every backend.

The output `video` is a `ClipFrames` (`pipelines.frames`): the distinct decoded frames and which of them make each
of the k clips, gathered into uint8 clips (k, T, H, W, 3) only where they are used (a crop in the worker, or the
loader's collate, which writes them straight into the batch); the device stage folds k into the batch. With
`size=(H, W)` frames are scaled (by the decoder) to cover H x W and centre-cropped, so every sample of a batch has
one shape.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from pipelines.clips import clip_indices, gapped_indices
from pipelines.frames import ClipFrames
from pipelines.rng import sample_rng
from pipelines.sample import Sample, guarded

__all__ = ["decode_clips", "decode_frame_sets", "decode_frames", "cover_size", "BACKENDS"]

BACKENDS = ("decord", "pyav", "nvdec")
Planner = Callable[[int, np.random.Generator], np.ndarray]


def cover_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """The smallest (width, height) with the source's aspect ratio that covers `size` = (H, W)."""
    scale = max(size[0] / height, size[1] / width)
    return max(size[1], round(width * scale)), max(size[0], round(height * scale))


def _centre_crop(frames: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Centre crop of (N, H, W, 3) frames to size (H, W)."""
    if size is None:
        return frames
    h, w = frames.shape[1:3]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return frames[:, top:top + size[0], left:left + size[1]]


def _decord_frames(data: bytes, wanted: np.ndarray, scaled: tuple[int, int] | None) -> torch.Tensor:
    """Frames `wanted` (sorted unique indices) as (N, H, W, 3) uint8, scaled to (width, height) by FFmpeg.

    The frames come over DLPack, without a copy (`asnumpy` copies them, a few ms per clip).
    """
    import decord
    from torch.utils.dlpack import from_dlpack

    width, height = scaled if scaled else (-1, -1)
    reader = decord.VideoReader(io.BytesIO(data), num_threads=1, width=width, height=height)
    if int(wanted[-1]) >= len(reader):
        raise ValueError(f"frame {int(wanted[-1])} requested but decord sees {len(reader)} frames")
    return from_dlpack(reader.get_batch(wanted.tolist()).to_dlpack())


def _pyav_frames(data: bytes, wanted: np.ndarray, scaled: tuple[int, int] | None) -> np.ndarray:
    """Frames `wanted` (sorted unique display indices) as (N, H, W, 3) uint8, decoding only the GOPs they need."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1  # one worker, one thread: workers are the parallelism
        packets = [p for p in container.demux(stream) if p.size]  # decode order
        stamps = sorted(p.pts for p in packets)  # display order: frame i has the i-th smallest pts
        if int(wanted[-1]) >= len(stamps):
            raise ValueError(f"frame {int(wanted[-1])} requested but the stream has {len(stamps)} frames")
        keys = [(p.pts, pos) for pos, p in enumerate(packets) if p.is_keyframe]
        if not keys:
            raise ValueError("no keyframe in the stream")
        want = {stamps[i]: i for i in wanted.tolist()}
        got: dict[int, np.ndarray] = {}
        ctx, pos = stream.codec_context, None
        kwargs = {"format": "rgb24"} | ({"width": scaled[0], "height": scaled[1]} if scaled else {})
        for index in wanted.tolist():
            target = stamps[index]
            if target in got:
                continue
            # the keyframe at or before the target in display order; decoding starts at its packet
            start = max((pos_ for pts, pos_ in keys if pts <= target), default=keys[0][1])
            if pos is None or start > pos:  # the decoder is behind a later keyframe: jump there
                ctx.flush_buffers()
                pos = start
            while target not in got:
                if pos < len(packets):
                    frames, pos = ctx.decode(packets[pos]), pos + 1
                else:
                    frames = ctx.decode(None)  # drain the reorder buffer at the end of the stream
                    if not frames:
                        raise ValueError(f"frame {index} (pts {target}) never came out of the decoder")
                for frame in frames:
                    if frame.pts in want and frame.pts not in got:
                        got[frame.pts] = frame.to_ndarray(**kwargs)
    return np.stack([got[stamps[i]] for i in wanted.tolist()])


def _probe(sample: Sample, data: bytes) -> dict[str, Any]:
    """The json probe data when the shard has it, else a PyAV probe of the bytes."""
    meta = sample.get("json")
    if isinstance(meta, dict) and meta.get("frames") and meta.get("width"):
        return meta
    from pipelines.sharding.probe import probe_video

    return probe_video(data)


def decode_frames(plan: Planner, *, size: tuple[int, int] | None = None, backend: str = "decord",
                  fallback: bool = True, key: str = "mp4", view: str = "clip", audio: bool = False,
                  audio_rate: int = 16000) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
    """A stage that decodes the frames `plan(total, rng)` asks for and stacks them as `video` (k, T, H, W, 3).

    Args:
        plan: frame count and generator -> (k, T) indices (see `decode_clips`, `decode_frame_sets`).
        size: output (H, W); None keeps the stored resolution.
        backend: "decord", "pyav" or "nvdec" (plan only; the device stage decodes).
        fallback: retry with PyAV when decord fails on a file.
        key: the sample entry holding the encoded video.
        view: the generator's view name for the plan.
        audio: also decode the audio track aligned with each clip as `audio` (k, N) and `audio_len` (k,).
        audio_rate: sample rate of that track.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    size = None if size is None else (int(size[0]), int(size[1]))

    def decode(sample: Sample) -> Sample:
        data = sample[key]
        meta = _probe(sample, data)
        rng = sample_rng(sample.get("__seed__", 0), sample.get("__epoch__", 0), sample["__key__"], view)
        index = plan(int(meta["frames"]), rng)  # (k, T)
        out = {k: v for k, v in sample.items() if k != key}
        out["frame_index"] = torch.from_numpy(index)
        if audio:
            out.update(_clip_audio(data, index, float(meta["fps"]), audio_rate))
        if backend == "nvdec":
            out[key], out["decoder"] = data, "nvdec"
            out["keyframes"] = list(meta.get("keyframes") or [])
            out["video_size"] = torch.tensor([int(meta["height"]), int(meta["width"])])  # the device crops from it
            return out
        wanted, where = np.unique(index, return_inverse=True)  # decode each needed frame once
        scaled = cover_size(int(meta["width"]), int(meta["height"]), size) if size else None
        used = backend
        try:
            frames = (_decord_frames if backend == "decord" else _pyav_frames)(data, wanted, scaled)
        except Exception:  # noqa: BLE001 - decord raises bare DECORDError; PyAV gets the second chance
            if backend != "decord" or not fallback:
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
