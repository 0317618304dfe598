"""sRGB <-> CIE Lab (D65) in torch, on any device, for colorization methods and colour-based tracking.

L is in [0, 100], a and b roughly in [-110, 110]. The formulas are the standard ones (sRGB gamma, the D65 white
point, the CIE f(t) with its linear segment below (6/29)^3).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rgb_to_lab", "lab_to_rgb"]

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])  # D65, Y = 1
_DELTA = 6.0 / 29.0


def _linear(rgb: Tensor) -> Tensor:
    return torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def _gamma(lin: Tensor) -> Tensor:
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(0) ** (1 / 2.4) - 0.055, 12.92 * lin)


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """(..., 3, H, W) sRGB in [0, 1] -> (..., 3, H, W) Lab."""
    m = _RGB_TO_XYZ.to(rgb.device, rgb.dtype)
    xyz = torch.einsum("ij,...jhw->...ihw", m, _linear(rgb.clamp(0, 1)))
    t = xyz / _WHITE.to(rgb.device, rgb.dtype).reshape(3, 1, 1)
    f = torch.where(t > _DELTA ** 3, t.clamp_min(1e-12) ** (1 / 3), t / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """(..., 3, H, W) Lab -> (..., 3, H, W) sRGB, clipped to [0, 1]."""
    lum, a, b = lab.unbind(-3)
    fy = (lum + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=-3)
    t = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
    xyz = t * _WHITE.to(lab.device, lab.dtype).reshape(3, 1, 1)
    inv = torch.linalg.inv(_RGB_TO_XYZ).to(lab.device, lab.dtype)
    return _gamma(torch.einsum("ij,...jhw->...ihw", inv, xyz)).clamp(0, 1)
