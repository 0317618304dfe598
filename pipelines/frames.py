"""A video sample's decoded frames and the clips they make, gathered into clips only where a batch needs them.

The decode stage decodes each frame the plan needs once (the k clips of repeated sampling overlap), so what it
holds is the distinct frames (U, H, W, 3) and, per clip, the positions of its T frames among them. Copying them
out into clips (k, T, H, W, 3) doubles the memory traffic of a worker, and most of it is wasted when the next step
cuts a small crop from each clip. `ClipFrames` keeps the two apart: `clip(j, box)` gathers one clip's frames,
only inside a crop box; `gather(out=...)` writes all clips at once, straight into a batch's buffer when the
loader collates (`pipelines.collate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["ClipFrames", "clip_of"]


@dataclass(frozen=True)
class ClipFrames:
    """Decoded frames and the clips they make.

    Attributes:
        frames: (U, H, W, 3) uint8, the distinct decoded frames in display order.
        where: (k, T) long, the position in `frames` of frame t of clip j.
    """

    frames: Tensor
    where: Tensor

    def __post_init__(self) -> None:
        if self.frames.dim() != 4 or self.where.dim() != 2:
            raise ValueError(f"ClipFrames needs frames (U, H, W, C) and where (k, T), got "
                             f"{tuple(self.frames.shape)} and {tuple(self.where.shape)}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the gathered clips: (k, T, H, W, 3)."""
        return (*self.where.shape, *self.frames.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.frames.dtype

    def __len__(self) -> int:
        return self.where.shape[0]

    def clip(self, j: int, box: Sequence[int] | None = None) -> Tensor:
        """Clip j's frames (T, H, W, 3), or only their box (top, left, h, w) (T, h, w, 3): one gather of rows."""
        frames = self.frames
        if box is not None:
            top, left, h, w = (int(v) for v in box)
            frames = frames[:, top:top + h, left:left + w]  # a view: the gather copies only the box
        return frames.index_select(0, self.where[j])

    def gather(self, out: Tensor | None = None) -> Tensor:
        """All clips (k, T, H, W, 3), written into `out` when given (e.g. a row of a collated batch)."""
        flat = self.where.reshape(-1)  # (k*T,)
        if out is None:
            return self.frames.index_select(0, flat).reshape(self.shape)  # (k*T, H, W, 3) -> (k, T, H, W, 3)
        torch.index_select(self.frames, 0, flat, out=out.view(-1, *self.frames.shape[1:]))
        return out


def clip_of(clips: Tensor | ClipFrames, j: int, box: Sequence[int] | None = None) -> Tensor:
    """Clip j (T, H, W, 3) of decoded clips (k, T, H, W, 3) or `ClipFrames`, cut to `box` when given."""
    if isinstance(clips, ClipFrames):
        return clips.clip(j, box)
    clip = clips[j]
    if box is None:
        return clip
    top, left, h, w = (int(v) for v in box)
    return clip[:, top:top + h, left:left + w]
