"""Which frames to decode: clip, frame-pair and frame-group index plans drawn from a per-sample generator.

A plan is an int64 array (k, T): k clips (or pairs, or groups) of T frame indices each, in display order. It is
a pure function of the frame count and a `numpy.random.Generator` from `mmssl.rng.sample_rng`, so a sample's
clips are the same in every worker and run, and the decoder only ever touches the union of the planned frames.

- Clips (VideoMAE, Tong et al. 2022): T frames at a fixed stride; a clip that would run past the end repeats the
  last frame, as VideoMAE's loader pads short videos. Random positions for k > 1 are drawn without replacement, so
  repeated sampling gives k distinct clips whenever the video is long enough.
- Gapped sets (SiamMAE, Gupta et al. 2023: two frames with a gap in [4, 48]; colour tracking, Vondrick et al.
  2018: three references and a target): T frames with one gap drawn per set, shrunk to what the video allows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["clip_indices", "gapped_indices", "PlanError"]

POSITIONS = ("random", "uniform")


class PlanError(ValueError):
    """A video too short (or empty) for the requested frames."""


def clip_indices(total: int, *, num_frames: int, stride: int, clips: int = 1, position: str = "random",
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Start positions and frame indices of k clips of `num_frames` frames at `stride`.

    Args:
        total: frames in the video.
        num_frames: frames per clip (T).
        stride: step between sampled frames.
        clips: clips per video (k), all cut from one decode.
        position: "random" (uniform start, distinct starts when possible) or "uniform" (k starts spread evenly,
            the centre for k = 1, as in multi-clip evaluation).
        rng: the sample's generator; required for "random".

    Returns:
        (k, T) int64 frame indices.
    """
    if total <= 0:
        raise PlanError("video has no frames")
    if num_frames <= 0 or stride <= 0 or clips <= 0:
        raise ValueError(f"num_frames, stride and clips must be positive, got {num_frames}, {stride}, {clips}")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    span = (num_frames - 1) * stride + 1
    last_start = max(total - span, 0)
    if position == "uniform":
        starts = np.array([round(last_start * (j + 0.5) / clips) for j in range(clips)], dtype=np.int64)
    else:
        if rng is None:
            raise ValueError("random clip positions need the sample's generator")
        choices = last_start + 1
        starts = np.sort(rng.choice(choices, size=clips, replace=clips > choices)).astype(np.int64)
    offsets = np.arange(num_frames, dtype=np.int64) * stride
    return np.minimum(starts[:, None] + offsets[None, :], total - 1)  # (k, T); short videos repeat the last frame


def gapped_indices(total: int, *, size: int = 2, gap: tuple[int, int] = (4, 48), sets: int = 1,
                   rng: np.random.Generator) -> np.ndarray:
    """k sets of `size` frames, consecutive frames of a set `g` apart, g drawn per set from `gap` (inclusive).

    The upper end of the range shrinks to what the video allows; a video shorter than the smallest gap raises
    `PlanError`, since a pair closer than the requested range would change the task.

    Returns:
        (k, size) int64 frame indices in display order.
    """
    lo, hi = int(gap[0]), int(gap[1])
    if size < 2 or lo < 0 or hi < lo or sets <= 0:
        raise ValueError(f"need size >= 2, 0 <= gap[0] <= gap[1] and sets > 0, got {size}, {gap}, {sets}")
    longest = (total - 1) // (size - 1)  # the largest gap that fits
    if total <= 0 or longest < lo:
        raise PlanError(f"video has {total} frames, fewer than {lo * (size - 1) + 1} for {size} frames {lo} apart")
    hi = min(hi, longest)
    gaps = rng.integers(lo, hi + 1, size=sets)  # (k,)
    room = total - 1 - gaps * (size - 1)  # last allowed start per set
    starts = np.floor(rng.random(sets) * (room + 1)).astype(np.int64)  # uniform integer in [0, room]
    return starts[:, None] + gaps[:, None] * np.arange(size, dtype=np.int64)[None, :]  # (k, size)
