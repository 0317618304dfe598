"""Optional transcoding while sharding: small, uniform media decode faster and make the GPU wait less.

- video: H.264 yuv420p at a constant frame rate, short side scaled down to N, a short GOP (so a clip needs few
  frames decoded before its first one), long videos cut into chunks; the audio track as mono 16 kHz FLAC;
- audio: mono 16 kHz FLAC, or 16-bit PCM WAV (`audio_format="wav"`), which needs no decoding at all;
- images: JPEG with the short side scaled down to at most N.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["VideoChunk", "transcode_video", "transcode_audio", "transcode_image", "scaled_size", "AUDIO_FORMATS"]

AUDIO_RATE = 16000
AUDIO_FORMATS = ("flac", "wav")


@dataclass(frozen=True)
class VideoChunk:
    """One transcoded piece of a video: MP4 bytes and, when kept, its audio as FLAC bytes."""

    mp4: bytes
    flac: bytes | None


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side scaled down to `short_side` (never up), both even for yuv420p."""
    scale = 1.0 if not short_side else min(1.0, short_side / min(width, height))
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731 - tiny local helper
    return even(width), even(height)


def _encode_flac(mono: np.ndarray) -> bytes:
    """int16 mono samples (T,) -> FLAC bytes at 16 kHz."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=AUDIO_RATE, layout="mono")
        for start in range(0, len(mono), 4096):
            frame = av.AudioFrame.from_ndarray(mono[None, start:start + 4096].copy(), format="s16", layout="mono")
            frame.sample_rate, frame.pts = AUDIO_RATE, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def _decode_mono(container) -> np.ndarray:
    """All audio of a container's first audio stream as int16 mono 16 kHz samples (T,)."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
    pieces = []
    for frame in container.decode(container.streams.audio[0]):
        for out in resampler.resample(frame):
            pieces.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        pieces.append(out.to_ndarray().reshape(-1))
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int16)


def transcode_audio(path: Path, fmt: str = "flac") -> bytes:
    """Any audio file -> mono 16 kHz FLAC bytes, or 16-bit PCM WAV bytes (`fmt="wav"`: twice the size, read
    without decoding)."""
    import av

    from pipelines.wav import encode_pcm

    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"audio format must be one of {AUDIO_FORMATS}, got {fmt!r}")
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        mono = _decode_mono(container)
    return _encode_flac(mono) if fmt == "flac" else encode_pcm(mono, AUDIO_RATE)


class _ChunkWriter:
    """Encodes frames into consecutive MP4 chunks of at most `limit` frames each."""

    def __init__(self, size: tuple[int, int], fps: Fraction, gop: int, limit: int | None) -> None:
        self.size, self.fps, self.gop, self.limit = size, fps, gop, limit
        self.chunks: list[bytes] = []
        self._open()

    def _open(self) -> None:
        import av

        self.buf = io.BytesIO()
        self.out = av.open(self.buf, "w", format="mp4")
        self.stream = self.out.add_stream("libx264", rate=self.fps)
        self.stream.width, self.stream.height = self.size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.gop_size = self.gop
        # a fixed GOP (no scene-cut keyframes) and no B-frames: keyframe positions are predictable for seeking
        self.stream.options = {"preset": "veryfast", "crf": "20", "bf": "0", "keyint_min": str(self.gop),
                               "sc_threshold": "0"}
        self.count = 0

    def _close(self) -> None:
        self.out.mux(self.stream.encode())
        self.out.close()
        if self.count:
            self.chunks.append(self.buf.getvalue())

    def add(self, frame) -> None:
        if self.limit and self.count == self.limit:
            self._close()
            self._open()
        frame.pts, frame.time_base = self.count, 1 / self.fps
        self.out.mux(self.stream.encode(frame))
        self.count += 1

    def finish(self) -> list[bytes]:
        self._close()
        return self.chunks


def transcode_video(path: Path, *, short_side: int | None = 256, fps: float | None = None, gop: int = 16,
                    chunk_seconds: float | None = None, keep_audio: bool = False) -> list[VideoChunk]:
    """Re-encodes a video at a constant frame rate; returns one `VideoChunk` per chunk of `chunk_seconds`.

    Constant frame rate: output frame j shows the latest source frame whose time is <= j / fps, so variable-rate
    sources come out evenly spaced (frames are repeated or dropped as needed).
    """
    import av

    from pipelines.sharding.probe import display_rotation, has_presentation_times

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        src_rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        rate = Fraction(fps).limit_denominator(1001) if fps else Fraction(src_rate).limit_denominator(1001)
        # AVI stores no presentation times (and packed B-frames get wrong guessed ones): there the decoder's output
        # order is the presentation order and each frame lasts one source period
        stamped = has_presentation_times(container)
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            raise ValueError("no decodable video frame")
        turns = display_rotation(first) // 90  # baked into the pixels: the output needs no display matrix
        shown = (stream.codec_context.width, stream.codec_context.height)
        size = scaled_size(*(shown[::-1] if turns % 2 else shown), short_side)  # (width, height) as displayed
        limit = int(round(chunk_seconds * rate)) if chunk_seconds else None
        writer = _ChunkWriter(size, rate, gop, limit)
        slot = 1 / float(rate)
        emitted, held, last = 0, None, 0.0
        for count, frame in enumerate(itertools.chain([first], frames)):
            stamp = frame.time if stamped else None
            last = float(stamp) if stamp is not None else count / float(src_rate)
            # every output slot before this frame's time shows the frame held from before
            while held is not None and emitted * slot < last - 1e-9:
                writer.add(held)
                emitted += 1
            held = _upright_yuv(frame, size, turns)
            held.pict_type = av.video.frame.PictureType.NONE  # drop the source's I-frame flags: our GOP rules
        end = last + 1 / float(src_rate)  # the last source frame lasts one source frame period
        while held is not None and emitted * slot < end - 1e-9:
            writer.add(held)
            emitted += 1
        chunks = writer.finish()
        audio = None
        if keep_audio and container.streams.audio:
            container.seek(0)
            audio = _decode_mono(container)
    per_chunk = (limit or 10**12) / float(rate) * AUDIO_RATE  # audio samples per chunk
    out = []
    for i, mp4 in enumerate(chunks):
        flac = None
        if audio is not None:
            piece = audio[int(i * per_chunk):int((i + 1) * per_chunk)]
            flac = _encode_flac(piece) if len(piece) else None
        out.append(VideoChunk(mp4=mp4, flac=flac))
    return out


def _upright_yuv(frame, size: tuple[int, int], turns: int):
    """A decoded frame scaled to the displayed (width, height) `size`, turned clockwise `turns` quarter turns,
    as limited-range yuv420p for the encoder.

    The range is converted, not only relabelled: a full-range source (MJPEG, RGB VP9) kept its range tag through
    `reformat`, the encoder wrote no tag, and decoders then read its levels as limited range (7 levels off).
    """
    import av
    from av.video.reformatter import ColorRange

    if turns:
        stored = size[::-1] if turns % 2 else size
        pixels = frame.to_ndarray(format="rgb24", width=stored[0], height=stored[1])
        upright = np.ascontiguousarray(np.rot90(pixels, k=-turns))  # k < 0: clockwise, as ffmpeg autorotates
        frame = av.VideoFrame.from_ndarray(upright, format="rgb24")
    return frame.reformat(width=size[0], height=size[1], format="yuv420p", dst_color_range=ColorRange.MPEG)


def transcode_image(path: Path, *, short_side: int | None = None, quality: int = 90) -> bytes:
    """Any image -> RGB JPEG bytes, short side scaled down to at most `short_side`."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        size = scaled_size(img.width, img.height, short_side) if short_side else img.size
        if size != img.size:
            img = img.resize(size, Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
