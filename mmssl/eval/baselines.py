"""Reference points for label propagation that need no encoder: copying the first frame's mask forward.

Scored exactly as `mmssl.eval.evaluate` scores DAVIS (objects 1..max id of the first frame, frames 1..T-2), so the
number sits beside the encoders' in one table: an encoder that does not beat it has not learned to track.
"""

from __future__ import annotations

from typing import Sequence as Seq

import numpy as np

from mmssl.eval import metrics
from mmssl.eval.datasets import Sequence, load_mask

__all__ = ["copy_first_frame"]


def copy_first_frame(sequences: Seq[Sequence]) -> dict[str, float]:
    """DAVIS J&F, J and F means when every frame's prediction is the first frame's mask."""
    rows = []
    for seq in sequences:
        first = load_mask(seq.masks[0])
        ids = range(1, int(first[first != metrics.VOID].max(initial=0)) + 1)
        j_vals = {i: [] for i in ids}
        f_vals = {i: [] for i in ids}
        for t in range(1, len(seq.frames) - 1):  # the first is given and the last left out, as DAVIS scores
            if seq.masks[t] is None:
                continue
            gt = load_mask(seq.masks[t], first.shape)
            void = gt == metrics.VOID
            for i in ids:
                j_vals[i].append(metrics.region_iou(gt == i, first == i, void))
                f_vals[i].append(metrics.boundary_f(gt == i, first == i, void))
        for i in ids:
            jm, fm = metrics.davis_statistics(j_vals[i])[0], metrics.davis_statistics(f_vals[i])[0]
            rows.append((jm, fm))
    if not rows:
        return {"J&F": float("nan"), "J_mean": float("nan"), "F_mean": float("nan")}
    j, f = np.nanmean([r[0] for r in rows]), np.nanmean([r[1] for r in rows])
    return {"J&F": float((j + f) / 2), "J_mean": float(j), "F_mean": float(f)}
