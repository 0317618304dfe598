"""Scores of label propagation, written from their definitions.

* DAVIS (Perazzi et al. 2016; Pont-Tuset et al. 2017): region similarity J (IoU) and boundary F-measure F with
  a tolerance of 0.008 x the image diagonal, summarised per object as mean, recall (fraction of frames > 0.5) and
  decay (mean of the first quarter of frames minus mean of the last quarter).
* JHMDB keypoints (Jhuang et al. 2013, as scored by CRW's `eval_pck.py`): PCK, a joint is correct when its error
  is at most alpha x 0.6 x the diagonal of the box around the ground-truth joints; averaged per joint, then
  over joints.
* VIP part parsing (Zhou et al. 2018): mean IoU over classes from a confusion matrix, classes that appear in
  neither ground truth nor prediction left out (nanmean).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["VOID", "region_iou", "boundary_map", "disk", "boundary_f", "davis_statistics", "pck",
           "confusion_matrix", "mean_iou"]

VOID = 255  # DAVIS and VIP label of pixels that are not scored


def _bools(*arrays: np.ndarray | None) -> list[np.ndarray | None]:
    return [None if a is None else np.asarray(a).astype(bool) for a in arrays]


def region_iou(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    """J: intersection over union of two binary masks (H, W), pixels in `void` left out.

    Both masks empty (after removing void) counts as a perfect 1, as in the DAVIS scorer.
    """
    gt, pred, void = _bools(gt, pred, void)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    keep = ~void if void is not None else np.ones_like(gt)
    union = np.count_nonzero((gt | pred) & keep)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred & keep) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask (Martin et al.'s `seg2bmap` at full size).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; outside the
    image counts as background for the last column and row only through those comparisons, and the
    bottom-right pixel is never a boundary pixel.
    """
    m = np.asarray(mask).astype(bool)
    right, down, diag = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    right[:, :-1] = m[:, 1:]
    down[:-1, :] = m[1:, :]
    diag[:-1, :-1] = m[1:, 1:]
    edge = (m ^ right) | (m ^ down) | (m ^ diag)
    # on the last row only the right neighbour is compared, on the last column only the lower one
    edge[-1, :] = m[-1, :] ^ right[-1, :]
    edge[:, -1] = m[:, -1] ^ down[:, -1]
    edge[-1, -1] = False
    return edge


def disk(radius: int) -> np.ndarray:
    """Disk structuring element (2r+1, 2r+1): offsets with dx^2 + dy^2 <= r^2 (skimage's `disk`)."""
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy) <= r * r


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    # a convolution with the disk counts covered set pixels; > 0 is the dilation (exact for 0/1 inputs)
    kernel = torch.from_numpy(disk(radius).astype(np.float32))[None, None]  # (1, 1, k, k)
    x = torch.from_numpy(mask.astype(np.float32))[None, None]  # (1, 1, H, W)
    return (F.conv2d(x, kernel, padding=int(radius))[0, 0] > 0.5).numpy()


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, *,
               bound_th: float = 0.008) -> float:
    """F: boundary F-measure of two binary masks (H, W).

    Boundaries are matched within `bound_th` x image diagonal pixels (rounded up; a value >= 1 is taken as
    pixels), using disk dilation. Void pixels are removed from both masks before their boundaries are drawn.
    An empty predicted boundary scores precision 1 / recall 0, an empty true boundary precision 0 / recall 1,
    both empty 1 / 1.
    """
    gt, pred, void = _bools(gt, pred, void)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*gt.shape))
    if void is not None:
        gt, pred = gt & ~void, pred & ~void
    gt_edge, pred_edge = boundary_map(gt), boundary_map(pred)
    n_gt, n_pred = np.count_nonzero(gt_edge), np.count_nonzero(pred_edge)
    if n_gt == 0 or n_pred == 0:
        precision = 1.0 if n_pred == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        precision = np.count_nonzero(pred_edge & _dilate(gt_edge, radius)) / n_pred
        recall = np.count_nonzero(gt_edge & _dilate(pred_edge, radius)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def davis_statistics(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame J or F values (first and last frame already removed).

    Decay splits the frames into 4 bins at round(linspace(1, n, 5)) - 1; neighbouring bins share their edge
    frame, as in the DAVIS scorer. Decay is mean(first bin) - mean(last bin).
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN slices give NaN, which is the answer
        mean = float(np.nanmean(v))
        recall = float(np.nanmean(v > 0.5))
        edges = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(np.int64)
        bins = [v[edges[i]:edges[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def pck(pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = (0.1, 0.2), *,
        visible: np.ndarray | None = None) -> dict[str, float]:
    """PCK in percent of keypoints (N, J, 2) (x, y pixels), one row per scored frame.

    The reference length of a frame is 0.6 x the diagonal of the box around its visible ground-truth joints.
    A joint is correct when its error / reference <= threshold. The percentage is taken per joint over frames,
    then averaged over joints (JHMDB's protocol). `visible` (N, J) leaves joints out of both box and score.
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or gt.ndim != 3 or gt.shape[-1] != 2:
        raise ValueError(f"keypoints must both be (N, J, 2), got {pred.shape} and {gt.shape}")
    vis = np.ones(gt.shape[:2], dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
    lo = np.where(vis[..., None], gt, np.inf).min(axis=1)  # (N, 2)
    hi = np.where(vis[..., None], gt, -np.inf).max(axis=1)  # (N, 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = 0.6 * np.linalg.norm(hi - lo, axis=-1)  # (N,)
        dist = np.linalg.norm(pred - gt, axis=-1) / scale[:, None]  # (N, J)
    out = {}
    for thr in thresholds:
        per_joint = [100.0 * np.mean(dist[vis[:, j], j] <= thr) for j in range(gt.shape[1]) if vis[:, j].any()]
        out[f"PCK@{thr:g}"] = float(np.mean(per_joint)) if per_joint else math.nan
    return out


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, *, ignore: int = VOID) -> np.ndarray:
    """Counts (C, C) of ground-truth class (rows) against predicted class (columns); `ignore` pixels skipped."""
    gt, pred = np.asarray(gt).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth and prediction differ in size: {gt.size} vs {pred.size}")
    keep = (gt != ignore) & (gt >= 0) & (gt < num_classes)
    if np.any((pred[keep] < 0) | (pred[keep] >= num_classes)):
        raise ValueError(f"prediction has class ids outside [0, {num_classes})")
    counts = np.bincount(gt[keep] * num_classes + pred[keep], minlength=num_classes ** 2)  # (C*C,)
    return counts.reshape(num_classes, num_classes)  # (C, C): row = ground truth, column = prediction


def mean_iou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU) from a confusion matrix; a class absent from both sides has IoU NaN and is skipped."""
    conf = np.asarray(conf, dtype=np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(iou)), iou
