"""A loss-curve PNG drawn with Pillow (no plotting library needed on a training machine)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

__all__ = ["plot_curve"]


def plot_curve(steps: Sequence[float], values: Sequence[float], path: str | Path, *, title: str = "loss",
               size: tuple[int, int] = (640, 400)) -> Path:
    """Draws values against steps with labelled axes and writes a PNG; non-finite values are left out."""
    pts = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    w, h = size
    left, right, top, bottom = 70, 20, 30, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 8), title, fill="black")
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-12)

        def xy(s: float, v: float) -> tuple[float, float]:
            return (left + (s - x0) / (x1 - x0) * (w - left - right),
                    h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom))

        for frac in (0.0, 0.5, 1.0):  # axis labels at the ends and the middle
            draw.text((4, xy(x0, y0 + frac * (y1 - y0))[1] - 6), f"{y0 + frac * (y1 - y0):.4g}", fill="black")
            draw.text((xy(x0 + frac * (x1 - x0), y0)[0] - 10, h - bottom + 6), f"{x0 + frac * (x1 - x0):.0f}",
                      fill="black")
        if len(pts) > 1:
            draw.line([xy(s, v) for s, v in pts], fill=(30, 90, 200), width=2)
        else:
            x, y = xy(*pts[0])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(30, 90, 200))
    draw.text((w // 2 - 15, h - 16), "step", fill="black")
    path = Path(path)
    img.save(path)
    return path
