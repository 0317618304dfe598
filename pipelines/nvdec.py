"""NVDEC video decode in the device stage through PyNvVideoCodec (the optional `gpu` extra).

Workers only plan (`pipelines.video` with backend="nvdec"): the batch carries each video's bytes, its (k, T)
frame plan and keyframes. Here a pool of `SimpleDecoder`s, reused across batches with `reconfigure_decoder`
(building one is the expensive part), decodes several videos in parallel threads. Each video is read as chunks
planned on the CPU (`plan_chunks`): a seek only where the next needed frame lies beyond the next keyframe,
otherwise sequential `get_batch_frames`, and never more than `max_chunk` frames per call, because asking for a
whole video at once crashed the process natively (GPU.md). Each decode thread works on its own CUDA stream: on
the caller's stream (the training step's, or the prefetch thread's) the host read in a thread's frame indexing
would wait for everything queued there; a thread's frames are complete (its stream synchronised, which waits for
that thread's work only) before the caller's stream stacks them, and they are marked as used by the caller's
stream. H100 and H200 have 7 NVDEC engines, so 7 sessions by default keep them all busy. On a CPU device the same
plan decodes with PyAV, so the device stage gives the same batch without a GPU.
"""

from __future__ import annotations

import bisect
import os
import queue
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["plan_chunks", "NvdecDecoder", "resize_cover"]


def plan_chunks(wanted: Sequence[int], keyframes: Sequence[int], *,
                max_chunk: int = 32) -> list[tuple[int, int, bool]]:
    """Chunks (start, count, seek) that cover the sorted frame indices `wanted`.

    A chunk continues sequentially from the previous one when no keyframe lies between the last decoded frame and
    the next wanted frame (the decoder would have to decode those frames after a seek anyway); otherwise it seeks.
    Runs longer than `max_chunk` are split into back-to-back chunks without a seek.
    """
    if max_chunk <= 0:
        raise ValueError(f"max_chunk must be positive, got {max_chunk}")
    wanted = sorted(set(int(i) for i in wanted))
    keys = sorted(set(int(k) for k in keyframes)) or [0]
    runs: list[list[int]] = []  # [start, end] inclusive, frames decoded sequentially
    for index in wanted:
        if runs:
            last = runs[-1][1]
            gop = keys[max(bisect.bisect_right(keys, index) - 1, 0)]  # keyframe at or before index
            if gop <= last + 1:  # same GOP (or the next one starts right after): keep decoding forward
                runs[-1][1] = index
                continue
        runs.append([index, index])
    chunks = []
    for start, end in runs:
        for offset in range(start, end + 1, max_chunk):
            chunks.append((offset, min(max_chunk, end + 1 - offset), offset == start))
    return chunks


def resize_cover(frames: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Scales (N, 3, H, W) uint8 frames to cover `size` and centre-crops, as the CPU decoders do; uint8 out."""
    if size is None:
        return frames
    h, w = frames.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    sh, sw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    if (sh, sw) != (h, w):
        frames = F.interpolate(frames.float(), size=(sh, sw), mode="bilinear", align_corners=False,
                               antialias=True).round_().clamp_(0, 255).to(torch.uint8)
    top, left = (sh - size[0]) // 2, (sw - size[1]) // 2
    return frames[..., top:top + size[0], left:left + size[1]]


class NvdecDecoder:
    """Decodes planned frames of a batch of videos on the GPU with a pool of reused NVDEC decoders.

    Args:
        decoders: decoders (and threads) working in parallel (7: the NVDEC engines of an H100/H200).
        max_chunk: most frames per `get_batch_frames` call.
        size: output (H, W) after a cover-resize and centre crop; None keeps the stored size (must then agree).
        tmpdir: where encoded videos are written for the decoders (SimpleDecoder reads files); default /dev/shm.
    """

    def __init__(self, *, decoders: int = 7, max_chunk: int = 32, size: Sequence[int] | None = None,
                 tmpdir: str | None = None) -> None:
        self.decoders, self.max_chunk = decoders, max_chunk
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.tmpdir = tmpdir or ("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        self._slots: queue.Queue | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._count = 0
        self._lock = threading.Lock()
        self._streams: dict[int, torch.cuda.Stream] = {}  # one per pool thread, made on its first video
        self._consumer: torch.cuda.Stream | None = None

    def __call__(self, videos: Sequence[bytes], index: Tensor, keyframes: Sequence[Sequence[int]],
                 device: torch.device | str, *, rotations: Sequence[int] | Tensor | None = None,
                 size: Sequence[int] | Tensor | None = None) -> Tensor:
        """Frames (B, k, T, 3, H, W) uint8 on `device` for plans `index` (B, k, T).

        `rotations` (clockwise degrees per video, from the probe) turn frames upright as the CPU decoders do;
        `size` (H, W), the decode stage's, overrides the decoder's own.
        """
        device = torch.device(device)
        plans = [np.asarray(i) for i in index.cpu().numpy()]
        turns = [0] * len(plans) if rotations is None else [int(r) // 90 % 4 for r in list(rotations)]
        if size is not None:
            size = tuple(int(v) for v in (size[0] if torch.is_tensor(size) and size.dim() == 2 else size))
        size = size or self.size
        if device.type != "cuda":
            clips = [self._cpu(v, p, size) for v, p in zip(videos, plans)]
        else:
            pool = self._start(device)
            self._consumer = torch.cuda.current_stream(device)
            clips = list(pool.map(lambda args: self._streamed(*args, device=device, size=size),
                                  zip(videos, plans, keyframes, turns)))
        if len({tuple(c.shape) for c in clips}) == 1:
            return torch.stack(clips).to(device)
        # videos of different sizes: one zero-padded batch (each clip's crop box lies inside its own frames)
        from pipelines.resample import stack_padded

        padded, _ = stack_padded([c.to(device).flatten(0, 2) for c in clips])  # (B, k*T*3, Hmax, Wmax)
        return padded.reshape(len(clips), *clips[0].shape[:3], *padded.shape[-2:])  # (B, k, T, 3, Hmax, Wmax)

    def _streamed(self, data: bytes, plan: np.ndarray, keyframes: Sequence[int], turns: int, *,
                  device: torch.device, size: tuple[int, int] | None) -> Tensor:
        """`_gpu` on this thread's own stream, finished before the caller's stream reads the frames."""
        stream = self._streams.get(threading.get_ident())
        if stream is None:
            stream = self._streams[threading.get_ident()] = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            frames = self._gpu(data, plan, keyframes, turns, device=device, size=size)
        stream.synchronize()
        if self._consumer is not None:
            frames.record_stream(self._consumer)
        return frames

    def _cpu(self, data: bytes, plan: np.ndarray, size: tuple[int, int] | None) -> Tensor:
        """(k, T, 3, H, W) frames by PyAV, upright (it reads the display matrix itself)."""
        from pipelines.video import _pyav_frames

        wanted, where = np.unique(plan, return_inverse=True)
        frames = torch.from_numpy(_pyav_frames(data, wanted, None)).permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
        frames = resize_cover(frames, size)
        return frames[torch.from_numpy(where.reshape(plan.shape))]  # (k, T, 3, H, W)

    def _start(self, device: torch.device) -> ThreadPoolExecutor:
        if self._pool is None:
            self._slots = queue.Queue()
            for _ in range(self.decoders):
                self._slots.put({"decoder": None, "gpu": device.index or 0})
            self._pool = ThreadPoolExecutor(self.decoders, thread_name_prefix="nvdec")
        return self._pool

    def _gpu(self, data: bytes, plan: np.ndarray, keyframes: Sequence[int], turns: int, *, device: torch.device,
             size: tuple[int, int] | None) -> Tensor:
        assert self._slots is not None
        slot = self._slots.get()
        with self._lock:
            self._count += 1
            path = os.path.join(self.tmpdir, f"mmssl-nvdec-{os.getpid()}-{self._count}.mp4")
        try:
            with open(path, "wb") as f:
                f.write(data)
            decoder = _open(slot, path)
            wanted, where = np.unique(plan, return_inverse=True)
            need = set(wanted.tolist())
            got: dict[int, Tensor] = {}
            with torch.cuda.device(device):
                for start, count, seek in plan_chunks(wanted.tolist(), keyframes, max_chunk=self.max_chunk):
                    if seek:
                        decoder.seek_to_index(start)
                    for offset, frame in enumerate(decoder.get_batch_frames(count)):
                        if start + offset in need:  # RGBP planes: (3, H, W); clone, the surface is reused
                            got[start + offset] = torch.from_dlpack(frame).clone()
                missing = need - set(got)
                if missing:
                    raise RuntimeError(f"NVDEC returned no frame for indices {sorted(missing)[:5]}")
                frames = torch.stack([got[i] for i in wanted.tolist()])  # (N, 3, H, W) as stored
                if turns:  # NVDEC ignores the display matrix: turn clockwise as ffmpeg's autorotate does
                    frames = torch.rot90(frames, k=-turns, dims=(2, 3))
                frames = resize_cover(frames, size)
            return frames[torch.from_numpy(where.reshape(plan.shape)).to(frames.device)]  # (k, T, 3, H, W)
        finally:
            self._slots.put(slot)
            if os.path.exists(path):
                os.remove(path)


def _open(slot: dict, path: str):
    """The slot's decoder pointed at `path`: built on first use, reconfigured after (much cheaper)."""
    try:
        import PyNvVideoCodec as nvc
    except ImportError as err:
        raise ImportError("NVDEC decoding needs PyNvVideoCodec: pip install 'mmssl[gpu]'") from err
    if slot["decoder"] is None:
        slot["decoder"] = nvc.SimpleDecoder(path, gpu_id=slot["gpu"], use_device_memory=True,
                                            output_color_type=nvc.OutputColorType.RGBP)
    else:
        slot["decoder"].reconfigure_decoder(path)
    return slot["decoder"]
