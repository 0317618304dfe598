"""What a propagation run leaves on disk: DAVIS-format indexed PNGs, CSV tables, overlay strips, a summary."""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["palette", "write_indexed_png", "overlay_strip", "write_csv", "format_table"]


@functools.lru_cache(maxsize=1)
def _palette() -> tuple[int, ...]:
    """The 256-colour DAVIS / PASCAL VOC palette, flat.

    Colour i spreads the bits of i over the channels, most significant first: bit 0 -> red, 1 -> green,
    2 -> blue, then the next three bits one position lower, and so on.
    """
    out = []
    for i in range(256):
        rgb = [0, 0, 0]
        value = i
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((value >> ch) & 1) << shift
            value >>= 3
        out.extend(rgb)
    return tuple(out)


def palette() -> list[int]:
    """The 256-colour DAVIS / PASCAL VOC palette as a flat [r, g, b, ...] list (see `_palette`)."""
    return list(_palette())


def write_indexed_png(path: Path, mask: np.ndarray) -> None:
    """Writes label ids (H, W) as an indexed PNG with the DAVIS palette (readable by the official scorer)."""
    if mask.ndim != 2 or mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
        raise ValueError(f"{path}: an indexed PNG needs 2-D label ids in [0, 255], got shape {mask.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(palette())
    img.save(path)


def _colours() -> np.ndarray:
    return np.asarray(palette(), dtype=np.float32).reshape(256, 3)  # (768,) -> (256, 3)


def overlay_strip(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], *, height: int = 160,
                  keypoints: Sequence[np.ndarray | None] | None = None, alpha: float = 0.5) -> np.ndarray:
    """Side-by-side thumbnails (height, sum of widths, 3) uint8 of frames with label colours blended in.

    Args:
        frames: RGB frames (H, W, 3) uint8.
        masks: label ids (H, W) per frame, or None to show the frame alone.
        height: thumbnail height in pixels.
        keypoints: optional (J, 2) (x, y) pixels per frame, drawn as coloured squares.
        alpha: weight of the label colour on labelled (non-zero) pixels.
    """
    colours = _colours()
    tiles = []
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        img = frame.astype(np.float32)
        if mask is not None:
            lab = mask > 0
            img[lab] = (1 - alpha) * img[lab] + alpha * colours[mask[lab]]
        if keypoints is not None and keypoints[i] is not None:
            r = max(2, round(frame.shape[0] / 60))
            for j, (x, y) in enumerate(np.asarray(keypoints[i])):
                if not (math.isfinite(x) and math.isfinite(y)):
                    continue
                xi, yi = int(round(x)), int(round(y))
                img[max(0, yi - r):yi + r + 1, max(0, xi - r):xi + r + 1] = colours[j + 1]
        width = max(1, round(frame.shape[1] * height / frame.shape[0]))
        thumb = Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
        tiles.append(np.asarray(thumb))
    return np.concatenate(tiles, axis=1)


def write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """Writes rows (dicts with the same keys) as CSV; floats with 4 decimals."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})


def format_table(rows: Sequence[Mapping[str, object]]) -> str:
    """A fixed-width text table of rows (dicts with the same keys), floats with 3 decimals."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(keys), line(["-" * w for w in widths])] + [line(c) for c in cells])
