"""Moving labels between image pixels and the feature grid: masks, keypoint heat maps, encoder input size."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.eval.metrics import VOID
from mmssl.eval.presets import PropagationSettings

__all__ = ["encoder_size", "resize_frame", "mask_to_grid", "keypoints_to_grid", "grid_to_mask",
           "grid_to_keypoints"]


def encoder_size(height: int, width: int, settings: PropagationSettings, stride: int) -> tuple[int, int]:
    """The (H', W') a frame is resized to before encoding.

    `settings.size` sets the scale; both sides are then floored to a multiple of the feature stride, and the
    long side also to `settings.multiple` when given (DINO: short side 480, long side a multiple of 64).
    """
    size = settings.size
    if size is None:
        h, w = height, width
    elif isinstance(size, int):
        scale = size / min(height, width)
        h, w = (size, width * scale) if height <= width else (height * scale, size)
    else:
        h, w = size
    h, w = int(h) // stride * stride, int(w) // stride * stride
    if settings.multiple:
        if h >= w:
            h = h // settings.multiple * settings.multiple
        else:
            w = w // settings.multiple * settings.multiple
    if h < stride or w < stride:
        raise ValueError(f"frame {height}x{width} resized by size={size!r} is smaller than one feature cell")
    return h, w


def resize_frame(frame: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (3, H, W) to `size` (half-pixel centres, no antialiasing, like cv2.resize)."""
    if tuple(frame.shape[-2:]) == tuple(size):
        return frame
    return F.interpolate(frame[None], size=size, mode="bilinear", align_corners=False)[0]


def mask_to_grid(mask: np.ndarray, ids: list[int], grid: tuple[int, int], mode: str = "area") -> Tensor:
    """Labels (C, h, w) on the feature grid of a label-id mask (H, W); channel c is `ids[c]`.

    "area" gives the fraction of each cell's pixels with that id; "nearest" samples one pixel per cell.
    Void pixels (255) and ids not listed belong to no channel.
    """
    m = torch.from_numpy(np.asarray(mask, dtype=np.int64))
    onehot = torch.stack([(m == i) & (m != VOID) for i in ids]).float()  # (C, H, W)
    if mode == "nearest":
        return F.interpolate(onehot[None], size=grid, mode="nearest")[0]
    return F.interpolate(onehot[None], size=grid, mode="area")[0]  # (C, h, w) cell means


def keypoints_to_grid(points: np.ndarray, image: tuple[int, int], grid: tuple[int, int], sigma: float) -> Tensor:
    """Heat maps (1 + J, h, w) of keypoints (J, 2) (x, y pixels): channel 0 is background, then one per joint.

    Each joint is a Gaussian of width `sigma` cells with peak 1, cut to zero beyond 3 sigma (CRW's maps); the
    background channel is 1 where no joint reaches.
    """
    (height, width), (h, w) = image, grid
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    maps = []
    for x, y in np.asarray(points, dtype=np.float64):
        cx, cy = (x + 0.5) * w / width - 0.5, (y + 0.5) * h / height - 0.5  # pixel centre -> cell coordinates
        d2 = (xx - cx) ** 2 + (yy - cy) ** 2
        g = torch.exp(-d2 / (2 * sigma * sigma))
        maps.append(torch.where(d2 <= (3 * sigma) ** 2, g, torch.zeros_like(g)))
    joints = torch.stack(maps) if maps else torch.zeros(0, h, w)  # (J, h, w)
    background = (joints.sum(0, keepdim=True) == 0).float()  # (1, h, w)
    return torch.cat([background, joints])


def grid_to_mask(soft: Tensor, size: tuple[int, int], norm_mask: bool = False) -> Tensor:
    """Channel index (H, W) of the largest bilinearly upsampled label at each pixel."""
    up = F.interpolate(soft[None].float(), size=size, mode="bilinear", align_corners=False)[0]  # (C, H, W)
    if norm_mask:
        # DINO stretches each channel to [0, 1] so a faint object is not drowned by the background
        lo = up.amin((1, 2), keepdim=True)
        hi = (up - lo).amax((1, 2), keepdim=True)
        stretched = (up - lo) / hi.clamp_min(1e-12)
        up = torch.where(up.amax((1, 2), keepdim=True) > 0, stretched, up)
    return up.argmax(0)


def grid_to_keypoints(soft: Tensor, image: tuple[int, int], topk: int = 3) -> np.ndarray:
    """Keypoints (J, 2) (x, y pixels) decoded from heat maps (1 + J, h, w): weighted mean of each map's top-k cells.

    A joint whose map is all zero decodes to NaN.
    """
    joints = soft[1:].flatten(1).float()  # (J, h*w)
    h, w = soft.shape[-2:]
    k = min(topk, joints.shape[1])
    vals, idx = joints.topk(k, dim=1)  # (J, k)
    total = vals.sum(1, keepdim=True)
    weights = vals / total.clamp_min(1e-12)
    cx = ((idx % w).float() * weights).sum(1)
    cy = ((idx // w).float() * weights).sum(1)
    height, width = image
    xy = torch.stack([(cx + 0.5) * width / w - 0.5, (cy + 0.5) * height / h - 0.5], dim=1)  # cells -> pixels
    xy[total[:, 0] <= 0] = math.nan
    return xy.cpu().numpy()
