"""Small synthetic media for tests: videos with their frame index drawn in, JPEG/PNG images, tones, corrupt files.

Frame i of a generated video has every pixel of its top-left block set from i, so decoded frames can be checked
against the indices a sampler asked for (`frame_index_of`).
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

__all__ = ["make_video", "make_image", "make_image_shards", "make_audio", "make_corrupt", "frame_index_of",
           "video_frame"]

BLOCK = 16  # side of the block that encodes the frame index


def video_frame(i: int, width: int, height: int) -> np.ndarray:
    """An RGB frame (H, W, 3) uint8: a moving gradient with the index encoded in the top-left block."""
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([(x + 3 * i) % 256, (y + 5 * i) % 256, ((x + y) // 2 + 7 * i) % 256], axis=-1)
    frame[:BLOCK, :BLOCK] = (i * 8) % 256  # index code, 8 levels apart so compression keeps it
    frame[:BLOCK, BLOCK:2 * BLOCK] = ((i // 32) * 64) % 256
    return frame.astype(np.uint8)


def frame_index_of(frame: np.ndarray) -> int:
    """Reads back the index that `video_frame` drew into a decoded frame (H, W, 3)."""
    low = int(round(float(frame[2:BLOCK - 2, 2:BLOCK - 2].mean()) / 8)) % 32
    high = int(round(float(frame[2:BLOCK - 2, BLOCK + 2:2 * BLOCK - 2].mean()) / 64)) % 4
    return high * 32 + low


def make_video(path: Path, *, frames: int = 48, width: int = 128, height: int = 96, fps: int = 24,
               gop: int = 12, audio: bool = False) -> Path:
    """Writes an H.264 yuv420p MP4 (optionally with a mono 16 kHz AAC track)."""
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": "12", "preset": "ultrafast", "bf": "0", "keyint_min": str(gop),
                          "sc_threshold": "0"}
        astream = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(video_frame(i, width, height), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if astream is not None:
            wave = _tone(frames / fps, 440.0)
            chunk = 1024
            for start in range(0, len(wave), chunk):
                piece = wave[start:start + chunk].reshape(1, -1)
                aframe = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                aframe.sample_rate, aframe.pts, aframe.time_base = 16000, start, Fraction(1, 16000)
                out.mux(astream.encode(aframe))
            out.mux(astream.encode())
    return path


def make_image(path: Path, *, width: int = 96, height: int = 80, seed: int = 0) -> Path:
    """Writes a JPEG or PNG (by suffix) of smooth random colours."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.BILINEAR).save(path)
    return Path(path)


def make_image_shards(root: Path, *, count: int = 24, per_shard: int = 8) -> Path:
    """`count` 72x64 JPEGs in root/ sharded by the sharding tool into root/shards (`per_shard` each); its path."""
    from pipelines.sharding.tool import ShardOptions, run_sharding

    for i in range(count):
        make_image(root / f"{i:02d}.jpg", width=72, height=64, seed=i)
    run_sharding(root, root / "shards", ShardOptions(samples_per_shard=per_shard), progress=False)
    return root / "shards"


def _tone(seconds: float, freq: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def make_audio(path: Path, *, seconds: float = 1.0, freq: float = 440.0, rate: int = 16000,
               channels: int = 1) -> Path:
    """Writes a sine tone as FLAC or WAV (by suffix)."""
    path = Path(path)
    codec = {".flac": "flac", ".wav": "pcm_s16le"}[path.suffix]
    wave = _tone(seconds, freq, rate)
    pcm = (np.tile(wave, (channels, 1)) * 32767).astype(np.int16)  # (C, T), planar
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        stream.format = "s16"  # interleaved: what both the FLAC and the PCM encoders take
        chunk = 4096
        for start in range(0, pcm.shape[1], chunk):
            arr = pcm[:, start:start + chunk].T.reshape(1, -1)  # (C, n) -> (1, n*C) interleaved
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(arr), format="s16", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def make_corrupt(path: Path, *, like: Path | None = None, size: int = 2048) -> Path:
    """Writes garbage with a media suffix, or the first bytes of a real file (a truncated download)."""
    path = Path(path)
    if like is not None:
        path.write_bytes(Path(like).read_bytes()[:size])
    else:
        path.write_bytes(np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def encode_png16(depth: np.ndarray) -> bytes:
    """A 16-bit grayscale PNG of a (H, W) uint16 array."""
    buf = io.BytesIO()
    Image.fromarray(depth.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()
