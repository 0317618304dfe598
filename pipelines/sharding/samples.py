"""Turning one source item into the samples (key + files) stored for it, with its probe data as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.sharding.probe import ProbeError, probe, probe_audio, probe_image, probe_video
from pipelines.sharding.sources import Item, sample_key
from pipelines.sharding.transcode import transcode_audio, transcode_image, transcode_video

__all__ = ["Transcode", "build_samples"]


@dataclass(frozen=True)
class Transcode:
    """Transcoding options; `enabled=False` stores the original bytes unchanged."""

    enabled: bool = False
    short_side: int | None = 256
    fps: float | None = None
    gop: int = 16
    chunk_seconds: float | None = None
    keep_audio: bool = False
    image_short_side: int | None = None
    audio_format: str = "flac"


def _ext(path: Path) -> str:
    ext = path.suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def _meta(item: Item, info: dict[str, Any], **more: Any) -> bytes:
    meta = {"source": item.rel, "label": item.label, "speaker": item.speaker, **info, **more}
    return json.dumps(meta, sort_keys=True).encode()


def _extras(item: Item) -> dict[str, bytes]:
    files = {}
    for ext, path in item.extras:
        if not Path(path).is_file():
            raise ProbeError(f"missing {ext} file {path}")
        files[ext] = Path(path).read_bytes()
    return files


def _label(item: Item) -> dict[str, bytes]:
    return {} if item.label is None else {"cls": str(item.label).encode()}


def build_samples(item: Item, modality: str, opts: Transcode) -> list[tuple[str, dict[str, bytes]]]:
    """The samples for one item: [(key, {ext: bytes})]. Raises ProbeError (or another error) for a bad file."""
    if item.path.is_dir():  # an evaluation sequence: frames and masks as extras, probed by its first frame
        files = _extras(item)
        frames = sorted(e for e in files if e.startswith("frame"))
        info = probe_image(files[frames[0]])
        meta = _meta(item, info, sequence=item.path.name, frames=len(frames),
                     masks=sorted(e for e in files if e.startswith("mask")))
        return [(sample_key(item.rel), {"json": meta, **files})]
    if modality == "video" and opts.enabled:
        probe_video(item.path)  # the source's own checks first: not a video, truncated, a broken index
        chunks = transcode_video(item.path, short_side=opts.short_side, fps=opts.fps, gop=opts.gop,
                                 chunk_seconds=opts.chunk_seconds, keep_audio=opts.keep_audio)
        out = []
        for i, chunk in enumerate(chunks):
            info = probe_video(chunk.mp4)
            key = sample_key(item.rel, i) if opts.chunk_seconds else sample_key(item.rel)
            files = {"mp4": chunk.mp4, "json": _meta(item, info, chunk=i, chunk_start=i * (opts.chunk_seconds or 0))}
            if chunk.flac is not None:
                files["flac"] = chunk.flac
            out.append((key, {**files, **_label(item)}))
        if not out:
            raise ProbeError("transcoding produced no frames")
        return out
    if modality == "audio" and opts.enabled:
        data, ext = transcode_audio(item.path, opts.audio_format), opts.audio_format
        info = probe_audio(data)
    elif modality in ("image", "multimodal") and opts.enabled:
        data, ext = transcode_image(item.path, short_side=opts.image_short_side), "jpg"
        info = probe_image(data)
    else:
        info = probe(item.path, modality)
        data, ext = item.path.read_bytes(), _ext(item.path)
    files = {ext: data, "json": _meta(item, info), **_label(item), **_extras(item)}
    return [(sample_key(item.rel), files)]
