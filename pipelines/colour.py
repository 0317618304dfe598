"""Batched pixel operations of the augmentations, with per-sample parameters and per-sample on/off gates.

Every function takes images x (N, F, 3, h, w) float in [0, 1] (F frames share one draw: 1 for images, T for
clips) and per-sample parameters (N, ...). `gated` applies an operation to the rows whose gate is set, in one of
two ways, chosen by where the batch lives:
- on a CPU (the loader's workers) the gate is read on the host and only those rows are computed (free there);
- on a GPU the operation runs on every row and `torch.where` keeps it where the gate is set: more arithmetic,
  which a GPU has to spare, and nothing that makes the host wait for the device (a host read of a device gate,
  `nonzero` or boolean indexing, would).
The operations follow SimCLR/BYOL/DINO's colour augmentations (Chen et al., 2020; Grill et al., 2020; Caron et
al., 2021) as torchvision implements them: brightness, contrast and saturation blend with black, the mean grey and
the grey image; hue rotates the chroma plane (a smooth stand-in for torchvision's HSV round trip); grayscale uses
ITU-R 601 luma; Gaussian blur has reflect padding; solarize inverts values >= 0.5.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["gated", "dense_gates", "grey", "flip", "jitter", "grayscale", "gaussian_blur", "solarize", "blur_matrix", "hue_matrix"]


_DENSE: list[bool] = []  # set by `dense_gates`


@contextlib.contextmanager
def dense_gates(enabled: bool = True) -> Iterator[None]:
    """Makes `gated` take its GPU route (every row computed, `torch.where`) on any device (tests compare them)."""
    _DENSE.append(enabled)
    try:
        yield
    finally:
        _DENSE.pop()


def _rows(values: Tensor, x: Tensor) -> Tensor:
    """Per-sample values (N,) shaped to broadcast over x (N, F, 3, h, w)."""
    return values.reshape(-1, *([1] * (x.dim() - 1)))  # (N, 1, 1, 1, 1)


def gated(x: Tensor, on: Tensor, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """x with `fn(rows, *args_of_rows)` in the rows where `on` (N,) is True (see the module docstring).

    `args` are per-sample tensors (N, ...) sliced like the rows. x may be overwritten (the caller owns it).
    """
    if (_DENSE[-1] if _DENSE else x.is_cuda):  # dense: no host read of the gate
        return torch.where(_rows(on.to(x.device, non_blocking=True), x), fn(x, *args), x)
    on = on.cpu()
    if not bool(on.any()):
        return x
    if bool(on.all()):
        return fn(x, *args)
    idx = on.nonzero().flatten()
    x[idx] = fn(x[idx], *(a[idx] for a in args))
    return x


def grey(x: Tensor) -> Tensor:
    """ITU-R 601 luma (..., 1, h, w) of RGB images (..., 3, h, w), the weights torchvision uses."""
    return 0.2989 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :]


def _blend(x: Tensor, other: Tensor | float, f: Tensor) -> Tensor:
    return (f * x + (1 - f) * other).clamp(0, 1)


def flip(x: Tensor, on: Tensor) -> Tensor:
    """Horizontal mirror of the rows of x (N, ...) whose gate is set; works on uint8 too."""
    return gated(x, on, lambda part: part.flip(-1))


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, 0.0, _rows(1 + f, x))


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = grey(x).mean((-3, -2, -1), keepdim=True)  # (N, F, 1, 1, 1): per frame, as torchvision per image
    return _blend(x, mean, _rows(1 + f, x))


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, grey(x), _rows(1 + f, x))


_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)  # once, on the CPU: an inverse on a GPU checks for singularity on the host


def hue_matrix(shift: Tensor) -> Tensor:
    """Per-image (N, 3, 3) RGB matrices rotating hue by `shift` turns in YIQ space (luma is kept)."""
    angle = 2 * math.pi * shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=-1).reshape(-1, 3, 3)  # (N, 3, 3)
    to_yiq, from_yiq = _TO_YIQ.to(shift.device, non_blocking=True), _FROM_YIQ.to(shift.device, non_blocking=True)
    return from_yiq @ rot @ to_yiq  # (N, 3, 3)


def _hue(x: Tensor, f: Tensor) -> Tensor:
    # a rotation of the chroma plane: one 3x3 matrix per image, far cheaper than an HSV round trip
    n, frames, c, h, w = x.shape
    flat = x.permute(0, 2, 1, 3, 4).reshape(n, c, frames * h * w)  # (N, 3, F*h*w): pixels as columns for one bmm
    turned = torch.bmm(hue_matrix(f), flat).reshape(n, c, frames, h, w)  # (N, 3, F, h, w)
    return turned.permute(0, 2, 1, 3, 4).clamp(0, 1)  # (N, F, 3, h, w)


_JITTER = (_brightness, _contrast, _saturation, _hue)


def jitter(x: Tensor, on: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Colour jitter: brightness (0), contrast (1), saturation (2), hue (3) in each sample's own order.

    Args:
        x: (N, F, 3, h, w) in [0, 1].
        on: (N,) which samples jitter.
        factors: (N, 4) the drawn offsets (factor 1 + f; the hue shift f in turns).
        order: (N, 4) each sample's permutation of the four operations.
    """
    for step in range(4):
        for op, fn in enumerate(_JITTER):
            x = gated(x, on & (order[:, step] == op), fn, factors[:, op])
    return x


def grayscale(x: Tensor, on: Tensor) -> Tensor:
    return gated(x, on, lambda part: grey(part).expand_as(part).clone())  # a real tensor: later ops write rows


def blur_matrix(sigma: Tensor, size: int, kernel: int) -> Tensor:
    """Per-image (N, size, size) matrices that apply a 1-D Gaussian with reflect padding along one axis."""
    n = sigma.shape[0]
    taps = torch.arange(kernel, device=sigma.device) - kernel // 2
    weights = torch.exp(-taps[None].float() ** 2 / (2 * sigma[:, None] ** 2))  # (N, K)
    weights = weights / weights.sum(1, keepdim=True)
    source = torch.arange(size, device=sigma.device)[:, None] + taps[None]  # (size, K) input index per output
    source = source.abs()  # reflect at the start: -i -> i
    source = torch.where(source > size - 1, 2 * (size - 1) - source, source)  # reflect at the end
    matrix = torch.zeros(n, size, size, device=sigma.device)
    index = source[None].expand(n, size, kernel)  # (N, size, K)
    return matrix.scatter_add_(2, index, weights[:, None, :].expand(n, size, kernel).contiguous())


def _blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Separable Gaussian blur of x (N, F, 3, H, W) with one sigma per image: each axis one batched matmul with a
    banded matrix (per-image kernels in one BLAS call, much faster on a CPU than a grouped convolution)."""
    rows = blur_matrix(sigma, x.shape[-2], kernel)[:, None, None]  # (N, 1, 1, H, H)
    cols = blur_matrix(sigma, x.shape[-1], kernel)[:, None, None].transpose(-1, -2)  # (N, 1, 1, W, W)
    return rows @ x @ cols


def gaussian_blur(x: Tensor, on: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    return gated(x, on, lambda part, s: _blur(part, s, kernel), sigma)


def solarize(x: Tensor, on: Tensor) -> Tensor:
    return gated(x, on, lambda part: torch.where(part >= 0.5, 1.0 - part, part))
